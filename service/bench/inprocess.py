"""In-process throughput: ``losses.score`` on batches of synthetic images, per metric, size and batch."""

from __future__ import annotations

import statistics
import time

from ..server.memory_calibration import score_batch, synthetic_images
from .machine import sync_device

INPROCESS_METRICS = (
    "psnr",
    "ssim",
    "ms_ssim",
    "lr_psnr",
    "perceptual",
    "lpips_vgg",
    "lpips_alex",
    "dists",
    "clp_vgg19",
    "clp_dinov2",
    "clipiqa",
)


def time_compute(metric: str, batch: int, size: int, device, repeats: int) -> float:
    """Median seconds of ``repeats`` batched scoring calls, after a batch-1 warm-up at that size."""
    import torch

    times = []
    with torch.inference_mode():
        score_batch(metric, synthetic_images(1, size, device))
        images = synthetic_images(batch, size, device)
        for _ in range(repeats):
            sync_device(device)
            start = time.perf_counter()
            score_batch(metric, images)
            sync_device(device)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


# On a CPU, larger configurations than this (batch × images per triplet × pixels) exceed the
# 24 GB of the machine the benchmark was written on; CLP holds every layer of three images.
CPU_MAX_PIXELS_PER_BATCH = 32 * 2 * 512 * 512


def unsupported_size(metric: str, size: int) -> str | None:
    """Why ``metric`` cannot score size×size images (e.g. MS-SSIM below 176²), or None."""
    from losses import registry

    return registry.size_problem(registry.REGISTRY[metric], size)


def images_per_item(metric: str) -> int:
    from losses import registry

    return len(registry.REGISTRY[metric].needs)


def bench_inprocess(device, sizes, batches, metrics, repeats, log) -> list[dict]:
    rows = []
    for metric in metrics:
        for size in sizes:
            for batch in batches:
                if (reason := unsupported_size(metric, size)) is not None:
                    rows.append(dict(metric=metric, size=size, batch=batch, seconds=None, images_per_s=None, skipped=reason))
                    continue
                if device.type == "cpu" and batch * images_per_item(metric) * size * size > CPU_MAX_PIXELS_PER_BATCH:
                    rows.append(
                        dict(
                            metric=metric,
                            size=size,
                            batch=batch,
                            seconds=None,
                            images_per_s=None,
                            skipped=f"over {CPU_MAX_PIXELS_PER_BATCH} pixels per batch on a CPU (RAM)",
                        )
                    )
                    log(f"in-process {metric} {size}² batch {batch}: skipped (RAM)")
                    continue
                seconds = time_compute(metric, batch, size, device, repeats)
                rows.append(dict(metric=metric, size=size, batch=batch, seconds=seconds, images_per_s=batch / seconds))
                log(f"in-process {metric} {size}² batch {batch}: {batch / seconds:.2f} img/s")
    return rows
