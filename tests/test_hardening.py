"""Hardening: a malformed-input corpus, a bounded load test, and faults (disconnects, slow
clients, SIGTERM under load, restarts). Figures go to stdout and, when
LOSS_SERVICE_RELIABILITY_REPORT names a file, to that JSON file (RELIABILITY.md quotes it)."""

import asyncio
import io
import json
import os
import signal
import socket
import struct
import threading
import time
import zlib

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from losses import PerceptualLoss, psnr
from service.client import LossClient
from service.client.encoding import _png
from service.common.decode import decode

from .servers import SubprocessServer, free_port, metric_value, npy_bytes, png_bytes, random_image

REPORT: dict = {}
GOOD_SR, GOOD_GT = png_bytes(random_image(32, 32, 1)), png_bytes(random_image(32, 32, 2))


def record(section: str, value) -> None:
    REPORT[section] = value
    path = os.environ.get("LOSS_SERVICE_RELIABILITY_REPORT")
    if path:
        existing = json.loads(open(path).read()) if os.path.exists(path) else {}
        existing[section] = value
        with open(path, "w") as handle:
            json.dump(existing, handle, indent=2)
    print(f"\n{section}: {json.dumps(value, indent=1)[:4000]}")


@pytest.fixture(scope="module")
def server(weights_dir):
    with SubprocessServer("--models", "vgg16", "--max-image-pixels", "4000000", "--body-timeout-s", "2") as srv:
        yield srv


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png() -> bytes:
    """A 10-kB PNG whose header claims 100000×100000 RGB pixels."""
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 10_000)) + _png_chunk(b"IEND", b"")


def encoded(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def animated(fmt: str, **params) -> bytes:
    """Two frames: an animated PNG or WebP, a two-page TIFF, a JPEG with an extra picture (MPO)."""
    pixels = random_image(32, 32, 1)
    first, second = Image.fromarray(pixels), Image.fromarray(pixels[::-1].copy())
    return encoded(first, fmt, save_all=True, append_images=[second], **params)


def part(name, data, filename=None):
    return (name, (filename or f"{name}.bin", data, "application/octet-stream"))


def pair(sr=GOOD_SR, gt=GOOD_GT, **more):
    return [part("sr", sr), part("gt", gt)] + [part(k, v) for k, v in more.items()]


def float_tiff(array: np.ndarray) -> bytes:
    """A single-channel 32-bit float TIFF (Pillow mode F)."""
    return encoded(Image.fromarray(array.astype(np.float32), mode="F"), "TIFF")


def _tiff(array: np.ndarray) -> bytes:
    """An RGB TIFF through tifffile: 16-bit or float samples, which Pillow cannot write."""
    import tifffile

    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array, photometric="rgb")
    return buffer.getvalue()


