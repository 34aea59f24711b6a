"""FID and KID against torch-fidelity, with the same generated Inception weights file.

The sets are 64×64 crops of scikit-image's photos: a GT set of 30 crops and an SR set of 24
other crops with noise added (the sets are neither paired nor the same size). torch-fidelity's
``calculate_metrics`` reads the folders with its own loader and its own InceptionV3.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import losses
from losses.sets.statistics import DatasetMetricError, FeatureFile, FeatureStats, frechet_distance, trace_sqrt_product

from .conftest import generated_inception_state, to_tensor

SUBSET = 20  # KID subset size: at most the smaller set
FID_REL = 1e-4
KID_ABS = 1e-6


def photo_crops(count: int, seed: int, noise: float) -> list[np.ndarray]:
    from skimage import data

    photos = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket(), data.cat(), data.immunohistochemistry()]
    rng = np.random.default_rng(seed)
    crops = []
    for index in range(count):
        photo = photos[index % len(photos)]
        y, x = rng.integers(0, photo.shape[0] - 64), rng.integers(0, photo.shape[1] - 64)
        crop = photo[y : y + 64, x : x + 64].astype(np.float64) + rng.normal(0, noise, (64, 64, 3))
        crops.append(np.clip(crop, 0, 255).round().astype(np.uint8))
    return crops


@pytest.fixture(scope="module")
def sets(tmp_path_factory, weights_dir):
    root = tmp_path_factory.mktemp("sets")
    folders = {}
    for name, count, seed, noise in (("sr", 24, 1, 12.0), ("gt", 30, 2, 0.0)):
        folders[name] = root / name
        folders[name].mkdir()
        for index, crop in enumerate(photo_crops(count, seed, noise)):
            Image.fromarray(crop).save(folders[name] / f"{index:03d}.png")
    return folders


@pytest.fixture(scope="module")
def reference(sets, weights_dir):
    """torch-fidelity's FID and KID of the two folders with the generated weights file."""
    import torch_fidelity

    return torch_fidelity.calculate_metrics(
        input1=str(sets["sr"]),
        input2=str(sets["gt"]),
        fid=True,
        kid=True,
        kid_subset_size=SUBSET,
        feature_extractor_weights_path=str(weights_dir / "pt_inception-2015-12-05-6726825d.pth"),
        cuda=False,
        cache=False,
        verbose=False,
        save_cpu_ram=True,
    )


def folder_batches(folder, every: int = 1, offset: int = 0):
    yield from path_batches(sorted(folder.iterdir())[offset::every])


def path_batches(paths):
    for path in paths:
        yield to_tensor(np.asarray(Image.open(path).convert("RGB")))


@pytest.fixture(scope="module")
def ours(sets):
    """The library's features (FID's sums and KID's rows, default convention) of both sets and of
    the GT set's two interleaved halves: one Inception pass per image for the tests that reduce them."""
    return dict(
        sr=losses.dataset_features(folder_batches(sets["sr"])),
        gt=losses.dataset_features(folder_batches(sets["gt"])),
        halves=[losses.dataset_features(folder_batches(sets["gt"], 2, offset)) for offset in (0, 1)],
    )


@pytest.fixture(scope="module")
def few(sets, tmp_path_factory):
    """Every third image of each set (8 SR, 10 GT), in folders, for the other tools' slower runs."""
    root = tmp_path_factory.mktemp("few")
    folders = {}
    for name, folder in sets.items():
        folders[name] = root / name
        folders[name].mkdir()
        for path in sorted(folder.iterdir())[::3]:
            shutil.copy(path, folders[name] / path.name)
    return folders


