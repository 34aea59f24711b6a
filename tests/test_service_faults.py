"""Faults, overload, auth and missing weights, on real uvicorn servers (threads or processes)."""

import asyncio
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest
import torch

from service.server.app import create_app
from service.server.settings import Settings

from .servers import SubprocessServer, ThreadServer, metric_value, png_bytes, random_image

SR, GT = png_bytes(random_image(32, 32, 1)), png_bytes(random_image(32, 32, 2))
PAIR = [("sr", ("sr.png", SR, "image/png")), ("gt", ("gt.png", GT, "image/png"))]


def serve(weights_dir, **overrides) -> ThreadServer:
    settings = Settings(models="vgg16", weights_dir=str(weights_dir), **overrides)
    return ThreadServer(create_app(settings))


async def burst(url: str, count: int, metrics: str = "perceptual", headers=None) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=60, headers=headers) as client:
        return await asyncio.gather(*(client.post("/v1/score", files=PAIR, data=dict(metrics=metrics)) for _ in range(count)))


def test_out_of_memory_batch_is_split_and_succeeds(weights_dir):
    with serve(weights_dir, max_delay_ms=200, max_batch_size=8) as srv:
        scorer = srv.app.state.service.scorer
        original, sizes = scorer.compute_batch, []

        def oom_above_two(jobs):
            sizes.append(len(jobs))
            if len(jobs) > 2:
                raise torch.OutOfMemoryError("injected")
            return original(jobs)

        scorer.compute_batch = oom_above_two
        responses = asyncio.run(burst(srv.url, 8))
        assert [r.status_code for r in responses] == [200] * 8
        assert max(sizes) > 2 and any(s <= 2 for s in sizes)  # a large batch failed and its halves ran
        reference = httpx.post(f"{srv.url}/v1/score", files=PAIR, data=dict(metrics="perceptual")).json()["scores"]
        assert all(r.json()["scores"] == pytest.approx(reference, rel=1e-6) for r in responses)

        scorer.compute_batch = lambda jobs: (_ for _ in ()).throw(torch.OutOfMemoryError("injected"))
        too_big = httpx.post(f"{srv.url}/v1/score", files=PAIR, data=dict(metrics="perceptual"))
        assert too_big.status_code == 413 and "max-image-pixels" in too_big.json()["detail"][0]["msg"]
        scorer.compute_batch = original
        assert httpx.post(f"{srv.url}/v1/score", files=PAIR).status_code == 200


def test_exception_in_one_item_fails_it_alone(weights_dir):
    poison = png_bytes(random_image(32, 32, 99))
    with serve(weights_dir, max_delay_ms=200) as srv:
        scorer = srv.app.state.service.scorer
        original = scorer.compute_batch
        poison_pixels = None

        def fail_on_poison(jobs):
            if any(abs(float(job.images["sr"].mean()) - poison_pixels) < 1e-9 for job in jobs):
                raise RuntimeError("injected failure")
            return original(jobs)

        from service.common.decode import decode

        poison_pixels = float(decode(poison, "sr").pixels.mean())
        scorer.compute_batch = fail_on_poison

        async def mixed():
            async with httpx.AsyncClient(base_url=srv.url, timeout=60) as client:
                good = [client.post("/v1/score", files=PAIR, data=dict(metrics="l1")) for _ in range(5)]
                bad = client.post("/v1/score", files=[("sr", ("p.png", poison, "image/png")), PAIR[1]], data=dict(metrics="l1"))
                return await asyncio.gather(bad, *good)

        bad, *good = asyncio.run(mixed())
        assert bad.status_code == 500
        assert [r.status_code for r in good] == [200] * 5
        assert httpx.post(f"{srv.url}/v1/score", files=PAIR, data=dict(metrics="l1")).status_code == 200


def test_queue_overflow_gives_503_with_retry_after(weights_dir):
    with serve(weights_dir, max_queue=2, max_batch_size=1, retry_after_s=3) as srv:
        scorer = srv.app.state.service.scorer
        original = scorer.compute_batch
        scorer.compute_batch = lambda jobs: (time.sleep(0.2), original(jobs))[1]
        responses = asyncio.run(burst(srv.url, 12, metrics="l1"))
        statuses = sorted(r.status_code for r in responses)
        assert set(statuses) == {200, 503}, statuses
        assert all(r.headers["retry-after"] == "3" for r in responses if r.status_code == 503)
        text = httpx.get(f"{srv.url}/metrics").text
        assert metric_value(text, "loss_service_rejected_total", 'reason="queue_full"') == statuses.count(503)
        assert metric_value(text, "loss_service_queue_depth") == 0


