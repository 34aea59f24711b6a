"""The seams around the numerical core: body limits without a Content-Length, the report's paired
output, the weights search order, size refusals, pairing, lazily built backbones, and passes
sliced by ``PASS_PIXELS``. Each test fails when the behaviour it names is broken."""

from __future__ import annotations

import json
import math
import re

import httpx
import numpy as np
import pytest
import torch

import losses
from losses.nets import features
from losses.nets import weights as W
from losses.nets.backbones import BACKBONES, clear_shared_backbones
from losses.nets.models import MODELS
from service.cli import main as cli_main
from service.client.report import Report, html_table, load_runs
from service.client.report.page import html_paired
from service.client.stats import bootstrap_mean_ci

from .servers import SubprocessServer, png_bytes, random_image


@pytest.fixture(scope="module")
def server(weights_dir):
    with SubprocessServer("--models", "vgg16", "--max-body-mb", "1") as srv:
        yield srv


# --- the body limit, streamed -----------------------------------------------------------------


def test_a_chunked_upload_over_the_body_limit_is_413(server):
    """No Content-Length to check up front: the guard counts the streamed bytes (2 MiB against
    --max-body-mb 1) and answers 413 in the one detail shape; the server keeps serving."""

    def body():
        yield b'--x\r\nContent-Disposition: form-data; name="sr"; filename="a.png"\r\n\r\n'
        for _ in range(32):
            yield b"\x00" * 2**16

    response = httpx.post(f"{server.url}/v1/score", content=body(), headers={"content-type": "multipart/form-data; boundary=x"})
    assert "content-length" not in response.request.headers and response.request.headers["transfer-encoding"] == "chunked"
    assert response.status_code == 413, response.text
    (entry,) = response.json()["detail"]
    assert entry["type"] == "too_large" and entry["loc"] == ["body"] and "--max-body-mb" in entry["msg"]
    ok = httpx.post(
        f"{server.url}/v1/score",
        files=[("sr", png_bytes(random_image(32, 32, 1))), ("gt", png_bytes(random_image(32, 32, 2)))],
        data={"metrics": "psnr"},
    )
    assert ok.status_code == 200


def test_a_body_one_byte_over_the_limit_is_413_naming_its_size_and_one_at_it_is_read(server):
    """--max-body-mb 1: a Content-Length of 2²⁰ + 1 is refused before the body is read, naming the
    size; a body of exactly 2²⁰ bytes passes the guard (and is refused for what it holds: 422)."""
    head = b'--x\r\nContent-Disposition: form-data; name="metrics"\r\n\r\n'
    tail = b"\r\n--x--\r\n"

    def post(size: int) -> httpx.Response:
        body = head + b"p" * (size - len(head) - len(tail)) + tail
        assert len(body) == size
        return httpx.post(f"{server.url}/v1/score", content=body, headers={"content-type": "multipart/form-data; boundary=x"})

    over = post(2**20 + 1)
    assert over.status_code == 413 and f"of {2**20 + 1} bytes" in over.json()["detail"][0]["msg"]
    at = post(2**20)
    assert at.status_code == 422, at.text


# --- refusals by size ---------------------------------------------------------------------------


def test_an_image_smaller_than_the_backbone_takes_is_422_naming_its_minimum(server):
    image = png_bytes(random_image(15, 15, 3))
    response = httpx.post(f"{server.url}/v1/score", files=[("sr", image), ("gt", image)], data={"metrics": "lpips_vgg"})
    assert response.status_code == 422, response.text
    (entry,) = response.json()["detail"]
    assert entry["loc"] == ["body", "sr"] and "needs images of at least 16×16; got 15×15" in entry["msg"]


@pytest.mark.parametrize("lr_size", [(20, 40), (40, 20)], ids=["taller", "wider"])
def test_an_lr_larger_than_sr_on_one_side_only_is_refused(server, lr_size):
    sr, gt = png_bytes(random_image(32, 32, 4)), png_bytes(random_image(32, 32, 5))
    lr = png_bytes(random_image(*lr_size, 6))
    response = httpx.post(f"{server.url}/v1/score", files=[("sr", sr), ("gt", gt), ("lr", lr)], data={"metrics": "psnr"})
    assert response.status_code == 422, response.text
    (entry,) = response.json()["detail"]
    assert entry["loc"] == ["body", "lr"] and "larger than sr 32×32" in entry["msg"]


# --- eval's pairing ------------------------------------------------------------------------------


