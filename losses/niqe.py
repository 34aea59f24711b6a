"""NIQE (Mittal, Soundararajan and Bovik, "Making a 'Completely Blind' Image Quality Analyzer",
IEEE SPL 2013), as LIVE's MATLAB ``niqe_release`` computes it: no reference image, lower is better.

The image (MATLAB's Y of ``rgb2ycbcr``, or ``rgb2gray``, on the [0, 255] scale and rounded as a
uint8 result is) is cropped to whole 96×96 blocks. At two scales (the second one MATLAB's
bicubic ``imresize(0.5)``), each pixel is normalised by the local mean and deviation under a
7×7 Gaussian window (``(I − μ) / (σ + 1)``), and each block yields 18 features: an AGGD fit of
its coefficients and of their products with the 4 neighbours. The 36 features of all blocks are
fitted with a Gaussian, and NIQE is the distance between it and the pristine model:
√((μp − μ)ᵀ pinv((Σp + Σ)/2) (μp − μ)).

Two conventions (``convention`` option), because the tools papers use disagree:

- ``matlab`` (the default): LIVE's ``niqe_release`` as MATLAB runs it. Float64 throughout; the
  local statistics by ``imfilter``, which filters a separable window of 49 or more taps as two
  1-D passes (rows, then columns), 'replicate' edges; MATLAB's bicubic ``imresize``. The colour
  conversion is MATLAB's Y (``rgb2ycbcr``, as BasicSR's MATLAB check and PIRM's scripts) or, with
  ``gray``, ``rgb2gray`` as LIVE's ``computequality.m``. On BasicSR's baboon.png with Y it gives
  5.7295739, MATLAB's printed value being 5.72957338.
- ``basicsr``: BasicSR's ``calculate_niqe`` (basicsr/metrics/niqe.py) as its Python runs, float32
  almost throughout: the Y of ``bgr2ycbcr`` (or OpenCV's gray) cast to float32 and rounded half to
  even, SciPy's 2-D ``convolve`` on float32, per-block moments in float32, and BasicSR's float32
  ``imresize`` (a matrix-vector product per output row). Its numbers differ from MATLAB's by up
  to ~4e-3 relative on real photos, more on flat areas.

In the ``matlab`` convention every block's AGGD fit runs at once, as array operations over all
blocks: the grid search for the shape parameter is one (blocks × 9801) comparison, not a Python
loop over blocks. The ``basicsr`` convention loops over blocks as BasicSR does (its float32 sums
depend on the order).

**Flat areas.** Where a block is flat, ``I − μ`` is rounding noise (~1e-13) whose signs decide that
block's AGGD fit, so two correct implementations can differ by tenths. Coefficients below
``FLAT_NOISE`` are counted as noise; each image's ``flat_blocks`` (blocks where they are at
least ``FLAT_FRACTION``) and
``flat_spread`` (how far NIQE moves when those coefficients are taken as exact zeros instead)
come with the value, and a spread over ``FLAT_SPREAD_WARNING`` earns a warning.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.ndimage import convolve, correlate1d
from scipy.special import gamma

from losses.nets import weights as W
from losses.nets.models import MODELS
from losses.nets.weight_files import NIQE_PRISTINE
from losses.psnr_ssim import Y_OFFSET, Y_WEIGHTS
from losses.resize import imresize

BLOCK = 96
# The shape parameters the AGGD fit searches, and the ratio each implies (niqe_release's estimateaggdparam).
GAMMA_GRID = np.arange(0.2, 10.001, 0.001)
GAMMA_RATIO = gamma(2 / GAMMA_GRID) ** 2 / (gamma(1 / GAMMA_GRID) * gamma(3 / GAMMA_GRID))
# The four neighbours whose products with each coefficient the features describe (np.roll shifts).
SHIFTS = ((0, 1), (1, 0), (1, 1), (1, -1))
# MATLAB's rgb2gray weights; rgb2ycbcr's Y is ``psnr_ssim``'s Y_OFFSET + Y_WEIGHTS · RGB.
GRAY_WEIGHTS = (0.298936021293775, 0.587043074451121, 0.114020904255103)
EIGHT_BIT_SNAP = 1e-4  # at the 255 scale: float32's error on k/255 is below 2e-5
CONVENTIONS = ("matlab", "basicsr")
# |(I − μ)/(σ + 1)| below this is rounding noise: a textured block's coefficients are ~0.1–3, a
# flat one's ~1e-13 (float64) or ~1e-6 (float32, where μ of integers is off by a few ulps of 255).
FLAT_NOISE = {"matlab": 1e-9, "basicsr": 1e-4}
FLAT_SPREAD_WARNING = 1e-3
# A block is flat when at least this share of its coefficients is noise (a textured block has a few in 10⁴ near zero).
FLAT_FRACTION = 0.01
# Where the positive part's squares are at most this share of a row's, the AGGD fit sums them
# directly: as the whole's less the negative part's, they would keep only ~1e-16 / LOPSIDED of accuracy.
LOPSIDED = 1e-6
# The bytes of the rows a column pass takes at a time: a run that stays in the core's cache.
CACHE_ROWS_BYTES = 1 << 18


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
            or len(taps) % 2 == 0
            or not np.array_equal(taps, taps[::-1])
        ):
            raise W.WeightsError(f"{path}: not a NIQE model (μ 1×36, Σ 36×36 and a separable, symmetric Gaussian window of odd size)")
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


def aggd_fit(samples: np.ndarray, negative: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The AGGD parameters (α, β_left, β_right) of each row of ``samples`` (rows × n), by
    niqe_release's moment matching: the α on GAMMA_GRID whose ratio is nearest (the first on a tie).
    A row with no negative (or no positive) value gives NaN, as the MATLAB code does.

    The sums are row-wise dot products over the samples and their negative part only (written
    into ``negative``, the caller's rows × n buffer): the positive part's sums are the whole's
    less the negative's. Where that difference could lose digits (the positive squares under
    LOPSIDED of the whole) it is summed over the positive part instead, so every sum keeps ~1e-9
    relative accuracy or better, and a row with no positive value sums to exactly 0."""
    np.minimum(samples, 0.0, out=negative)
    squares, left_squares = np.einsum("ij,ij->i", samples, samples), np.einsum("ij,ij->i", negative, negative)
    right_squares = squares - left_squares
    lopsided = right_squares <= LOPSIDED * squares
    if lopsided.any():
        positive = np.maximum(samples[lopsided], 0.0)
        right_squares[lopsided] = np.einsum("ij,ij->i", positive, positive)
    left_count, right_count = row_counts(samples < 0), row_counts(samples > 0)
    ones = np.ones(samples.shape[1])
    absolute = samples @ ones - 2 * (negative @ ones)  # Σ|x| = Σx − 2·Σ(negative part): no cancellation to fear
    count = samples.shape[1]
    with np.errstate(invalid="ignore", divide="ignore"):
        left_std = np.sqrt(left_squares / left_count)
        right_std = np.sqrt(right_squares / right_count)
        gamma_hat = left_std / right_std
        r_hat = (absolute / count) ** 2 / (squares / count)
        r_hat_norm = r_hat * (gamma_hat**3 + 1) * (gamma_hat + 1) / (gamma_hat**2 + 1) ** 2
    alpha = GAMMA_GRID[nearest_ratio(r_hat_norm)]  # a NaN row: index 0, and β below is NaN
    spread = np.sqrt(gamma(1 / alpha) / gamma(3 / alpha))
    return alpha, left_std * spread, right_std * spread


