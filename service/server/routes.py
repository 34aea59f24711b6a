"""Thin route functions: parse the request, hand it to the service, return its model."""

from __future__ import annotations

import difflib

from fastapi import APIRouter, File, Form, Query, Request, UploadFile

from losses.registry import REGISTRY

from ..common.errors import invalid
from ..common.protocol import (
    CATALOGUE_PATH,
    DEFAULT_DATASET_METRICS,
    DEFAULT_METRICS,
    DISTILL_CONFIG_PARAM,
    DISTILL_PATH,
    FEATURES_IMAGE_FIELD,
    FEATURES_PATH,
    IMAGE_ROLES,
    METRICS_FIELD,
    OPTIONS_FIELD,
    SCORE_BATCH_PATH,
    SCORE_CLIP_PATH,
    SCORE_PATH,
)
from . import clips, distill
from .schemas import BatchResponse, ClipResponse, DistillResponse, FeaturesResponse, MetricInfo, ScoreResponse

DEFAULT_METRICS_FIELD = ",".join(DEFAULT_METRICS)
METRICS_HELP = f"comma list of metric names (GET {CATALOGUE_PATH}); default {DEFAULT_METRICS_FIELD}"
OPTIONS_HELP = 'JSON object of metric options, e.g. {"crop_border": 4, "y_channel": true}'
ERRORS = {
    400: {"description": "a multipart body that cannot be parsed (no boundary, a wrong one)"},
    401: {"description": "missing or wrong API key"},
    408: {"description": "the client stalled while sending the body"},
    413: {"description": "body or image too large"},
    415: {"description": "undecodable or unsupported data, or a compressed body (Content-Encoding)"},
    422: {"description": "invalid request; detail names the field"},
    503: {"description": "overloaded (Retry-After), shutting down, or a needed model is missing"},
}


FORM_FIELDS = (*IMAGE_ROLES, METRICS_FIELD, OPTIONS_FIELD)
FEATURES_FIELDS = (FEATURES_IMAGE_FIELD, METRICS_FIELD, OPTIONS_FIELD)
DEFAULT_DATASET_FIELD = ",".join(DEFAULT_DATASET_METRICS)
# Fields a request gives once on every endpoint (FastAPI would keep the last of several, silently).
SINGLE_FIELDS = {METRICS_FIELD: "one comma-separated list, e.g. psnr,ssim", OPTIONS_FIELD: "one JSON object holding every option"}
OPTION_NAMES = frozenset(key for metric in REGISTRY.values() for key in metric.options)


async def check_fields(request: Request, once: bool, fields: tuple[str, ...] = FORM_FIELDS) -> None:
    """Refuse what would otherwise be ignored in silence: a query parameter or an unknown form
    field (``crop_border=4`` as a field of its own would give the uncropped PSNR, ``metric=psnr``
    the default metrics), a repeated ``metrics`` or ``options`` (all but the last would be
    dropped), and with ``once`` a repeated image (/v1/score takes one triplet)."""
    for name in request.query_params:
        advice = (
            f"send {name!r} as a multipart form field" if name in fields else f"the form fields are {list(fields)}{_hint(name, fields)}"
        )
        raise invalid(name, f"{request.url.path} takes no query parameters, got {name!r}; {advice}", location="query")
    form = await request.form()  # parsed once by FastAPI already; cached on the request
    for name in form:
        if name not in fields:
            raise invalid(name, f"unknown form field {name!r}; the fields are {list(fields)}{_hint(name, fields)}")
        count = len(form.getlist(name))
        if count > 1 and name in SINGLE_FIELDS:
            raise invalid(name, f"{name} given {count} times; give it once, as {SINGLE_FIELDS[name]}")
        if once and count > 1:
            raise invalid(name, f"{name} given {count} times; {SCORE_PATH} takes one triplet (use {SCORE_BATCH_PATH})")