def test_inception_features_equal_torch_fidelity_extractor(photos, weights_dir):
    """The network and input handling alone, on whole photos of three sizes (one non-square)."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    theirs = FeatureExtractorInceptionV3(
        "inception-v3-compat", ["2048"], feature_extractor_weights_path=str(weights_dir / "pt_inception-2015-12-05-6726825d.pth")
    )
    ours = losses.get_backbone("inception_v3_fid")
    for photo in photos:
        with torch.inference_mode():
            expected = theirs(torch.from_numpy(photo).permute(2, 0, 1)[None].contiguous())[0]
            got = ours(to_tensor(photo), ["pool3"])["pool3"].flatten(1)
        assert expected.std() > 0.1  # the generated weights give features that vary
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_fid_and_kid_equal_torch_fidelity(ours, reference):
    values = losses.dataset_score(ours["sr"], ours["gt"], subset_size=SUBSET)
    assert values["fid"] == pytest.approx(reference["frechet_inception_distance"], rel=FID_REL)
    assert values["kid"] == pytest.approx(reference["kernel_inception_distance_mean"], abs=KID_ABS)
    assert values["kid.std"] == pytest.approx(reference["kernel_inception_distance_std"], abs=KID_ABS)
    assert values["fid"] > 1.0  # the noisy set is measurably apart


def test_partial_sums_merge_to_one_pass(ours, reference, tmp_path):
    """Two replicas each see half of the GT set (interleaved); their saved sums merge to the
    statistics of one pass, and to torch-fidelity's FID."""
    sr, whole = ours["sr"], ours["gt"]
    for index, half in enumerate(ours["halves"]):
        half.stats.save(tmp_path / f"replica{index}.npz")
    merged = FeatureStats.load(tmp_path / "replica0.npz").merge(FeatureStats.load(tmp_path / "replica1.npz"))
    assert merged.count == whole.count == 30
    np.testing.assert_allclose(merged.covariance(), whole.stats.covariance(), rtol=0, atol=1e-12)
    assert frechet_distance(sr.stats, merged) == pytest.approx(frechet_distance(sr.stats, whole.stats), rel=1e-10)
    assert frechet_distance(sr.stats, merged) == pytest.approx(reference["frechet_inception_distance"], rel=FID_REL)


def test_statistics_from_other_weights_are_never_merged(sets, ours, weights_dir, tmp_path):
    """Two replicas whose Inception files differ (one sha256 each) refuse to merge, saved and loaded
    or in memory; the same weights merge."""
    other = tmp_path / "other"
    other.mkdir()
    for path in weights_dir.iterdir():
        shutil.copy(path, other / path.name)
    state = generated_inception_state()
    state["fc.bias"] = state["fc.bias"] + 1.0  # another file, same architecture
    torch.save(state, other / "pt_inception-2015-12-05-6726825d.pth")
    mine, same = ours["halves"]
    theirs = losses.dataset_features(folder_batches(sets["gt"], 2, 1), "fid", weights_dir=other)
    assert mine.stats.meta["weights_sha256"] != theirs.stats.meta["weights_sha256"]
    mine.stats.save(tmp_path / "a.npz")
    theirs.stats.save(tmp_path / "b.npz")
    with pytest.raises(DatasetMetricError, match="weights_sha256"):
        FeatureStats.load(tmp_path / "a.npz").merge(FeatureStats.load(tmp_path / "b.npz"))
    with pytest.raises(DatasetMetricError, match="weights_sha256"):
        theirs.stats.merge(mine.stats)
    assert mine.stats.merge(same.stats).count == 30


def test_trace_sqrt_equals_scipy_sqrtm_on_full_rank_covariances():
    from scipy.linalg import sqrtm

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(600, 64)), rng.normal(size=(500, 64)) @ rng.normal(size=(64, 64)) * 0.3
    sigma_a, sigma_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    expected = np.trace(sqrtm(sigma_a @ sigma_b)).real
    assert trace_sqrt_product(sigma_a, sigma_b) == pytest.approx(expected, rel=1e-9)


def test_covariance_equals_numpy_cov():
    rng = np.random.default_rng(1)
    features = rng.normal(3.0, 2.0, size=(40, 16)).astype(np.float32)
    stats = FeatureStats.empty(16)
    stats.add(features[:15])
    stats.add(features[15:])
    np.testing.assert_allclose(stats.covariance(), np.cov(features.astype(np.float64), rowvar=False), rtol=1e-10, atol=1e-12)


