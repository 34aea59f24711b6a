"""Server settings: every field is a ``serve`` flag and a ``LOSS_SERVICE_<NAME>`` variable."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ..common.errors import comma_list

ALL_MODELS = "all"
NO_LIMIT = ("0", "none", "None", "")


@dataclass(frozen=True)
class EngineConfig:
    """What the engine needs of the server's settings, and all that ``score --local`` gives it."""

    device: str = "auto"
    precision: str = "fp32"
    pretrained: bool = True
    weights_dir: str | None = None
    models: tuple[str, ...] = ()  # backbones to load at setup
    fetch: bool = False  # download missing weights at setup
    strict: bool = False  # a model whose weights are missing fails setup


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LOSS_SERVICE_", extra="ignore")

    host: str = Field("127.0.0.1", description="interface to listen on")
    port: int = Field(8000, ge=0, le=65535, description="TCP port")
    device: str = Field("auto", description="'auto' (cuda when available, else cpu), 'cpu', 'cuda', 'cuda:N'")
    models: str = Field(ALL_MODELS, description="comma list of backbones to load ('all': every backbone `weights list` shows)")
    weights_dir: str | None = Field(None, description="directory searched first for checkpoints")
    random_weights: bool = Field(False, description="explicit opt-in: random backbone weights (responses say pretrained=false)")
    strict: bool = Field(False, description="fail at start-up when any model's weights are missing")
    offline: bool = Field(
        False,
        description="never download weights (also HF_HUB_OFFLINE=1); without it, missing weights "
        "are fetched at start-up and verified (source: LOSS_SERVICE_WEIGHTS_BASE_URL or the official URL)",
    )
    max_batch_size: int = Field(16, ge=1, description="items per device batch")
    max_batch_pixels: int | None = Field(None, ge=1, description="pixel budget per batch (sum of H×W over items)")
    max_batch_memory_gb: float | None = Field(
        None,
        gt=0,
        description="estimated memory per batch in GiB (per-metric bytes per pixel × pixels, from "
        "service/server/memory_costs.json); default: the memory budget (see --max-memory-gb)",
    )
    max_delay_ms: float = Field(0.0, ge=0, description="how long a batch may wait for company after its first item")
    max_queue: int | None = Field(
        256,
        ge=1,
        description="queued items before 503 + Retry-After; 0/none lifts the limit "
        "(256: a few seconds of work at the measured throughput, bounded memory)",
    )
    max_image_pixels: int | None = Field(
        4096 * 4096,
        ge=1,
        description="largest H×W accepted per image (413 above); 0/none "
        "lifts the limit (4096²: larger than any SR benchmark image, checked before decoding)",
    )
    max_clip_pixels: int | None = Field(
        2**28,
        ge=1,
        description="largest frames × H × W of one clip on /v1/score/clip (413 above, from the headers); 0/none lifts the limit "
        "(2^28: 100 frames of 1920×1080 in 0.8 GB of 8-bit RGB)",
    )
    max_body_mb: float | None = Field(
        256.0,
        gt=0,
        description="largest request body in MB (413 above); 0/none lifts the limit "
        "(256: two 16-bit RGB 4096² PNGs, ~101 MB each, plus an LR)",
    )
    max_memory_gb: float | None = Field(
        None,
        gt=0,
        description="memory a request may need (413 above, before computing); default: free GPU memory, or 80%% of available RAM on a CPU",
    )
    body_timeout_s: float = Field(30.0, gt=0, description="408 when a client sends no body data for this long")
    api_key: str | None = Field(None, description="bearer token required on /v1/* when set")
    precision: Literal["fp32", "fp16", "bf16"] = Field("fp32", description="fp16/bf16 need compute capability ≥ 7.0")
    decode_threads: int = Field(4, ge=1, description="threads that decode uploads")
    keep_alive_s: float = Field(
        75.0,
        gt=0,
        description="how long an idle keep-alive connection stays open; longer than "
        "clients' idle expiry (httpx: 5 s, load balancers: 60 s) so that the client, not the server, "
        "closes an idle connection and no request races the close",
    )
    drain_seconds: float = Field(0.0, ge=0, description="on SIGTERM, keep answering (readyz 503) this long before closing")
    retry_after_s: int = Field(1, ge=0, description="Retry-After sent with 503 on overload")

    @field_validator(
        "max_queue",
        "max_image_pixels",
        "max_clip_pixels",
        "max_body_mb",
        "max_batch_pixels",
        "max_batch_memory_gb",
        "max_memory_gb",
        mode="before",
    )
    @classmethod
    def _zero_lifts_the_limit(cls, value):
        return None if value is None or str(value).strip() in NO_LIMIT else value

    @field_validator("models")
    @classmethod
    def _known_models(cls, value: str) -> str:
        from losses.nets.backbones import BACKBONES  # torch: imported only when settings are built

        names = comma_list(value)
        if names == [ALL_MODELS]:
            return ALL_MODELS
        unknown = [name for name in names if name not in BACKBONES]
        if unknown:
            raise ValueError(f"unknown model(s) {unknown}; valid: {list(BACKBONES)} or {ALL_MODELS!r}")
        return ",".join(names)

    @property
    def model_names(self) -> list[str]:
        from losses.nets.backbones import BACKBONES

        return list(BACKBONES) if self.models == ALL_MODELS else comma_list(self.models)

    def engine_config(self) -> EngineConfig:
        """The part of the settings the scoring engine reads."""
        from losses.nets import weights

        return EngineConfig(
            device=self.device,
            precision=self.precision,
            pretrained=not self.random_weights,
            weights_dir=self.weights_dir,
            models=tuple(self.model_names),
            fetch=not (self.offline or weights.offline()),
            strict=self.strict,
        )
