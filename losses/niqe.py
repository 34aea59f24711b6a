"""NIQE (Mittal, Soundararajan and Bovik, "Making a 'Completely Blind' Image Quality Analyzer",
IEEE SPL 2013), as LIVE's MATLAB ``niqe_release`` computes it: no reference image, lower is better.

The image (MATLAB's Y of ``rgb2ycbcr``, or ``rgb2gray``, on the [0, 255] scale and rounded as a
uint8 result is) is cropped to whole 96×96 blocks. At two scales (the second one MATLAB's
bicubic ``imresize(0.5)``), each pixel is normalised by the local mean and deviation under a
7×7 Gaussian window (``(I − μ) / (σ + 1)``), and each block yields 18 features: an AGGD fit of
its coefficients and of their products with the 4 neighbours. The 36 features of all blocks are
fitted with a Gaussian, and NIQE is the distance between it and the pristine model:
√((μp − μ)ᵀ pinv((Σp + Σ)/2) (μp − μ)).

Every block's AGGD fit runs at once, as array operations over all blocks: the grid search for
the shape parameter is one (blocks × 9801) comparison, not a Python loop over blocks.
"""

from __future__ import annotations

import functools
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch
from scipy.ndimage import convolve
from scipy.special import gamma

from . import weights as W
from .models import MODELS
from .psnr_ssim import Y_OFFSET, Y_WEIGHTS
from .resize import imresize

BLOCK = 96
# The shape parameters the AGGD fit searches, and the ratio each implies (niqe_release's estimateaggdparam).
GAMMA_GRID = np.arange(0.2, 10.001, 0.001)
GAMMA_RATIO = gamma(2 / GAMMA_GRID) ** 2 / (gamma(1 / GAMMA_GRID) * gamma(3 / GAMMA_GRID))
# The four neighbours whose products with each coefficient the features describe (np.roll shifts).
SHIFTS = ((0, 1), (1, 0), (1, 1), (1, -1))
# MATLAB's rgb2gray weights; rgb2ycbcr's Y is ``psnr_ssim``'s Y_OFFSET + Y_WEIGHTS · RGB.
GRAY_WEIGHTS = (0.298936021293775, 0.587043074451121, 0.114020904255103)
EIGHT_BIT_SNAP = 1e-4  # at the 255 scale: float32's error on k/255 is below 2e-5

NIQE_PRISTINE = W.register_weights(
    W.WeightSpec(
        "niqe_pristine",
        ("niqe_pris_params.npz",),
        "https://github.com/XPixelGroup/BasicSR/raw/master/basicsr/metrics/niqe_pris_params.npz",
        sha256="2a7c182a68c9e7f1b2e2e5ec723279d6f65d912b6fcaf37eb2bf03d7367c4296",
        bundled=("losses", "data/niqe_pris_params.npz"),
        description="NIQE pristine model (μ 1×36, Σ 36×36) and its 7×7 window, LIVE niqe_release via BasicSR",
    )
)


def load_pristine(weights_dir=None) -> dict[str, np.ndarray]:
    """The pristine model: ``mu`` (36,), ``cov`` (36, 36) and ``window`` (7, 7), read without pickle
    and once per process (``MODELS``)."""

    def read() -> dict[str, np.ndarray]:
        path = W.resolve(NIQE_PRISTINE, weights_dir)
        with np.load(path, allow_pickle=False) as data:
            model = dict(mu=data["mu_pris_param"].reshape(-1), cov=data["cov_pris_param"], window=data["gaussian_window"])
        taps = model["window"].sum(axis=1)
        if (
            model["mu"].shape != (36,)
            or model["cov"].shape != (36, 36)
            or not np.allclose(np.outer(taps, taps), model["window"], rtol=0, atol=1e-12)
        ):
            raise W.WeightsError(f"{path}: not a NIQE model (μ 1×36, Σ 36×36 and a separable Gaussian window)")
        return model

    return MODELS.get(("niqe_pristine", W.explicit_dir(weights_dir)), read)