def test_bad_sets_get_clear_errors(tmp_path):
    one = FeatureStats.empty(8)
    one.add(np.ones((1, 8)))
    with pytest.raises(DatasetMetricError, match="a set of 1 image has no covariance"):
        frechet_distance(one, one)
    stats = FeatureStats.empty(8)
    rows = np.ones((3, 8))
    rows[2, 5] = np.nan
    with pytest.raises(DatasetMetricError, match=r"not finite \(first: row 2\)"):
        stats.add(rows)
    assert stats.count == 0  # nothing of the refused batch was added
    stored = FeatureFile(8)
    stored.append(np.zeros((4, 8)))
    sides = losses.SetFeatures(stats, stored)
    with pytest.raises(DatasetMetricError, match="fewer than KID's subset_size 1000"):
        losses.DATASET_METRICS["kid"].reduce(sides, sides, losses.DATASET_METRICS["kid"].options)
    with pytest.raises(losses.MetricError, match="dataset metric"):
        losses.score(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32), metrics=["psnr", "fid"])


def test_wire_format_round_trips_and_refuses_other_versions():
    from service.common.features_wire import FeaturesFormatError, decode_features, encode_features

    rows = np.random.default_rng(2).normal(size=(3, 2048)).astype(np.float32)
    payload = encode_features(rows)
    np.testing.assert_array_equal(decode_features(payload), rows)
    with pytest.raises(FeaturesFormatError, match="version 2"):
        decode_features({**payload, "version": 2})
    with pytest.raises(FeaturesFormatError, match="need"):
        decode_features({**payload, "count": 4})


@pytest.fixture(scope="module")
def server(weights_dir):
    from .servers import SubprocessServer

    with SubprocessServer("--models", "inception_v3_fid") as srv:
        yield srv


def test_service_features_and_refusals(server, sets):
    import asyncio

    import httpx

    from service.client import AsyncLossClient, LossClient

    paths = sorted(sets["gt"].iterdir())[:5]
    with LossClient(server.url) as client:
        answer = client.features(paths)
        catalogue = {m["name"]: m for m in client.metrics()}

    async def features_async():
        async with AsyncLossClient(server.url) as client:
            return await client.features(paths, "fid")

    np.testing.assert_array_equal(asyncio.run(features_async())["features"], answer["features"])
    assert answer["features"].shape == (5, 2048) and answer["extractor"] == "inception_v3_fid:pool3"
    assert answer["format"] == "loss-service.features" and answer["version"] == 1
    expected = losses.dataset_features(path_batches(paths), "kid").stored.array()
    np.testing.assert_allclose(answer["features"], expected, rtol=1e-5, atol=1e-6)
    assert catalogue["fid"]["dataset"] and not catalogue["psnr"]["dataset"] and catalogue["fid"]["available"]
    assert catalogue["fid"]["choices"] == {"convention": ["torch-fidelity", "clean-fid", "pytorch-fid"]}
    with LossClient(server.url) as client:  # another tool's convention: its input handling, recorded
        clean = client.features(paths, "fid", {"convention": "clean-fid"})
        bad = httpx.post(f"{server.url}/v1/features", files=[("image", paths[0].read_bytes())], data={"options": '{"convention": "tf"}'})
    assert (
        clean["extractor"] == "inception_v3_fid:pool3_clean_fid"
        and clean["conventions"]["metrics"]["fid"]["options"]["convention"] == "clean-fid"
    )
    expected_clean = losses.dataset_features(path_batches(paths), "kid", convention="clean-fid").stored.array()
    np.testing.assert_allclose(clean["features"], expected_clean, rtol=1e-5, atol=1e-6)
    assert bad.status_code == 422 and "'convention' must be one of" in bad.json()["detail"][0]["msg"]
    image = paths[0].read_bytes()
    per_image = httpx.post(f"{server.url}/v1/score", files=[("sr", image), ("gt", image)], data={"metrics": "fid"})
    assert per_image.status_code == 422 and "dataset metric" in per_image.json()["detail"][0]["msg"]
    assert "/v1/features" in per_image.json()["detail"][0]["msg"]
    wrong = httpx.post(f"{server.url}/v1/features", files=[("image", image)], data={"metrics": "psnr"})
    assert wrong.status_code == 422 and "score single images" in wrong.json()["detail"][0]["msg"]
    broken = httpx.post(f"{server.url}/v1/features", files=[("image", image), ("image", b"not an image")])
    assert broken.status_code == 415 and broken.json()["detail"][0]["loc"] == ["body", "image[1]"]
    field = httpx.post(f"{server.url}/v1/features", files=[("image", image), ("sr", image)])
    assert field.status_code == 422 and "unknown form field 'sr'" in field.json()["detail"][0]["msg"]
    missing = httpx.post(f"{server.url}/v1/features", files=[("sr", image)])
    assert missing.status_code == 422 and missing.json()["detail"][0]["loc"] == ["body", "image"]


