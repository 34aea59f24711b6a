"""The FastAPI app: ``create_app(settings)`` builds it; the lifespan loads the models once."""

from __future__ import annotations

import hmac
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..common.errors import UNAUTHORIZED, ServiceError
from .http_errors import error_response, framework_detail
from .middleware import DrainAndCount, RequestGuard, install_sigterm_drain
from .ops import build_ops_router
from .routes import build_router
from .scoring_service import ScoringService
from .settings import Settings


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
            raise ServiceError(UNAUTHORIZED, "Authorization", "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})

    app.include_router(build_router(service), dependencies=[Depends(require_api_key)])
    app.include_router(build_ops_router(service))

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        """Starlette's own errors (a multipart body without its boundary, an unknown path, a wrong
        method) in the one detail shape every 4xx has; their detail was a bare string."""
        detail = exc.detail if isinstance(exc.detail, list) else framework_detail(exc.status_code, str(exc.detail))
        return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=exc.headers)

    # Added before the counting middleware so it sits inside it: its exceptions then reach
    # FastAPI's body parsing directly (which re-raises HTTPException), and its 413s are counted.
    max_bytes = int(settings.max_body_mb * 2**20) if settings.max_body_mb else None
    app.add_middleware(
        RequestGuard,
        max_bytes=max_bytes,
        body_timeout_s=settings.body_timeout_s,
        on_reject=lambda reason: service.telemetry.rejected.labels(reason=reason).inc(),
    )
    app.add_middleware(DrainAndCount, service=service, retry_after_s=settings.retry_after_s)
    return app
