"""NIQE against a transcription of BasicSR's ``basicsr/metrics/niqe.py`` (itself a port of LIVE's
MATLAB ``niqe_release``), written out here block by block as that code runs: a Python loop over
blocks, the AGGD grid search recomputed for each block. Real photos from scikit-image, ≤ 1e-6
relative.

Two steps of the transcription use the MATLAB procedure rather than BasicSR's shortcuts, as the
library does: the Y (or gray) channel as MATLAB's ``imlincomb`` sums it in float64 from the uint8
pixels, rounded half away from zero (BasicSR: float32, NumPy's half-to-even), and MATLAB's bicubic
``imresize`` in float64 (BasicSR's runs in float32).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy.ndimage import convolve
from scipy.special import gamma

import losses
from losses import niqe as niqe_module
from losses.registry import MetricError

from .conftest import degrade, to_tensor

# --- the transcription -------------------------------------------------------------------------


def estimate_aggd_param(block: np.ndarray) -> tuple[float, float, float]:
    block = block.flatten()
    gam = np.arange(0.2, 10.001, 0.001)
    r_gam = np.square(gamma(2 / gam)) / (gamma(1 / gam) * gamma(3 / gam))  # MATLAB: gamma(2./gam).^2 ./ ...
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


def reference_niqe(img: np.ndarray, mu_pris: np.ndarray, cov_pris: np.ndarray, window: np.ndarray) -> float:
    h, w = img.shape
    num_block_h, num_block_w = math.floor(h / 96), math.floor(w / 96)
    img = img[0 : num_block_h * 96, 0 : num_block_w * 96]
    distparam = []
    for scale in (1, 2):
        mu = convolve(img, window, mode="nearest")
        sigma = np.sqrt(np.abs(convolve(np.square(img), window, mode="nearest") - np.square(mu)))
        normalized = (img - mu) / (sigma + 1)
        feat = []
        for idx_w in range(num_block_w):
            for idx_h in range(num_block_h):
                block = normalized[idx_h * 96 // scale : (idx_h + 1) * 96 // scale, idx_w * 96 // scale : (idx_w + 1) * 96 // scale]
                feat.append(compute_feature(block))
        distparam.append(np.array(feat))
        if scale == 1:
            img = losses.imresize(torch.from_numpy(img / 255.0), scale=0.5).numpy() * 255.0
    distparam = np.concatenate(distparam, axis=1)
    mu_distparam = np.nanmean(distparam, axis=0)
    cov_distparam = np.cov(distparam[~np.isnan(distparam).any(axis=1)], rowvar=False)
    invcov = np.linalg.pinv((cov_pris + cov_distparam) / 2)
    quality = np.matmul(np.matmul(mu_pris - mu_distparam, invcov), np.transpose(mu_pris - mu_distparam))
    return float(np.squeeze(np.sqrt(quality)))


def reference_calculate_niqe(rgb_uint8: np.ndarray, crop_border: int, convert_to: str = "y") -> float:
    """BasicSR's ``calculate_niqe`` on an RGB uint8 H×W×3 image."""
    with np.load("losses/data/niqe_pris_params.npz", allow_pickle=False) as params:
        mu, cov, window = params["mu_pris_param"], params["cov_pris_param"], params["gaussian_window"]
    r, g, b = (rgb_uint8[..., c].astype(np.float64) for c in range(3))
    if convert_to == "y":  # MATLAB's rgb2ycbcr: imlincomb(65.481/255, R, 128.553/255, G, 24.966/255, B, 16)
        img = 65.481 / 255 * r + 128.553 / 255 * g + 24.966 / 255 * b + 16.0
    else:  # rgb2gray: imlincomb with its three coefficients
        img = 0.298936021293775 * r + 0.587043074451121 * g + 0.114020904255103 * b
    if crop_border != 0:
        img = img[crop_border:-crop_border, crop_border:-crop_border]
    img = np.floor(img + 0.5)  # MATLAB's round of a positive uint8 result
    return reference_niqe(img, mu, cov, window)


