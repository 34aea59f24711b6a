"""Dataset metrics: FID and KID between a set of SR outputs and a set of GT images.

Both compare distributions of InceptionV3 ``pool3`` features (losses/nets/inception.py), so a value
belongs to two whole sets, not to an image. This module is NumPy only: the torch-free client
(``loss-service eval``) reduces the features the server returns with it, and the library does
the same in-process (``losses.dataset_score``).

Streaming: ``SetFeatures`` keeps FID's float64 sums (count, Σx, Σxxᵀ: 32 MiB at 2048-d, whatever
the set's size), which merge exactly across parts or replicas. KID needs the features themselves
(it samples subsets); they go to a memory-mapped float32 file (8 KiB per image on disk), never
to memory at once.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

STATS_FORMAT = "loss-service.feature-stats"
STATS_VERSION = 1
FEATURE_DTYPE = np.dtype("<f4")


class DatasetMetricError(ValueError):
    """A set the metric cannot be computed on; the message says what to change."""


@dataclass
class FeatureStats:
    """FID's sufficient statistics of a feature set, in float64: count, Σx and Σxxᵀ.

    ``add`` takes batches in any order and ``merge`` adds another part's sums: the statistics of
    a set split over processes, machines or runs equal those of one pass, up to float64 rounding.
    """

    count: int
    total: np.ndarray
    outer: np.ndarray
    meta: dict = field(default_factory=dict)

    @classmethod
    def empty(cls, dim: int, **meta: Any) -> FeatureStats:
        return cls(0, np.zeros(dim), np.zeros((dim, dim)), dict(meta))

    @property
    def dim(self) -> int:
        return self.total.shape[0]

    def add(self, features: np.ndarray) -> None:
        rows = check_features(features, self.dim)
        self.count += rows.shape[0]
        self.total += rows.sum(axis=0)
        self.outer += rows.T @ rows

    def merge(self, other: FeatureStats) -> FeatureStats:
        """These sums plus ``other``'s (same extractor and dimension), as a new object."""
        if other.dim != self.dim:
            raise DatasetMetricError(f"cannot merge {other.dim}-d statistics into {self.dim}-d ones")
        mismatched = {k for k in self.meta.keys() & other.meta.keys() if self.meta[k] != other.meta[k]}
        if mismatched:
            raise DatasetMetricError(f"cannot merge statistics computed differently: {sorted(mismatched)} differ")
        return FeatureStats(self.count + other.count, self.total + other.total, self.outer + other.outer, {**other.meta, **self.meta})

    def mean(self) -> np.ndarray:
        return self.total / self.count

    def covariance(self) -> np.ndarray:
        """The unbiased sample covariance (n − 1), as ``np.cov`` computes it."""
        if self.count < 2:
            raise DatasetMetricError(
                f"a set of {self.count} image{'s' * (self.count != 1)} has no covariance: FID needs at least 2 images per set "
                "(and a stable estimate needs thousands)"
            )
        mean = self.mean()
        return (self.outer - self.count * np.outer(mean, mean)) / (self.count - 1)

    def save(self, path: str | Path) -> None:
        """An ``.npz`` of plain arrays (read back without pickle) with a format name and version."""
        header = json.dumps(dict(format=STATS_FORMAT, version=STATS_VERSION, count=self.count, meta=self.meta))
        with open(path, "wb") as handle:
            np.savez(handle, header=np.array(header), total=self.total, outer=self.outer)

    @classmethod
    def load(cls, path: str | Path) -> FeatureStats:
        with np.load(path, allow_pickle=False) as data:
            header = json.loads(str(data["header"]))
            if header.get("format") != STATS_FORMAT or header.get("version") != STATS_VERSION:
                raise DatasetMetricError(f"{path}: not {STATS_FORMAT} version {STATS_VERSION} statistics")
            return cls(int(header["count"]), data["total"], data["outer"], header.get("meta", {}))


def check_features(features: np.ndarray, dim: int) -> np.ndarray:
    """(N, dim) finite features as float64; a NaN or infinite row is refused by its index."""
    rows = np.asarray(features, dtype=np.float64)
    if rows.ndim != 2 or rows.shape[1] != dim:
        raise DatasetMetricError(f"expected features of shape (N, {dim}), got {rows.shape}")
    bad = ~np.isfinite(rows).all(axis=1)
    if bad.any():
        raise DatasetMetricError(
            f"{int(bad.sum())} feature row(s) are not finite (first: row {int(np.argmax(bad))}); "
            "the extractor's weights or the images are broken"
        )
    return rows


