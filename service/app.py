"""The FastAPI app: ``create_app(settings)`` builds it; the lifespan loads the models once."""

from __future__ import annotations

import asyncio
import hmac
import logging
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from PIL import Image
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.datastructures import UploadFile

from losses import registry

from .batcher import Batcher, BatchTooLarge, QueueFull, ShuttingDown
from .decode import decode
from .errors import ServiceError, invalid, unavailable
from .models import BatchResponse, ScoreResponse
from .routes import build_router
from .scoring import Job, Scorer, finite_scores, too_large_for_device
from .settings import Settings
from .telemetry import Telemetry

log = logging.getLogger("loss_service")
IMAGE_FIELDS = ("sr", "gt", "lr", "teacher")


class ScoringService:
    """Request-level work shared by the routes: decode, validate, queue, shape the answer."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.scorer = Scorer(settings)
        self.telemetry = Telemetry()
        self.decode_pool = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="decode")
        self.batcher: Batcher | None = None
        self.ready = False
        self.draining = False

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        if self.settings.max_image_pixels:
            Image.MAX_IMAGE_PIXELS = self.settings.max_image_pixels
        await run_in_threadpool(self.scorer.load)
        await run_in_threadpool(self.scorer.warmup)
        self.batcher = Batcher(
            self.scorer.run_batch,
            max_batch_size=self.settings.max_batch_size,
            max_batch_cost=self.settings.max_batch_pixels,
            max_delay_s=self.settings.max_delay_ms / 1000.0,
            max_queue=self.settings.max_queue,
            on_batch=self._observe_batch,
            name=f"device-{self.scorer.device}",
        )
        self.telemetry.queue_depth.set_function(lambda: self.batcher.depth)
        self.batcher.start()
        self.ready = True
        log.info("ready on %s (%s, pretrained=%s)", self.scorer.device, self.settings.precision, self.scorer.pretrained)

    async def stop(self) -> None:
        self.draining = True
        if self.batcher is not None:
            await self.batcher.stop()
        self.decode_pool.shutdown(wait=True)

    def _observe_batch(self, key: tuple, size: int, seconds: float) -> None:
        label = Job.backbone_label(key)
        self.telemetry.batch_size.labels(backbone=label).observe(size)
        self.telemetry.compute.labels(backbone=label).observe(seconds)

    def readiness(self) -> dict:
        models = {name: vars(state) for name, state in self.scorer.models.items()}
        return dict(
            ready=self.ready and not self.draining and self.scorer.ready,
            draining=self.draining,
            pretrained=self.scorer.pretrained,
            device=str(self.scorer.device),
            precision=self.settings.precision,
            models=models,
            missing=[name for name, state in self.scorer.models.items() if not state.loaded],
        )

    def catalogue(self) -> list[dict]:
        return [
            {**metric.catalogue_entry(), "available": self.scorer.missing_reason(metric, dict(metric.options)) is None}
            for metric in registry.REGISTRY.values()
        ]

    # --- scoring ---------------------------------------------------------------------------

    async def _decode_all(self, uploads: dict[str, UploadFile]) -> dict:
        loop = asyncio.get_running_loop()
        contents = {role: await upload.read() for role, upload in uploads.items()}
        max_pixels = self.settings.max_image_pixels
        tasks = {role: loop.run_in_executor(self.decode_pool, decode, data, role, max_pixels) for role, data in contents.items()}
        return {role: await task for role, task in tasks.items()}

    async def score(self, uploads: dict[str, UploadFile | None], plan: tuple) -> ScoreResponse:
        received = time.perf_counter()
        decoded = await self._decode_all({role: upload for role, upload in uploads.items() if upload is not None})
        job = self.scorer.job(plan, decoded)
        outcome = await self._submit(job)
        scores, warnings = finite_scores(outcome.value)
        self.telemetry.queue_wait.observe(outcome.queue_s)
        return ScoreResponse(
            scores=scores,
            pretrained=self.scorer.pretrained,
            device=str(self.scorer.device),
            precision=self.settings.precision,
            timing_ms=dict(
                queue=outcome.queue_s * 1e3,
                compute=outcome.compute_s * 1e3,
                total=(time.perf_counter() - received) * 1e3,
            ),
            warnings=job.warnings + warnings + self.random_weights_warning,
        )

    @property
    def random_weights_warning(self) -> list[str]:
        return [] if self.scorer.pretrained else ["random backbone weights (--random-weights): scores are not comparable"]

    async def _submit(self, job: Job):
        if self.draining or self.batcher is None:
            raise unavailable(None, "server is shutting down", self.settings.retry_after_s)
        try:
            return await self.batcher.submit(job.key, job, job.cost)
        except QueueFull as exc:
            self.telemetry.rejected.labels(reason="queue_full").inc()
            raise unavailable(None, f"{exc}; retry later", self.settings.retry_after_s) from None
        except ShuttingDown:
            raise unavailable(None, "server is shutting down", self.settings.retry_after_s) from None
        except BatchTooLarge as exc:
            self.telemetry.rejected.labels(reason="out_of_memory").inc()
            raise too_large_for_device(self.settings, exc) from None

    async def score_batch(self, fields: dict[str, list[UploadFile]], plan: tuple) -> BatchResponse:
        count = len(fields["sr"])
        for role in IMAGE_FIELDS[1:]:
            if fields.get(role) and len(fields[role]) != count:
                raise invalid(role, f"{len(fields[role])} {role} files for {count} sr files; fields pair by order")
        if not fields.get("gt"):
            raise invalid("gt", "gt is required")

        async def one(index: int):
            uploads = {role: files[index] for role, files in fields.items() if files}
            try:
                return await self.score(uploads, plan)
            except ServiceError as exc:
                return {"error": {"status": exc.status, "detail": exc.detail}}

        results = await asyncio.gather(*(one(i) for i in range(count)))
        return BatchResponse(results=results, mean=batch_mean(results))


def batch_mean(results: list) -> dict[str, float | None]:
    columns: dict[str, list[float]] = {}
    for result in results:
        if isinstance(result, ScoreResponse):
            for name, value in result.scores.items():
                columns.setdefault(name, [])
                if value is not None:
                    columns[name].append(value)
    return {name: (sum(values) / len(values) if values else None) for name, values in columns.items()}


class RequestGuard:
    """ASGI middleware: 413 for bodies over the limit (by Content-Length or while streaming),
    408 for a client that stalls mid-body longer than ``body_timeout_s``."""

    def __init__(self, app, max_bytes: int | None, body_timeout_s: float, on_reject):
        self.app, self.max_bytes, self.body_timeout_s, self.on_reject = app, max_bytes, body_timeout_s, on_reject

    def _error(self, size: str) -> HTTPException:
        self.on_reject("body_too_large")
        message = f"request body {size} exceeds --max-body-mb ({self.max_bytes / 2**20:g} MB)"
        return HTTPException(413, detail=[{"loc": ["body"], "msg": message, "type": "too_large"}])

    def _stalled(self) -> HTTPException:
        self.on_reject("body_timeout")
        message = f"no request body data for {self.body_timeout_s:g} s (--body-timeout-s)"
        return HTTPException(408, detail=[{"loc": ["body"], "msg": message, "type": "timeout"}])

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if self.max_bytes is not None and length is not None and length.isdigit() and int(length) > self.max_bytes:
            error = self._error(f"of {int(length)} bytes")
            response = JSONResponse({"detail": error.detail}, status_code=413, headers={"Connection": "close"})
            return await response(scope, receive, send)
        received, body_done = 0, False

        async def limited_receive():
            nonlocal received, body_done
            if body_done:  # later reads wait for a disconnect, which may rightly take long
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.body_timeout_s)
            except asyncio.TimeoutError:
                raise self._stalled() from None  # FastAPI re-raises HTTPExceptions from body parsing
            body_done = message["type"] != "http.request" or not message.get("more_body", False)
            received += len(message.get("body", b""))
            if self.max_bytes is not None and received > self.max_bytes:
                raise self._error(f"of more than {self.max_bytes} bytes")
            return message

        await self.app(scope, limited_receive, send)


def install_sigterm_drain(service: ScoringService) -> None:
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


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    service = ScoringService(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await service.start()
        install_sigterm_drain(service)
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(
        title="loss-service",
        description="Exact perceptual, contrastive and structural scores for super-resolution outputs.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.service = service
    bearer = HTTPBearer(auto_error=False, description="required when the server has --api-key")

    async def require_api_key(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if settings.api_key is None:
            return
        given = credentials.credentials.encode() if credentials else b""
        if not hmac.compare_digest(given, settings.api_key.encode()):
            service.telemetry.rejected.labels(reason="unauthorized").inc()
            raise ServiceError(401, "Authorization", "missing or wrong bearer token", "unauthorized", {"WWW-Authenticate": "Bearer"})

    app.include_router(build_router(service), dependencies=[Depends(require_api_key)])

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict:
        return {"status": "alive"}

    @app.get("/readyz", tags=["ops"], responses={503: {"description": "loading, draining or models missing"}})
    async def readyz() -> JSONResponse:
        body = service.readiness()
        return JSONResponse(body, status_code=200 if body["ready"] else 503)

    @app.get("/metrics", tags=["ops"], include_in_schema=False)
    async def prometheus() -> Response:
        return Response(generate_latest(service.telemetry.registry), media_type=CONTENT_TYPE_LATEST)

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=exc.headers)

    # Added before the counting middleware so it sits inside it: its exceptions then reach
    # FastAPI's body parsing directly (which re-raises HTTPException), and its 413s are counted.
    max_bytes = int(settings.max_body_mb * 2**20) if settings.max_body_mb else None
    app.add_middleware(RequestGuard, max_bytes=max_bytes, body_timeout_s=settings.body_timeout_s,
                       on_reject=lambda reason: service.telemetry.rejected.labels(reason=reason).inc())

    @app.middleware("http")
    async def count_and_drain(request: Request, call_next):
        if service.draining and request.url.path.startswith("/v1/"):
            response = JSONResponse(
                {"detail": [{"loc": ["request"], "msg": "server is shutting down; retry on another replica", "type": "unavailable"}]},
                status_code=503,
                headers={"Retry-After": str(settings.retry_after_s)},
            )
        else:
            response = await call_next(request)
        route = request.scope.get("route")
        endpoint = getattr(route, "path", "unmatched")
        service.telemetry.requests.labels(endpoint=endpoint, status=str(response.status_code)).inc()
        return response

    return app
