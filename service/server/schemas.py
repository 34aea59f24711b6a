"""Pydantic models of the HTTP responses (they also document the API in /docs)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from ..common.errors import ServiceError
from ..common.protocol import FEATURES_PATH, SCORE_CLIP_PATH, SCORE_PATH
from .http_errors import status_of
from .scoring import ModelState


class Timing(BaseModel):
    queue: float = Field(description="ms waiting for a device batch")
    compute: float = Field(description="ms of the device batch this request ran in")
    total: float = Field(description="ms from request received to response ready")


class ScoreResult(BaseModel):
    scores: dict[str, float | None] = Field(
        description="per-metric values; composite metrics add '<name>.<component>'; null where not finite"
    )
    pretrained: bool
    device: str
    precision: str
    timing_ms: Timing
    warnings: list[str] = []


CONVENTIONS_HELP = (
    "what the scores depend on besides the pixels: each metric's resolved options and convention, the "
    "pixel conventions (data range, Y formula, crop), weight files with sha256, device, precision, "
    "pretrained, versions, date"
)


class ScoreResponse(ScoreResult):
    conventions: dict = Field(description=CONVENTIONS_HELP)


class ItemError(BaseModel):
    status: int
    detail: list[dict] | str


class BatchItemError(BaseModel):
    error: ItemError

    @classmethod
    def of(cls, error: ServiceError) -> BatchItemError:
        """One triplet's refusal, in the batch response beside the others' scores."""
        return cls(error=ItemError(status=status_of(error), detail=error.detail))


class BatchResponse(BaseModel):
    results: list[ScoreResult | BatchItemError]
    mean: dict[str, float | None] = Field(description="mean over the successful triplets (finite values only)")
    conventions: dict = Field(description=CONVENTIONS_HELP)


class ClipResponse(BaseModel):
    per_frame: dict[str, list[float | None]] = Field(description="each frame metric's value per frame, in frame order")
    temporal: dict[str, list[float | None]] = Field(description="tof/tlp per pair of frames (t−1, t); see frames")
    frames: dict[str, list[int]] = Field(description="the frame index t of each value")
    per_clip: dict[str, float | None] = Field(description="each metric's mean over the clip")
    vmaf: dict[str, dict] = Field({}, description="for vmaf/vmaf_neg: the model, libvmaf version and YUV 4:2:0 conversion")
    pretrained: bool
    device: str
    precision: str
    timing_ms: Timing
    conventions: dict = Field(description=CONVENTIONS_HELP + "; clip: the temporal metrics, skip and averaging")


class FeaturesResponse(BaseModel):
    format: str = Field(description="'loss-service.features': the payload's format name")
    version: int = Field(description="the format's version (1); a reader refuses others")
    count: int = Field(description="rows: one per uploaded image, in upload order")
    dim: int = Field(description="values per row (2048 for InceptionV3 pool3)")
    dtype: str = Field(description="'<f4': little-endian float32")
    features: str = Field(description="base64 of the count×dim values, row-major")
    extractor: str = Field(description="backbone:layer the rows come from, e.g. inception_v3_fid:pool3")
    metrics: list[str] = Field(description="the dataset metrics the rows serve")
    pretrained: bool
    device: str
    precision: str
    warnings: list[str] = []
    timing_ms: Timing
    conventions: dict = Field(description=CONVENTIONS_HELP)


class MetricInfo(BaseModel):
    name: str
    kind: Literal["image", "clip", "set"] = Field(
        description=f"image: scored per image ({SCORE_PATH}); clip: per whole clip ({SCORE_CLIP_PATH}); set: per pair of image sets"
    )
    lower_is_better: bool
    needs: list[str]
    options: dict
    choices: dict[str, list[str]] = Field(default_factory=dict, description="the values each text option may take")
    backbone: str | None
    description: str
    convention: str = Field("", description="the paper or package convention followed, and how it differs from others")
    dataset: bool = Field(False, description=f"a metric of two image sets (fid, kid): features from POST {FEATURES_PATH}")
    clip: bool = Field(False, description=f"a metric of whole clips (tof, tlp, vmaf, vmaf_neg): POST {SCORE_CLIP_PATH}")
    available: bool
    unavailable_reason: str | None = Field(None, description="why this server cannot score it (a model not loaded, no libvmaf)")


class ReadyResponse(BaseModel):
    ready: bool
    draining: bool
    pretrained: bool
    device: str
    precision: str
    models: dict[str, ModelState]
    missing: list[str]


class DistillResponse(BaseModel):
    components: dict[str, float]
    total: float