# --- the tests ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def niqe_photos(photos):
    """The photos, and a blurred, noisy copy of each (distorted images score higher)."""
    return [*photos, *(degrade(photo, seed) for seed, photo in enumerate(photos))]


@pytest.mark.parametrize("convert_to, crop_border", [("y", 0), ("y", 4), ("gray", 0)])
def test_niqe_equals_the_transcription_on_real_photos(niqe_photos, convert_to, crop_border):
    for photo in niqe_photos:
        expected = reference_calculate_niqe(photo, crop_border, convert_to)
        got = losses.score(to_tensor(photo), metrics=["niqe"], crop_border=crop_border, gray=convert_to == "gray")["niqe"]
        assert got.dtype == torch.float64 and got.item() == pytest.approx(expected, rel=1e-6), (photo.shape, convert_to)


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


def test_niqe_needs_two_whole_blocks_after_the_crop():
    with pytest.raises(MetricError, match="two whole 96×96 blocks") as info:
        losses.score(torch.rand(1, 3, 100, 150), metrics=["niqe"])
    assert info.value.field == "sr"
    losses.score(torch.rand(1, 3, 96, 192), metrics=["niqe"])
    with pytest.raises(MetricError, match="crop_border=4") as info:
        losses.score(torch.rand(1, 3, 96, 200), metrics=["niqe"], crop_border=4)
    assert info.value.field == "options"


def test_the_pristine_model_is_a_declared_weight_file_read_without_pickle():
    spec = losses.weights.WEIGHT_FILES["niqe_pristine"]
    path = losses.weights.resolve(spec)
    assert path == losses.weights.bundled_path(spec) and losses.weights.checksum_status(spec, path) == "ok"
    model = niqe_module.load_pristine()
    assert model["mu"].shape == (36,) and model["cov"].shape == (36, 36) and model["window"].shape == (7, 7)
    assert np.allclose(model["cov"], model["cov"].T) and model["window"].sum() == pytest.approx(1.0, abs=1e-12)
    record = losses.conventions(["niqe"])
    assert record["weights"]["niqe_pristine"]["sha256"] == spec.sha256


# --- through the server, the clients and eval: sr alone -----------------------------------------


@pytest.fixture(scope="module")
def server(weights_dir):
    from .servers import SubprocessServer

    with SubprocessServer("--models", "vgg16") as srv:
        yield srv


def test_a_request_may_send_only_sr_for_niqe(server, photos):
    import httpx

    from service.client import LossClient

    from .servers import png_bytes

    photo = photos[1]  # chelsea, 300×451
    expected = losses.score(to_tensor(photo), metrics=["niqe"])["niqe"].item()
    response = httpx.post(f"{server.url}/v1/score", files=[("sr", png_bytes(photo))], data={"metrics": "niqe"})
    assert response.status_code == 200, response.text
    assert response.json()["scores"]["niqe"] == pytest.approx(expected, rel=1e-12)
    assert response.json()["conventions"]["weights"]["niqe_pristine"]["sha256"] == losses.weights.WEIGHT_FILES["niqe_pristine"].sha256
    with LossClient(server.url) as client:
        assert client.score(png_bytes(photo), metrics="niqe")["scores"]["niqe"] == pytest.approx(expected, rel=1e-12)
        batch = client.score_batch([{"sr": png_bytes(photo)}, {"sr": png_bytes(photos[2])}], metrics="niqe")
    assert [r["scores"]["niqe"] for r in batch["results"]][0] == pytest.approx(expected, rel=1e-12)
    missing = httpx.post(f"{server.url}/v1/score", files=[("sr", png_bytes(photo))], data={"metrics": "niqe,psnr"})
    assert missing.status_code == 422 and missing.json()["detail"][0]["loc"] == ["body", "gt"]
    assert "'psnr' needs image(s) ['gt']" in missing.json()["detail"][0]["msg"]
    small = httpx.post(f"{server.url}/v1/score", files=[("sr", png_bytes(photo[:100, :150]))], data={"metrics": "niqe"})
    assert small.status_code == 422 and "two whole 96×96 blocks" in small.json()["detail"][0]["msg"]


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