def test_eval_reports_fid_kid_per_model_and_caches_the_gt_set(server, sets, reference, tmp_path, capsys):
    from service.cli import main as cli_main

    noisy_copy = tmp_path / "copy"
    shutil.copytree(sets["sr"], noisy_copy)
    out = tmp_path / "fid.json"
    cache = tmp_path / "cache"
    models = ["--url", server.url, "--sr", f"a={sets['sr']}", "--sr", f"b={noisy_copy}"]
    args = [
        "eval",
        *models,
        "--gt",
        str(sets["gt"]),
        "--metrics",
        "fid,kid",
        "--options",
        json.dumps({"subset_size": SUBSET}),
        "--feature-cache",
        str(cache),
    ]
    rest = ["--out", str(tmp_path / "fid.csv"), "--json", str(out), "--dataset", "crops", "--quiet"]
    args += rest
    assert cli_main([*args, "--store", str(tmp_path / "results.db")]) == 0
    first = json.loads(out.read_text())
    for model in ("a", "b"):
        entry = first["models"][model]["dataset_metrics"]
        assert entry["values"]["fid"] == pytest.approx(reference["frechet_inception_distance"], rel=FID_REL)
        assert entry["values"]["kid"] == pytest.approx(reference["kernel_inception_distance_mean"], abs=KID_ABS)
        assert (entry["sr_count"], entry["gt_count"]) == (24, 30)
        assert first["models"][model]["summary"]["fid"]["mean"] == entry["values"]["fid"]
    assert first["lower_is_better"]["fid"] is True and "fid" in first["conventions"]["metrics"]
    # the record holds the KID options the values were reduced with, not the server's defaults
    assert first["conventions"]["metrics"]["kid"]["options"]["subset_size"] == SUBSET
    assert first["models"]["a"]["dataset_metrics"]["gt_cached"] is False
    assert len(list(cache.glob("*.stats.npz"))) == 1 and len(list(cache.glob("*.f32"))) == 1
    from service.client.store import ResultsStore

    with ResultsStore(tmp_path / "results.db") as store:
        stored = {(r.model, r.image, r.metric): r.value for r in store.rows()}
    assert stored[("a", "(set)", "fid")] == first["models"]["a"]["dataset_metrics"]["values"]["fid"]
    assert {key[2] for key in stored} == {"fid", "kid", "kid.std"}

    only_a = ["eval", "--url", server.url, "--sr", f"a={sets['sr']}"]
    assert cli_main([*only_a, *args[len(models) + 1 :]]) == 0  # the GT features come from the cache now
    again = json.loads(out.read_text())["models"]["a"]["dataset_metrics"]
    assert again["gt_cached"] is True and again["values"] == first["models"]["a"]["dataset_metrics"]["values"]

    changed = tmp_path / "gt"
    shutil.copytree(sets["gt"], changed)
    Image.fromarray(photo_crops(1, 9, 0.0)[0]).save(changed / "000.png")  # one file's content differs
    assert cli_main([*only_a, "--gt", str(changed), *args[len(models) + 3 :]]) == 0
    assert json.loads(out.read_text())["models"]["a"]["dataset_metrics"]["gt_cached"] is False

    html = tmp_path / "report.html"
    assert cli_main(["report", str(out), "--html", str(html), "--markdown", str(tmp_path / "r.md")]) == 0
    markdown = (tmp_path / "r.md").read_text()
    last = json.loads(out.read_text())["models"]["a"]["dataset_metrics"]["values"]
    assert f"| a | {last['fid']:.4f} | {last['kid']:.4f} |" in markdown.replace("**", "")