def test_distill_waits_in_the_same_bounded_queue(weights_dir):
    """/v1/distill runs on the device thread, so a full queue refuses it like a score: 503 + Retry-After."""
    from safetensors.torch import save

    tensors = {"teacher_logits": torch.randn(2, 5), "student_logits": torch.randn(2, 5), "labels": torch.eye(5)[:2]}
    distill = dict(content=save(tensors), headers={"content-type": "application/octet-stream"})
    with serve(weights_dir, max_queue=2, max_batch_size=1, retry_after_s=3) as srv:
        scorer = srv.app.state.service.scorer
        original = scorer.compute_batch
        started, release = threading.Event(), threading.Event()

        def held(jobs):  # the first batch holds the device until the refusal is seen
            started.set()
            release.wait(60)
            return original(jobs)

        scorer.compute_batch = held

        async def until(condition, what: str) -> None:
            deadline = time.monotonic() + 30
            while not await condition():
                assert time.monotonic() < deadline, what
                await asyncio.sleep(0.01)

        async def distill_while_full():
            async with httpx.AsyncClient(base_url=srv.url, timeout=60) as client:
                score = lambda: client.post("/v1/score", files=PAIR, data=dict(metrics="l1"))  # noqa: E731

                async def first_started() -> bool:
                    return started.is_set()

                async def two_queued() -> bool:
                    return metric_value((await client.get("/metrics")).text, "loss_service_queue_depth") >= 2

                # One at a time: sent together, the second and third can both be queued before the
                # device thread takes the first, and the third is then (rightly) the one refused.
                first = asyncio.ensure_future(score())
                await until(first_started, "the first batch never started")
                queued = asyncio.gather(score(), score())
                await until(two_queued, "the two requests behind the held batch never queued")
                refused = await client.post("/v1/distill", **distill)
                release.set()
                return refused, [await first, *await queued]

        refused, scores = asyncio.run(distill_while_full())
        assert refused.status_code == 503 and refused.headers["retry-after"] == "3", refused.text
        assert refused.json()["detail"][0]["msg"].startswith("queue full")
        assert [r.status_code for r in scores] == [200] * 3
        assert httpx.post(f"{srv.url}/v1/distill", **distill).status_code == 200