class FeatureFile:
    """Features appended to a float32 file and read back memory-mapped (KID's subsets).

    Without ``path`` the file is temporary and deleted with the object."""

    def __init__(self, dim: int, path: str | Path | None = None):
        self.dim = dim
        self._temporary = None
        if path is None:
            self._temporary = tempfile.NamedTemporaryFile(prefix="loss-service-features-", suffix=".f32")
            path = self._temporary.name
        self.path = Path(path)
        self.count = self.path.stat().st_size // (4 * dim) if self.path.exists() and self._temporary is None else 0

    def append(self, features: np.ndarray) -> None:
        rows = check_features(features, self.dim).astype(FEATURE_DTYPE)
        with open(self.path, "ab") as handle:
            handle.write(rows.tobytes())
        self.count += rows.shape[0]

    def array(self) -> np.ndarray:
        """The features as a read-only (count, dim) memory map."""
        if self.count == 0:
            return np.zeros((0, self.dim), FEATURE_DTYPE)
        return np.memmap(self.path, FEATURE_DTYPE, mode="r", shape=(self.count, self.dim))


@dataclass
class SetFeatures:
    """One image set seen through the extractor: FID's sums, and for KID its stored features."""

    stats: FeatureStats
    stored: FeatureFile | None = None

    @classmethod
    def empty(cls, dim: int, keep_features: bool, path: str | Path | None = None, **meta: Any) -> SetFeatures:
        return cls(FeatureStats.empty(dim, **meta), FeatureFile(dim, path) if keep_features else None)

    def add(self, features: np.ndarray) -> None:
        self.stats.add(features)
        if self.stored is not None:
            self.stored.append(features)

    @property
    def count(self) -> int:
        return self.stats.count


# --- the distances ----------------------------------------------------------------------------


def trace_sqrt_product(sigma_a: np.ndarray, sigma_b: np.ndarray) -> float:
    """tr(√(Σa·Σb)) through two symmetric eigendecompositions: Σa·Σb is similar to
    √Σa·Σb·√Σa, which is symmetric positive semi-definite, so the trace is the sum of the square
    roots of its eigenvalues. Unlike a general matrix square root (scipy's ``sqrtm``, a Schur
    decomposition) it has no complex parts on the rank-deficient covariances of sets smaller
    than the feature size, and it is several times faster at 2048-d (BENCHMARKS.md).

    Eigenvalues below rounding level (dim · ε · the largest) are zero: a set of n < 2048 images
    has a covariance of rank n − 1, and the square roots of its ~2000 rounding-noise eigenvalues
    (~1e-15 each) would otherwise add ~1e-5 to the trace, differently for every summation order."""

    def clipped(values: np.ndarray) -> np.ndarray:
        return np.where(values > values.max() * values.size * np.finfo(values.dtype).eps, values, 0.0)

    values, vectors = np.linalg.eigh(sigma_a)
    root_a = (vectors * np.sqrt(clipped(values))) @ vectors.T
    inner = root_a @ sigma_b @ root_a
    return float(np.sqrt(clipped(np.linalg.eigvalsh((inner + inner.T) / 2))).sum())


def frechet_distance(a: FeatureStats, b: FeatureStats) -> float:
    """‖μa − μb‖² + tr(Σa) + tr(Σb) − 2·tr(√(Σa·Σb)): the Fréchet distance of the two Gaussians."""
    if a.dim != b.dim:
        raise DatasetMetricError(f"the sets' features differ in size ({a.dim} vs {b.dim})")
    sigma_a, sigma_b = a.covariance(), b.covariance()
    diff = a.mean() - b.mean()
    return float(diff @ diff + np.trace(sigma_a) + np.trace(sigma_b) - 2 * trace_sqrt_product(sigma_a, sigma_b))


def trace_sqrtm(sigma_a: np.ndarray, sigma_b: np.ndarray, eps: float = 1e-6) -> float:
    """tr(√(Σa·Σb)) by ``scipy.linalg.sqrtm`` of the product, as pytorch-fid's and clean-fid's
    ``frechet_distance``: where the root is not finite, ε = 1e-6 is added to both diagonals and it
    is taken again; an imaginary part over 1e-3 on the diagonal is an error, a smaller one dropped."""
    try:
        from scipy import linalg
    except ImportError:
        raise DatasetMetricError(
            "the clean-fid and pytorch-fid conventions take √ with SciPy, as those tools do: pip install scipy"
        ) from None
    root = linalg.sqrtm(sigma_a @ sigma_b)
    if not np.isfinite(root).all():
        offset = np.eye(sigma_a.shape[0]) * eps
        root = linalg.sqrtm((sigma_a + offset) @ (sigma_b + offset))
    if np.iscomplexobj(root):
        if not np.allclose(np.diagonal(root).imag, 0, atol=1e-3):
            raise DatasetMetricError(f"the matrix square root has an imaginary part of {np.abs(root.imag).max():.3g}")
        root = root.real
    return float(np.trace(root))


