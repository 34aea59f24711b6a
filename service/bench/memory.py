"""Memory: each metric's peak in a fresh process at two batch sizes, and the largest batch that
fits the 8 GiB of a Tesla P4."""

from __future__ import annotations

import numpy as np

from ..server.memory_calibration import GIB, measure_memory

P4_BUDGET_BYTES = 8 * GIB


def bench_memory(device, configs, log) -> tuple[list[dict], list[dict]]:
    rows = []
    for metric, size, batch in configs:
        row = measure_memory(metric, batch, size, str(device))
        rows.append(row)
        log(
            f"memory {metric} {size}² batch {batch}: peak RSS {row['peak_rss_gib']:.2f} GiB"
            + (f", CUDA peak {row['cuda_peak_gib']:.2f} GiB" if "cuda_peak_gib" in row else "")
        )
    return rows, fit_budget(rows)


def fit_budget(rows: list[dict]) -> list[dict]:
    """Largest batch per metric and size in an 8 GiB budget, from a linear fit of the growth
    between the measured batches (CUDA peak on a GPU; RSS growth on a CPU, an estimate)."""
    fits = []
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["metric"], row["size"]), []).append(row)
    for (metric, size), group in groups.items():
        if len(group) < 2:
            continue
        key = "cuda_peak_gib" if "cuda_peak_gib" in group[0] else "rss_growth_gib"
        xs = np.array([r["batch"] for r in group], float)
        ys = np.array([r[key] for r in group], float)
        slope, intercept = np.polyfit(xs, ys, 1)
        # Fixed cost: the weights plus the fitted intercept (both measured); the per-image slope scales with pixels.
        fixed = group[0].get("cuda_models_gib", group[0]["model_gib"]) + max(intercept, 0.0)
        per_image = max(slope, 1e-9)
        for target in (size, 1024):
            scale = (target / size) ** 2
            largest = int((P4_BUDGET_BYTES / GIB - fixed) // (per_image * scale))
            fits.append(
                dict(
                    metric=metric,
                    measured_size=size,
                    size=target,
                    per_image_gib=per_image * scale,
                    fixed_gib=fixed,
                    largest_batch_in_8gib=largest,
                    basis="measured CUDA peak" if key == "cuda_peak_gib" else "estimate from CPU RSS growth",
                    extrapolated_from_size=None if target == size else size,
                )
            )
    return fits