def test_eval_lists_a_pair_whose_lr_is_missing_as_unpaired(server, tmp_path):
    folders = {role: tmp_path / role for role in ("sr", "gt", "lr")}
    for folder in folders.values():
        folder.mkdir()
    for index in range(3):
        gt = random_image(32, 32, index)
        (folders["gt"] / f"img{index}.png").write_bytes(png_bytes(gt))
        (folders["sr"] / f"img{index}.png").write_bytes(png_bytes(gt[::-1].copy()))
        if index != 1:  # img1 has no LR
            (folders["lr"] / f"img{index}.png").write_bytes(png_bytes(gt[::2, ::2].copy()))
    out = tmp_path / "results.json"
    code = cli_main(
        [
            "eval",
            "--url",
            server.url,
            "--sr",
            str(folders["sr"]),
            "--gt",
            str(folders["gt"]),
            "--lr",
            str(folders["lr"]),
            "--metrics",
            "psnr,lr_psnr",
            "--out",
            str(tmp_path / "r.csv"),
            "--json",
            str(out),
            "--quiet",
        ]
    )
    data = json.loads(out.read_text())
    assert code == 0 and [r["image"] for r in data["results"]] == ["img0", "img2"]
    assert data["unpaired"] == {"sr": ["img1.png"], "gt": ["img1.png"]}


# --- the report's paired table ---------------------------------------------------------------------


def eval_file(path, model: str, scores: dict[str, float | None]) -> None:
    results = [dict(image=image, scores={"psnr": value}) for image, value in scores.items()]
    path.write_text(
        json.dumps(
            dict(
                format="loss-service-eval",
                version=2,
                dataset="set",
                scale=4,
                metrics=["psnr"],
                lower_is_better={"psnr": False},
                conventions={},
                models={model: dict(results=results)},
            )
        )
    )


def test_the_paired_table_pairs_image_by_image_and_names_the_better_model(tmp_path):
    """Uneven data: B lists its images in another order, lacks one of A's, has one A lacks, and
    one value that is null. The comparison must pair by image name, on the images both scored."""
    a = {"i1": 30.0, "i2": 31.5, "i3": 29.0, "i4": 33.25, "i5": 28.0, "i6": 35.0}
    b = {"i6": 34.0, "i5": 27.5, "i4": None, "i3": 28.0, "i2": 30.0, "i7": 40.0}  # i1 missing, i4 null, i7 only here
    eval_file(tmp_path / "a.json", "A", a)
    eval_file(tmp_path / "b.json", "B", b)
    report = Report.build(load_runs(tmp_path / "a.json") + load_runs(tmp_path / "b.json"), seed=3, resamples=500)
    ((first, second, comparison),) = report.paired("set ×4", "psnr")
    common = ["i2", "i3", "i5", "i6"]
    differences = [a[i] - b[i] for i in common]  # 1.5, 1.0, 0.5, 1.0: A is better on every common image
    assert (first, second, comparison.count) == ("A", "B", 4)
    assert comparison.mean_diff == pytest.approx(sum(differences) / 4, abs=1e-12)
    assert (comparison.wins, comparison.ties, comparison.losses) == (4, 0, 0)
    assert (comparison.ci_low, comparison.ci_high) == bootstrap_mean_ci(np.array(differences), 3, 500)
    verdict = re.search(r"<td[^>]*>(A better|B better|no clear difference)</td>", html_paired(report, "set ×4")).group(1)
    assert verdict == ("A better" if comparison.ci_low > 0 and comparison.p_value < 0.05 else "no clear difference")
    # With B ahead on the same images the verdict flips, not the row order.
    eval_file(tmp_path / "b.json", "B", {i: (None if v is None else v + 3.0) for i, v in b.items()})
    flipped = Report.build(load_runs(tmp_path / "a.json") + load_runs(tmp_path / "b.json"), seed=3, resamples=500)
    ((_, _, worse),) = flipped.paired("set ×4", "psnr")
    assert (worse.wins, worse.losses) == (0, 4) and worse.mean_diff == pytest.approx(sum(differences) / 4 - 3.0, abs=1e-12)
    assert "B better" in html_paired(flipped, "set ×4") or not (worse.ci_high < 0 and worse.p_value < 0.05)


def test_the_html_plus_minus_is_half_the_bootstrap_interval(tmp_path):
    scores = {f"i{k}": 20.0 + k * k / 7.0 for k in range(9)}
    eval_file(tmp_path / "a.json", "A", scores)
    report = Report.build(load_runs(tmp_path / "a.json"), seed=5, resamples=400)
    low, high = bootstrap_mean_ci(np.array(list(scores.values())), 5, 400)
    (plus_minus,) = re.findall(r'<span class="ci">±([0-9.]+)</span>', html_table(report, "set ×4"))
    assert plus_minus == f"{(high - low) / 2:.2f}" and not math.isclose(float(plus_minus), high - low, abs_tol=0.01)


# --- weights -----------------------------------------------------------------------------------------


def test_the_weights_search_order_is_weights_dir_then_torch_home_then_the_hf_cache(tmp_path, monkeypatch):
    """The same file in all three places: each removal uncovers the next place, in the documented order."""
    spec = W.WeightSpec("probe", ("probe.pth",), "file:///unused", hf_repo="owner/probe", hf_filename="probe.pth")
    explicit, torch_home, hf_home = tmp_path / "explicit", tmp_path / "torch", tmp_path / "hf"
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("LOSS_SERVICE_WEIGHTS_DIR", raising=False)
    places = [explicit, torch_home / "hub" / "checkpoints", hf_home / "hub" / "models--owner--probe" / "snapshots" / "abc123"]
    for place in places:
        place.mkdir(parents=True)
        (place / "probe.pth").write_bytes(b"x")
    for place in places:
        assert W.find_weights(spec, explicit) == place / "probe.pth"
        (place / "probe.pth").unlink()
    assert W.find_weights(spec, explicit) is None