def row_counts(mask: np.ndarray) -> np.ndarray:
    """The number of True values in each row of a 2-D mask: the rows packed to bits, and the set
    bits counted a 64-bit word at a time where a row fills whole words (a 96² or 48² block does).
    ``count_nonzero`` with an ``axis`` copies the mask to sum it, and row by row it costs a call
    per block."""
    packed = np.packbits(mask, axis=1)
    words = packed.view(np.uint64) if packed.shape[1] % 8 == 0 else packed
    return np.bitwise_count(words).sum(axis=1, dtype=np.int64)


def nearest_ratio(r: np.ndarray) -> np.ndarray:
    """For each r, the index of GAMMA_RATIO minimising (ratio − r)², the first on a tie, as
    ``argmin`` over the whole grid gives it: the ratios increase with α, so only the two grid
    points around r can be nearest. NaN gives 0, as ``argmin`` of all-NaN distances does."""
    above = np.searchsorted(GAMMA_RATIO, r).clip(1, len(GAMMA_RATIO) - 1)
    below = above - 1
    with np.errstate(invalid="ignore"):
        pick = np.where((GAMMA_RATIO[above] - r) ** 2 < (GAMMA_RATIO[below] - r) ** 2, above, below)
    return np.where(np.isnan(r), 0, pick)


