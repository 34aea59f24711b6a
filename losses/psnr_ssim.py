"""PSNR and SSIM in the SR-paper convention (BasicSR / MATLAB), plus a trainable SSIM loss.

Inputs are (B, C, H, W) tensors in [0, 1]. ``psnr``/``ssim`` compute on the [0, 255] scale in
float64 and return one value per image; ``SSIMLoss`` is float32 and differentiable.
"""

from __future__ import annotations

import torch
from torch import nn

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
    if x.dim() != 4:
        raise ValueError(f"expected a (B, C, H, W) tensor, got shape {tuple(x.shape)}")
    x = x.to(torch.float64)
    x = rgb_to_y(x) if y_channel else x * 255.0
    return crop(x, crop_border)


def _check_pair(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.shape != y.shape:
        raise ValueError(f"images differ in shape: {tuple(x.shape)} vs {tuple(y.shape)}")


def psnr(x: torch.Tensor, y: torch.Tensor, crop_border: int = 0, y_channel: bool = False) -> torch.Tensor:
    """Per-image PSNR in dB (float64, shape (B,)); +inf where the images are identical."""
    _check_pair(x, y)
    x, y = _to_255_scale(x, crop_border, y_channel), _to_255_scale(y, crop_border, y_channel)
    mse = (x - y).pow(2).mean(dim=(1, 2, 3))
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


def ssim_map(x: torch.Tensor, y: torch.Tensor, data_range: float) -> torch.Tensor:
    """The SSIM map per channel: separable Gaussian window, 'valid' filtering.

    The separable filter runs as two matrix products with banded matrices (rows × H, W × cols):
    the same sums as a grouped convolution, 2.5–6× faster on a CPU in float64 (BENCHMARKS.md).
    """
    height, width = x.shape[-2:]
    if min(height, width) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW}×{SSIM_WINDOW}, got {tuple(x.shape[-2:])}")
    window = gaussian_window(x.dtype, x.device)
    filter_h, filter_w_t = valid_filter_matrix(height, window), valid_filter_matrix(width, window).T

    def blur(t: torch.Tensor) -> torch.Tensor:
        return filter_h @ t @ filter_w_t

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_x, mu_y = blur(x), blur(y)
    sigma_x, sigma_y, sigma_xy = blur(x * x) - mu_x**2, blur(y * y) - mu_y**2, blur(x * y) - mu_x * mu_y
    return ((2 * mu_x * mu_y + c1) * (2 * sigma_xy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sigma_x + sigma_y + c2))


def ssim(x: torch.Tensor, y: torch.Tensor, crop_border: int = 0, y_channel: bool = False) -> torch.Tensor:
    """Per-image SSIM (float64, shape (B,)): mean of the map per channel, then over channels.

    On a CPU the images go one at a time, which keeps the float64 working set in cache
    (1.2–2.2× faster than the whole batch at batch 8–32; BENCHMARKS.md); a GPU takes the batch.
    """
    _check_pair(x, y)
    chunk = 1 if x.device.type == "cpu" else max(x.shape[0], 1)
    values = []
    for start in range(0, x.shape[0], chunk):
        xs = _to_255_scale(x[start : start + chunk], crop_border, y_channel)
        ys = _to_255_scale(y[start : start + chunk], crop_border, y_channel)
        values.append(ssim_map(xs, ys, data_range=255.0).mean(dim=(1, 2, 3)))
    return torch.cat(values)


class SSIMLoss(nn.Module):
    """1 − SSIM on [0, 1] tensors, float32 and differentiable (mean over the batch)."""

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check_pair(pred, target)
        value = ssim_map(pred.float(), target.float(), data_range=1.0).mean()
        return (1.0 - value).to(pred.dtype)
