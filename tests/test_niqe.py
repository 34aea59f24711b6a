"""NIQE in its two conventions against transcriptions written out here as their sources run:

- ``matlab``: LIVE's ``niqe_release`` (``niqe.m``, ``computefeature.m``, ``estimateaggdparam.m``)
  as MATLAB computes it, in float64: ``rgb2ycbcr``'s Y or ``rgb2gray``, rounded as a uint8 result;
  ``imfilter(..., 'replicate')`` of the separable window as two 1-D passes (SciPy's ``correlate1d``
  stands in for each pass); a Python loop over blocks; MATLAB's ``imresize``. Held to MATLAB's
  printed 5.72957338 on BasicSR's baboon.png.
- ``basicsr``: BasicSR's ``basicsr/metrics/niqe.py`` and ``matlab_functions.imresize`` as its
  Python runs them, float32 almost throughout.

Real photos, including ones with flat areas (text on a plain page, a sky, a dark studio
background, a black block); ≤ 1e-6 relative.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from scipy.ndimage import convolve, correlate1d
from scipy.special import gamma

import losses
from losses import niqe as niqe_module
from losses.psnr_ssim import Y_OFFSET, Y_WEIGHTS
from losses.registry import MetricError

from .conftest import degrade, to_tensor

BABOON = Path(__file__).parent / "data" / "baboon.png"
MATLAB_BABOON = 5.72957338  # MATLAB's niqe on baboon.png (Y), as BasicSR records it

# --- the transcriptions -------------------------------------------------------------------------


def estimate_aggd_param(block: np.ndarray) -> tuple[float, float, float]:
    """estimateaggdparam.m (and BasicSR's port): in the block's own dtype."""
    block = block.flatten()
    gam = np.arange(0.2, 10.001, 0.001)
    r_gam = np.square(gamma(2 / gam)) / (gamma(1 / gam) * gamma(3 / gam))
    left_std = np.sqrt(np.mean(block[block < 0] ** 2))
    right_std = np.sqrt(np.mean(block[block > 0] ** 2))
    gammahat = left_std / right_std
    rhat = (np.mean(np.abs(block))) ** 2 / np.mean(block**2)
    rhatnorm = (rhat * (gammahat**3 + 1) * (gammahat + 1)) / ((gammahat**2 + 1) ** 2)
    alpha = gam[np.argmin((r_gam - rhatnorm) ** 2)]
    beta_l = left_std * np.sqrt(gamma(1 / alpha) / gamma(3 / alpha))
    beta_r = right_std * np.sqrt(gamma(1 / alpha) / gamma(3 / alpha))
    return alpha, beta_l, beta_r


def compute_feature(block: np.ndarray) -> list[float]:
    alpha, beta_l, beta_r = estimate_aggd_param(block)
    feat = [alpha, (beta_l + beta_r) / 2]
    for shift in ([0, 1], [1, 0], [1, 1], [1, -1]):
        alpha, beta_l, beta_r = estimate_aggd_param(block * np.roll(block, shift, axis=(0, 1)))
        feat.extend([alpha, (beta_r - beta_l) * (gamma(2 / alpha) / gamma(1 / alpha)), beta_l, beta_r])
    return feat


def imfilter_separable(img: np.ndarray, window: np.ndarray) -> np.ndarray:
    """imfilter(img, window, 'replicate') for a separable window: down the columns, then along the rows."""
    taps = window.sum(axis=1)
    return correlate1d(correlate1d(img, taps, axis=0, mode="nearest"), taps, axis=1, mode="nearest")


def basicsr_weights_indices(in_length: int, out_length: int, scale: float):
    """BasicSR's calculate_weights_indices (cubic, antialiasing) in torch float32."""
    kernel_width = 4 / scale
    x = torch.linspace(1, out_length, out_length)
    u = x / scale + 0.5 * (1 - 1 / scale)
    left = torch.floor(u - kernel_width / 2)
    p = math.ceil(kernel_width) + 2
    indices = left.view(out_length, 1).expand(out_length, p) + torch.linspace(0, p - 1, p).view(1, p).expand(out_length, p)
    distance_to_center = u.view(out_length, 1).expand(out_length, p) - indices
    absx = torch.abs(distance_to_center * scale)
    cubic = (1.5 * absx**3 - 2.5 * absx**2 + 1) * ((absx <= 1).type_as(absx)) + (-0.5 * absx**3 + 2.5 * absx**2 - 4 * absx + 2) * (
        ((absx > 1) * (absx <= 2)).type_as(absx)
    )
    weights = scale * cubic
    weights = weights / torch.sum(weights, 1).view(out_length, 1).expand(out_length, p)
    weights_zero_tmp = torch.sum((weights == 0), 0)
    if not math.isclose(weights_zero_tmp[0], 0, rel_tol=1e-6):
        indices, weights = indices.narrow(1, 1, p - 2), weights.narrow(1, 1, p - 2)
    if not math.isclose(weights_zero_tmp[-1], 0, rel_tol=1e-6):
        indices, weights = indices.narrow(1, 0, p - 2), weights.narrow(1, 0, p - 2)
    sym_len_s = -indices.min() + 1
    sym_len_e = indices.max() - in_length
    return weights.contiguous(), (indices + sym_len_s - 1).contiguous(), int(sym_len_s), int(sym_len_e)


def basicsr_imresize_half(img: np.ndarray) -> np.ndarray:
    """BasicSR's imresize(img, 0.5) of an H×W float32 numpy image."""
    img = torch.from_numpy(img[:, :, None].transpose(2, 0, 1)).float()
    in_c, in_h, in_w = img.size()
    out_h, out_w = math.ceil(in_h * 0.5), math.ceil(in_w * 0.5)
    weights_h, indices_h, hs, he = basicsr_weights_indices(in_h, out_h, 0.5)
    weights_w, indices_w, ws, we = basicsr_weights_indices(in_w, out_w, 0.5)
    img_aug = torch.cat([img[:, :hs, :].flip(1), img, img[:, -he:, :].flip(1)], dim=1)
    out_1 = torch.zeros(in_c, out_h, in_w)
    for i in range(out_h):
        idx = int(indices_h[i][0])
        out_1[0, i, :] = img_aug[0, idx : idx + weights_h.size(1), :].transpose(0, 1).mv(weights_h[i])
    out_1_aug = torch.cat([out_1[:, :, :ws].flip(2), out_1, out_1[:, :, -we:].flip(2)], dim=2)
    out_2 = torch.zeros(in_c, out_h, out_w)
    for i in range(out_w):
        idx = int(indices_w[i][0])
        out_2[0, :, i] = out_1_aug[0, :, idx : idx + weights_w.size(1)].mv(weights_w[i])
    return out_2.squeeze(0).numpy()


def reference_niqe(img: np.ndarray, mu_pris, cov_pris, window, convention: str, zero_flat_noise: float | None = None):
    """niqe.m / BasicSR's niqe(): blocks column by column, two scales. With ``zero_flat_noise``,
    a block where at least 1% of the coefficients are below it in magnitude has those taken as
    exact zeros, and the value comes with the number of grid places flat at either scale."""
    h, w = img.shape
    num_block_h, num_block_w = math.floor(h / 96), math.floor(w / 96)
    img = img[0 : num_block_h * 96, 0 : num_block_w * 96]
    distparam, flat = [], set()
    for scale in (1, 2):
        if convention == "matlab":
            mu = imfilter_separable(img, window)
            sigma = np.sqrt(np.abs(imfilter_separable(img * img, window) - mu * mu))
        else:
            mu = convolve(img, window, mode="nearest")
            sigma = np.sqrt(np.abs(convolve(np.square(img), window, mode="nearest") - np.square(mu)))
        normalized = (img - mu) / (sigma + 1)
        feat = []
        for idx_w in range(num_block_w):
            for idx_h in range(num_block_h):
                block = normalized[idx_h * 96 // scale : (idx_h + 1) * 96 // scale, idx_w * 96 // scale : (idx_w + 1) * 96 // scale]
                if zero_flat_noise is not None:
                    noise = np.abs(block) < zero_flat_noise
                    if noise.sum() >= 0.01 * block.size:
                        flat.add((idx_h, idx_w))
                        block = np.where(noise, 0, block).astype(block.dtype)
                feat.append(compute_feature(block))
        distparam.append(np.array(feat))
        if scale == 1:
            if convention == "matlab":
                img = losses.imresize(torch.from_numpy(img / 255.0), scale=0.5).numpy() * 255.0
            else:
                img = basicsr_imresize_half(img / 255.0) * 255.0
    distparam = np.concatenate(distparam, axis=1)
    mu_distparam = np.nanmean(distparam, axis=0)
    cov_distparam = np.cov(distparam[~np.isnan(distparam).any(axis=1)], rowvar=False)
    invcov = np.linalg.pinv((cov_pris + cov_distparam) / 2)
    quality = float(np.squeeze(np.sqrt(np.matmul(np.matmul(mu_pris - mu_distparam, invcov), np.transpose(mu_pris - mu_distparam)))))
    return quality if zero_flat_noise is None else (quality, len(flat))


def reference_luma(rgb_uint8: np.ndarray, convert_to: str, convention: str) -> np.ndarray:
    if convention == "basicsr":  # calculate_niqe on cv2.imread's BGR uint8
        img = rgb_uint8[..., ::-1].astype(np.float32)
        if convert_to == "y":  # to_y_channel: bgr2ycbcr(img / 255., y_only=True) * 255.
            y = np.dot(img / 255.0, [24.966, 128.553, 65.481]) + 16.0
            img = (y / 255.0).astype(np.float32) * 255.0
        else:
            img = cv2.cvtColor(img / 255.0, cv2.COLOR_BGR2GRAY) * 255.0
        return np.squeeze(img).round()
    r, g, b = (rgb_uint8[..., c].astype(np.float64) for c in range(3))
    if convert_to == "y":  # MATLAB's rgb2ycbcr: imlincomb(65.481/255, R, 128.553/255, G, 24.966/255, B, 16)
        img = 65.481 / 255 * r + 128.553 / 255 * g + 24.966 / 255 * b + 16.0
    else:  # rgb2gray: imlincomb with its three coefficients
        img = 0.298936021293775 * r + 0.587043074451121 * g + 0.114020904255103 * b
    return np.floor(img + 0.5)  # MATLAB's round of a positive uint8 result


def reference_calculate_niqe(rgb_uint8: np.ndarray, crop_border: int, convert_to: str = "y", convention: str = "matlab") -> float:
    with np.load("losses/data/niqe_pris_params.npz", allow_pickle=False) as params:
        mu, cov, window = params["mu_pris_param"], params["cov_pris_param"], params["gaussian_window"]
    img = reference_luma(rgb_uint8, convert_to, convention)
    if crop_border != 0:
        img = img[crop_border:-crop_border, crop_border:-crop_border]
    return reference_niqe(img, mu, cov, window, convention)


# --- the tests ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def niqe_photos(photos):
    """The photos, and a blurred, noisy copy of each (distorted images score higher)."""
    return [*photos, *(degrade(photo, seed) for seed, photo in enumerate(photos))]


def flat_photos() -> dict[str, np.ndarray]:
    """Real photos with flat areas: text on a plain page, a sky, a dark studio background, and a
    photo with a black 96×96 block on the block grid."""
    from skimage import data

    grey = lambda image: np.repeat(image[..., None], 3, axis=2)  # noqa: E731
    black = data.chelsea().copy()
    black[96:192, 96:192] = 0
    return dict(page=grey(data.page()), camera=grey(data.camera())[:288, :384], astronaut=data.astronaut()[:288, :288], black=black)


def test_matlab_convention_prints_matlabs_value_on_baboon():
    baboon = np.array(Image.open(BABOON).convert("RGB"))
    got = losses.score(to_tensor(baboon), metrics=["niqe"], convention="matlab")
    assert got["niqe"].item() == pytest.approx(MATLAB_BABOON, abs=1e-6)
    assert got["niqe"].item() == pytest.approx(reference_calculate_niqe(baboon, 0), rel=1e-9)
    assert losses.score(to_tensor(baboon), metrics=["niqe"])["niqe"].item() == got["niqe"].item()  # the default


@pytest.mark.parametrize("convention", ["matlab", "basicsr"])
@pytest.mark.parametrize("convert_to, crop_border", [("y", 0), ("y", 4), ("gray", 0)])
def test_niqe_equals_the_transcription_on_real_photos(niqe_photos, convention, convert_to, crop_border):
    for photo in niqe_photos:
        expected = reference_calculate_niqe(photo, crop_border, convert_to, convention)
        got = losses.score(to_tensor(photo), metrics=["niqe"], crop_border=crop_border, gray=convert_to == "gray", convention=convention)
        assert got["niqe"].dtype == torch.float64 and got["niqe"].item() == pytest.approx(expected, rel=1e-6), (photo.shape, convert_to)


@pytest.mark.parametrize("convention", ["matlab", "basicsr"])
def test_photos_with_flat_areas_equal_the_transcription_and_stay_finite(convention):
    for name, photo in flat_photos().items():
        expected = reference_calculate_niqe(photo, 0, "y", convention)
        got = losses.score(to_tensor(photo), metrics=["niqe"], convention=convention)["niqe"].item()
        assert math.isfinite(got) and got == pytest.approx(expected, rel=1e-6), (name, convention)


def test_the_basicsr_imresize_is_basicsrs():
    from skimage import data

    image = data.camera()[:250, :301].astype(np.float32) / 255
    np.testing.assert_array_equal(niqe_module.imresize_half_float32(image), basicsr_imresize_half(image))


def test_the_flat_block_warning_fires_on_flat_areas_and_not_on_a_natural_photo(photos):
    page = losses.score(to_tensor(flat_photos()["page"]), metrics=["niqe"])
    assert page["niqe.flat_blocks"].item() >= 1 and page["niqe.flat_spread"].item() > niqe_module.FLAT_SPREAD_WARNING
    warning = niqe_module.flat_warning({k: v.item() for k, v in page.items()})
    assert warning and f"{int(page['niqe.flat_blocks'].item())} flat block" in warning
    for photo in [np.array(Image.open(BABOON).convert("RGB")), photos[1]]:
        natural = {k: v.item() for k, v in losses.score(to_tensor(photo), metrics=["niqe"]).items()}
        assert natural["niqe.flat_blocks"] == 0 and natural["niqe.flat_spread"] == 0 and niqe_module.flat_warning(natural) is None


@pytest.mark.parametrize("convention", ["matlab", "basicsr"])
def test_the_flat_spread_is_how_far_niqe_moves_when_flat_blocks_noise_is_taken_as_zeros(convention):
    """Against the transcription with the flat blocks' rounding noise zeroed: the same count of
    flat grid places and the same spread, on each photo with flat areas."""
    with np.load("losses/data/niqe_pris_params.npz", allow_pickle=False) as params:
        model = params["mu_pris_param"], params["cov_pris_param"], params["gaussian_window"]
    noise, counts = niqe_module.FLAT_NOISE[convention], {}
    for name, photo in flat_photos().items():
        luma = reference_luma(photo, "y", convention)
        plain = reference_niqe(luma, *model, convention)
        zeroed, count = reference_niqe(luma, *model, convention, zero_flat_noise=noise)
        got = {k: v.item() for k, v in losses.score(to_tensor(photo), metrics=["niqe"], convention=convention).items()}
        assert got["niqe"] == pytest.approx(plain, abs=1e-6), name
        assert got["niqe.flat_blocks"] == count, name
        assert got["niqe.flat_spread"] == pytest.approx(abs(zeroed - plain), abs=1e-6), name
        counts[name] = count
    assert counts["page"] > 0 and counts["black"] > 0


def test_flat_blocks_whose_noise_is_exact_zeros_are_not_fitted_again(monkeypatch):
    """A saturated area's coefficients are exact zeros, not rounding noise: zeroing them changes
    nothing, so such a flat block is counted but not fitted again, and its spread is exactly 0.
    Blocks with real noise still are fitted again (the page)."""
    from skimage import data

    fitted = []
    original = niqe_module.block_features
    monkeypatch.setattr(niqe_module, "block_features", lambda blocks: fitted.append(len(blocks)) or original(blocks))
    photo = np.ascontiguousarray(data.astronaut()[:480, :480])  # a black background: 4 flat grid places
    got = {k: v.item() for k, v in losses.score(to_tensor(photo), metrics=["niqe"]).items()}
    assert got["niqe.flat_blocks"] == 4 and got["niqe.flat_spread"] == 0.0
    assert fitted == [25, 25]  # the two scales' blocks, once each
    assert got["niqe"] == pytest.approx(reference_calculate_niqe(photo, 0), rel=1e-6)
    fitted.clear()
    page = {k: v.item() for k, v in losses.score(to_tensor(flat_photos()["page"]), metrics=["niqe"]).items()}
    assert len(fitted) > 2 and page["niqe.flat_spread"] > 0


def test_the_block_check_counts_whole_blocks_after_the_crop_and_says_the_size():
    niqe_module.check_blocks((96, 192), 0)
    niqe_module.check_blocks((98, 194), 1)  # 96 × 192 after the crop: 1 × 2 blocks
    for size, crop in (((96, 191), 0), ((150, 150), 0), ((98, 194), 2), ((100, 100), 150)):  # a crop larger than the image too
        with pytest.raises(ValueError, match=r"^NIQE needs two whole 96×96 blocks \(e\.g\. 192×96\) after crop_border="):
            niqe_module.check_blocks(size, crop)
    with pytest.raises(ValueError, match=r"after crop_border=3; got 200×100$"):
        niqe_module.check_blocks((100, 200), 3)


def test_blocks_are_taken_row_by_row_or_column_by_column_as_basicsr_loops():
    image = np.arange(4 * 6, dtype=np.float64).reshape(4, 6)
    rows = niqe_module.image_blocks(image, 2)
    columns = niqe_module.image_blocks(image, 2, column_major=True)
    assert rows.shape == columns.shape == (6, 2, 2) and rows.flags.c_contiguous and columns.flags.c_contiguous
    assert [b[0, 0] for b in rows] == [0, 2, 4, 12, 14, 16] and [b[0, 0] for b in columns] == [0, 12, 2, 14, 4, 16]
    np.testing.assert_array_equal(rows[1], [[2, 3], [8, 9]])


def test_each_weights_dir_has_its_own_pristine_model_and_a_malformed_one_is_refused(tmp_path):
    """The model read from a directory is that file's (μ flattened), cached per directory; a file
    of another shape, a window that is not separable or a pickled array is refused by path."""
    from losses.nets.weights import WeightsError

    name = niqe_module.NIQE_PRISTINE.filenames[0]
    with np.load("losses/data/niqe_pris_params.npz", allow_pickle=False) as params:
        real = {key: params[key] for key in params.files}

    def write(folder: str, **changes) -> Path:
        (tmp_path / folder).mkdir()
        np.savez(tmp_path / folder / name, **{**real, **changes})
        return tmp_path / folder

    shifted = write("shifted", mu_pris_param=real["mu_pris_param"] + 1.0)
    model, other = niqe_module.load_pristine(shifted), niqe_module.load_pristine(write("real"))
    np.testing.assert_array_equal(model["mu"], real["mu_pris_param"].reshape(-1) + 1.0)
    np.testing.assert_array_equal(other["mu"], real["mu_pris_param"].reshape(-1))
    np.testing.assert_array_equal(model["cov"], real["cov_pris_param"])
    np.testing.assert_array_equal(model["window"], real["gaussian_window"])
    assert model["mu"].shape == (36,)
    window = real["gaussian_window"].copy()
    window[0, 0] += 1e-9  # no longer the outer product of its taps (whose sums stay symmetric: refused for that alone)
    window[-1, -1] += 1e-9
    lopsided = np.linspace(1.0, 2.0, 7) / 10.5  # separable (taps summing to 1), not symmetric: the passes sum pairs of taps
    even = np.full((4, 4), 1 / 16)  # separable and symmetric, but no centre tap
    bad = dict(
        mu=dict(mu_pris_param=np.zeros((1, 37))),
        cov=dict(cov_pris_param=np.zeros((36, 35))),
        window=dict(gaussian_window=window),
        lopsided=dict(gaussian_window=np.outer(lopsided, lopsided)),
        even=dict(gaussian_window=even),
    )
    for folder, changes in bad.items():
        path = write(folder, **changes)
        with pytest.raises(
            WeightsError,
            match=r"niqe_pris_params\.npz: not a NIQE model \(μ 1×36, Σ 36×36 and a separable, symmetric Gaussian window of odd size\)$",
        ):
            niqe_module.load_pristine(path)
    pickled = write("pickled", gaussian_window=np.array([object()], dtype=object))
    with pytest.raises(ValueError, match="allow_pickle"):
        niqe_module.load_pristine(pickled)


@pytest.mark.parametrize("convention", ["matlab", "basicsr"])
def test_a_grey_image_is_scored_on_its_own_channel(photos, convention):
    """One channel: the channel itself is the luma (BasicSR reads a grey PNG as one channel)."""
    grey = np.ascontiguousarray(photos[1][..., 1])
    tensor = torch.from_numpy(grey)[None, None].float() / 255.0
    got = losses.score(tensor, metrics=["niqe"], convention=convention)["niqe"].item()
    with np.load("losses/data/niqe_pris_params.npz", allow_pickle=False) as params:
        model = params["mu_pris_param"], params["cov_pris_param"], params["gaussian_window"]
    luma = grey.astype(np.float32 if convention == "basicsr" else np.float64)
    assert got == pytest.approx(reference_niqe(luma, *model, convention), rel=1e-6)


def test_the_function_itself_defaults_to_matlabs_y_without_a_crop_and_reads_the_given_weights(photos, tmp_path):
    tensor = to_tensor(photos[1])
    direct = niqe_module.niqe(tensor)
    assert direct["total"].item() == pytest.approx(reference_calculate_niqe(photos[1], 0, "y", "matlab"), rel=1e-9)
    with np.load("losses/data/niqe_pris_params.npz", allow_pickle=False) as params:
        np.savez(tmp_path / "niqe_pris_params.npz", **{k: params[k] * (0 if k == "mu_pris_param" else 1) for k in params.files})
    assert niqe_module.niqe(tensor, weights_dir=tmp_path)["total"].item() != pytest.approx(direct["total"].item(), rel=1e-3)
    with pytest.raises(ValueError, match=r"^NIQE convention must be one of \('matlab', 'basicsr'\), got 'pyiqa'$"):
        niqe_module.niqe(tensor, convention="pyiqa")


def test_eight_bit_pixels_are_read_as_integers_and_others_as_they_are():
    k = np.arange(256, dtype=np.float64)
    as_float32 = (k / 255).astype(np.float32)
    snapped = niqe_module.snap_to_eight_bits(as_float32)
    np.testing.assert_array_equal(snapped, k)
    assert snapped.dtype == np.float32  # integers, exact in float32
    near = k / 255 + np.where(k % 2 == 0, 3e-7, -3e-7)  # within the snap at the 255 scale (7.7e-5)
    np.testing.assert_array_equal(niqe_module.snap_to_eight_bits(near), k)
    # values between 8-bit levels are kept: each below its nearest level (127.8, 3.9), or 1.5e-4 above one
    for between in ([127.8 / 255, 3.9 / 255], [(100 + 1.5e-4) / 255]):
        mixed = np.concatenate([k / 255, between]).astype(np.float32)
        got = niqe_module.snap_to_eight_bits(mixed)
        np.testing.assert_array_equal(got[:256], k)
        np.testing.assert_allclose(got[256:], mixed[256:].astype(np.float64) * 255, rtol=0, atol=1e-12)


@pytest.mark.parametrize("gray", [False, True])
def test_the_luma_is_matlabs_rounded_half_away_from_zero_in_float64(gray):
    """MATLAB's Y and rgb2gray of float32 8-bit pixels, summed in imlincomb's order in float64 and
    rounded half away from zero; a grey channel of values between levels rounds likewise, below
    zero too (pixels outside [0, 1])."""
    rng = np.random.default_rng(3)
    # Pixels whose Y or grey lies within float32's error of a half: float32 sums would round them the other way.
    near_halves = np.array([[52, 188, 14], [244, 183, 149], [92, 141, 230], [150, 101, 12], [128, 112, 206], [229, 180, 91]]).T
    rgb = np.concatenate([rng.integers(0, 256, (3, 250)), near_halves], axis=1).reshape(1, 3, 16, 16)
    got = niqe_module.luma_255(torch.from_numpy(rgb.astype(np.float32) / 255), gray)
    weights, offset = (niqe_module.GRAY_WEIGHTS, 0.0) if gray else ([w / 255 for w in Y_WEIGHTS], Y_OFFSET)
    exact = ((weights[0] * rgb[:, 0].astype(np.float64) + weights[1] * rgb[:, 1]) + weights[2] * rgb[:, 2]) + offset
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, np.sign(exact) * np.floor(np.abs(exact) + 0.5))
    levels = np.array([-2.5, -2.4, -0.5, 0.5, 2.5, 2.6, 250.5]) / 255
    grey = niqe_module.luma_255(torch.from_numpy(levels).view(1, 1, 1, -1), gray)
    np.testing.assert_array_equal(grey.ravel(), [-3, -2, -1, 1, 3, 3, 251])
    positive = niqe_module.luma_255(torch.from_numpy(levels[3:]).view(1, 1, 1, -1), gray)
    np.testing.assert_array_equal(positive.ravel(), [1, 3, 3, 251])


def test_the_warning_fires_only_past_its_threshold_and_names_the_blocks():
    at = {"niqe.flat_blocks": 3.0, "niqe.flat_spread": niqe_module.FLAT_SPREAD_WARNING}
    assert niqe_module.flat_warning(at) is None and niqe_module.flat_warning({"niqe": 3.0}) is None
    assert niqe_module.flat_warning(dict(at, **{"niqe.flat_spread": 0.0123})) == (
        "niqe: 3 flat block(s), where the normalised coefficients are rounding noise, can move NIQE by 0.0123: "
        "implementations that differ only in rounding may disagree by that much"
    )


def test_an_unknown_convention_is_refused_naming_the_choices():
    with pytest.raises(MetricError, match=r"'convention' must be one of \['matlab', 'basicsr'\]") as info:
        losses.score(torch.rand(1, 3, 96, 192), metrics=["niqe"], convention="pyiqa")
    assert info.value.field == "options"


def test_distortion_raises_niqe(photos):
    for seed, photo in enumerate(photos):
        clean, degraded = to_tensor(photo), to_tensor(degrade(photo, seed))
        assert losses.score(degraded, metrics=["niqe"])["niqe"] > losses.score(clean, metrics=["niqe"])["niqe"]


def test_a_batch_scores_each_image_alone(photos):
    crops = [photo[:192, :192] for photo in photos]
    batch = torch.cat([to_tensor(c) for c in crops])
    together = losses.score(batch, metrics=["niqe"])["niqe"]
    alone = torch.cat([losses.score(to_tensor(c), metrics=["niqe"])["niqe"] for c in crops])
    assert torch.equal(together, alone)


@pytest.mark.parametrize("convention", ["matlab", "basicsr"])
def test_an_image_with_a_nan_or_infinite_pixel_scores_nan_and_the_others_are_unchanged(photos, convention):
    """A diverged model's output: NaN for that image (no warning, no crash), as PSNR gives it; the
    batch's other images score as they do alone."""
    crops = [to_tensor(photo[:192, :192]) for photo in photos[:2]]
    for bad in (math.nan, math.inf):
        broken = crops[1].clone()
        broken[0, 0, 5, 7] = bad
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # no NumPy noise about the NaN either
            got = losses.score(torch.cat([crops[0], broken]), metrics=["niqe"], convention=convention)
        alone = losses.score(crops[0], metrics=["niqe"], convention=convention)
        assert got["niqe"][0].item() == alone["niqe"].item()
        assert all(math.isnan(got[key][1].item()) for key in ("niqe", "niqe.flat_blocks", "niqe.flat_spread"))
        assert niqe_module.flat_warning({key: value[1].item() for key, value in got.items()}) is None


@pytest.mark.parametrize("convention", ["matlab", "basicsr"])
def test_niqe_of_a_constant_image_is_nan_with_its_reason_and_no_numpy_noise(convention):
    """Black, grey and white: no block has a negative coefficient, so no feature covariance exists
    (MATLAB and BasicSR stop in pinv): NaN, every block counted flat, the spread NaN, and a warning
    that says why. An image with two textured blocks among flat ones is scored."""
    for level in (0.0, 0.5, 1.0):
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            scores = losses.score(torch.full((1, 3, 192, 192), level), metrics=["niqe"], convention=convention)
        got = {key: value.item() for key, value in scores.items()}
        assert math.isnan(got["niqe"]) and got["niqe.flat_blocks"] == 4 and math.isnan(got["niqe.flat_spread"]), (level, got)
        assert niqe_module.flat_warning(got) == (
            "niqe: undefined for this image: fewer than two of its 96×96 blocks have features (a block of one value has no "
            "negative coefficient to fit), as in a constant image; 4 flat block(s)"
        )
    textured = torch.full((1, 3, 192, 192), 0.5)
    textured[..., :96, :] = torch.rand(1, 3, 96, 192, generator=torch.Generator().manual_seed(0))
    got = losses.score(textured, metrics=["niqe"], convention=convention)
    assert math.isfinite(got["niqe"].item()) and got["niqe.flat_blocks"].item() == 2


def test_niqe_needs_two_whole_blocks_after_the_crop():
    with pytest.raises(MetricError, match="two whole 96×96 blocks") as info:
        losses.score(torch.rand(1, 3, 100, 150), metrics=["niqe"])
    assert info.value.field == "sr"
    losses.score(torch.rand(1, 3, 96, 192), metrics=["niqe"])
    with pytest.raises(MetricError, match="crop_border=4") as info:
        losses.score(torch.rand(1, 3, 96, 200), metrics=["niqe"], crop_border=4)
    assert info.value.field == "options"


def test_the_pristine_model_is_a_declared_weight_file_read_without_pickle():
    spec = losses.nets.weights.WEIGHT_FILES["niqe_pristine"]
    path = losses.nets.weights.resolve(spec)
    assert path == losses.nets.weights.bundled_path(spec) and losses.nets.weights.checksum_status(spec, path) == "ok"
    model = niqe_module.load_pristine()
    assert model["mu"].shape == (36,) and model["cov"].shape == (36, 36) and model["window"].shape == (7, 7)
    assert np.allclose(model["cov"], model["cov"].T) and model["window"].sum() == pytest.approx(1.0, abs=1e-12)
    record = losses.conventions(["niqe"])
    assert record["weights"]["niqe_pristine"]["sha256"] == spec.sha256


# --- through the server, the clients and eval: sr alone -----------------------------------------


@pytest.fixture(scope="module")
def server(vgg16_server):
    return vgg16_server


def test_a_request_may_send_only_sr_for_niqe(server, photos):
    import httpx

    from service.client import LossClient

    from .servers import png_bytes

    photo = photos[1]  # chelsea, 300×451
    expected = losses.score(to_tensor(photo), metrics=["niqe"])["niqe"].item()
    response = httpx.post(f"{server.url}/v1/score", files=[("sr", png_bytes(photo))], data={"metrics": "niqe"})
    assert response.status_code == 200, response.text
    assert response.json()["scores"]["niqe"] == pytest.approx(expected, rel=1e-12)
    assert response.json()["conventions"]["weights"]["niqe_pristine"]["sha256"] == losses.nets.weights.WEIGHT_FILES["niqe_pristine"].sha256
    with LossClient(server.url) as client:
        assert client.score(png_bytes(photo), metrics="niqe")["scores"]["niqe"] == pytest.approx(expected, rel=1e-12)
        batch = client.score_batch([{"sr": png_bytes(photo)}, {"sr": png_bytes(photos[2])}], metrics="niqe")
    assert [r["scores"]["niqe"] for r in batch["results"]][0] == pytest.approx(expected, rel=1e-12)
    missing = httpx.post(f"{server.url}/v1/score", files=[("sr", png_bytes(photo))], data={"metrics": "niqe,psnr"})
    assert missing.status_code == 422 and missing.json()["detail"][0]["loc"] == ["body", "gt"]
    assert "'psnr' needs image(s) ['gt']" in missing.json()["detail"][0]["msg"]
    small = httpx.post(f"{server.url}/v1/score", files=[("sr", png_bytes(photo[:100, :150]))], data={"metrics": "niqe"})
    assert small.status_code == 422 and "two whole 96×96 blocks" in small.json()["detail"][0]["msg"]


def test_a_constant_image_is_scored_null_with_the_reason_and_the_server_serves_on(server, photos):
    """NIQE is undefined for a one-colour image (no block has a negative coefficient): null with a
    warning that says why, in a batch whose other image is scored as alone."""
    from service.client import LossClient

    from .servers import png_bytes

    blank = np.full((192, 288, 3), 128, np.uint8)
    with LossClient(server.url) as client:
        blank_result, photo_result = client.score_batch([{"sr": png_bytes(blank)}, {"sr": png_bytes(photos[1])}], metrics="niqe")["results"]
    assert blank_result["scores"]["niqe"] is None and blank_result["scores"]["niqe.flat_blocks"] == 6
    assert any("niqe: undefined for this image" in warning and "6 flat block(s)" in warning for warning in blank_result["warnings"])
    assert photo_result["scores"]["niqe"] == pytest.approx(losses.score(to_tensor(photos[1]), metrics=["niqe"])["niqe"].item(), rel=1e-12)


def test_eval_scores_a_folder_of_sr_images_without_gt(server, photos, tmp_path):
    from service.cli import main as cli_main

    from .servers import png_bytes

    folder = tmp_path / "sr"
    folder.mkdir()
    for index, photo in enumerate(photos):
        (folder / f"img{index}.png").write_bytes(png_bytes(photo))
    out = tmp_path / "niqe.json"
    assert (
        cli_main(
            [
                "eval",
                "--url",
                server.url,
                "--sr",
                f"model={folder}",
                "--metrics",
                "niqe",
                "--crop-border",
                "4",
                "--out",
                str(tmp_path / "niqe.csv"),
                "--json",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    results = json.loads(out.read_text())["models"]["model"]["results"]
    for index, photo in enumerate(photos):
        expected = losses.score(to_tensor(photo), metrics=["niqe"], crop_border=4)["niqe"].item()
        assert results[index]["image"] == f"img{index}" and results[index]["scores"]["niqe"] == pytest.approx(expected, rel=1e-12)


def test_the_nearest_grid_ratio_is_argmins_over_the_whole_grid():
    """The AGGD fit's shape search (two neighbours of a sorted grid) against the full scan it replaces."""
    grid = niqe_module.GAMMA_RATIO
    rng = np.random.default_rng(0)
    r = np.concatenate([rng.uniform(grid[0] - 0.1, grid[-1] + 0.1, 20000), grid, (grid[1:] + grid[:-1]) / 2, [np.nan]])
    expected = np.array([np.argmin((grid - value) ** 2) for value in r])
    np.testing.assert_array_equal(niqe_module.nearest_ratio(r), expected)


def test_the_aggd_fit_is_the_transcriptions_on_balanced_and_lopsided_rows():
    """Rows whose positive part is all, most, a sliver (its squares ~1e-16 of the whole: summed
    directly, not as a difference) or none of them, and rows of exact and negative zeros, against
    estimateaggdparam.m's transcription: the same α, β to 1e-9 relative, NaN where it gives NaN."""
    rng = np.random.default_rng(7)
    normal = rng.standard_normal((4, 2304))
    sliver = -np.abs(normal[0]).copy()
    sliver[::500] = 1e-6
    thin = -np.abs(normal[2]).copy()
    thin[::500] = 1e-4  # positive squares ~2e-11 of the whole: a difference would keep ~5 digits
    tenth = -np.abs(normal[1]).copy()
    tenth[::10] = 0.05
    zeros = normal[2].copy()
    zeros[:1000], zeros[1000:1500] = 0.0, -0.0
    rows = np.stack([normal[3], sliver, tenth, -np.abs(normal[0]), np.abs(normal[1]), zeros, np.zeros(2304), thin])
    alpha, beta_left, beta_right = niqe_module.aggd_fit(rows, np.empty_like(rows))
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the mean of no values, where a side is empty
        expected = np.array([estimate_aggd_param(row) for row in rows])
    np.testing.assert_array_equal(alpha, expected[:, 0])
    np.testing.assert_allclose(np.stack([beta_left, beta_right], axis=1), expected[:, 1:], rtol=1e-9, atol=0)
    assert np.isnan(expected[3, 2]) and np.isnan(expected[4, 1]) and np.isnan(expected[6, 1:]).all()


@pytest.mark.parametrize("length", [96 * 96, 48 * 48, 100, 72, 7])
def test_row_counts_count_each_rows_true_values(length):
    """Whole 64-bit words (a block's row) and rows that are not, against ``count_nonzero`` row by row;
    all-False and all-True rows included."""
    rng = np.random.default_rng(length)
    mask = np.concatenate([rng.random((5, length)) < share for share in (0.0, 0.01, 0.5, 0.99, 1.0)])
    expected = [np.count_nonzero(row) for row in mask]
    assert niqe_module.row_counts(mask).tolist() == expected and expected[0] == 0 and expected[-1] == length


@pytest.mark.parametrize("block", [niqe_module.BLOCK, niqe_module.BLOCK // 2])
def test_neighbour_products_are_the_rolled_products_bit_for_bit(block):
    """Each block times its own wrapped-around shift (``np.roll``), for every shift the features use,
    at both scales' block sizes, on a photo's normalised coefficients with a flat area."""
    photo = flat_photos()["black"][..., 1].astype(np.float64)
    window = niqe_module.load_pristine()["window"]
    normalized = niqe_module.normalized(photo[: photo.shape[0] // block * block, : photo.shape[1] // block * block], window)
    blocks = niqe_module.image_blocks(normalized, block)
    for shift in niqe_module.SHIFTS:
        out = np.full_like(blocks, np.nan)
        niqe_module.neighbour_products(blocks, shift, out)
        np.testing.assert_array_equal(out, blocks * np.roll(blocks, shift, axis=(1, 2)), err_msg=str(shift))


@pytest.mark.parametrize("cache_bytes", [1 << 18, 1])
def test_the_column_pass_is_scipys_bit_for_bit(monkeypatch, cache_bytes):
    """The row-wise column pass against SciPy's ``correlate1d(axis=0, mode="nearest")`` on photos with
    flat areas (whose rounding noise decides their blocks' fits) and heights that are not a whole
    number of runs; with a 1-byte cache each run is the fewest rows (the kernel's half width). Exact equality: no tolerance."""
    monkeypatch.setattr(niqe_module, "CACHE_ROWS_BYTES", cache_bytes)
    taps = niqe_module.load_pristine()["window"].sum(axis=1)
    for name, photo in flat_photos().items():
        for image in (photo[..., 0].astype(np.float64), photo[:53, :77, 1].astype(np.float64) ** 2 / 7):
            got = niqe_module.correlate_columns(image, taps, np.empty_like(image))
            np.testing.assert_array_equal(got, correlate1d(image, taps, axis=0, mode="nearest"), err_msg=name)


def test_eval_and_the_report_show_the_flat_block_warning_naming_the_image(server, photos, tmp_path, capsys):
    from service.cli import main as cli_main
    from service.client.report import load_runs

    from .servers import png_bytes

    folder = tmp_path / "sr"
    folder.mkdir()
    (folder / "page.png").write_bytes(png_bytes(flat_photos()["page"]))
    (folder / "chelsea.png").write_bytes(png_bytes(photos[1]))
    out = tmp_path / "niqe.json"
    argv = ["eval", "--url", server.url, "--sr", f"m={folder}", "--metrics", "niqe", "--out", str(tmp_path / "n.csv"), "--json", str(out)]
    capsys.readouterr()
    assert cli_main(argv) == 0
    said = " ".join("".join(capsys.readouterr()).split())
    assert "m: warning: niqe: 1 flat block(s)" in said and "(1 image: page)" in said
    results = {r["image"]: r for r in json.loads(out.read_text())["models"]["m"]["results"]}
    assert any("flat block" in w for w in results["page"]["warnings"]) and not results["chelsea"]["warnings"]
    (run,) = load_runs(out)
    assert any("flat block" in w and "page" in w for w in run.warnings)