def test_eval_refuses_sets_it_cannot_reduce_before_sending_anything(sets, tmp_path, capsys):
    """No server listens on port 9: each refusal comes before the first request."""
    from service.cli import main as cli_main

    base = ["eval", "--url", "http://127.0.0.1:9", "--sr", str(sets["sr"]), "--quiet", "--out", str(tmp_path / "o.csv")]
    assert cli_main([*base, "--metrics", "fid"]) == 2
    assert "give --gt DIR" in capsys.readouterr().err
    assert cli_main([*base, "--gt", str(sets["gt"]), "--metrics", "kid"]) == 2  # 24 SR images, subset_size 1000
    assert "fewer than KID's subset_size 1000" in capsys.readouterr().err
    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(sorted(sets["gt"].iterdir())[0], one / "a.png")
    assert cli_main([*base, "--gt", str(one), "--metrics", "fid"]) == 2
    assert "--gt holds 1 image(s)" in capsys.readouterr().err


# --- the other tools' conventions: clean-fid and pytorch-fid ------------------------------------


def big_photos() -> list[np.ndarray]:
    """Real photos larger than 299 px on each side, one non-square, as the resize step sees them."""
    from skimage import data

    return [data.astronaut(), data.coffee(), data.chelsea()[:, :400]]


def test_clean_fid_input_is_clean_fids_resize_on_photos_larger_than_299():
    from cleanfid.resize import build_resizer

    from losses.nets.inception import clean_fid_input

    resize = build_resizer("clean")  # PIL bicubic on float32 channels, clipped: clean-fid's "clean" mode
    for photo in big_photos():
        expected = torch.from_numpy(resize(photo)).permute(2, 0, 1)
        got = clean_fid_input(to_tensor(photo))[0] * 128 + 128
        torch.testing.assert_close(got, expected, rtol=0, atol=2e-5)  # (x − 128)/128 and back: float32 rounding


@pytest.fixture(scope="module")
def pytorch_fid_model(weights_dir):
    """pytorch-fid's InceptionV3 (2048-d pool3, its own resize and scaling) loading the generated
    weights file from the torch hub cache, where its loader looks."""
    from pytorch_fid.inception import InceptionV3

    hub = Path(torch.hub.get_dir()) / "checkpoints"
    hub.mkdir(parents=True, exist_ok=True)
    shutil.copy(weights_dir / "pt_inception-2015-12-05-6726825d.pth", hub / "pt_inception-2015-12-05-6726825d.pth")
    return InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()


def test_pytorch_fid_input_and_features_are_pytorch_fids(pytorch_fid_model, weights_dir):
    ours = losses.get_backbone("inception_v3_fid")
    for photo in big_photos():
        with torch.inference_mode():
            expected = pytorch_fid_model(to_tensor(photo))[0].flatten(1)
            got = ours(to_tensor(photo), ["pool3_pytorch_fid"])["pool3_pytorch_fid"].flatten(1)
            other = ours(to_tensor(photo), ["pool3"])["pool3"].flatten(1)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
        assert (other - expected).abs().max() > 1e-3  # the conventions differ measurably on the same photo


