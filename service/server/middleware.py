"""ASGI middleware and the SIGTERM hook: the body guard (413/408), draining, request counting."""

from __future__ import annotations

import asyncio
import signal
import threading

from fastapi import HTTPException
from fastapi.responses import JSONResponse

from ..common.errors import TIMEOUT, TOO_LARGE, UNAVAILABLE, UNSUPPORTED_MEDIA, ServiceError
from ..common.protocol import API_PREFIX
from .http_errors import error_response, status_of


class RequestGuard:
    """413 for bodies over the limit (by Content-Length or while streaming), 415 for a compressed
    body (Content-Encoding), 408 for a client that stalls mid-body longer than ``body_timeout_s``."""

    def __init__(self, app, max_bytes: int | None, body_timeout_s: float, on_reject):
        self.app, self.max_bytes, self.body_timeout_s, self.on_reject = app, max_bytes, body_timeout_s, on_reject

    def _error(self, size: str) -> HTTPException:
        self.on_reject("body_too_large")
        message = f"request body {size} exceeds --max-body-mb ({self.max_bytes / 2**20:g} MB)"
        return _http_exception(ServiceError(TOO_LARGE, None, message, location="body"))

    def _stalled(self) -> HTTPException:
        self.on_reject("body_timeout")
        message = f"no request body data for {self.body_timeout_s:g} s (--body-timeout-s)"
        return _http_exception(ServiceError(TIMEOUT, None, message, location="body"))

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        length, encoding = headers.get(b"content-length"), headers.get(b"content-encoding", b"identity").strip().lower()
        if self.max_bytes is not None and length is not None and length.isdigit() and int(length) > self.max_bytes:
            error = self._error(f"of {int(length)} bytes")
            response = JSONResponse({"detail": error.detail}, status_code=error.status_code, headers={"Connection": "close"})
            return await response(scope, receive, send)
        if encoding != b"identity":  # the multipart parser would report the compressed bytes as "Invalid multipart data"
            self.on_reject("content_encoding")
            message = (
                f"content-encoding {encoding.decode('latin-1')!r} unsupported: send the body uncompressed "
                "(PNG, JPEG and WebP are compressed already)"
            )
            response = error_response(ServiceError(UNSUPPORTED_MEDIA, None, message, location="body"), {"Connection": "close"})
            return await response(scope, receive, send)
        received, body_done = 0, False

        async def limited_receive():
            nonlocal received, body_done
            if body_done:  # later reads wait for a disconnect, which may rightly take long
                return await receive()
            try:
                async with asyncio.timeout(self.body_timeout_s):  # no task per message, unlike wait_for
                    message = await receive()
            except TimeoutError:
                raise self._stalled() from None  # FastAPI re-raises HTTPExceptions from body parsing
            body_done = message["type"] != "http.request" or not message.get("more_body", False)
            received += len(message.get("body", b""))
            if self.max_bytes is not None and received > self.max_bytes:
                raise self._error(f"of more than {self.max_bytes} bytes")
            return message

        await self.app(scope, limited_receive, send)


def _http_exception(error: ServiceError) -> HTTPException:
    """A refusal of the body as the exception FastAPI re-raises from body parsing (it turns any
    other exception there into a 400)."""
    return HTTPException(status_of(error), detail=error.detail)


class DrainAndCount:
    """While draining, new ``/v1`` requests get 503 + Retry-After; accepted ``/v1`` requests are
    counted in flight; every response is counted by route and status.

    Plain ASGI rather than ``BaseHTTPMiddleware``, which re-streams every response through a
    task group and a memory stream: a measurable share of a lone request's overhead."""

    def __init__(self, app, service, retry_after_s: int):
        self.app, self.service, self.retry_after_s = app, service, retry_after_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        api = scope["path"].startswith(API_PREFIX + "/")
        telemetry = self.service.telemetry
        status = 500  # what the server's error middleware answers if the app raises

        async def counting_send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            if self.service.draining and api:
                response = error_response(
                    ServiceError(
                        UNAVAILABLE, None, "server is shutting down; retry on another replica", {"Retry-After": str(self.retry_after_s)}
                    )
                )
                await response(scope, receive, counting_send)
            elif api:
                telemetry.in_flight.inc()
                try:
                    await self.app(scope, receive, counting_send)
                finally:
                    telemetry.in_flight.dec()
            else:
                await self.app(scope, receive, counting_send)
        finally:
            endpoint = getattr(scope.get("route"), "path", "unmatched")
            telemetry.requests.labels(endpoint=endpoint, status=str(status)).inc()


def install_sigterm_drain(service) -> None:
    """On SIGTERM: /readyz and new /v1 requests answer 503 at once; then (after
    ``drain_seconds``) the server's own handler stops accepting and finishes in-flight work."""
    if threading.current_thread() is not threading.main_thread():
        return
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum, frame):
        service.draining = True
        if callable(previous):
            threading.Timer(service.settings.drain_seconds, previous, (signum, frame)).start()

    signal.signal(signal.SIGTERM, on_sigterm)
