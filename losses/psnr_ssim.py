"""PSNR and SSIM in the SR-paper convention (BasicSR / MATLAB), plus a trainable SSIM loss.

Inputs are (B, C, H, W) tensors in [0, 1]. ``psnr``/``ssim`` compute on the [0, 255] scale in
float64 and return one value per image; ``SSIMLoss`` is float32 and differentiable.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from losses.resize import imresize

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
# ITU-R BT.601 studio swing, as MATLAB's rgb2ycbcr (R, G, B in [0, 1]; Y in [16, 235]).
Y_OFFSET = 16.0
Y_WEIGHTS = (65.481, 128.553, 24.966)


def rgb_to_y(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB in [0, 1] → (B, 1, H, W) luma on the [0, 255] scale, unrounded."""
    weights = torch.tensor(Y_WEIGHTS, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return Y_OFFSET + (x * weights).sum(dim=1, keepdim=True)


def crop(x: torch.Tensor, border: int) -> torch.Tensor:
    return x[..., border:-border, border:-border] if border > 0 else x


def _to_255_scale(x: torch.Tensor, crop_border: int, y_channel: bool) -> torch.Tensor:
    """Apply the convention: float64, optional luma, then border crop; values on [0, 255]."""
    x = x.to(torch.float64)
    x = rgb_to_y(x) if y_channel else x * 255.0
    return crop(x, crop_border)


def check_image(x: torch.Tensor, name: str) -> None:
    """A (B, C, H, W) float tensor holding at least one image: anything else is a clear error
    here, not a wrong number (a uint8 tensor read as [0, 1] gives a PSNR of about −40 dB; a
    (C, H, W) one is C grayscale images) or an index error deep inside a metric."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{name}: expected a (B, C, H, W) tensor, got shape {tuple(x.shape)} (one image: x[None])")
    if not x.is_floating_point():
        raise ValueError(f"{name}: dtype {x.dtype}; images are floating-point in [0, 1] (for uint8 data: x / 255)")
    if x.shape[0] == 0:
        raise ValueError(f"{name}: the batch is empty (B = 0)")


def _check_pair(x: torch.Tensor, y: torch.Tensor) -> None:
    check_image(x, "x")
    check_image(y, "y")
    if x.shape != y.shape:
        raise ValueError(f"images differ in shape: {tuple(x.shape)} vs {tuple(y.shape)}")


def check_crop(size: tuple[int, int], crop_border: int, min_side: int, metric: str) -> None:
    """Refuse a ``crop_border`` that leaves less than ``min_side`` pixels on a side."""
    height, width = size
    largest = (min(height, width) - min_side) // 2
    if largest < 0:
        raise ValueError(f"{metric} needs images of at least {min_side}×{min_side}, got {width}×{height}")
    if crop_border > largest:
        raise ValueError(
            f"crop_border={crop_border} leaves {width - 2 * crop_border}×{height - 2 * crop_border} of a "
            f"{width}×{height} image; {metric} needs at least {min_side}×{min_side}, so the largest valid "
            f"crop_border is {largest}"
        )


def _on_host(*tensors: torch.Tensor) -> bool:
    """CPU tensors that need no gradient: the NumPy/SciPy paths apply (no autograd there)."""
    return all(t.device.type == "cpu" for t in tensors) and not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))


NUMPY_FLOATS = (torch.float16, torch.float32, torch.float64)
HOST_CHUNK = 1 << 16  # elements per NumPy pass: a 512 KiB float64 buffer, reused across chunks, stays in cache


def _sum_squared_difference(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image Σ(x − y)² in float64, (B,). The difference of two float32 values is exact in
    float64, so the inputs are never copied to float64 as a whole: on the host NumPy casts inside
    the subtraction, chunk by chunk into one small reused buffer, squares it in place and sums it
    (pairwise summation). No BLAS call: a threaded BLAS dot next to torch's OpenMP threads on a
    2-core machine measured 8 ms instead of 0.1 ms for a 128² image."""
    if _on_host(x, y) and x.dtype in NUMPY_FLOATS and y.dtype in NUMPY_FLOATS:  # not bfloat16: NumPy has none
        a, b = x.detach().flatten(1).numpy(), y.detach().flatten(1).numpy()
        buffer = np.empty(min(HOST_CHUNK, a.shape[1]))
        sums = np.zeros(a.shape[0])
        for i, (ai, bi) in enumerate(zip(a, b)):
            for start in range(0, ai.size, HOST_CHUNK):
                diff = np.subtract(
                    ai[start : start + HOST_CHUNK],
                    bi[start : start + HOST_CHUNK],
                    dtype=np.float64,
                    out=buffer[: min(HOST_CHUNK, ai.size - start)],
                )
                sums[i] += np.square(diff, out=diff).sum()
        return torch.from_numpy(sums)
    diff = (x.to(torch.float64) - y.to(torch.float64)).flatten(1)
    return torch.linalg.vecdot(diff, diff)


def psnr(x: torch.Tensor, y: torch.Tensor, crop_border: int = 0, y_channel: bool = False) -> torch.Tensor:
    """Per-image PSNR in dB (float64, shape (B,)); +inf where the images are identical."""
    _check_pair(x, y)
    check_crop(tuple(x.shape[-2:]), crop_border, 1, "PSNR")
    if y_channel:
        x, y = _to_255_scale(x, crop_border, True), _to_255_scale(y, crop_border, True)
        mse = _sum_squared_difference(x, y) / x[0].numel()
    else:
        x, y = crop(x, crop_border), crop(y, crop_border)
        mse = _sum_squared_difference(x, y) * (255.0**2 / x[0].numel())
    return 10.0 * torch.log10(255.0**2 / mse)


def gaussian_window(dtype: torch.dtype, device, size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    coords = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    window = torch.exp(-(coords**2) / (2 * sigma**2))
    return window / window.sum()


def valid_filter_matrix(n: int, window: torch.Tensor) -> torch.Tensor:
    """The (n − k + 1) × n banded matrix whose product with a signal is 'valid' filtering."""
    k = window.numel()
    rows = n - k + 1
    index = torch.arange(rows, device=window.device)[:, None] + torch.arange(k, device=window.device)[None, :]
    return torch.zeros(rows, n, dtype=window.dtype, device=window.device).scatter_(1, index, window.expand(rows, k))


def _check_window(x: torch.Tensor) -> None:
    check_crop(tuple(x.shape[-2:]), 0, SSIM_WINDOW, "SSIM")


def _ssim_terms(mu_x, mu_y, sum_sq, cross, data_range: float):
    """The SSIM map and the contrast-structure (cs) map from the four blurred moment maps:
    μx, μy, blur(x² + y²) and blur(xy). Only σx² + σy² enters SSIM, so x² and y² share a map."""
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_xy, mu_sq = mu_x * mu_y, mu_x * mu_x + mu_y * mu_y
    cs = (2 * (cross - mu_xy) + c2) / (sum_sq - mu_sq + c2)
    return (2 * mu_xy + c1) / (mu_sq + c1) * cs, cs


def ssim_map(x: torch.Tensor, y: torch.Tensor, data_range: float) -> torch.Tensor:
    """The SSIM map per channel (torch, differentiable): separable Gaussian window, 'valid' filtering.

    The separable filter runs as two products with banded matrices (rows × H, W × cols), which
    suits a GPU and autograd; the CPU metric path uses ``_ssim_means_cpu`` instead.
    """
    return _ssim_maps_torch(x, y, data_range)[0]


def _ssim_maps_torch(x: torch.Tensor, y: torch.Tensor, data_range: float):
    _check_window(x)
    height, width = x.shape[-2:]
    window = gaussian_window(x.dtype, x.device)
    filter_h, filter_w_t = valid_filter_matrix(height, window), valid_filter_matrix(width, window).T
    blur = lambda t: filter_h @ t @ filter_w_t  # noqa: E731
    return _ssim_terms(blur(x), blur(y), blur(x * x + y * y), blur(x * y), data_range)


def _ssim_means_cpu(x: np.ndarray, y: np.ndarray, data_range: float) -> tuple[np.ndarray, np.ndarray]:
    """Mean SSIM and mean cs per channel of (C, H, W) float64 arrays: 11-tap separable filtering
    with SciPy's ``correlate1d`` (O(window) work per pixel, whatever the CPU's BLAS), one channel
    at a time so the four moment maps stay in cache."""
    from scipy.ndimage import correlate1d

    window = gaussian_window(torch.float64, "cpu").numpy()
    half = SSIM_WINDOW // 2
    ssim_means, cs_means = [], []
    for xc, yc in zip(x, y):
        maps = np.stack((xc, yc, xc * xc + yc * yc, xc * yc))
        maps = correlate1d(maps, window, axis=-1, mode="constant")[..., half:-half]
        maps = correlate1d(maps, window, axis=-2, mode="constant")[..., half:-half, :]
        ssim_c, cs_c = _ssim_terms(*maps, data_range)
        ssim_means.append(ssim_c.mean())
        cs_means.append(cs_c.mean())
    return np.array(ssim_means), np.array(cs_means)


def ssim_cs(x: torch.Tensor, y: torch.Tensor, data_range: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image, per-channel means of the SSIM map and the cs map, each (B, C).

    On a CPU without autograd: SciPy, one image at a time. Otherwise (a GPU, or gradients
    wanted): the whole batch in torch. Both are the same sums; they agree to ~1e-15.
    """
    _check_window(x)
    if _on_host(x, y):
        pairs = [_ssim_means_cpu(xi.detach().contiguous().numpy(), yi.detach().contiguous().numpy(), data_range) for xi, yi in zip(x, y)]
        return tuple(torch.from_numpy(np.stack(values)) for values in zip(*pairs))
    ssim_full, cs_full = _ssim_maps_torch(x, y, data_range)
    return ssim_full.mean(dim=(2, 3)), cs_full.mean(dim=(2, 3))


def ssim(x: torch.Tensor, y: torch.Tensor, crop_border: int = 0, y_channel: bool = False) -> torch.Tensor:
    """Per-image SSIM (float64, shape (B,)): mean of the map per channel, then over channels."""
    _check_pair(x, y)
    check_crop(tuple(x.shape[-2:]), crop_border, SSIM_WINDOW, "SSIM")
    xs, ys = _to_255_scale(x, crop_border, y_channel), _to_255_scale(y, crop_border, y_channel)
    return ssim_cs(xs, ys, data_range=255.0)[0].mean(dim=1)


MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
# Each of the 5 scales keeps an 11×11 window: 11 · 2⁴ pixels on the short side.
MS_SSIM_MIN_SIDE = SSIM_WINDOW * 2 ** (len(MS_SSIM_WEIGHTS) - 1)


def matlab_downsample(x: torch.Tensor) -> torch.Tensor:
    """MATLAB ``msssim.m``'s step between scales: ``imfilter(x, ones(2)/4, 'symmetric', 'same')``
    (the 2×2 window anchored at its top-left, so an odd bottom row / right column is mirrored),
    then every second pixel from the first: output size ceil(H/2) × ceil(W/2)."""
    pad_h, pad_w = x.shape[-2] % 2, x.shape[-1] % 2
    if pad_h or pad_w:
        x = torch.nn.functional.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
    return torch.nn.functional.avg_pool2d(x, 2, 2)


def _power_of_positive_part(x: torch.Tensor, exponent: float) -> torch.Tensor:
    """max(x, 0)^exponent for 0 < exponent < 1, with a finite gradient everywhere: at 0 the power's
    derivative is inf, and inf · 0 (another factor of the product being 0) is NaN. NaN stays NaN
    (an image with a NaN pixel scores NaN, not the 0 of a negative value)."""
    positive = torch.where(x > 0, x.clamp_min(torch.finfo(x.dtype).tiny).pow(exponent), 0.0)
    return torch.where(x.isnan(), x, positive)


def ms_ssim(x: torch.Tensor, y: torch.Tensor, crop_border: int = 0, y_channel: bool = False) -> torch.Tensor:
    """Per-image MS-SSIM (float64, (B,)) in the convention of the original MATLAB ``msssim.m``:
    5 scales, each SSIM as ``ssim`` ([0, 255], Gaussian 11×11, σ = 1.5, valid);
    Π_{j<5} cs_j^{w_j} · ssim_5^{w_5} per channel, then the mean over channels. A negative cs or
    ssim has no real fractional power (MATLAB returns a complex number): it counts as 0, as in
    pytorch-msssim, piq, torchmetrics and TensorFlow, so unrelated images score ~0, not NaN."""
    _check_pair(x, y)
    check_crop(tuple(x.shape[-2:]), crop_border, MS_SSIM_MIN_SIDE, "MS-SSIM")
    xs, ys = _to_255_scale(x, crop_border, y_channel), _to_255_scale(y, crop_border, y_channel)
    value = 1.0
    for level, weight in enumerate(MS_SSIM_WEIGHTS):
        ssim_c, cs_c = ssim_cs(xs, ys, data_range=255.0)
        if level == len(MS_SSIM_WEIGHTS) - 1:
            value = value * _power_of_positive_part(ssim_c, weight)
        else:
            value = value * _power_of_positive_part(cs_c, weight)
            xs, ys = matlab_downsample(xs), matlab_downsample(ys)
    return value.mean(dim=1)


def lr_scale(sr_size: tuple[int, int], lr_size: tuple[int, int]) -> int:
    """The integer scale s with SR = s × LR in both dimensions, or a ValueError naming both sizes."""
    (sr_h, sr_w), (lr_h, lr_w) = sr_size, lr_size
    if lr_h and lr_w and sr_h % lr_h == 0 and sr_w % lr_w == 0 and sr_h // lr_h == sr_w // lr_w:
        return sr_h // lr_h
    raise ValueError(f"lr_psnr needs SR = s × LR for one integer s in both dimensions; got sr {sr_w}×{sr_h} and lr {lr_w}×{lr_h}")


def lr_psnr(
    sr: torch.Tensor, lr: torch.Tensor, crop_border: int = 0, y_channel: bool = False, uint8_rounding: bool = False
) -> torch.Tensor:
    """LR consistency (NTIRE 2022): PSNR between ``lr`` and ``sr`` downscaled by its integer
    scale with MATLAB's bicubic ``imresize`` (antialiased). Float64 on [0, 255]; ``crop_border``
    is in LR pixels. ``uint8_rounding`` scores as the challenge's scorer does with 8-bit PNGs:
    SR and LR read as 8-bit, and the downscale rounded to 8 bits after each pass (MATLAB's
    ``imresize`` of a uint8 image)."""
    check_image(sr, "sr")
    check_image(lr, "lr")
    scale = lr_scale(tuple(sr.shape[-2:]), tuple(lr.shape[-2:]))
    check_crop(tuple(lr.shape[-2:]), crop_border, 1, "lr_psnr")
    if not uint8_rounding:
        return psnr(imresize(sr, 1.0 / scale), lr, crop_border, y_channel)
    to_uint8 = lambda x: (x.to(torch.float64) * 255).clamp_(0, 255).round_().to(torch.uint8)  # noqa: E731
    down = imresize(to_uint8(sr), 1.0 / scale)
    return psnr(down.to(torch.float64) / 255, to_uint8(lr).to(torch.float64) / 255, crop_border, y_channel)


class SSIMLoss(nn.Module):
    """1 − SSIM on [0, 1] tensors, float32 and differentiable (mean over the batch). Autocast is
    off inside: its 16-bit filtering put 1 − SSIM ~6% off for SSIM near 0.985."""

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check_pair(pred, target)
        with torch.autocast(pred.device.type, enabled=False):
            value = ssim_map(pred.float(), target.float(), data_range=1.0).mean()
        return (1.0 - value).to(pred.dtype)
