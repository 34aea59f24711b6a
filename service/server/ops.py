"""Operations routes: liveness, readiness (with its response model) and Prometheus."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..common.protocol import HEALTHZ_PATH, PROMETHEUS_PATH, READYZ_PATH
from .schemas import ReadyResponse


def build_ops_router(service) -> APIRouter:
    router = APIRouter(tags=["ops"])

    @router.get(HEALTHZ_PATH)
    async def healthz() -> dict:
        return {"status": "alive"}

    @router.get(
        READYZ_PATH,
        response_model=ReadyResponse,
        responses={503: {"model": ReadyResponse, "description": "loading, draining or models missing"}},
    )
    async def readyz() -> JSONResponse:
        body = ReadyResponse(**service.readiness())
        return JSONResponse(body.model_dump(), status_code=200 if body.ready else 503)

    @router.get(PROMETHEUS_PATH, include_in_schema=False)
    async def prometheus() -> Response:
        return Response(generate_latest(service.telemetry.registry), media_type=CONTENT_TYPE_LATEST)

    return router