RGB = random_image(32, 32, 7)
FLOAT = RGB.astype(np.float32) / 255
# name → (request kwargs, expected status, field named in the detail / or expected warning text)
CORPUS = {
    "empty_file": (dict(files=pair(sr=b"")), 415, "sr"),
    "truncated_png": (dict(files=pair(sr=GOOD_SR[: len(GOOD_SR) // 2])), 415, "sr"),
    "truncated_png_16bit": (dict(files=pair(sr=_png(RGB.astype(np.uint16) * 251)[:300])), 415, "sr"),
    "tiff_16bit_rgb": (
        dict(files=pair(sr=_tiff(RGB.astype(np.uint16) * 251), gt=_tiff(RGB.astype(np.uint16) * 257)), data=dict(metrics="psnr")),
        200,
        None,
    ),
    "tiff_float_rgb_nan": (dict(files=pair(sr=_tiff(np.where(FLOAT > 0.5, np.nan, FLOAT)))), 422, "sr"),
    "npy_empty_image": (dict(files=pair(sr=npy_bytes(np.zeros((0, 32, 3), np.uint8)))), 422, "sr"),
    "truncated_jpeg": (dict(files=pair(sr=encoded(Image.fromarray(RGB), "JPEG")[:300])), 415, "sr"),
    "text_named_png": (dict(files=[("sr", ("sr.png", b"hello, I am text", "image/png")), part("gt", GOOD_GT)]), 415, "sr"),
    "decompression_bomb_header": (dict(files=pair(sr=bomb_png())), 413, "sr"),
    "gif_unsupported": (dict(files=pair(sr=encoded(Image.fromarray(RGB), "GIF"))), 415, "sr"),
    "png_16bit_rgb": (dict(files=pair(sr=_png(RGB.astype(np.uint16) * 257)), data=dict(metrics="psnr")), 200, None),
    "png_16bit_gray": (
        dict(files=pair(sr=png_bytes(RGB[..., 0].astype(np.uint16) * 257), gt=png_bytes(RGB[..., 0])), data=dict(metrics="psnr")),
        200,
        None,
    ),
    "cmyk_jpeg": (dict(files=pair(sr=encoded(Image.fromarray(RGB).convert("CMYK"), "JPEG")), data=dict(metrics="psnr")), 200, None),
    "palette_png": (dict(files=pair(sr=encoded(Image.fromarray(RGB).convert("P"), "PNG")), data=dict(metrics="psnr")), 200, None),
    "rgba_png": (
        dict(files=pair(sr=png_bytes(np.dstack([RGB, RGB[..., :1]]), "RGBA")), data=dict(metrics="psnr")),
        200,
        "alpha channel dropped",
    ),
    "image_1x1_ssim": (dict(files=pair(sr=png_bytes(RGB[:1, :1]), gt=png_bytes(RGB[:1, :1])), data=dict(metrics="ssim")), 422, "sr"),
    "image_2x2_psnr": (dict(files=pair(sr=png_bytes(RGB[:2, :2]), gt=png_bytes(RGB[1:3, 1:3])), data=dict(metrics="psnr")), 200, None),
    "npy_object_pickle": (dict(files=pair(sr=npy_bytes(np.array([{"x": 1}], dtype=object)))), 415, "sr"),
    "npy_nan": (dict(files=pair(sr=npy_bytes(np.where(FLOAT > 0.5, np.nan, FLOAT).astype(np.float32)))), 422, "sr"),
    "npy_inf": (dict(files=pair(sr=npy_bytes(np.where(FLOAT > 0.5, np.inf, FLOAT).astype(np.float32)))), 422, "sr"),
    "npy_negative": (dict(files=pair(sr=npy_bytes(FLOAT - 0.5)), data=dict(metrics="psnr")), 200, "clamped"),
    "npy_above_one": (dict(files=pair(sr=npy_bytes(FLOAT + 0.5)), data=dict(metrics="psnr")), 200, "clamped"),
    "npy_1d": (dict(files=pair(sr=npy_bytes(FLOAT.ravel()))), 422, "sr"),
    "npy_4d": (dict(files=pair(sr=npy_bytes(FLOAT[None]))), 422, "sr"),
    "npy_bool_dtype": (dict(files=pair(sr=npy_bytes(RGB > 100))), 415, "sr"),
    "shape_mismatch": (dict(files=pair(gt=png_bytes(RGB[:16]))), 422, "gt"),
    "lr_larger_than_sr": (dict(files=pair(lr=png_bytes(random_image(64, 64, 3))), data=dict(metrics="psnr")), 422, "lr"),
    "missing_gt": (dict(files=[part("sr", GOOD_SR)]), 422, "gt"),
    "duplicate_sr": (dict(files=pair() + [part("sr", GOOD_SR)]), 422, "sr"),
    "oversized_options": (dict(files=pair(), data=dict(options=json.dumps({"crop_border": 0, "pad": "x" * 5000}))), 422, "options"),
    "options_not_object": (dict(files=pair(), data=dict(options="[1, 2]")), 422, "options"),
    "unknown_metric": (dict(files=pair(), data=dict(metrics="psnr,brisque")), 422, "metrics"),
    "metric_needs_missing_image": (dict(files=pair(), data=dict(metrics="kd")), 422, "teacher"),
    "wrong_content_type_json": (dict(json={"sr": "x", "gt": "y"}), 422, "sr"),
    # Every decoder × every special value: NaN/Inf refused, out-of-range clamped with a warning.
    "tiff_float_nan": (
        dict(files=pair(sr=float_tiff(np.where(FLOAT[..., 0] > 0.5, np.nan, FLOAT[..., 0]))), data=dict(metrics="psnr")),
        422,
        "sr",
    ),
    "tiff_float_inf": (
        dict(files=pair(sr=float_tiff(np.where(FLOAT[..., 0] > 0.5, -np.inf, FLOAT[..., 0]))), data=dict(metrics="psnr")),
        422,
        "sr",
    ),
    "tiff_float_above_one": (dict(files=pair(sr=float_tiff(FLOAT[..., 0] + 0.5)), data=dict(metrics="psnr")), 200, "clamped"),
    "tiff_int32_negative": (
        dict(files=pair(sr=encoded(Image.fromarray(RGB[..., 0].astype(np.int32) - 128), "TIFF")), data=dict(metrics="psnr")),
        200,
        "clamped",
    ),
    "npy_float16_nan": (dict(files=pair(sr=npy_bytes(np.where(FLOAT > 0.5, np.nan, FLOAT).astype(np.float16)))), 422, "sr"),
    "npy_float64_inf": (dict(files=pair(sr=npy_bytes(np.where(FLOAT > 0.5, np.inf, FLOAT).astype(np.float64)))), 422, "sr"),
    # Every option × out-of-range values: a 422 that names the field, never a 200 with a null score.
    "crop_border_half_image_psnr": (dict(files=pair(), data=dict(metrics="psnr", options='{"crop_border": 16}')), 422, "options"),
    "crop_border_leaves_ssim_no_window": (dict(files=pair(), data=dict(metrics="ssim", options='{"crop_border": 11}')), 422, "options"),
    "crop_border_huge": (dict(files=pair(), data=dict(metrics="psnr", options='{"crop_border": 1000000000000000000000}')), 422, "options"),
    "crop_border_negative": (dict(files=pair(), data=dict(metrics="psnr", options='{"crop_border": -1}')), 422, "options"),
    "y_channel_not_bool": (dict(files=pair(), data=dict(metrics="psnr", options='{"y_channel": "yes"}')), 422, "options"),
    "weight_nan": (dict(files=pair(), data=dict(metrics="hybrid", options='{"l1_weight": NaN}')), 422, "options"),
    "weight_infinite": (dict(files=pair(), data=dict(metrics="hybrid", options='{"ms_weight": Infinity}')), 422, "options"),
    "ms_ssim_image_too_small": (dict(files=pair(), data=dict(metrics="ms_ssim")), 422, "sr"),
    "lr_psnr_non_integer_scale": (dict(files=pair(lr=png_bytes(random_image(12, 12, 3))), data=dict(metrics="lr_psnr")), 422, "lr"),
    "lr_psnr_unequal_scales": (dict(files=pair(lr=png_bytes(random_image(16, 8, 3))), data=dict(metrics="lr_psnr")), 422, "lr"),
    # Every text field bounded.
    "metrics_field_100k_chars": (dict(files=pair(), data=dict(metrics="psnr," * 20_000)), 422, "metrics"),
    "metrics_field_65_names": (dict(files=pair(), data=dict(metrics=",".join(["psnr"] * 65))), 422, "metrics"),
    # Many images in one file: which one was meant is the user's to say (the first was scored, silently).
    "animated_png": (dict(files=pair(sr=animated("PNG"))), 422, "sr"),
    "animated_webp": (dict(files=pair(gt=animated("WEBP", lossless=True))), 422, "gt"),
    "two_page_tiff": (dict(files=pair(sr=animated("TIFF"))), 422, "sr"),
    "jpeg_with_an_extra_picture_mpo": (dict(files=pair(sr=animated("MPO")), data=dict(metrics="psnr")), 200, None),
}


def test_malformed_input_corpus(server):
    outcomes = {}
    with httpx.Client(base_url=server.url, timeout=60) as client:
        for name, (kwargs, status, expect) in CORPUS.items():
            response = client.post("/v1/score", **kwargs)
            body = response.json()
            outcomes[name] = dict(
                status=response.status_code,
                detail=body.get("detail", [{}])[0].get("msg") if response.status_code >= 400 else None,
                warnings=body.get("warnings"),
            )
            assert response.status_code == status, (name, response.text)
            if status >= 400:
                assert any(expect in entry["loc"] for entry in body["detail"]), (name, body)
            elif expect:
                assert any(expect in w for w in body["warnings"]), (name, body)
            ok = client.post("/v1/score", files=pair(), data=dict(metrics="psnr,perceptual"))
            assert ok.status_code == 200, (name, ok.text)
        garbage = client.post("/v1/distill", content=os.urandom(512), headers={"content-type": "application/octet-stream"})
        outcomes["distill_garbage_body"] = dict(status=garbage.status_code, detail=garbage.json()["detail"][0]["msg"], warnings=None)
        assert garbage.status_code == 415
        bad_config = client.post("/v1/distill", params=dict(config='{"tau": "hot"}'), content=b"x")
        outcomes["distill_bad_config"] = dict(status=bad_config.status_code, detail=bad_config.json()["detail"][0]["msg"], warnings=None)
        assert bad_config.status_code == 422
        assert client.post("/v1/score", files=pair()).status_code == 200
    assert set(outcomes) == set(CORPUS) | {"distill_garbage_body", "distill_bad_config"}
    record("corpus", outcomes)


def test_16bit_and_converted_inputs_decode_to_their_exact_values():
    """16-bit data keeps every bit (values 1/65535 apart, not 1/255); CMYK and palette become RGB
    as Pillow converts them. Compared with a direct decode, exactly."""
    rng = np.random.default_rng(5)
    wide = rng.integers(0, 65536, (16, 20, 3), dtype=np.uint16)
    assert np.array_equal(decode(_png(wide), "sr").pixels, wide.astype(np.float32) / 65535.0)
    grey = rng.integers(0, 65536, (16, 20), dtype=np.uint16)
    assert np.array_equal(decode(png_bytes(grey), "sr").pixels, np.repeat((grey.astype(np.float32) / 65535.0)[..., None], 3, 2))
    assert len(np.unique(decode(_png(wide), "sr").pixels)) > 256  # more levels than 8 bits can hold
    cmyk = encoded(Image.fromarray(RGB).convert("CMYK"), "TIFF")
    assert np.array_equal(decode(cmyk, "sr").pixels, np.asarray(Image.open(io.BytesIO(cmyk)).convert("RGB"), np.float32) / 255)
    palette = encoded(Image.fromarray(RGB).convert("P"), "PNG")
    assert np.array_equal(decode(palette, "sr").pixels, np.asarray(Image.open(io.BytesIO(palette)).convert("RGB"), np.float32) / 255)


@pytest.mark.parametrize("flags", [("--max-queue", "8", "--max-batch-size", "8"), ()], ids=["tuned", "defaults"])
def test_bounded_load_only_200_or_503_and_every_200_correct(weights_dir, flags):
    seconds = float(os.environ.get("LOSS_SERVICE_LOAD_SECONDS", "6"))
    assert seconds <= 60
    triplets = [(random_image(32, 32, 10 + i), random_image(32, 32, 20 + i)) for i in range(4)]
    expected = []
    perceptual = PerceptualLoss.from_preset("perceptual")
    for sr, gt in triplets:
        x, y = (torch.from_numpy(decode(png_bytes(a), "x").pixels).permute(2, 0, 1)[None] for a in (sr, gt))
        with torch.no_grad():
            expected.append(dict(psnr=psnr(x, y).item(), perceptual=perceptual(x, y).item()))
    uploads = [pair(png_bytes(sr), png_bytes(gt)) for sr, gt in triplets]
    statuses: dict[int, int] = {}
    wrong, missing_retry_after = [], 0

    with SubprocessServer("--models", "vgg16", *flags) as srv:
        pid = srv.process.pid
        rss = dict(before=rss_bytes(pid), during=0)
        stop = time.monotonic() + seconds

        async def client_loop(client, index):
            nonlocal missing_retry_after
            k = index % len(uploads)
            while time.monotonic() < stop:
                response = await client.post("/v1/score", files=uploads[k], data=dict(metrics="psnr,perceptual"))
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                if response.status_code == 200:
                    scores = response.json()["scores"]
                    if (
                        abs(scores["psnr"] - expected[k]["psnr"]) > 1e-6
                        or abs(scores["perceptual"] - expected[k]["perceptual"]) > 1e-5 * expected[k]["perceptual"]
                    ):
                        wrong.append((k, scores))
                elif response.status_code == 503:
                    missing_retry_after += "retry-after" not in response.headers
                    await asyncio.sleep(0.05)
                k = (k + 1) % len(uploads)

        async def sample_rss():
            while time.monotonic() < stop:
                rss["during"] = max(rss["during"], rss_bytes(pid))
                await asyncio.sleep(0.2)

        async def run():
            limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
            async with httpx.AsyncClient(base_url=srv.url, timeout=60, limits=limits) as client:
                await asyncio.gather(sample_rss(), *(client_loop(client, i) for i in range(64)))

        asyncio.run(run())
        time.sleep(0.5)
        rss["after"] = rss_bytes(pid)
        depth = metric_value(httpx.get(f"{srv.url}/metrics").text, "loss_service_queue_depth")
    figures = dict(
        clients=64,
        seconds=seconds,
        statuses=statuses,
        wrong_scores=len(wrong),
        missing_retry_after=missing_retry_after,
        rss_mib={k: round(v / 2**20, 1) for k, v in rss.items()},
        final_queue_depth=depth,
    )
    record(f"load ({' '.join(flags) or 'default settings'})", figures)
    assert set(statuses) <= {200, 503} and statuses.get(200, 0) > 0
    assert not wrong and missing_retry_after == 0 and depth == 0
    # Observed growth: ~50 MiB (RELIABILITY.md); 256 MiB leaves a 5× margin. "during" is sampled every
    # 0.2 s, so "after" may exceed it by a sampling step; bounded means no growth past that.
    assert rss["during"] - rss["before"] < 256 * 2**20 and rss["after"] <= rss["during"] + 64 * 2**20


def raw_request(port: int, body_prefix: bytes, declared_length: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    head = (
        f"POST /v1/score HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=XyZ\r\n"
        f"Content-Length: {declared_length}\r\n\r\n"
    ).encode()
    sock.sendall(head + body_prefix)
    return sock


def test_client_disconnecting_mid_upload(server):
    port = int(server.url.rsplit(":", 1)[1])
    for _ in range(5):
        sock = raw_request(port, b'--XyZ\r\nContent-Disposition: form-data; name="sr"; filename="a.png"\r\n\r\n' + GOOD_SR[:200], 100_000)
        sock.close()
    assert httpx.post(f"{server.url}/v1/score", files=pair()).status_code == 200
    assert httpx.get(f"{server.url}/healthz").status_code == 200


def test_slow_client_gets_408_and_others_are_served(server):
    port = int(server.url.rsplit(":", 1)[1])
    sock = raw_request(port, b'--XyZ\r\nContent-Disposition: form-data; name="sr"; filename="a.png"\r\n\r\n', 100_000)
    started = time.monotonic()
    assert httpx.post(f"{server.url}/v1/score", files=pair()).status_code == 200  # served while the slow one stalls
    answer = sock.recv(4096).decode(errors="replace")
    waited = time.monotonic() - started
    head, _, body = answer.partition("\r\n\r\n")
    length = int(next(line.split(":")[1] for line in head.split("\r\n") if line.lower().startswith("content-length")))
    while len(body.encode()) < length:
        body += sock.recv(4096).decode(errors="replace")
    answer = head + "\r\n\r\n" + body
    sock.close()
    assert answer.startswith("HTTP/1.1 408"), answer[:200]
    assert 1.5 <= waited <= 10
    assert "body-timeout-s" in answer
    record("slow_client", dict(status=408, seconds_until_answer=round(waited, 2)))


def test_sigterm_under_load_drains(weights_dir):
    image = png_bytes(random_image(128, 128, 3))
    files = pair(image, image)
    with SubprocessServer("--models", "vgg16", "--max-batch-size", "1", "--drain-seconds", "2") as srv:

        async def scenario():
            async with httpx.AsyncClient(base_url=srv.url, timeout=120) as client:
                in_flight = [asyncio.create_task(client.post("/v1/score", files=files, data=dict(metrics="lpips_vgg"))) for _ in range(6)]
                # SIGTERM only once the server has accepted all 6 (in flight, or already answered):
                # a fixed sleep raced the uploads on a busy machine, and a request still uploading
                # when draining starts rightly gets a 503. Waiting for 6 in flight could wait forever
                # once the first finished before the last arrived.
                deadline = time.monotonic() + 60
                while (
                    metric_value((await client.get("/metrics")).text, "loss_service_requests_in_flight")
                    + sum(task.done() for task in in_flight)
                    < 6
                ):
                    assert time.monotonic() < deadline, "the server never accepted the 6 requests"
                    await asyncio.sleep(0.05)
                srv.process.send_signal(signal.SIGTERM)
                await asyncio.sleep(0.3)
                late = await client.post("/v1/score", files=files, data=dict(metrics="l1"))
                ready = await client.get("/readyz")
                return await asyncio.gather(*in_flight), late, ready

        done, late, ready = asyncio.run(scenario())
        srv.process.wait(timeout=60)
        figures = dict(
            in_flight=[r.status_code for r in done],
            new_request=late.status_code,
            readyz=ready.status_code,
            exit_code=srv.process.returncode,
        )
        record("sigterm", figures)
        assert all(r.status_code == 200 for r in done)
        assert late.status_code == 503 and "retry-after" in late.headers and ready.status_code == 503
        assert srv.process.returncode == 0


def test_restart_client_retries_to_success(weights_dir):
    port = free_port()
    flags = ("--models", "")  # psnr only: no backbone to load
    result: dict = {}

    def call():
        with LossClient(f"http://127.0.0.1:{port}", retries=12) as client:  # 0.2 s doubling to 10 s: ~70 s in all
            started = time.monotonic()
            result["scores"] = client.score(GOOD_SR, GOOD_GT, metrics="psnr")["scores"]
            result["seconds"] = time.monotonic() - started

    first = SubprocessServer(*flags)
    first.port, first.url = port, f"http://127.0.0.1:{port}"
    first.command[first.command.index("--port") + 1] = str(port)
    with first:
        assert httpx.post(f"{first.url}/v1/score", files=pair(), data=dict(metrics="psnr")).status_code == 200
    caller = threading.Thread(target=call)
    caller.start()  # the server is down now: connection refused, retried
    time.sleep(1.0)
    second = SubprocessServer(*flags)
    second.port, second.url = port, f"http://127.0.0.1:{port}"
    second.command[second.command.index("--port") + 1] = str(port)
    with second:
        caller.join(timeout=120)
    assert "scores" in result and result["scores"]["psnr"] > 0
    record("restart", dict(succeeded=True, seconds_until_success=round(result["seconds"], 1)))