def polynomial_mmd2(x: np.ndarray, y: np.ndarray, degree: int, gamma: float | None, coef0: float) -> float:
    """Unbiased MMD² of two equal-size samples with k(u, v) = (γ·u·v + c)^d, γ = 1/dim by default
    (Bińkowski et al. 2018): the kernel means within each set leave the diagonal out."""
    m = x.shape[0]
    gamma = 1.0 / x.shape[1] if gamma is None else gamma

    def kernel(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        return (u @ v.T * gamma + coef0) ** degree

    k_xx, k_yy = kernel(x, x), kernel(y, y)
    within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(within - 2 * kernel(x, y).sum() / (m * m))


def kernel_inception_distance(a: np.ndarray, b: np.ndarray, options: Mapping[str, Any]) -> tuple[float, float]:
    """KID: mean and standard deviation of MMD² over ``subsets`` random subsets of
    ``subset_size`` images from each set, drawn without replacement with NumPy's
    ``RandomState(seed).choice`` (first from ``a``, then from ``b``, per subset), as torch-fidelity
    draws them. ``a`` and ``b`` may be memory maps: only the drawn rows are read."""
    size = options["subset_size"]
    if options.get("shrink_subsets") and min(a.shape[0], b.shape[0]) < size:
        size = min(a.shape[0], b.shape[0])  # clean-fid's and pyiqa's rule for small sets (seeded here)
    if size < 2:
        raise DatasetMetricError(f"KID subset_size must be at least 2, got {size}")
    for label, features in (("sr", a), ("gt", b)):
        if features.shape[0] < size:
            raise DatasetMetricError(
                f"the {label} set has {features.shape[0]} images, fewer than KID's subset_size {size}: "
                f'lower it (options {{"subset_size": {features.shape[0]}}}), shrink it as clean-fid does '
                f'(options {{"shrink_subsets": true}}) or score more images'
            )
    rng = np.random.RandomState(options["seed"])
    gamma = options["gamma"] or None
    values = np.empty(options["subsets"])
    for i in range(options["subsets"]):
        x = np.asarray(a[rng.choice(a.shape[0], size, replace=False)], dtype=np.float64)
        y = np.asarray(b[rng.choice(b.shape[0], size, replace=False)], dtype=np.float64)
        values[i] = polynomial_mmd2(x, y, options["degree"], gamma, options["coef0"])
    return float(values.mean()), float(values.std())


# --- the catalogue ----------------------------------------------------------------------------

Reduce = Callable[[SetFeatures, SetFeatures, Mapping[str, Any]], dict[str, float]]


def _fid(sr: SetFeatures, gt: SetFeatures, options: Mapping[str, Any]) -> dict[str, float]:
    convention = options.get("convention", DEFAULT_FEATURE_CONVENTION)
    if convention not in ROW_CONVENTIONS:
        return {"fid": frechet_distance(sr.stats, gt.stats)}
    if sr.stored is None or gt.stored is None:
        raise DatasetMetricError(f"FID in the {convention} convention needs the sets' feature rows, which were not kept")
    return {"fid": fid_of_rows(sr.stored.array(), gt.stored.array(), ROW_CONVENTIONS[convention])}


def fid_of_rows(a: np.ndarray, b: np.ndarray, dtype) -> float:
    """FID as pytorch-fid's and clean-fid's ``frechet_distance`` compute it from feature rows:
    ``np.mean`` in ``dtype`` (clean-fid keeps float32 rows, pytorch-fid float64), ``np.cov``,
    tr√ by scipy's ``sqrtm`` (``trace_sqrtm``)."""
    a, b = np.asarray(a, dtype=dtype), np.asarray(b, dtype=dtype)
    if a.shape[0] < 2 or b.shape[0] < 2:
        raise DatasetMetricError("a set of 1 image has no covariance: FID needs at least 2 images per set")
    mu_a, mu_b = np.mean(a, axis=0), np.mean(b, axis=0)
    sigma_a, sigma_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    diff = mu_a - mu_b
    return float(diff.dot(diff) + np.trace(sigma_a) + np.trace(sigma_b) - 2 * trace_sqrtm(sigma_a, sigma_b))


def _kid(sr: SetFeatures, gt: SetFeatures, options: Mapping[str, Any]) -> dict[str, float]:
    if sr.stored is None or gt.stored is None:
        raise DatasetMetricError("KID needs the sets' features, which were not kept (keep_features=False)")
    mean, std = kernel_inception_distance(sr.stored.array(), gt.stored.array(), options)
    return {"kid": mean, "kid.std": std}


@dataclass(frozen=True)
class DatasetMetric:
    """A metric of two image sets: the backbone layer whose features it reads, its options and
    its reduction of the two sets' ``SetFeatures`` to values (``name`` and ``name.component``)."""

    name: str
    reduce: Reduce
    lower_is_better: bool
    features: tuple[str, str]  # (backbone, layer) in the default convention
    keeps_features: bool  # whether it needs every feature vector (KID) or only the sums (FID)
    options: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""
    convention: str = ""

    def keeps(self, options: Mapping[str, Any]) -> bool:
        """Whether the metric needs every feature row with these options (KID; FID in the tools'
        conventions that take np.cov of the rows, whose bits sqrtm of a singular product depends on)."""
        return self.keeps_features or options.get("convention", DEFAULT_FEATURE_CONVENTION) in ROW_CONVENTIONS

    def extractor(self, options: Mapping[str, Any]) -> tuple[str, str]:
        """The (backbone, layer) whose features the metric reads with these options: the layer
        names the input handling of the chosen tool (``FEATURE_CONVENTIONS``)."""
        return self.features[0], FEATURE_CONVENTIONS[options.get("convention", DEFAULT_FEATURE_CONVENTION)]


INCEPTION_POOL3 = ("inception_v3_fid", "pool3")
# The tools whose FID/KID numbers a ``convention`` reproduces → the Inception "layer" whose input
# handling is that tool's (losses/nets/inception.py): the same network and pool3, resized and scaled as it does.
FEATURE_CONVENTIONS = {"torch-fidelity": "pool3", "clean-fid": "pool3_clean_fid", "pytorch-fid": "pool3_pytorch_fid"}
DEFAULT_FEATURE_CONVENTION = "torch-fidelity"
# The tools that compute FID from the feature rows with np.mean/np.cov and scipy's sqrtm: the
# (row dtype of the mean) each uses. On sets smaller than the feature size the product of the
# covariances is singular, sqrtm is ill-conditioned there, and only the same bits give their number.
ROW_CONVENTIONS = {"clean-fid": np.float32, "pytorch-fid": np.float64}
CONVENTION_NOTES = (
    "convention torch-fidelity (default; the TensorFlow reference's input handling): TF1 bilinear resize to 299 without "
    "antialiasing, (x − 128)/128; clean-fid ('clean' mode, pyiqa's default): 8-bit pixels, PIL bicubic antialiased "
    "resize per channel in float32, clipped, (x − 128)/128; pytorch-fid: PyTorch bilinear (align_corners=False), 2x − 1. "
    "FID's tr√(Σ1Σ2): exact eigenvalues for torch-fidelity, SciPy sqrtm (with its ε retry) for clean-fid and pytorch-fid"
)
DATASET_METRICS: dict[str, DatasetMetric] = {
    metric.name: metric
    for metric in (
        DatasetMetric(
            "fid",
            _fid,
            True,
            INCEPTION_POOL3,
            keeps_features=False,
            options=dict(convention=DEFAULT_FEATURE_CONVENTION),
            description="Fréchet Inception Distance between the sr set and the gt set (InceptionV3 pool3)",
            convention="TF 2015-12-05 InceptionV3 pool3; sample covariance (n − 1); tr√(Σ1Σ2) by symmetric eigendecomposition; "
            + CONVENTION_NOTES,
        ),
        DatasetMetric(
            "kid",
            _kid,
            True,
            INCEPTION_POOL3,
            keeps_features=True,
            options=dict(
                subsets=100,
                subset_size=1000,
                degree=3,
                gamma=0.0,
                coef0=1.0,
                seed=2020,
                shrink_subsets=False,
                convention=DEFAULT_FEATURE_CONVENTION,
            ),
            description="Kernel Inception Distance: unbiased MMD², cubic polynomial kernel, mean (and kid.std) over subsets",
            convention="torch-fidelity calculate_metrics(kid=True) defaults: 100 subsets of 1000, (x·y/2048 + 1)³, "
            "RandomState(2020); gamma 0 means 1/dim; a set smaller than subset_size is refused unless shrink_subsets "
            "(clean-fid's and pyiqa's rule: the subset shrinks to the smaller set, here seeded); " + CONVENTION_NOTES,
        ),
    )
}
