"""End-to-end tests against a real ``loss-service serve`` process with generated checkpoints."""

import asyncio
import gzip
import json
import platform
import sys

import httpx
import numpy as np
import pytest
import torch

from losses import BACKBONES, REGISTRY
from losses.registry import get_metrics, resolve_options
from service.common.decode import decode

from .servers import SubprocessServer, metric_value, npy_bytes, png_bytes, random_image
from .test_registry import library_values


@pytest.fixture(scope="module")
def server(weights_dir):
    with SubprocessServer("--max-image-pixels", "1000000", "--max-body-mb", "4", "--max-delay-ms", "2") as srv:
        yield srv


def triplet(seed=0, size=(28, 42)):
    gt = random_image(*size, seed)
    noise = np.random.default_rng(seed + 100).integers(-20, 21, gt.shape)
    sr = np.clip(gt.astype(int) + noise, 0, 255).astype(np.uint8)
    lr = gt[::2, ::2].copy()
    teacher = np.clip(gt.astype(int) - noise // 2, 0, 255).astype(np.uint8)
    return {role: png_bytes(a) for role, a in dict(sr=sr, gt=gt, lr=lr, teacher=teacher).items()}


def files(images: dict, **extra):
    return [(role, (f"{role}.png", data, "image/png")) for role, data in images.items()] + list(extra.items())


def test_every_catalogue_metric_equals_library(server):
    images = triplet(seed=1, size=(180, 200))  # after crop_border=2: ms_ssim needs a short side of 176, niqe two 96² blocks
    # crops=resize: maniqa_kadid's default five 224² crops do not fit 180×200
    options = dict(crop_border=2, y_channel=True, perceptual_weight=0.3, lambda_kd=0.5, loss_weight=2.0, crops="resize")
    catalogue = httpx.get(f"{server.url}/v1/metrics").json()
    assert [entry["name"] for entry in catalogue] == list(REGISTRY)  # one catalogue: image, clip and set metrics
    assert {entry["kind"] for entry in catalogue} == {"image", "clip", "set"}
    # fid, kid: tests/test_fid.py; tof, tlp, vmaf: tests/test_temporal.py, tests/test_video.py
    names = [entry["name"] for entry in catalogue if not entry["dataset"] and not entry["clip"]]
    response = httpx.post(
        f"{server.url}/v1/score", files=files(images), data=dict(metrics=",".join(names), options=json.dumps(options)), timeout=120
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["pretrained"] is True and body["device"] == "cpu" and body["precision"] == "fp32"
    assert set(body["timing_ms"]) == {"queue", "compute", "total"}
    tensors = {role: torch.from_numpy(decode(data, role).pixels).permute(2, 0, 1)[None] for role, data in images.items()}
    tensors = {role: torch.cat([t, t]) for role, t in tensors.items()}  # library_values scores per image of a batch
    per_metric = resolve_options(get_metrics(names), options)
    with torch.no_grad():
        expected = library_values(tensors, per_metric)
    for name, value in expected.items():
        ours, ref = body["scores"][name], value[0].item()
        tolerance = 1e-6 if name in ("psnr", "ssim", "ms_ssim", "lr_psnr") else 1e-5 * max(abs(ref), 1e-12)
        assert abs(ours - ref) <= tolerance, (name, ours, ref)


def test_identical_images_give_null_psnr_with_warning(server):
    image = png_bytes(random_image(24, 24, 5))
    response = httpx.post(f"{server.url}/v1/score", files=files(dict(sr=image, gt=image)), data=dict(metrics="psnr,ssim"))
    body = response.json()
    assert response.status_code == 200
    assert body["scores"]["psnr"] is None and abs(body["scores"]["ssim"] - 1.0) < 1e-12
    assert any("psnr" in w and "identical" in w for w in body["warnings"])


def test_lr_psnr_of_an_sr_that_downscales_to_its_lr_is_null_only_with_uint8_rounding(server):
    from losses import imresize

    sr = random_image(32, 40, 6)
    lr = imresize(torch.from_numpy(sr).permute(2, 0, 1), 0.5).permute(1, 2, 0).numpy()  # uint8, as MATLAB writes it
    images = files(dict(sr=png_bytes(sr), lr=png_bytes(lr)))  # lr_psnr reads no gt
    plain = httpx.post(f"{server.url}/v1/score", files=images, data=dict(metrics="lr_psnr")).json()
    rounded = httpx.post(
        f"{server.url}/v1/score", files=images, data=dict(metrics="lr_psnr", options=json.dumps({"uint8_rounding": True}))
    ).json()
    assert 40 < plain["scores"]["lr_psnr"] < 80 and not plain["warnings"]
    assert rounded["scores"]["lr_psnr"] is None
    assert any(w.startswith("lr_psnr: inf") and "identical: MSE is 0" in w for w in rounded["warnings"])
    assert rounded["conventions"]["metrics"]["lr_psnr"]["options"]["uint8_rounding"] is True


def test_npy_and_alpha_inputs(server):
    gt = random_image(20, 20, 3)
    sr_float = gt.astype(np.float32) / 255.0
    rgba = np.dstack([gt, np.full(gt.shape[:2], 255, np.uint8)])
    response = httpx.post(
        f"{server.url}/v1/score",
        files=[
            ("sr", ("sr.npy", npy_bytes(sr_float), "application/octet-stream")),
            ("gt", ("gt.png", png_bytes(rgba, "RGBA"), "image/png")),
        ],
        data=dict(metrics="l1"),
    )
    assert response.status_code == 200, response.text
    assert response.json()["scores"]["l1"] <= 1e-7
    assert any("alpha" in w for w in response.json()["warnings"])


def test_batch_endpoint_pairs_by_order_and_isolates_failures(server):
    good = [triplet(seed=s) for s in (2, 3)]
    bad_gt = png_bytes(random_image(10, 10, 9))
    upload = []
    for role in ("sr", "gt"):
        upload += [(role, (f"{role}{i}.png", t[role], "image/png")) for i, t in enumerate(good)]
    upload += [("sr", ("sr2.png", good[0]["sr"], "image/png")), ("gt", ("gt2.png", bad_gt, "image/png"))]
    response = httpx.post(f"{server.url}/v1/score/batch", files=upload, data=dict(metrics="psnr,l1"), timeout=60)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert len(results) == 3
    assert results[2]["error"]["status"] == 422 and results[2]["error"]["detail"][0]["loc"] == ["body", "gt"]
    singles = [
        httpx.post(f"{server.url}/v1/score", files=files({k: t[k] for k in ("sr", "gt")}), data=dict(metrics="psnr,l1")).json()
        for t in good
    ]
    for result, single in zip(results[:2], singles):
        assert result["scores"] == pytest.approx(single["scores"], rel=1e-12)
    mean = response.json()["mean"]
    assert mean["psnr"] == pytest.approx((singles[0]["scores"]["psnr"] + singles[1]["scores"]["psnr"]) / 2, rel=1e-12)


def test_batch_ranks_candidates_against_one_reference(server):
    """One gt and one lr for three sr: each candidate scores as it would alone."""
    base = triplet(seed=4, size=(40, 40))
    candidates = [triplet(seed=4 + 10 * i, size=(40, 40))["sr"] for i in range(3)]
    upload = [("sr", (f"sr{i}.png", c, "image/png")) for i, c in enumerate(candidates)]
    upload += [("gt", ("gt.png", base["gt"], "image/png")), ("lr", ("lr.png", base["lr"], "image/png"))]
    metrics = "psnr,ssim,perceptual,lpips_vgg,clp_vgg19"
    response = httpx.post(f"{server.url}/v1/score/batch", files=upload, data=dict(metrics=metrics), timeout=120)
    assert response.status_code == 200, response.text
    body = response.json()
    for candidate, result in zip(candidates, body["results"]):
        single = httpx.post(
            f"{server.url}/v1/score", files=files(dict(sr=candidate, gt=base["gt"], lr=base["lr"])), data=dict(metrics=metrics), timeout=120
        ).json()
        assert result["scores"] == pytest.approx(single["scores"], rel=1e-5)
        assert "conventions" not in result  # once per response, at the top
    record = body["conventions"]
    assert set(record["metrics"]) == set(metrics.split(",")) and record["metrics"]["clp_vgg19"]["backbones"] == ["vgg19"]
    assert {"vgg16", "vgg19", "lpips_vgg_heads"} <= set(record["weights"]) and record["pretrained"] is True
    two_gt = upload[:3] + [("gt", ("gt.png", base["gt"], "image/png"))] * 2
    refused = httpx.post(f"{server.url}/v1/score/batch", files=two_gt, data=dict(metrics="psnr"))
    assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["body", "gt"]
    assert "one gt per sr file" in refused.json()["detail"][0]["msg"]


def test_score_response_records_the_conventions(server):
    response = httpx.post(
        f"{server.url}/v1/score",
        files=files({k: v for k, v in triplet(seed=1).items() if k in ("sr", "gt")}),
        data=dict(metrics="psnr,ssim", options='{"crop_border": 2, "y_channel": true}'),
    ).json()
    record = response["conventions"]
    assert record["metrics"]["psnr"]["options"] == dict(crop_border=2, y_channel=True)
    assert "65.481" in record["pixels"]["y_channel"] and record["weights"] == {}  # pixel metrics read no weights
    assert record["version"] and record["torch"] and record["date"].endswith("+00:00") and record["precision"] == "fp32"


BAD_INPUTS = {
    "garbage": (415, "sr", lambda t: files({**t, "sr": b"not an image at all"})),
    "shape_mismatch": (422, "gt", lambda t: files({**t, "gt": png_bytes(random_image(10, 12, 1))})),
    "unknown_metric": (422, "metrics", lambda t: files(t, metrics="psnr,bogus")),
    "missing_image_for_metric": (422, "lr", lambda t: files({k: t[k] for k in ("sr", "gt")}, metrics="clp_vgg19")),
    "malformed_options": (422, "options", lambda t: files(t, options="{not json")),
    "wrong_option_type": (422, "options", lambda t: files(t, options='{"crop_border": "four"}')),
    "too_many_pixels": (413, "sr", lambda t: files({**t, "sr": png_bytes(np.zeros((1001, 1000, 3), np.uint8))})),
    "missing_gt": (422, "gt", lambda t: files({"sr": t["sr"]})),
    "pickled_npy": (415, "sr", lambda t: files({**t, "sr": npy_bytes(np.array([{"a": 1}], dtype=object))})),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_gets_4xx_naming_the_field_and_server_keeps_serving(server, case):
    status, field, build = BAD_INPUTS[case]
    t = {k: v for k, v in triplet(seed=4).items() if k in ("sr", "gt")}
    parts = build(t)
    upload = [p for p in parts if isinstance(p[1], tuple)]
    data = {k: v for k, v in parts if not isinstance(v, tuple)}
    response = httpx.post(f"{server.url}/v1/score", files=upload, data=data)
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert any(field in entry["loc"] for entry in detail), detail
    ok = httpx.post(f"{server.url}/v1/score", files=files(t), data=dict(metrics="psnr"))
    assert ok.status_code == 200


@pytest.mark.parametrize("gt_shape, hinted", [((34, 35), True), ((32, 33), True), ((48, 32), False), ((30, 32), False)])
def test_a_gt_a_few_pixels_larger_gets_the_mod_crop_hint(server, gt_shape, hinted):
    """Benchmark GTs not cropped to a multiple of the scale are the usual cause of a mismatch."""
    sr, gt = random_image(32, 32, 1), random_image(*gt_shape, 2)
    response = httpx.post(f"{server.url}/v1/score", files=files({"sr": png_bytes(sr), "gt": png_bytes(gt)}), data=dict(metrics="psnr"))
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", "gt"]
    message = response.json()["detail"][0]["msg"]
    assert message.startswith(f"gt is {gt_shape[1]}×{gt_shape[0]} but sr is 32×32; they must match")
    assert ("mod-crop" in message and "crop its bottom and right edges to 32×32" in message) == hinted


def test_a_gt_turned_90_degrees_gets_the_exif_hint(server):
    """A phone photo whose EXIF orientation one tool applied and another did not."""
    sr, gt = random_image(32, 48, 1), random_image(48, 32, 2)
    response = httpx.post(f"{server.url}/v1/score", files=files({"sr": png_bytes(sr), "gt": png_bytes(gt)}), data=dict(metrics="psnr"))
    message = response.json()["detail"][0]["msg"]
    assert response.status_code == 422 and message == (
        "gt is 32×48 but sr is 48×32; they must match; it is sr's size turned 90°: if one file carries an EXIF "
        "orientation tag, save both with the rotation applied (EXIF orientation is not applied here)"
    )


@pytest.mark.parametrize("endpoint", ["/v1/score", "/v1/score/batch"])
def test_fields_that_would_be_ignored_are_refused(server, endpoint):
    """An option sent as a field of its own, a misspelt field, a query parameter or a repeated
    ``metrics``/``options`` used to be dropped in silence: ``crop_border=4`` gave the uncropped
    PSNR with a 200."""
    t = {k: v for k, v in triplet(seed=5).items() if k in ("sr", "gt")}
    cases = [
        (dict(metrics="psnr", crop_border="4"), "", ("body", "crop_border"), 'options={"crop_border": ...}'),
        (dict(metrics="psnr", option='{"crop_border": 4}'), "", ("body", "option"), "did you mean 'options'?"),
        (dict(metric="psnr"), "", ("body", "metric"), "did you mean 'metrics'?"),
        (dict(), "?metrics=psnr", ("query", "metrics"), "send 'metrics' as a multipart form field"),
        # Repeated: the batch endpoint kept the last one (ssim only; the second crop) with a 200.
        (dict(metrics=["psnr", "ssim"]), "", ("body", "metrics"), "metrics given 2 times; give it once, as one comma-separated list"),
        (
            dict(metrics="psnr", options=['{"crop_border": 4}', '{"y_channel": true}']),
            "",
            ("body", "options"),
            "options given 2 times; give it once, as one JSON object",
        ),
        # A repeated key: json.loads kept the last (the uncropped PSNR).
        (
            dict(metrics="psnr", options='{"crop_border": 4, "crop_border": 0}'),
            "",
            ("body", "options"),
            "options: 'crop_border' given 2 times; give each key once",
        ),
    ]
    for data, query, loc, advice in cases:
        response = httpx.post(f"{server.url}{endpoint}{query}", files=files(t), data=data)
        assert response.status_code == 422, (data, query, response.text)
        (entry,) = response.json()["detail"]
        assert tuple(entry["loc"]) == loc and advice in entry["msg"], entry
    upper = httpx.post(f"{server.url}{endpoint}", files=files({**t, "LR": t["gt"]}), data=dict(metrics="psnr"))
    assert upper.status_code == 422 and "did you mean 'lr'?" in upper.json()["detail"][0]["msg"]
    cropped = httpx.post(f"{server.url}{endpoint}", files=files(t), data=dict(metrics="psnr", options='{"crop_border": 4}'))
    assert cropped.status_code == 200


def test_every_4xx_has_the_detail_shape_and_a_compressed_body_is_refused(server):
    """Starlette's own errors had a bare-string detail ("Missing boundary in multipart.", "Not
    Found"), breaking the one shape clients parse; a gzip-encoded body got "Invalid multipart data"."""
    t = {k: v for k, v in triplet(seed=6).items() if k in ("sr", "gt")}
    body = httpx.Request("POST", server.url, files=files(t), data=dict(metrics="psnr"))
    content, content_type = body.read(), body.headers["content-type"]
    cases = [
        (
            "POST",
            "/v1/score",
            dict(content=content, headers={"content-type": "multipart/form-data"}),
            400,
            ["body"],
            "malformed_body",
            "Missing boundary in multipart.",
        ),
        (
            "POST",
            "/v1/score",
            dict(content=gzip.compress(content), headers={"content-type": content_type, "content-encoding": "gzip"}),
            415,
            ["body"],
            "unsupported_media",
            "content-encoding 'gzip' unsupported: send the body uncompressed",
        ),
        ("GET", "/v1/score", {}, 405, ["request"], "method_not_allowed", "Method Not Allowed"),
        ("POST", "/v1/scores", {}, 404, ["request"], "not_found", "Not Found"),
    ]
    for method, path, kwargs, status, loc, kind, message in cases:
        response = httpx.request(method, f"{server.url}{path}", **kwargs)
        (entry,) = response.json()["detail"]
        assert (response.status_code, entry["loc"], entry["type"]) == (status, loc, kind), response.text
        assert entry["msg"].startswith(message), entry
    assert httpx.post(f"{server.url}/v1/score", content=content, headers={"content-type": content_type}).status_code == 200


def test_body_limit(server):
    big = b"\x00" * (5 * 2**20)
    response = httpx.post(f"{server.url}/v1/score", files=[("sr", ("a.png", big, "image/png")), ("gt", ("b.png", big, "image/png"))])
    assert response.status_code == 413
    assert "max-body-mb" in response.json()["detail"][0]["msg"]


def test_distill_round_trip_equals_library(server):
    from safetensors.torch import save

    from losses import DistillationLoss

    g = torch.Generator().manual_seed(0)
    tensors = {
        "teacher_logits": torch.randn(4, 10, generator=g),
        "student_logits": torch.randn(4, 10, generator=g),
        "labels": torch.nn.functional.one_hot(torch.arange(4) % 10, 10).float(),
        "teacher_features.0": torch.randn(4, 6, 8, generator=g),
        "student_features.0": torch.randn(4, 6, 8, generator=g),
        "student_logits_teacher_features": torch.randn(4, 10, generator=g),
    }
    config = dict(logit_loss="soft_entropy", aux_loss="mk-mmd", tau=2.0, beta=0.5)
    response = httpx.post(
        f"{server.url}/v1/distill",
        params=dict(config=json.dumps(config)),
        content=save(tensors),
        headers={"content-type": "application/octet-stream"},
    )
    assert response.status_code == 200, response.text
    expected = DistillationLoss(**config)(
        tensors["teacher_logits"],
        [tensors["teacher_features.0"]],
        tensors["student_logits"],
        [tensors["student_features.0"]],
        tensors["labels"],
        tensors["student_logits_teacher_features"],
    )
    body = response.json()
    assert body["total"] == pytest.approx(float(expected["total"]), rel=1e-6)
    for name in ("hard", "term1", "term2", "aux"):
        assert body["components"][name] == pytest.approx(expected[name], rel=1e-6)
    garbage = httpx.post(f"{server.url}/v1/distill", content=b"garbage", headers={"content-type": "application/octet-stream"})
    assert garbage.status_code == 415 and garbage.json()["detail"][0]["loc"] == ["body", "body"]
    missing_tensor = save({k: v for k, v in tensors.items() if k != "student_logits_teacher_features"})
    no_term2 = httpx.post(f"{server.url}/v1/distill", params=dict(config=json.dumps(config)), content=missing_tensor)
    assert no_term2.status_code == 422 and "student_logits_teacher_features" in no_term2.text


def test_concurrent_same_size_requests_are_batched(server):
    images = {k: v for k, v in triplet(seed=6, size=(64, 64)).items() if k in ("sr", "gt")}

    async def one(client):
        r = await client.post("/v1/score", files=files(images), data=dict(metrics="perceptual"))
        assert r.status_code == 200
        return r.json()

    async def burst():
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
            return await asyncio.gather(*(one(client) for _ in range(24)))

    before = metric_value(httpx.get(f"{server.url}/metrics").text, "loss_service_batch_size_count")
    results = asyncio.run(burst())
    text = httpx.get(f"{server.url}/metrics").text
    batches = metric_value(text, "loss_service_batch_size_count") - before
    assert batches < 24, "24 concurrent requests never shared a batch"
    first = results[0]["scores"]["perceptual"]
    assert all(r["scores"]["perceptual"] == pytest.approx(first, rel=1e-5) for r in results)  # batch size changes no score
    # A lone request is not held back waiting for company (--max-delay-ms 2): its queue wait is
    # a small fraction of a 2 ms delay plus scheduling, not a wait for company.
    lone = [httpx.post(f"{server.url}/v1/score", files=files(images), data=dict(metrics="perceptual")).json() for _ in range(5)]
    queue = sorted(r["timing_ms"]["queue"] for r in lone)
    compute = sorted(r["timing_ms"]["compute"] for r in lone)
    assert queue[2] < 20, (queue, compute)


def test_readyz_catalogue_and_prometheus_names(server):
    ready = httpx.get(f"{server.url}/readyz").json()
    assert ready["ready"] and ready["pretrained"] and set(ready["models"]) == set(BACKBONES)  # default --models all
    assert all(m["loaded"] and m["device"] == "cpu" for m in ready["models"].values())
    entry = {e["name"]: e for e in httpx.get(f"{server.url}/v1/metrics").json()}["psnr"]
    assert entry["options"] == {"crop_border": 0, "y_channel": False} and entry["lower_is_better"] is False
    scored = httpx.post(f"{server.url}/v1/score", files=files(triplet(seed=2, size=(32, 32))), data=dict(metrics="psnr"))
    assert scored.status_code == 200  # this test's own request, so it passes alone and in any order
    text = httpx.get(f"{server.url}/metrics").text
    for name in (
        "loss_service_requests_total",
        "loss_service_batch_size",
        "loss_service_queue_wait_seconds",
        "loss_service_compute_seconds",
        "loss_service_queue_depth",
    ):
        assert name in text, name
    assert 'endpoint="/v1/score"' in text
    assert httpx.get(f"{server.url}/docs").status_code == 200
    schema = httpx.get(f"{server.url}/openapi.json").json()
    assert "multipart/form-data" in schema["paths"]["/v1/score"]["post"]["requestBody"]["content"]


def test_sigterm_completes_in_flight_requests(weights_dir):
    images = {k: v for k, v in triplet(seed=8, size=(112, 112)).items()}
    with SubprocessServer("--models", "dinov2", "--max-batch-size", "1") as srv:

        async def one(client):
            return await client.post("/v1/score", files=files(images), data=dict(metrics="clp_dinov2"))

        async def scenario():
            async with httpx.AsyncClient(base_url=srv.url, timeout=120) as client:
                tasks = [asyncio.create_task(one(client)) for _ in range(4)]
                await asyncio.sleep(0.5)  # the requests are in flight
                srv.process.send_signal(__import__("signal").SIGTERM)
                return await asyncio.gather(*tasks, return_exceptions=True)

        responses = asyncio.run(scenario())
        assert all(not isinstance(r, Exception) and r.status_code == 200 for r in responses), responses
        srv.process.wait(timeout=60)
        assert srv.process.returncode == 0


def test_max_batch_pixels_bounds_every_batch(weights_dir):
    """README: a batch closes at --max-batch-pixels. 12 concurrent 32² requests with room for
    two per batch (and a delay that would otherwise gather them all) never share beyond two."""
    images = {k: v for k, v in triplet(seed=3, size=(32, 32)).items() if k in ("sr", "gt")}
    with SubprocessServer("--models", "vgg16", "--max-batch-pixels", str(2 * 32 * 32), "--max-delay-ms", "300") as srv:

        async def burst():
            async with httpx.AsyncClient(base_url=srv.url, timeout=120) as client:
                return await asyncio.gather(*(client.post("/v1/score", files=files(images), data=dict(metrics="psnr")) for _ in range(12)))

        assert all(r.status_code == 200 for r in asyncio.run(burst()))
        text = httpx.get(f"{srv.url}/metrics").text
    batches = metric_value(text, "loss_service_batch_size_count")
    at_most_two = metric_value(text, "loss_service_batch_size_bucket", 'le="2.0"')
    items = metric_value(text, "loss_service_batch_size_sum")
    assert items >= 12 and batches == at_most_two  # every batch held ≤ 2 items (the warm-up ones included)
    assert metric_value(text, "loss_service_batch_size_bucket", 'le="1.0"') < batches  # and pairs did form


SPIN_PROBE = r"""
import importlib.abc, os, sys
import uvicorn
seen = []
class Probe(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and not seen:
            seen.append(os.environ.get("GOMP_SPINCOUNT"))
sys.meta_path.insert(0, Probe())
uvicorn.run = lambda app, **kwargs: None
from service import cli
cli.main(["serve", "--random-weights", "--device", "cpu"])
print(seen[0])
"""


ALLOCATOR_PROBE = r"""
import json, resource, threading
import numpy as np
import uvicorn
uvicorn.run = lambda app, **kwargs: None
from service import cli
from service.server.allocator import retained_free_bytes
cli.main(["serve", "--random-weights", "--device", "cpu"])
seen = {}
def batch_thread():  # as the device thread does: a 64 MiB block, freed, then asked for again
    np.ones(1 << 24, dtype=np.float32)
    seen["retained"] = retained_free_bytes()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    np.ones(1 << 24, dtype=np.float32)
    seen["faults"] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
thread = threading.Thread(target=batch_thread)
thread.start()
thread.join()
print(json.dumps(seen))
"""


@pytest.mark.skipif(not (sys.platform == "linux" and platform.libc_ver()[0] == "glibc"), reason="glibc's malloc only")
@pytest.mark.parametrize("user_setting", [None, "MALLOC_ARENA_MAX=2", "GLIBC_TUNABLES=glibc.malloc.trim_threshold=1000000"])
def test_serve_keeps_freed_memory_for_the_next_batch(user_setting):
    """glibc returns a freed 64 MiB block to the kernel, and the next batch's block of that size
    is faulted in again page by page (16,384 pages of 4 KiB); `serve` keeps freed memory for reuse
    (service/server/allocator.py), unless the user configured glibc's malloc."""
    import os
    import subprocess

    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    if user_setting:
        env.update([user_setting.split("=", 1)])
    result = subprocess.run([sys.executable, "-c", ALLOCATOR_PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.splitlines()[-1])
    if user_setting:
        assert seen["retained"] < 1 << 26  # given back at once: glibc's behaviour, as the user chose
    else:
        assert seen["retained"] >= 1 << 26 and seen["faults"] < 100, seen


@pytest.mark.parametrize("given, expected", [(None, "30000"), ("123", "123")])
def test_serve_shortens_the_openmp_spin_before_torch_loads(given, expected):
    """libgomp reads GOMP_SPINCOUNT when torch loads it; `serve` sets a ~1 ms spin (BENCHMARKS.md, "The
    service and the lone request") unless the user gave one."""
    import os
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "GOMP_SPINCOUNT"} | ({"GOMP_SPINCOUNT": given} if given else {})
    result = subprocess.run([sys.executable, "-c", SPIN_PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-1] == expected