def _hint(name: str, fields: tuple[str, ...]) -> str:
    if name in OPTION_NAMES and OPTIONS_FIELD in fields:
        return f'; options go in the {OPTIONS_FIELD} field as JSON, e.g. {OPTIONS_FIELD}={{"{name}": ...}}'
    close = difflib.get_close_matches(name.lower(), fields, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def build_router(service) -> APIRouter:
    router = APIRouter(responses=ERRORS)

    @router.post(SCORE_PATH, response_model=ScoreResponse, tags=["scoring"])
    async def score(
        request: Request,
        sr: UploadFile = File(..., description="super-resolved image"),
        gt: UploadFile | None = File(None, description="ground truth, same H×W as sr (every metric but niqe needs it)"),
        lr: UploadFile | None = File(None, description="low-resolution input (any size up to sr's)"),
        teacher: UploadFile | None = File(None, description="teacher output, same H×W as sr (metric kd)"),
        metrics: str = Form(DEFAULT_METRICS_FIELD, alias=METRICS_FIELD, description=METRICS_HELP),
        options: str = Form("{}", alias=OPTIONS_FIELD, description=OPTIONS_HELP),
    ) -> ScoreResponse:
        await check_fields(request, once=True)
        plan = service.scorer.plan(metrics, options)
        return await service.score(dict(sr=sr, gt=gt, lr=lr, teacher=teacher), plan)

    @router.post(SCORE_BATCH_PATH, response_model=BatchResponse, tags=["scoring"])
    async def score_batch(
        request: Request,
        sr: list[UploadFile] = File(..., description="SR images; the i-th of each field form triplet i"),
        gt: list[UploadFile] | None = File(None, description="ground truths paired with sr by order, or one for every sr"),
        lr: list[UploadFile] | None = File(None, description="LR inputs paired by order, or one for every sr"),
        teacher: list[UploadFile] | None = File(None, description="teacher outputs paired by order, or one for every sr"),
        metrics: str = Form(DEFAULT_METRICS_FIELD, alias=METRICS_FIELD, description=METRICS_HELP),
        options: str = Form("{}", alias=OPTIONS_FIELD, description=OPTIONS_HELP),
    ) -> BatchResponse:
        await check_fields(request, once=False)
        plan = service.scorer.plan(metrics, options)
        return await service.score_batch(dict(sr=sr, gt=gt or [], lr=lr or [], teacher=teacher or []), plan)

    @router.post(SCORE_CLIP_PATH, response_model=ClipResponse, tags=["scoring"])
    async def score_clip(
        request: Request,
        sr: list[UploadFile] = File(..., description=clips.FIELDS_HELP["sr"]),
        gt: list[UploadFile] = File(..., description=clips.FIELDS_HELP["gt"]),
        metrics: str = Form(clips.DEFAULT_CLIP_METRICS, alias=METRICS_FIELD, description=clips.FIELDS_HELP[METRICS_FIELD]),
        options: str = Form("{}", alias=OPTIONS_FIELD, description=OPTIONS_HELP + '; "skip": frames left out at each end for tof/tlp'),
    ) -> ClipResponse:
        await check_fields(request, once=False)
        plan = clips.plan_clip(service.scorer, metrics, options)
        return await service.score_clip(dict(sr=sr, gt=gt), plan)

    @router.post(FEATURES_PATH, response_model=FeaturesResponse, tags=["datasets"])
    async def features(
        request: Request,
        image: list[UploadFile] = File(..., alias=FEATURES_IMAGE_FIELD, description="images of one set (SR outputs or GT), any sizes"),
        metrics: str = Form(DEFAULT_DATASET_FIELD, alias=METRICS_FIELD, description="dataset metrics the features are for"),
        options: str | None = Form(
            None, alias=OPTIONS_FIELD, description='JSON object; {"convention": "clean-fid"} extracts as that tool does'
        ),
    ) -> FeaturesResponse:
        """Per-image features for dataset metrics (fid, kid): the client accumulates them over
        each set and computes the metric (`loss-service eval --metrics fid,kid`)."""
        await check_fields(request, once=False, fields=FEATURES_FIELDS)
        plan = service.scorer.plan(metrics, options, kinds=("set",))
        return await service.features(image, plan)

    @router.post(
        DISTILL_PATH,
        response_model=DistillResponse,
        tags=["distillation"],
        openapi_extra={
            "requestBody": {
                "required": True,
                "description": "safetensors file: teacher_logits, student_logits, labels, teacher_features.<i>, "
                "student_features.<i>, optional student_logits_teacher_features",
                "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
            }
        },
    )
    async def distill_route(
        request: Request,
        config: str = Query(
            "{}", alias=DISTILL_CONFIG_PARAM, description="DistillationLoss keyword arguments as a JSON object", max_length=4096
        ),
    ) -> DistillResponse:
        return await distill.run(service, await request.body(), config)

    @router.get(CATALOGUE_PATH, response_model=list[MetricInfo], tags=["catalogue"])
    async def catalogue() -> list[dict]:
        return service.catalogue()

    return router