@pytest.mark.parametrize("name", ["lpips_vgg_heads", "lpips_alex_heads", "dists_alpha_beta"])
def test_lpips_and_dists_files_are_weight_files_found_in_the_weights_dir_first_and_verified(name, tmp_path, monkeypatch):
    """The heads and α/β resolve like a backbone file: the weights dir before the copy the
    package ships, and a file whose sha256 is not the declared one is refused."""
    import hashlib

    spec = W.WEIGHT_FILES[name]
    bundled = W.bundled_path(spec)
    assert W.find_weights(spec, tmp_path) == bundled and hashlib.sha256(bundled.read_bytes()).hexdigest() == spec.sha256
    assert W.checksum_status(spec, bundled) == "ok"
    (tmp_path / spec.filenames[0]).write_bytes(bundled.read_bytes())
    assert W.resolve(spec, tmp_path) == tmp_path / spec.filenames[0]
    (tmp_path / spec.filenames[0]).write_bytes(bundled.read_bytes() + b"\0")
    monkeypatch.setenv("LOSS_SERVICE_VERIFY_WEIGHTS", "1")
    with pytest.raises(W.ChecksumError, match=spec.sha256[:12]):
        W.resolve(spec, tmp_path)


def test_weights_list_shows_the_lpips_and_dists_files_with_their_checksums(capsys):
    assert cli_main(["weights", "list"]) == 0
    rows = {line.split("│")[1].strip(): line for line in capsys.readouterr().out.splitlines() if line.count("│") > 2}
    for name in ("lpips_vgg_heads", "lpips_alex_heads", "dists_alpha_beta"):
        assert "present" in rows[name] and " ok " in rows[name] and W.WEIGHT_FILES[name].sha256 in rows[name], rows[name]


def test_create_metric_with_missing_weights_fails_at_construction(tmp_path, monkeypatch):
    monkeypatch.setenv("LOSS_SERVICE_WEIGHTS_DIR", str(tmp_path))  # empty: no checkpoint anywhere
    clear_shared_backbones()
    with pytest.raises(W.WeightsNotFoundError, match="vgg16"):
        losses.create_metric("perceptual")


def test_kd_without_its_vgg_term_never_needs_vgg16(tmp_path, monkeypatch, weights_dir):
    """λ_vgg = 0: no VGG16 file anywhere, and none built; the value is the two L1 terms."""
    monkeypatch.setenv("LOSS_SERVICE_WEIGHTS_DIR", str(tmp_path))
    clear_shared_backbones()
    g = torch.Generator().manual_seed(2)
    sr, gt, teacher = (torch.rand(2, 3, 24, 24, generator=g) for _ in range(3))
    value = losses.score(sr, gt, teacher=teacher, metrics=["kd"], lambda_vgg=0.0)["kd"]
    expected = (sr - gt).abs().mean(dim=(1, 2, 3)) + (sr - teacher).abs().mean(dim=(1, 2, 3))
    assert torch.allclose(value, expected, rtol=1e-6) and len(MODELS) == 0
    assert BACKBONES["vgg16"].weights.filenames[0] not in {p.name for p in tmp_path.iterdir()}
    module = losses.create_metric("kd", lambda_vgg=0.0)  # constructing it does not look for the file either
    assert torch.allclose(module(sr, gt, teacher=teacher), expected, rtol=1e-6)


# --- sliced passes ---------------------------------------------------------------------------------------


def test_a_batch_over_pass_pixels_runs_in_slices(weights_dir, monkeypatch):
    """The largest forward actually run stays within PASS_PIXELS, and the slices cover the batch."""
    limit = 2 * 2 * 40 * 40  # two samples of sr and gt per pass
    monkeypatch.setattr(features, "PASS_PIXELS", limit)
    forwarded = []
    stream = features.FeatureView.stream

    def recording(self, backbone, x, layers):
        forwarded.append(x.shape[0] * x.shape[-2] * x.shape[-1])
        return stream(self, backbone, x, layers)

    monkeypatch.setattr(features.FeatureView, "stream", recording)
    g = torch.Generator().manual_seed(4)
    sr, gt = torch.rand(5, 3, 40, 40, generator=g), torch.rand(5, 3, 40, 40, generator=g)
    with torch.no_grad():
        sliced = losses.score(sr, gt, metrics=["perceptual"])["perceptual"]
    assert max(forwarded) <= limit and len(forwarded) == 3 and sum(forwarded) == 2 * 5 * 40 * 40
    monkeypatch.setattr(features, "PASS_PIXELS", 2**21)
    forwarded.clear()
    with torch.no_grad():
        whole = losses.score(sr, gt, metrics=["perceptual"])["perceptual"]
    assert forwarded == [2 * 5 * 40 * 40] and torch.allclose(sliced, whole, rtol=1e-5)
