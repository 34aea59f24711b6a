"""SSIM, PSNR and MS-SSIM against peer libraries set to the same convention: speed and distance
from a reference implementation, on real photos."""

from __future__ import annotations

import statistics
import time

import numpy as np

from .inprocess import unsupported_size

MIN_TIMED_S = 0.5  # each peer timing runs at least this long (--quick: QUICK_TIMED_S)
QUICK_TIMED_S = 0.05


def _real_photos(size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    from scipy.ndimage import gaussian_filter
    from skimage import data
    from skimage.transform import resize

    photos = []
    for index, image in enumerate((data.astronaut(), data.coffee(), data.chelsea())):
        if image.shape[:2] != (size, size):
            image = (resize(image, (size, size), anti_aliasing=True) * 255).round().astype(np.uint8)
        rng = np.random.default_rng(index)
        degraded = np.clip(gaussian_filter(image.astype(float), (1, 1, 0)) + rng.normal(0, 5, image.shape), 0, 255).round().astype(np.uint8)
        photos.append((degraded, image))
    return photos


def bench_peers(size: int, repeats: int, log, min_timed_s: float = MIN_TIMED_S) -> list[dict]:
    """SSIM/PSNR/MS-SSIM of ours and of peers set to the same convention, each against a reference:
    scikit-image for SSIM and PSNR, pytorch-msssim for MS-SSIM (at sizes divisible by 32 its
    avg-pool downsampling equals MATLAB's). Each implementation gets its natural input, made
    outside the timed region: float64 H×W×C on [0, 255] for scikit-image, contiguous float64
    (1, C, H, W) on [0, 1] for loss-service, the same on [0, 255] for the torch peers."""
    import piq
    import torch
    from pytorch_msssim import ms_ssim as pm_ms_ssim
    from pytorch_msssim import ssim as pm_ssim
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity
    from torchmetrics.functional.image import multiscale_structural_similarity_index_measure as tm_ms_ssim
    from torchmetrics.functional.image import peak_signal_noise_ratio as tm_psnr
    from torchmetrics.functional.image import structural_similarity_index_measure as tm_ssim

    from losses import ms_ssim, psnr, ssim

    photos = _real_photos(size)
    numpy255 = lambda a: a.astype(np.float64)  # noqa: E731
    unit = lambda a: (torch.from_numpy(a).permute(2, 0, 1)[None].double() / 255).contiguous()  # noqa: E731
    scaled = lambda a: torch.from_numpy(a).permute(2, 0, 1)[None].double().contiguous()  # noqa: E731
    sk_ssim = lambda sr, gt: structural_similarity(
        gt,
        sr,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,  # noqa: E731
        data_range=255,
        channel_axis=-1,
    )
    pm_msssim = lambda sr, gt: pm_ms_ssim(sr, gt, data_range=255, win_size=11, win_sigma=1.5).item()  # noqa: E731
    candidates = {  # (metric, implementation): (input maker, function)
        ("ssim", "loss-service"): (unit, lambda sr, gt: ssim(sr, gt).item()),
        ("ssim", "scikit-image"): (numpy255, sk_ssim),
        ("ssim", "torchmetrics"): (
            scaled,
            lambda sr, gt: tm_ssim(sr, gt, gaussian_kernel=True, sigma=1.5, kernel_size=11, data_range=255.0).item(),
        ),
        ("ssim", "pytorch-msssim"): (scaled, lambda sr, gt: pm_ssim(sr, gt, data_range=255, win_size=11, win_sigma=1.5).item()),
        ("psnr", "loss-service"): (unit, lambda sr, gt: psnr(sr, gt).item()),
        ("psnr", "scikit-image"): (numpy255, lambda sr, gt: peak_signal_noise_ratio(gt, sr, data_range=255)),
        ("psnr", "torchmetrics"): (scaled, lambda sr, gt: tm_psnr(sr, gt, data_range=255.0).item()),
        ("ms_ssim", "loss-service"): (unit, lambda sr, gt: ms_ssim(sr, gt).item()),
        ("ms_ssim", "pytorch-msssim"): (scaled, pm_msssim),
        ("ms_ssim", "piq"): (
            scaled,
            lambda sr, gt: piq.multi_scale_ssim(sr, gt, data_range=255.0, kernel_size=11, kernel_sigma=1.5).item(),
        ),
        ("ms_ssim", "torchmetrics"): (
            scaled,
            lambda sr, gt: tm_ms_ssim(sr, gt, gaussian_kernel=True, sigma=1.5, kernel_size=11, data_range=255.0, normalize=None).item(),
        ),
    }
    references = {
        "ssim": ("scikit-image", numpy255, sk_ssim),
        "psnr": ("scikit-image", numpy255, lambda sr, gt: peak_signal_noise_ratio(gt, sr, data_range=255)),
        "ms_ssim": ("pytorch-msssim", scaled, pm_msssim),
    }
    expected = {
        metric: [fn(make(sr), make(gt)) for sr, gt in photos]
        for metric, (_, make, fn) in references.items()
        if unsupported_size(metric, size) is None
    }
    rows = []
    for (metric, peer), (make, fn) in candidates.items():
        if unsupported_size(metric, size) is not None:
            continue
        values, times = [], []
        for sr, gt in photos:
            sr_in, gt_in = make(sr), make(gt)
            fn(sr_in, gt_in)  # warm-up
            calls, start = 0, time.perf_counter()
            while calls < repeats or time.perf_counter() - start < min_timed_s:  # sub-ms calls: many of them
                value = fn(sr_in, gt_in)
                calls += 1
            times.append((time.perf_counter() - start) / calls)
            values.append(value)
        delta = max(abs(v - r) for v, r in zip(values, expected[metric]))
        rows.append(
            dict(
                metric=metric,
                peer=peer,
                ms_per_image=1e3 * statistics.mean(times),
                reference=references[metric][0],
                max_abs_delta_vs_reference=delta,
            )
        )
        log(f"{metric} {peer}: {1e3 * statistics.mean(times):.2f} ms/img, max|Δ| vs {references[metric][0]} {delta:.2e}")
    return rows
