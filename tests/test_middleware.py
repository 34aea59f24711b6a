"""The ASGI middleware on its own, in this process: the body guard's 413/415/408 and what it lets
through, draining and request counting, and the SIGTERM hook. (The same refusals through a real
server are in test_hardening.py and test_safe_defaults.py.)"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from types import SimpleNamespace

import httpx
import pytest
from fastapi import FastAPI, Request

from service.server.middleware import DrainAndCount, RequestGuard, install_sigterm_drain
from service.server.telemetry import Telemetry

LIMIT = 1000


def echo_app() -> FastAPI:
    app = FastAPI()

    @app.post("/v1/echo")
    async def echo(request: Request):
        return {"bytes": len(await request.body())}

    @app.get("/readyz")
    async def ready():
        return {"ready": True}

    @app.post("/upload")  # outside /v1: reads its body too
    async def upload(request: Request):
        return {"bytes": len(await request.body())}

    @app.get("/v1/fail")
    async def fail():
        raise RuntimeError("boom")

    return app


def guarded(max_bytes: int | None = LIMIT, body_timeout_s: float = 5.0):
    rejected: list[str] = []
    return RequestGuard(echo_app(), max_bytes, body_timeout_s, rejected.append), rejected


def post(app, content=None, headers=None) -> httpx.Response:
    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            return await client.post("/v1/echo", content=content, headers=headers)

    return asyncio.run(go())


def test_a_body_of_the_limit_passes_and_one_byte_more_is_a_413_naming_its_size():
    app, rejected = guarded()
    assert post(app, b"x" * LIMIT).json() == {"bytes": LIMIT} and rejected == []
    response = post(app, b"x" * (LIMIT + 1))
    assert response.status_code == 413 and response.headers["connection"] == "close"
    (detail,) = response.json()["detail"]
    assert detail["loc"] == ["body"] and f"request body of {LIMIT + 1} bytes exceeds --max-body-mb" in detail["msg"]
    assert f"({LIMIT / 2**20:g} MB)" in detail["msg"] and rejected == ["body_too_large"]


def test_a_streamed_body_without_length_is_cut_off_past_the_limit():
    app, rejected = guarded()

    async def chunks(total: int):
        for _ in range(total // 100):
            yield b"y" * 100

    assert post(app, chunks(LIMIT)).json() == {"bytes": LIMIT}
    response = post(app, chunks(LIMIT + 100))
    assert response.status_code == 413 and f"of more than {LIMIT} bytes" in response.json()["detail"][0]["msg"]
    assert rejected == ["body_too_large"]


def test_without_a_limit_any_size_passes():
    app, rejected = guarded(max_bytes=None)
    assert post(app, b"z" * (50 * LIMIT)).json() == {"bytes": 50 * LIMIT} and rejected == []


@pytest.mark.parametrize("encoding, refused", [("gzip", True), ("br", True), ("identity", False), (" Identity ", False)])
def test_a_compressed_body_is_a_415_naming_the_encoding(encoding, refused):
    app, rejected = guarded()
    response = post(app, b"abc", headers={"Content-Encoding": encoding})
    if not refused:
        assert response.json() == {"bytes": 3} and rejected == []
        return
    assert response.status_code == 415 and response.headers["connection"] == "close"
    (detail,) = response.json()["detail"]
    assert detail["loc"] == ["body"] and rejected == ["content_encoding"]
    assert detail["msg"].endswith(
        f"content-encoding {encoding!r} unsupported: send the body uncompressed (PNG, JPEG and WebP are compressed already)"
    )


def run_raw(app, scope_path: str, messages: list, stall_after: bool, timeout: float = 5.0) -> list[dict]:
    """Call ``app`` with a receive that yields ``messages`` then, if ``stall_after``, never returns
    (else reports a disconnect); the messages it sends."""
    sent = []
    queue = list(messages)

    async def receive():
        if queue:
            return queue.pop(0)
        if stall_after:
            await asyncio.sleep(3600)
        await asyncio.sleep(0.3)  # a disconnect that comes later than the body timeout
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = dict(
        type="http", method="POST", path=scope_path, raw_path=scope_path.encode(), query_string=b"", headers=[], http_version="1.1"
    )
    scope.update(scheme="http", server=("test", 80), client=("127.0.0.1", 1), root_path="")
    asyncio.run(asyncio.wait_for(app(scope, receive, send), timeout))
    return sent


def test_a_client_that_stalls_mid_body_gets_a_408():
    app, rejected = guarded(body_timeout_s=0.05)
    started = time.monotonic()
    sent = run_raw(app, "/v1/echo", [{"type": "http.request", "body": b"ab", "more_body": True}], stall_after=True)
    assert sent[0]["status"] == 408 and rejected == ["body_timeout"] and time.monotonic() - started < 3
    (detail,) = json.loads(b"".join(message.get("body", b"") for message in sent[1:]))["detail"]
    assert detail["loc"] == ["body"] and detail["msg"].endswith("no request body data for 0.05 s (--body-timeout-s)")


def test_reads_after_the_body_are_not_timed():
    """Waiting for the client to disconnect after the whole body may rightly take longer than the body timeout."""
    seen = []

    async def app(scope, receive, send):
        await receive()  # the whole body
        seen.append((await receive())["type"])
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    rejected: list[str] = []
    guard = RequestGuard(app, LIMIT, 0.05, rejected.append)
    for last in ({"type": "http.request", "body": b"done", "more_body": False}, {"type": "http.request", "body": b"done"}):
        seen.clear()
        sent = run_raw(guard, "/v1/echo", [last], stall_after=False)  # no more_body: the whole body (ASGI's default)
        assert seen == ["http.disconnect"] and sent[0]["status"] == 204 and rejected == []


def test_other_scopes_pass_through_untouched():
    calls, sent = [], []

    async def app(scope, receive, send):
        await send(await receive())
        calls.append(scope["type"])

    async def receive():
        return {"type": "lifespan.startup"}

    async def send(message):
        sent.append(message)

    for middleware in (RequestGuard(app, 1, 0.01, lambda kind: None), DrainAndCount(app, SimpleNamespace(telemetry=None), 5)):
        asyncio.run(middleware({"type": "lifespan"}, receive, send))
    assert calls == ["lifespan", "lifespan"] and sent == [{"type": "lifespan.startup"}] * 2


def drain_app(draining: bool):
    service = SimpleNamespace(draining=draining, telemetry=Telemetry())
    return DrainAndCount(echo_app(), service, retry_after_s=7), service


def get(app, path: str, body: bytes | None = None) -> httpx.Response:
    """GET ``path``, or POST ``body`` to it."""

    async def go():
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await (client.get(path) if body is None else client.post(path, content=body))

    return asyncio.run(go())


def counted(service, endpoint: str, status: str) -> float:
    return service.telemetry.requests.labels(endpoint=endpoint, status=status)._value.get()


def test_while_draining_new_api_requests_get_503_with_retry_after_and_the_rest_is_served():
    app, service = drain_app(draining=True)
    response = get(app, "/v1/fail")
    assert response.status_code == 503 and response.headers["retry-after"] == "7"
    assert response.json()["detail"][0]["msg"].endswith("server is shutting down; retry on another replica")
    assert get(app, "/readyz").json() == {"ready": True}  # not /v1: the app answers (the real /readyz says 503 itself)
    assert counted(service, "unmatched", "503") == 1 and counted(service, "/readyz", "200") == 1
    assert service.telemetry.in_flight._value.get() == 0


def test_api_requests_are_counted_in_flight_and_by_route_and_status():
    app, service = drain_app(draining=False)
    during = []

    async def watch(scope, receive, send):
        during.append(service.telemetry.in_flight._value.get())
        await echo_app()(scope, receive, send)

    app.app = watch
    assert get(app, "/readyz").status_code == 200 and during == [0]  # not /v1: not in flight
    assert get(app, "/v1/fail").status_code == 500 and during == [0, 1]  # the app raised: counted as a 500
    assert get(app, "/v1/echo", b"abcd").json() == {"bytes": 4} and get(app, "/upload", b"abc").json() == {"bytes": 3}
    assert service.telemetry.in_flight._value.get() == 0
    assert counted(service, "/v1/fail", "500") == 1 and counted(service, "/readyz", "200") == 1
    assert counted(service, "/v1/echo", "200") == 1 and counted(service, "/upload", "200") == 1


def test_an_app_that_raises_before_answering_is_counted_as_a_500():
    service = SimpleNamespace(draining=False, telemetry=Telemetry())

    async def broken(scope, receive, send):
        raise RuntimeError("before any response")

    with pytest.raises(RuntimeError):
        run_raw(DrainAndCount(broken, service, 5), "/v1/echo", [], stall_after=False)
    assert counted(service, "unmatched", "500") == 1 and service.telemetry.in_flight._value.get() == 0


def test_sigterm_drains_at_once_and_hands_over_after_drain_seconds():
    handed = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: handed.set())
    try:
        service = SimpleNamespace(draining=False, settings=SimpleNamespace(drain_seconds=0.2))
        install_sigterm_drain(service)
        started = time.monotonic()
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        assert service.draining and not handed.is_set()
        assert handed.wait(5) and time.monotonic() - started >= 0.2
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_sigterm_hook_is_not_installed_from_another_thread():
    before = signal.getsignal(signal.SIGTERM)
    service = SimpleNamespace(draining=False, settings=SimpleNamespace(drain_seconds=0.0))
    worker = threading.Thread(target=install_sigterm_drain, args=(service,))
    worker.start()
    worker.join()
    assert signal.getsignal(signal.SIGTERM) is before