def check_blocks(size: tuple[int, int], crop_border: int) -> None:
    """NIQE fits a Gaussian to the blocks' features: it needs two whole 96×96 blocks after the crop."""
    height, width = (side - 2 * crop_border for side in size)
    if height < 0 or width < 0 or (height // BLOCK) * (width // BLOCK) < 2:
        raise ValueError(
            f"NIQE needs two whole {BLOCK}×{BLOCK} blocks (e.g. {2 * BLOCK}×{BLOCK}) after crop_border={crop_border}; "
            f"got {size[1]}×{size[0]}"
        )


def aggd_fit(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The AGGD parameters (α, β_left, β_right) of each row of ``samples`` (rows × n), by
    niqe_release's moment matching: the α on GAMMA_GRID whose ratio is nearest (the first on a tie).
    A row with no negative (or no positive) value gives NaN, as the MATLAB code does."""
    negative, positive = samples < 0, samples > 0
    squares = samples**2
    with np.errstate(invalid="ignore", divide="ignore"):
        left_std = np.sqrt((squares * negative).sum(axis=1) / negative.sum(axis=1))
        right_std = np.sqrt((squares * positive).sum(axis=1) / positive.sum(axis=1))
        gamma_hat = left_std / right_std
        r_hat = np.abs(samples).mean(axis=1) ** 2 / squares.mean(axis=1)
        r_hat_norm = r_hat * (gamma_hat**3 + 1) * (gamma_hat + 1) / (gamma_hat**2 + 1) ** 2
    distance = (GAMMA_RATIO[None, :] - r_hat_norm[:, None]) ** 2
    alpha = GAMMA_GRID[np.argmin(distance, axis=1)]  # a NaN row: argmin is 0, and β below is NaN
    spread = np.sqrt(gamma(1 / alpha) / gamma(3 / alpha))
    return alpha, left_std * spread, right_std * spread


def block_features(normalized: np.ndarray, block: int) -> np.ndarray:
    """The 18 features of every ``block``×``block`` block of ``normalized`` (blocks × 18)."""
    height, width = normalized.shape
    blocks = normalized.reshape(height // block, block, width // block, block).swapaxes(1, 2).reshape(-1, block, block)
    alpha, beta_left, beta_right = aggd_fit(blocks.reshape(len(blocks), -1))
    features = [alpha, (beta_left + beta_right) / 2]
    for shift in SHIFTS:
        products = blocks * np.roll(blocks, shift, axis=(1, 2))
        alpha, beta_left, beta_right = aggd_fit(products.reshape(len(blocks), -1))
        features += [alpha, (beta_right - beta_left) * gamma(2 / alpha) / gamma(1 / alpha), beta_left, beta_right]
    return np.stack(features, axis=1)


def gaussian_filter(image: np.ndarray, window: np.ndarray) -> np.ndarray:
    """MATLAB's ``imfilter(image, window, 'replicate')``, as one 2-D pass (as BasicSR runs it). Not
    as two 1-D passes of the separable window: in a flat region ``I − μ`` is rounding noise
    (~1e-13) whose signs decide that block's AGGD fit, so the summation order shows in NIQE
    (4e-4 on a 248² crop of scikit-image's astronaut)."""
    return convolve(image, window, mode="nearest")


@functools.lru_cache(maxsize=1)
def _filter_pool() -> ThreadPoolExecutor:
    """Two threads for the Gaussian filters: SciPy's ``correlate`` releases the GIL, so the four
    filters of an image (μ and E[x²] at two scales) run two at a time, the second scale's beside
    the first scale's block features. Their values do not depend on where they run."""
    return ThreadPoolExecutor(2, thread_name_prefix="niqe-filter")


def niqe_of_luma(luma: np.ndarray, pristine: dict[str, np.ndarray]) -> float:
    """NIQE of one H×W image on the [0, 255] scale (at least 96×96)."""
    height, width = (side // BLOCK * BLOCK for side in luma.shape)
    image = luma[:height, :width].astype(np.float64)
    pool = _filter_pool()

    def filters(scaled: np.ndarray) -> tuple[Future, Future]:
        return pool.submit(gaussian_filter, scaled, pristine["window"]), pool.submit(gaussian_filter, scaled**2, pristine["window"])

    filtered = [filters(image)]  # running while the image is resized for the second scale
    half = imresize(torch.from_numpy(image / 255.0), scale=0.5).numpy() * 255.0
    filtered.append(filters(half))
    per_scale = []
    for scaled, (mean, mean_square), block in zip((image, half), filtered, (BLOCK, BLOCK // 2)):
        mu = mean.result()
        sigma = np.sqrt(np.abs(mean_square.result() - mu**2))
        per_scale.append(block_features((scaled - mu) / (sigma + 1), block))
    features = np.concatenate(per_scale, axis=1)
    mu = np.nanmean(features, axis=0)
    cov = np.cov(features[~np.isnan(features).any(axis=1)], rowvar=False)
    difference = pristine["mu"] - mu
    return float(np.sqrt(difference @ np.linalg.pinv((pristine["cov"] + cov) / 2) @ difference))


def luma_255(x: torch.Tensor, gray: bool = False) -> np.ndarray:
    """(B, C, H, W) in [0, 1] → (B, H, W) float64 on [0, 255]: MATLAB's Y (``rgb2ycbcr``) or its
    ``rgb2gray`` for RGB, the channel itself for grey; rounded half away from zero, as MATLAB
    rounds a uint8 result, with the sum taken in MATLAB's order (a Y of exactly n + ½ from integer
    pixels rounds as it does there).

    An 8-bit value carried in float32 (k/255, off by up to ~1e-5 at the 255 scale) is read back as
    the integer k first: otherwise a Y that MATLAB computes as exactly n + 0.4999… or n + 0.5 from
    the uint8 image could round the other way."""
    values = x.detach().to(device="cpu", dtype=torch.float64).numpy() * 255.0
    nearest = np.rint(values)
    np.copyto(values, nearest, where=np.abs(values - nearest) < EIGHT_BIT_SNAP)
    if values.shape[1] == 1:
        luma = values[:, 0]
    else:  # imlincomb's order, as rgb2gray and rgb2ycbcr call it: K1·R + K2·G + K3·B (+ offset)
        weights, offset = (GRAY_WEIGHTS, 0.0) if gray else ([w / 255.0 for w in Y_WEIGHTS], Y_OFFSET)
        luma = weights[0] * values[:, 0] + weights[1] * values[:, 1] + weights[2] * values[:, 2] + offset
    return np.sign(luma) * np.floor(np.abs(luma) + 0.5)


def niqe(x: torch.Tensor, crop_border: int = 0, gray: bool = False, weights_dir=None) -> torch.Tensor:
    """Per-image NIQE (float64, shape (B,)) of (B, C, H, W) images in [0, 1]; lower is better.
    ``crop_border`` pixels are cropped from each edge first (BasicSR's ``calculate_niqe``)."""
    check_blocks(tuple(x.shape[-2:]), crop_border)
    pristine = load_pristine(weights_dir)
    lumas = luma_255(x, gray)
    if crop_border:
        lumas = lumas[:, crop_border:-crop_border, crop_border:-crop_border]
    return torch.tensor([niqe_of_luma(luma, pristine) for luma in lumas], dtype=torch.float64)