def test_fid_in_the_pytorch_fid_convention_equals_pytorch_fid(few, pytorch_fid_model, sqrtm_once):
    from pytorch_fid.fid_score import calculate_fid_given_paths

    expected = calculate_fid_given_paths([str(few["sr"]), str(few["gt"])], batch_size=8, device="cpu", dims=2048, num_workers=0)
    tools = list(sqrtm_once)
    got = losses.dataset_score(folder_batches(few["sr"]), folder_batches(few["gt"]), "fid", convention="pytorch-fid")["fid"]
    assert got == pytest.approx(expected, rel=1e-9)
    assert sqrtm_once[len(tools) :] == tools  # the same matrices, bit for bit


@pytest.fixture
def sqrtm_once(monkeypatch) -> list[str]:
    """scipy's ``sqrtm`` (seconds at 2048-d) taken once per distinct matrix: the tool and the library
    each take it of their covariances' product, and a deterministic function of the same bits gives
    the same bits. Yields the digest of each call's matrix, so a test can see the library asked for
    the very matrix the tool did. (With ``disp=False`` the error estimate is computed as scipy does.)"""
    from scipy import linalg

    original, roots, digests = linalg.sqrtm, {}, []

    def sqrtm(matrix, disp=True, **kwargs):
        matrix = np.asarray(matrix)
        digest = hashlib.sha256(np.ascontiguousarray(matrix).tobytes()).hexdigest() + str((matrix.shape, matrix.dtype, kwargs))
        digests.append(digest)
        if digest not in roots:
            roots[digest] = original(matrix, **kwargs)
        root = roots[digest].copy()
        if disp is False:
            return root, np.linalg.norm(root @ root - matrix, "fro") ** 2 / np.linalg.norm(matrix, "fro")
        return root

    monkeypatch.setattr(linalg, "sqrtm", sqrtm)
    return digests


class CleanFidNetwork(torch.nn.Module):
    """Our network as clean-fid's feature model sees it: [0, 255] images of 299², (x − 128)/128
    inside, as its ``InceptionV3W`` wrapper does before the TorchScript layers."""

    def forward(self, x):
        from losses.nets.inception import STAGES

        h = (x - 128) / 128
        model = losses.get_backbone("inception_v3_fid").model
        for stage in STAGES:
            h = getattr(model, stage)(h)
        return h.flatten(1)


def test_fid_in_the_clean_fid_convention_equals_clean_fid(few, weights_dir, sqrtm_once):
    from cleanfid import fid as clean_fid

    expected = clean_fid.compute_fid(
        str(few["sr"]),
        str(few["gt"]),
        mode="clean",
        custom_feat_extractor=CleanFidNetwork(),
        device=torch.device("cpu"),
        num_workers=0,
        batch_size=8,
        verbose=False,
        use_dataparallel=False,
    )
    tools = list(sqrtm_once)
    got = losses.dataset_score(folder_batches(few["sr"]), folder_batches(few["gt"]), "fid", convention="clean-fid")["fid"]
    assert got == pytest.approx(expected, rel=1e-9)
    assert sqrtm_once[len(tools) :] == tools  # the same matrices, bit for bit
    sr, gt = (losses.dataset_features(folder_batches(few[name])) for name in ("sr", "gt"))
    # another number for the same sets than the default convention's (torch-fidelity's): why it is recorded
    assert abs(got - losses.dataset_score(sr, gt, "fid")["fid"]) > 1e-3 * got


def test_kid_refuses_a_small_set_unless_asked_to_shrink_and_then_is_seeded(ours):
    sr, gt = ours["sr"], ours["gt"]
    with pytest.raises(DatasetMetricError, match="shrink_subsets"):
        losses.dataset_score(sr, gt, "kid")
    shrunk = losses.dataset_score(sr, gt, "kid", shrink_subsets=True)
    assert shrunk == losses.dataset_score(sr, gt, "kid", shrink_subsets=True)  # seeded: the same draws
    assert shrunk == losses.dataset_score(sr, gt, "kid", subset_size=24)  # the smaller set's size, 24
    assert losses.dataset_score(sr, gt, "kid", shrink_subsets=True, seed=1) != shrunk