def test_api_key_is_enforced(weights_dir):
    with serve(weights_dir, api_key="s3cret") as srv:
        assert httpx.post(f"{srv.url}/v1/score", files=PAIR, data=dict(metrics="l1")).status_code == 401
        wrong = httpx.post(f"{srv.url}/v1/score", files=PAIR, data=dict(metrics="l1"), headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.json()["detail"][0]["type"] == "unauthorized"
        assert httpx.get(f"{srv.url}/v1/metrics").status_code == 401
        right = httpx.post(f"{srv.url}/v1/score", files=PAIR, data=dict(metrics="l1"), headers={"Authorization": "Bearer s3cret"})
        assert right.status_code == 200
        assert httpx.get(f"{srv.url}/healthz").status_code == 200 and httpx.get(f"{srv.url}/readyz").status_code == 200


def test_missing_weights_serve_what_they_can(tmp_path):
    with ThreadServer(create_app(Settings(models="vgg16", weights_dir=str(tmp_path)))) as srv:
        ready = httpx.get(f"{srv.url}/readyz")
        assert ready.status_code == 503 and ready.json()["missing"] == ["vgg16"]
        assert httpx.post(f"{srv.url}/v1/score", files=PAIR, data=dict(metrics="psnr,ssim,l1")).status_code == 200
        refused = httpx.post(f"{srv.url}/v1/score", files=PAIR, data=dict(metrics="psnr,perceptual"))
        assert refused.status_code == 503
        message = refused.json()["detail"][0]["msg"]
        assert "vgg16-397923af.pth" in message and "loss-service weights fetch" in message
        not_loaded = httpx.post(f"{srv.url}/v1/score", files=PAIR, data=dict(metrics="clp_dinov2"))
        assert not_loaded.status_code == 503 and "--models" in not_loaded.text
        catalogue = {e["name"]: e["available"] for e in httpx.get(f"{srv.url}/v1/metrics").json()}
        assert catalogue["psnr"] and not catalogue["perceptual"]


def test_strict_missing_weights_is_fatal(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "serve", "--strict", "--models", "vgg19", "--weights-dir", str(tmp_path), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "vgg19-dcbb9e9d.pth" in result.stdout + result.stderr


def test_random_weights_are_flagged(weights_dir):
    with serve(weights_dir, random_weights=True) as srv:
        body = httpx.post(f"{srv.url}/v1/score", files=PAIR, data=dict(metrics="perceptual")).json()
        assert body["pretrained"] is False and any("random" in w for w in body["warnings"])
        assert httpx.get(f"{srv.url}/readyz").json()["pretrained"] is False


def test_draining_answers_503(weights_dir):
    with serve(weights_dir) as srv:
        srv.app.state.service.draining = True
        response = httpx.post(f"{srv.url}/v1/score", files=PAIR, data=dict(metrics="l1"))
        assert response.status_code == 503 and "retry-after" in response.headers
        assert httpx.get(f"{srv.url}/readyz").status_code == 503
        srv.app.state.service.draining = False


def _get_healthz(sock: socket.socket) -> bytes:
    """One keep-alive ``GET /healthz`` on an open socket; the raw response (b"" if the server closed it)."""
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
    response = b""
    while b"\r\n\r\n" not in response or len(response.split(b"\r\n\r\n", 1)[1]) < _content_length(response):
        chunk = sock.recv(65536)
        if not chunk:
            return response
        response += chunk
    return response


def _content_length(response: bytes) -> int:
    for line in response.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return 0


def test_idle_connections_outlive_the_clients_keep_alive(weights_dir):
    """A server that closes idle connections as soon as httpx does (5 s) races clients that reuse
    one at that moment: the request lands on a closing socket and the client gets a reset
    (``httpx.ReadError``). The server must hold an idle connection longer than httpx's expiry,
    and ``--keep-alive-s`` must be what it uses."""
    client_expiry = httpx.Limits().keepalive_expiry
    default = SubprocessServer("--models", "", "--random-weights").start()  # no backbone: /healthz is all it serves
    short = SubprocessServer("--models", "", "--random-weights", "--keep-alive-s", "0.5").start()
    with (
        default,
        short,
        socket.create_connection(("127.0.0.1", default.port), timeout=10) as kept,
        socket.create_connection(("127.0.0.1", short.port), timeout=10) as closed,
    ):
        assert _get_healthz(kept).startswith(b"HTTP/1.1 200") and _get_healthz(closed).startswith(b"HTTP/1.1 200")
        time.sleep(client_expiry + 1)
        assert _get_healthz(kept).startswith(b"HTTP/1.1 200"), "server closed an idle connection httpx still reuses"
        assert closed.recv(1) == b"", "--keep-alive-s 0.5: the idle connection should be closed by now"


def test_all_torch_work_runs_on_the_device_thread(weights_dir, monkeypatch):
    """Loading, warm-up, batches and /v1/distill all run on the batcher's thread. A second thread
    that ran a parallel CPU op would keep an OpenMP team of its own, and libgomp throttles every
    team of a process with more OpenMP threads than CPUs: it then sleeps between parallel regions
    instead of spinning, which made the server's compute slower than the same call in-process."""
    from safetensors.torch import save

    from service.server import distill
    from service.server.scoring import Scorer

    seen = []

    def recorded(step, fn):
        def wrapper(*args, **kwargs):
            seen.append((step, threading.current_thread().name))
            return fn(*args, **kwargs)

        return wrapper

    for step in ("setup", "warmup", "run_batch"):
        monkeypatch.setattr(Scorer, step, recorded(step, getattr(Scorer, step)))
    monkeypatch.setattr(distill, "compute", recorded("distill", distill.compute))
    tensors = {"teacher_logits": torch.randn(2, 5), "student_logits": torch.randn(2, 5), "labels": torch.eye(5)[:2]}
    with serve(weights_dir) as srv:
        assert httpx.post(f"{srv.url}/v1/score", files=PAIR, data=dict(metrics="perceptual")).status_code == 200
        response = httpx.post(f"{srv.url}/v1/distill", content=save(tensors), headers={"content-type": "application/octet-stream"})
        assert response.status_code == 200, response.text
    assert {step for step, _ in seen} == {"setup", "warmup", "run_batch", "distill"}
    assert {thread for _, thread in seen} == {"device-cpu"}