def image_blocks(normalized: np.ndarray, block: int, column_major: bool = False) -> np.ndarray:
    """The whole ``block``×``block`` blocks of an image (blocks × block × block), row by row, or
    column by column as BasicSR's loop takes them."""
    height, width = normalized.shape
    grid = normalized.reshape(height // block, block, width // block, block)
    return np.ascontiguousarray(grid.transpose((2, 0, 1, 3) if column_major else (0, 2, 1, 3))).reshape(-1, block, block)


def block_features(blocks: np.ndarray) -> np.ndarray:
    """The 18 features of every block (blocks × 18), all blocks at once."""
    products, negative = np.empty_like(blocks), np.empty((len(blocks), blocks[0].size))  # reused by every fit
    alpha, beta_left, beta_right = aggd_fit(blocks.reshape(len(blocks), -1), negative)
    features = [alpha, (beta_left + beta_right) / 2]
    for shift in SHIFTS:
        neighbour_products(blocks, shift, products)
        alpha, beta_left, beta_right = aggd_fit(products.reshape(len(blocks), -1), negative)
        features += [alpha, (beta_right - beta_left) * gamma(2 / alpha) / gamma(1 / alpha), beta_left, beta_right]
    return np.stack(features, axis=1)


# Where np.roll by d along one axis reads each index from: (destination, source) slices, the wrap last.
ROLL_SLICES = {
    0: ((slice(None), slice(None)),),
    1: ((slice(1, None), slice(None, -1)), (slice(0, 1), slice(-1, None))),
    -1: ((slice(None, -1), slice(1, None)), (slice(-1, None), slice(0, 1))),
}


def neighbour_products(blocks: np.ndarray, shift: tuple[int, int], out: np.ndarray) -> None:
    """``blocks * np.roll(blocks, shift, axis=(1, 2))`` written into ``out``, the same products
    (each block wraps around at its own edges) without the rolled copy. Inside a block the
    neighbour is a fixed step back in the flattened block (``shift`` of one of SHIFTS: a positive
    step), so one contiguous product covers it; the wrapped first row and first or last column
    are then written over with their own products."""
    count, side, _ = blocks.shape
    step = shift[0] * side + shift[1]
    flat, flat_out = blocks.reshape(count, -1), out.reshape(count, -1)
    np.multiply(flat[:, step:], flat[:, :-step], out=flat_out[:, step:])
    inner_rows, *wrapped_rows = ROLL_SLICES[shift[0]]
    _, *wrapped_columns = ROLL_SLICES[shift[1]]
    wrapped = [(rows, columns) for rows in wrapped_rows for columns in ROLL_SLICES[shift[1]]]
    wrapped += [(inner_rows, columns) for columns in wrapped_columns]
    for (rows_to, rows_from), (cols_to, cols_from) in wrapped:
        np.multiply(blocks[:, rows_to, cols_to], blocks[:, rows_from, cols_from], out=out[:, rows_to, cols_to])


def gaussian_filter(image: np.ndarray, window: np.ndarray, out: np.ndarray, scratch: np.ndarray) -> np.ndarray:
    """MATLAB's ``imfilter(image, window, 'replicate')`` of the separable Gaussian window into
    ``out``: two 1-D passes, down the columns (into ``scratch``) then along the rows, in float64,
    as MATLAB runs it."""
    taps = window.sum(axis=1)  # the window is outer(taps, taps), taps summing to 1 (and symmetric: ``load_pristine``)
    correlate_columns(image, taps, scratch)
    return correlate1d(scratch, taps, axis=1, mode="nearest", output=out)


def correlate_columns(image: np.ndarray, taps: np.ndarray, out: np.ndarray) -> np.ndarray:
    """SciPy's ``correlate1d(image, taps, axis=0, mode="nearest")`` of a symmetric odd kernel into
    ``out``, bit for bit, in about half its time on a C-ordered image: SciPy reads each column
    with a stride, while this runs whole rows at a time, over runs of rows that stay in cache
    (``CACHE_ROWS_BYTES``). The sums are SciPy's, in its order (``correlate_rows``)."""
    half, height = len(taps) // 2, len(image)
    scratch = np.empty((max(half, CACHE_ROWS_BYTES // image[0].nbytes), image.shape[1]))  # the edges take `half` rows
    for start in range(half, height - half, len(scratch)):
        stop = min(start + len(scratch), height - half)
        correlate_rows(image[start - half : stop + half], taps, out[start:stop], scratch)
    # The first and last ``half`` rows, with the edge row repeated ('replicate', SciPy's "nearest").
    top, bottom = [0] * half + list(range(2 * half)), list(range(height - 2 * half, height)) + [height - 1] * half
    correlate_rows(image[top], taps, out[:half], scratch)
    correlate_rows(image[bottom], taps, out[height - half :], scratch)
    return out


def correlate_rows(source: np.ndarray, taps: np.ndarray, out: np.ndarray, scratch: np.ndarray) -> None:
    """``out[i] = Σ taps[k] · source[i + k]`` for a symmetric kernel, as SciPy's ``correlate1d``
    sums it: the centre tap's product, then, from the outermost pair in, ``+= (a + b) · tap``."""
    half, rows = len(taps) // 2, len(out)
    pair = scratch[:rows]
    np.multiply(source[half : half + rows], taps[half], out=out)
    for k in range(half, 0, -1):
        np.add(source[half - k : half - k + rows], source[half + k : half + k + rows], out=pair)
        pair *= taps[half + k]
        out += pair


def quality(features: np.ndarray, pristine: dict[str, np.ndarray]) -> float:
    """The distance between the blocks' feature Gaussian and the pristine one (NaN rows left out of
    the covariance, NaN values out of the mean). NaN where fewer than two blocks have no NaN
    feature (a constant image: no block has a negative coefficient), as no covariance exists there;
    MATLAB's ``pinv`` and NumPy's stop with an error instead."""
    complete = features[~np.isnan(features).any(axis=1)]
    if len(complete) < 2:
        return math.nan
    mu = np.nanmean(features, axis=0)
    cov = np.cov(complete, rowvar=False)
    difference = pristine["mu"] - mu
    return float(np.sqrt(difference @ np.linalg.pinv((pristine["cov"] + cov) / 2) @ difference))


def with_flat_spread(per_scale: list[tuple[np.ndarray, np.ndarray]], features_of, noise: float, pristine) -> tuple[float, int, float]:
    """NIQE from the blocks of normalised coefficients and their features (``features_of``) at two
    scales (the same grid of blocks, in the same order), the count of flat blocks (at least
    FLAT_FRACTION of their coefficients rounding noise), and how far NIQE moves when the noise in
    those blocks is taken as exact zeros (0.0 where no block is flat, NaN where NIQE itself is
    undefined: ``quality``). A block's features depend
    on that block alone, so only the flat blocks whose noise is not already exact zeros (as in a
    saturated area) are fitted again: zeroing changes nothing in the others."""
    per_scale, features = [blocks for blocks, _ in per_scale], [found for _, found in per_scale]
    value = quality(np.concatenate(features, axis=1), pristine)
    noisy = [np.abs(blocks) < noise for blocks in per_scale]
    flat = [row_counts(mask.reshape(len(mask), -1)) >= FLAT_FRACTION * mask[0].size for mask in noisy]
    count = int((flat[0] | flat[1]).sum())  # a block is counted once: flat at either scale (the same area, halved)
    if math.isnan(value):  # undefined (``quality``): nothing for the flat blocks to move
        return value, count, math.nan
    zeroed, moved = [], False
    for blocks, mask, found, found_features in zip(per_scale, noisy, flat, features):
        zeroed.append(found_features.copy())
        refit = found.copy()  # the flat blocks with noise that zeroing moves
        refit[found] = [np.any(block[noise_mask]) for block, noise_mask in zip(blocks[found], mask[found])]
        if refit.any():
            zeroed[-1][refit] = features_of(np.where(mask[refit], 0, blocks[refit]).astype(blocks.dtype))
            moved = True
    if not moved:
        return value, count, 0.0
    other = quality(np.concatenate(zeroed, axis=1), pristine)
    return value, count, abs(other - value) if np.isfinite(other) else float("inf")


def niqe_of_luma(luma: np.ndarray, pristine: dict[str, np.ndarray]) -> tuple[float, int, float]:
    """NIQE of one H×W image on the [0, 255] scale (at least 96×96), MATLAB's convention, with its
    flat-block count and spread (``with_flat_spread``)."""
    height, width = (side // BLOCK * BLOCK for side in luma.shape)
    image = luma[:height, :width].astype(np.float64)

    per_scale = []
    for scaled, block in ((image, BLOCK), (imresize(torch.from_numpy(image / 255.0), scale=0.5).numpy() * 255.0, BLOCK // 2)):
        blocks = image_blocks(normalized(scaled, pristine["window"]), block)
        per_scale.append((blocks, block_features(blocks)))
    return with_flat_spread(per_scale, block_features, FLAT_NOISE["matlab"], pristine)


def normalized(image: np.ndarray, window: np.ndarray) -> np.ndarray:
    """(I − μ) / (σ + 1) under the Gaussian window, σ = √|μ(I²) − μ²| (niqe_release's
    computefeature), computed in place where the arithmetic allows: the same values, fewer copies."""
    mu, sigma, scratch = (np.empty_like(image) for _ in range(3))
    gaussian_filter(image, window, mu, scratch)
    gaussian_filter(np.multiply(image, image, out=sigma), window, sigma, scratch)
    sigma -= np.multiply(mu, mu, out=scratch)
    np.sqrt(np.abs(sigma, out=sigma), out=sigma)
    sigma += 1
    np.subtract(image, mu, out=mu)
    return np.divide(mu, sigma, out=mu)


# --- BasicSR's float32 convention ----------------------------------------------------------------


def aggd_fit_float32(block: np.ndarray) -> tuple[float, float, float]:
    """BasicSR's ``estimate_aggd_param`` on one block: its moments in the block's dtype (float32),
    each over the selected coefficients only, as NumPy sums them."""
    block = block.reshape(-1)
    # NumPy's mean of no values is NaN, with a warning: NaN here without one (a flat block has no negative coefficient).
    left_std, right_std = (np.sqrt(np.mean(side**2)) if side.size else np.float32(np.nan) for side in (block[block < 0], block[block > 0]))
    gamma_hat = left_std / right_std
    r_hat = (np.mean(np.abs(block))) ** 2 / np.mean(block**2)
    r_hat_norm = (r_hat * (gamma_hat**3 + 1) * (gamma_hat + 1)) / ((gamma_hat**2 + 1) ** 2)
    alpha = GAMMA_GRID[np.argmin((GAMMA_RATIO - r_hat_norm) ** 2)]
    spread = np.sqrt(gamma(1 / alpha) / gamma(3 / alpha))
    return alpha, left_std * spread, right_std * spread


def block_features_float32(blocks: np.ndarray) -> np.ndarray:
    """BasicSR's ``compute_feature`` of each block, one block at a time as its loop does."""
    out = []
    with np.errstate(invalid="ignore", divide="ignore"):
        for patch in blocks:
            alpha, beta_left, beta_right = aggd_fit_float32(patch)
            features = [alpha, (beta_left + beta_right) / 2]
            for shift in SHIFTS:
                alpha, beta_left, beta_right = aggd_fit_float32(patch * np.roll(patch, shift, axis=(0, 1)))
                features += [alpha, (beta_right - beta_left) * (gamma(2 / alpha) / gamma(1 / alpha)), beta_left, beta_right]
            out.append(features)
    return np.array(out)


def imresize_half_float32(image: np.ndarray) -> np.ndarray:
    """BasicSR's ``imresize(img, 0.5)`` of an H×W float32 image: its float32 contributions (torch
    ``linspace`` coordinates, the antialiased cubic, rows normalised, edge columns dropped as it
    drops them), symmetric padding, then one float32 matrix-vector product per output row, then per
    output column, as its loops compute them."""
    x = torch.from_numpy(np.ascontiguousarray(image))
    for axis in (0, 1):
        weights, starts, before, after = _contributions_float32(x.shape[axis], math.ceil(x.shape[axis] * 0.5), 0.5)
        padded = torch.cat([x.narrow(axis, 0, before).flip(axis), x, x.narrow(axis, x.shape[axis] - after, after).flip(axis)], dim=axis)
        taps = weights.shape[1]
        if axis == 0:
            x = torch.stack([padded[i : i + taps, :].transpose(0, 1).mv(w) for i, w in zip(starts, weights)])
        else:
            x = torch.stack([padded[:, j : j + taps].mv(w) for j, w in zip(starts, weights)], dim=1)
    return x.numpy()


def _contributions_float32(in_length: int, out_length: int, scale: float) -> tuple[torch.Tensor, list[int], int, int]:
    """BasicSR's ``calculate_weights_indices`` (antialiased cubic) in float32: the weights, each
    output's first index into the padded input, and the padding before and after."""
    width = 4 / scale
    taps = math.ceil(width) + 2
    u = torch.linspace(1, out_length, out_length) / scale + 0.5 * (1 - 1 / scale)
    left = torch.floor(u - width / 2)
    indices = left.view(out_length, 1).expand(out_length, taps) + torch.linspace(0, taps - 1, taps).view(1, taps).expand(out_length, taps)
    ax = ((u.view(out_length, 1).expand(out_length, taps) - indices) * scale).abs()
    ax2, ax3 = ax**2, ax**3
    cubic = (1.5 * ax3 - 2.5 * ax2 + 1) * (ax <= 1).type_as(ax) + (-0.5 * ax3 + 2.5 * ax2 - 4 * ax + 2) * ((ax > 1) * (ax <= 2)).type_as(ax)
    weights = scale * cubic
    weights = weights / torch.sum(weights, 1).view(out_length, 1).expand(out_length, taps)
    zeros = torch.sum(weights == 0, 0)
    if zeros[0] != 0:  # as BasicSR: drops the first and the last column
        indices, weights = indices.narrow(1, 1, taps - 2), weights.narrow(1, 1, taps - 2)
    if zeros[-1] != 0:
        indices, weights = indices.narrow(1, 0, taps - 2), weights.narrow(1, 0, taps - 2)
    before, after = int(-indices.min() + 1), int(indices.max() - in_length)
    return weights.contiguous(), [int(i) for i in indices[:, 0] + before - 1], before, after


def luma_basicsr(x: torch.Tensor, gray: bool) -> np.ndarray:
    """(B, C, H, W) in [0, 1] → (B, H, W) float32 on [0, 255] as BasicSR's ``calculate_niqe``
    converts an 8-bit image: ``to_y_channel`` (``bgr2ycbcr``, float32) or OpenCV's gray, then
    ``round()`` (half to even)."""
    import cv2

    values = snap_to_eight_bits(x.detach().cpu().numpy())
    out = []
    for image in values.astype(np.float32).transpose(0, 2, 3, 1):
        bgr = np.ascontiguousarray(image[..., ::-1])  # as cv2.imread gives it: OpenCV's sums run in that order
        if image.shape[-1] == 1:
            luma = image[..., 0]
        elif gray:
            luma = cv2.cvtColor(bgr / 255.0, cv2.COLOR_BGR2GRAY) * 255.0
        else:
            luma = ((np.dot(bgr / 255.0, [24.966, 128.553, 65.481]) + 16.0) / 255.0).astype(np.float32) * 255.0
        out.append(np.asarray(luma, dtype=np.float32).round())
    return np.stack(out)


def niqe_of_luma_basicsr(luma: np.ndarray, pristine: dict[str, np.ndarray]) -> tuple[float, int, float]:
    """NIQE of one float32 H×W image on [0, 255] as BasicSR's ``niqe`` computes it, with the flat-block count and spread."""
    height, width = (side // BLOCK * BLOCK for side in luma.shape)
    image = luma[:height, :width]
    per_scale = []
    for block in (BLOCK, BLOCK // 2):
        mu = convolve(image, pristine["window"], mode="nearest")
        sigma = np.sqrt(np.abs(convolve(np.square(image), pristine["window"], mode="nearest") - np.square(mu)))
        blocks = image_blocks((image - mu) / (sigma + 1), block, column_major=True)  # BasicSR's loop order
        per_scale.append((blocks, block_features_float32(blocks)))
        if block == BLOCK:
            image = imresize_half_float32(image / 255.0) * 255.0
    return with_flat_spread(per_scale, block_features_float32, FLAT_NOISE["basicsr"], pristine)


def luma_255(x: torch.Tensor, gray: bool) -> np.ndarray:
    """(B, C, H, W) in [0, 1] → (B, H, W) float64 on [0, 255]: MATLAB's Y (``rgb2ycbcr``) or its
    ``rgb2gray`` for RGB, the channel itself for grey; rounded half away from zero, as MATLAB
    rounds a uint8 result, with the sum taken in MATLAB's order (a Y of exactly n + ½ from integer
    pixels rounds as it does there).

    An 8-bit value carried in float32 (k/255, off by up to ~1e-5 at the 255 scale) is read back as
    the integer k first: otherwise a Y that MATLAB computes as exactly n + 0.4999… or n + 0.5 from
    the uint8 image could round the other way."""
    values = snap_to_eight_bits(x.detach().cpu().numpy())
    if values.shape[1] == 1:
        luma = values[:, 0].astype(np.float64)
    else:  # imlincomb's order, as rgb2gray and rgb2ycbcr call it: K1·R + K2·G + K3·B (+ offset), in place, in float64
        weights, offset = (GRAY_WEIGHTS, 0.0) if gray else ([w / 255.0 for w in Y_WEIGHTS], Y_OFFSET)
        luma = np.multiply(weights[0], values[:, 0], dtype=np.float64)
        term = np.empty_like(luma)
        for weight, channel in zip(weights[1:], (values[:, 1], values[:, 2])):
            luma += np.multiply(weight, channel, out=term, dtype=np.float64)
        luma += offset
    if luma.min(initial=0.0) >= 0:  # pixels in [0, 1]: half away from zero is half up
        luma += 0.5
        return np.floor(luma, out=luma)
    rounded = np.abs(luma)
    rounded += 0.5
    return np.copysign(np.floor(rounded, out=rounded), luma, out=rounded)


def snap_to_eight_bits(pixels: np.ndarray) -> np.ndarray:
    """Pixels in [0, 1] on the 255 scale: a value within EIGHT_BIT_SNAP of an integer as that
    integer, the others as they are; float32 integers (exact) where the whole image came from 8
    bits, float64 otherwise. An image that came from 8 bits is recognised in float32
    and taken whole: where every float32 product is within half the snap of an integer (its
    rounding adds under 1e-5), the exact float64 products are within the snap of the same integers."""
    if pixels.dtype == np.float32:
        scaled = pixels * np.float32(255.0)
        nearest = np.rint(scaled)
        np.subtract(scaled, nearest, out=scaled)
        if max(scaled.max(initial=0.0), -scaled.min(initial=0.0)) < EIGHT_BIT_SNAP / 2:
            return nearest
    values = pixels.astype(np.float64) * 255.0
    nearest = np.rint(values)
    distance = np.abs(values - nearest)
    if distance.max(initial=0.0) < EIGHT_BIT_SNAP:
        return nearest
    return np.where(distance < EIGHT_BIT_SNAP, nearest, values)


def niqe(
    x: torch.Tensor, crop_border: int = 0, gray: bool = False, convention: str = "matlab", weights_dir=None
) -> dict[str, torch.Tensor]:
    """Per-image NIQE (float64, shape (B,)) of (B, C, H, W) images in [0, 1]; lower is better.
    ``crop_border`` pixels are cropped from each edge first (BasicSR's ``calculate_niqe``).
    Returns ``total`` (NIQE), ``flat_blocks`` and ``flat_spread`` (see the module's docstring), all
    NaN for an image with a NaN or infinite pixel."""
    if convention not in CONVENTIONS:
        raise ValueError(f"NIQE convention must be one of {CONVENTIONS}, got {convention!r}")
    check_blocks(tuple(x.shape[-2:]), crop_border)
    pristine = load_pristine(weights_dir)
    # The crop, then the whole blocks from the top left: only those pixels are converted.
    height, width = ((side - 2 * crop_border) // BLOCK * BLOCK for side in x.shape[-2:])
    x = x[..., crop_border : crop_border + height, crop_border : crop_border + width]
    with np.errstate(invalid="ignore"):  # an infinite pixel's distance to the nearest integer is NaN
        lumas = (luma_basicsr if convention == "basicsr" else luma_255)(x, gray)
    score = niqe_of_luma_basicsr if convention == "basicsr" else niqe_of_luma
    # An image with a NaN or infinite pixel (a diverged model's output) scores NaN, as every other metric gives it.
    finite = np.isfinite(lumas.reshape(len(lumas), -1)).all(axis=1)
    values = [score(luma, pristine) if ok else (math.nan,) * 3 for luma, ok in zip(lumas, finite)]
    values = np.array(values, dtype=np.float64).reshape(-1, 3)
    return dict(
        total=torch.from_numpy(values[:, 0].copy()),
        flat_blocks=torch.from_numpy(values[:, 1].copy()),
        flat_spread=torch.from_numpy(values[:, 2].copy()),
    )


def flat_warning(values: dict[str, float]) -> str | None:
    """The warning for one image's NIQE whose flat blocks can move it by more than FLAT_SPREAD_WARNING,
    or that is undefined because its blocks are flat (``quality``)."""
    if math.isnan(values.get("niqe", 0.0)) and math.isfinite(values.get("niqe.flat_blocks", math.nan)):
        return (
            f"niqe: undefined for this image: fewer than two of its {BLOCK}×{BLOCK} blocks have features (a block of one "
            f"value has no negative coefficient to fit), as in a constant image; {int(values['niqe.flat_blocks'])} flat block(s)"
        )
    spread = values.get("niqe.flat_spread") or 0.0
    if not spread > FLAT_SPREAD_WARNING:  # NaN (an image with non-finite pixels) included
        return None
    return (
        f"niqe: {int(values['niqe.flat_blocks'])} flat block(s), where the normalised coefficients are rounding noise, "
        f"can move NIQE by {spread:.3g}: implementations that differ only in rounding may disagree by that much"
    )
