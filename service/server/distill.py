"""/v1/distill: DistillationLoss on tensors sent as a safetensors body (CPU, on the device thread between batches)."""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from losses import DistillationLoss

from ..common.errors import invalid, json_object, unsupported
from .schemas import DistillResponse

REQUIRED = ("teacher_logits", "student_logits", "labels")


class DistillConfig(BaseModel):
    """DistillationLoss keyword arguments, typed so a bad value is a 422, not a crash."""

    model_config = ConfigDict(extra="forbid")
    logit_loss: str | None = None
    aux_loss: str | None = None
    features_index: list[int] = Field(default_factory=lambda: [-1], max_length=64)
    tau: float = Field(3.0, gt=0, allow_inf_nan=False)
    mode: str | None = None
    lambda1: float = Field(1.0, allow_inf_nan=False)
    lambda2: float = Field(1.0, allow_inf_nan=False)
    alpha: float = Field(1.0, allow_inf_nan=False)
    beta: float = Field(1.0, allow_inf_nan=False)
    gamma: float = Field(1.0, allow_inf_nan=False)
    spatial_avg: str | None = None
    multiple_lrs: int | None = Field(None, ge=1, le=64)


def _feature_list(tensors: dict[str, torch.Tensor], prefix: str) -> list[torch.Tensor]:
    indices = sorted(int(k.split(".", 1)[1]) for k in tensors if k.startswith(prefix + ".") and k.split(".", 1)[1].isdigit())
    if indices != list(range(len(indices))):
        raise invalid("body", f"{prefix}.<i> must be numbered 0..n-1, got {indices}")
    return [tensors[f"{prefix}.{i}"].float() for i in indices]


def compute(body: bytes, config_text: str) -> DistillResponse:
    from safetensors import SafetensorError
    from safetensors.torch import load

    config = json_object(config_text, "config", '{"logit_loss": "soft_entropy"}')
    try:
        loss = DistillationLoss(**DistillConfig(**config).model_dump())
    except (ValidationError, ValueError) as exc:
        raise invalid("config", f"config: {exc}") from None
    try:
        tensors = load(body)
    except (SafetensorError, ValueError, RuntimeError, OverflowError) as exc:
        raise unsupported("body", f"body: not a safetensors file ({exc})") from None
    missing = [name for name in REQUIRED if name not in tensors]
    if missing:
        raise invalid("body", f"body: missing tensor(s) {missing}; present: {sorted(tensors)}")
    extra = tensors.get("student_logits_teacher_features")
    try:
        result = loss(
            tensors["teacher_logits"].float(),
            _feature_list(tensors, "teacher_features"),
            tensors["student_logits"].float(),
            _feature_list(tensors, "student_features"),
            tensors["labels"].float(),
            None if extra is None else extra.float(),
        )
    except (ValueError, RuntimeError, IndexError, TypeError) as exc:
        raise invalid("body", f"body: {exc}") from None
    total = result.pop("total")
    return DistillResponse(components=result, total=float(total))


async def run(service, body: bytes, config_text: str) -> DistillResponse:
    return await service.on_device_thread(lambda: compute(body, config_text))
