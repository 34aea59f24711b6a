"""The statistics behind ``loss-service report``: seeded bootstrap confidence intervals and
paired model comparisons (mean difference, win/tie/loss, Wilcoxon signed-rank).

Torch-free (NumPy and SciPy), so a report can be built on a machine without the server.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BOOTSTRAP_RESAMPLES = 2000
CONFIDENCE = 0.95
# Resamples drawn per NumPy call: bounds memory at 1,000s of images without changing the
# draws (the generator hands out the same stream whatever the chunking).
_CHUNK_VALUES = 4_000_000


def bootstrap_mean_ci(values, seed: int = 0, resamples: int = BOOTSTRAP_RESAMPLES, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean.

    Resample i draws ``len(values)`` indices with ``np.random.default_rng(seed).integers(0, n, n)``
    in order, so a plain loop over resamples with the same seed gives the same interval.
    """
    data = np.asarray(values, dtype=np.float64)
    n = data.size
    if n == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    rows = max(1, _CHUNK_VALUES // n)
    for start in range(0, resamples, rows):
        count = min(rows, resamples - start)
        means[start : start + count] = data[rng.integers(0, n, size=(count, n))].mean(axis=1)
    tail = (1.0 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


@dataclass(frozen=True)
class PairedComparison:
    """Model A against model B on the images both scored, for one metric.

    ``mean_diff`` is mean(A − B); wins count images where A is better in the metric's direction.
    ``p_value`` is the two-sided Wilcoxon signed-rank test (SciPy defaults; zero differences
    dropped), or None when every difference is zero.
    """

    count: int
    mean_diff: float
    ci_low: float
    ci_high: float
    wins: int
    ties: int
    losses: int
    p_value: float | None


def compare_paired(a, b, lower_is_better: bool, seed: int = 0, resamples: int = BOOTSTRAP_RESAMPLES) -> PairedComparison:
    """Paired comparison of per-image values ``a`` and ``b`` (same images, same order)."""
    from scipy.stats import wilcoxon

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired values must be two 1-D arrays of one length, got {a.shape} and {b.shape}")
    diff = a - b
    better = diff < 0 if lower_is_better else diff > 0
    worse = diff > 0 if lower_is_better else diff < 0
    low, high = bootstrap_mean_ci(diff, seed, resamples)
    p_value = float(wilcoxon(diff).pvalue) if np.any(diff != 0) else None
    return PairedComparison(
        count=int(diff.size),
        mean_diff=float(diff.mean()) if diff.size else float("nan"),
        ci_low=low,
        ci_high=high,
        wins=int(better.sum()),
        ties=int((diff == 0).sum()),
        losses=int(worse.sum()),
        p_value=p_value,
    )
