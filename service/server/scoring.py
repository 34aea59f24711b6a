"""The scoring engine: loads the backbones once, parses a request into a typed ``Plan``, and
runs batches of decoded triplets on the device. It knows nothing about HTTP (it raises
``ServiceError``s, whose kind the HTTP layer maps to a status) and nothing about loss formulas
(the registry in ``losses`` computes them).

Its lifecycle, in order: ``setup`` (backbones, once), ``plan`` (per request), ``job`` (per
triplet), ``run_batch`` (per device batch) and ``encode`` (per triplet's answer).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import torch

from losses import plan, registry
from losses.nets import weights
from losses.nets.backbones import backbone_spec, get_backbone
from losses.nets.weights import WeightsError
from losses.record import conventions as conventions_record

from ..common.decode import Decoded
from ..common.errors import ServiceError, comma_list, invalid, json_object, too_large, unavailable
from ..common.protocol import (
    DEFAULT_DATASET_METRICS,
    DEFAULT_METRICS,
    IMAGE_ROLES,
    METRICS_FIELD,
    OPTIONAL_ROLES,
    OPTIONS_FIELD,
    RANDOM_WEIGHTS_WARNING,
)
from .batcher import BatchTooLarge
from .device import check_device, select_device
from .settings import EngineConfig

log = logging.getLogger("loss_service")

MAX_OPTIONS_CHARS = 4096
MAX_METRICS_CHARS = 1024
MAX_METRIC_NAMES = 64
AUTOCAST_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
WARMUP_SIDES = (32, 64, 128, 256, 512)
# How torch's CPU allocator reports a failed allocation (a RuntimeError, not an OutOfMemoryError).
CPU_ALLOCATION_FAILURES = ("can't allocate memory", "not enough memory", "std::bad_alloc")


@dataclass(frozen=True, eq=False)
class Plan(plan.Plan):
    """A request parsed once (``losses.plan.Plan``: the metrics' registry entries, the request's
    options, each metric's resolved options, the batch key), with the backbones it runs and its
    conventions record (undated). Everything downstream reads it; nothing looks a metric up again."""

    backbone_label: str = "none"  # e.g. ``vgg16+dinov2``; ``none`` for pixel metrics
    conventions: dict = field(default_factory=dict, compare=False)


@dataclass
class Job:
    """One validated triplet: decoded images and the plan they are scored with."""

    images: dict[str, np.ndarray]
    plan: Plan
    warnings: list[str] = field(default_factory=list)

    @property
    def key(self) -> tuple:
        """Jobs with equal keys stack into one batch: same metrics, options and image shapes."""
        return self.plan, tuple(sorted((role, image.shape) for role, image in self.images.items()))

    @property
    def pixels(self) -> int:
        height, width = self.images["sr"].shape[:2]
        return height * width


@dataclass
class ModelState:
    """One backbone's state, as ``/readyz`` reports it."""

    loaded: bool
    pretrained: bool
    device: str
    error: str | None = None


class Scorer:
    def __init__(self, config: EngineConfig):
        self.config = config
        self.device = select_device(config.device)
        self.precision = config.precision
        self.pretrained = config.pretrained
        self.models: dict[str, ModelState] = {}
        self.device_warnings: list[str] = []
        self._conventions: dict[tuple, dict] = {}

    # --- setup ---------------------------------------------------------------------------

    def setup(self) -> None:
        """Load every configured backbone once; a missing checkpoint is fatal only when strict."""
        self.device_warnings = check_device(self.device, self.precision)
        for name in self.config.models:
            try:
                if self.config.fetch and self.pretrained:
                    weights.ensure(backbone_spec(name).weights, self.config.weights_dir)
                self.backbone(name)
                self.models[name] = ModelState(True, self.pretrained, str(self.device))
            except WeightsError as exc:
                if self.config.strict:
                    raise
                log.warning("model %s unavailable: %s", name, exc)
                self.models[name] = ModelState(False, self.pretrained, str(self.device), str(exc))

    def backbone(self, name: str):
        return get_backbone(name, self.device, self.pretrained, self.config.weights_dir)

    def warmup(self) -> None:
        """One small forward pass through every metric whose models loaded, each at the smallest
        of WARMUP_SIDES it accepts (MS-SSIM needs 176²; most metrics run at 32²)."""
        usable = [m for m in registry.REGISTRY.values() if m.kind == "image" and self.missing_reason(m, dict(m.options)) is None]
        by_side: dict[int, list[str]] = {}
        for metric in usable:
            by_side.setdefault(next(side for side in WARMUP_SIDES if registry.size_problem(metric, side) is None), []).append(metric.name)
        rng = np.random.default_rng(0)
        for side, names in sorted(by_side.items()):
            images = {role: rng.random((side // 4 if role == "lr" else side,) * 2 + (3,), dtype=np.float32) for role in IMAGE_ROLES}
            job = Job(images, self.plan(",".join(names), None))
            self.run_batch(job.key, [job])

    @property
    def ready(self) -> bool:
        return all(state.loaded for state in self.models.values())

    def missing_reason(self, metric: registry.Metric, options: dict) -> str | None:
        """Why ``metric`` cannot run on this server (a model not loaded, no libvmaf), or None."""
        return metric.missing() or self.models_missing(metric.name, metric.backbones(options))

    def models_missing(self, metric: str, backbones: Iterable[str]) -> str | None:
        """Why ``metric`` cannot run on this server (a backbone not loaded), or None."""
        for name in sorted(backbones):
            state = self.models.get(name)
            if state is None:
                return f"metric {metric!r} needs model {name!r}, which this server does not load (see --models)"
            if not state.loaded:
                return f"metric {metric!r} needs model {name!r}: {state.error}"
        return None

    # --- plan: once per request ----------------------------------------------------------

    def plan(
        self, metrics_field: str | None, options_field: str | None, check_models: bool = True, kinds: tuple[str, ...] = ("image",)
    ) -> Plan:
        """Parse the ``metrics`` and ``options`` fields into a plan of metrics of ``kinds``; the metrics
        are looked up here only. A plan of set metrics (fid, kid) gives features per image."""
        metrics_field = metrics_field or ",".join(DEFAULT_DATASET_METRICS if kinds == ("set",) else DEFAULT_METRICS)
        if len(metrics_field) > MAX_METRICS_CHARS:
            raise invalid(METRICS_FIELD, f"metrics: {len(metrics_field)} characters; at most {MAX_METRICS_CHARS}")
        names = comma_list(metrics_field)
        if len(names) > MAX_METRIC_NAMES:
            raise invalid(METRICS_FIELD, f"metrics: {len(names)} names; at most {MAX_METRIC_NAMES}")
        options = json_object(options_field or "{}", OPTIONS_FIELD, '{"crop_border": 4}', MAX_OPTIONS_CHARS)
        try:
            planned = plan.make_plan(names, options, kinds)
        except registry.MetricError as exc:
            raise invalid(exc.field, str(exc)) from None
        extractors = {metric.dataset.extractor(planned.resolved[metric.name]) for metric in planned.of_kind("set")}
        if len(extractors) > 1:
            raise invalid(METRICS_FIELD, f"metrics {names} read different features {sorted(extractors)}; request them separately")
        for metric in planned.metrics if check_models else ():
            if (reason := self.missing_reason(metric, planned.resolved[metric.name])) is not None:
                raise unavailable(METRICS_FIELD, reason)
        return Plan(
            planned.metrics,
            planned.options,
            planned.resolved,
            "+".join(sorted(planned.backbones())) or "none",
            self._conventions_of(planned, clip="clip" in kinds),
        )

    def _conventions_of(self, planned: plan.Plan, clip: bool) -> dict:
        """The conventions record, built once per distinct plan (it hashes the weight files)."""
        key = (planned.key, clip)
        if key not in self._conventions:
            self._conventions[key] = conventions_record(
                planned.metrics,
                planned.resolved,
                clip=clip,
                device=self.device,
                precision=self.precision,
                pretrained=self.pretrained,
                weights_dir=self.config.weights_dir,
            )
        return self._conventions[key]

    # --- job: once per triplet -----------------------------------------------------------

    def job(self, plan: Plan, decoded: dict[str, Decoded]) -> Job:
        """Check the images against each other and the metrics' needs."""
        try:
            registry.check_images(plan.metrics, {role: d.size for role, d in decoded.items()}, plan.resolved)
        except registry.MetricError as exc:
            raise invalid(exc.field, str(exc)) from None
        sr_size = decoded["sr"].size
        for role in ("gt", "teacher"):
            if role in decoded and decoded[role].size != sr_size:
                raise invalid(
                    role,
                    f"{role} is {_hw(decoded[role].size)} but sr is {_hw(sr_size)}; they must match"
                    + _mod_crop_hint(decoded[role].size, sr_size)
                    + _turned_hint(decoded[role].size, sr_size),
                )
        if "lr" in decoded and (decoded["lr"].size[0] > sr_size[0] or decoded["lr"].size[1] > sr_size[1]):
            raise invalid("lr", f"lr is {_hw(decoded['lr'].size)}, larger than sr {_hw(sr_size)}; were the fields swapped?")
        warnings = [w for d in decoded.values() for w in d.warnings] + unused_images(plan.metrics, decoded)
        return Job({role: d.pixels for role, d in decoded.items()}, plan, warnings)

    # --- device work (runs on the batcher's thread) --------------------------------------

    def _to_device(self, arrays: Sequence[np.ndarray]) -> torch.Tensor:
        """Decoded H×W×3 arrays as a (B, 3, H, W) batch. On a CPU the permuted view is already
        channels-last, the layout the VGG backbones run in there: no copy to NCHW and back. One
        image is not copied at all (the library never writes to its inputs)."""
        batch = torch.from_numpy(arrays[0][None] if len(arrays) == 1 else np.stack(arrays)).permute(0, 3, 1, 2)
        if self.device.type == "cuda":
            return batch.pin_memory().to(self.device, non_blocking=True)
        return batch

    @staticmethod
    def _rows(jobs: Sequence[Job], role: str) -> list[np.ndarray]:
        """The role's images for the batch; one reference shared by every job goes once, so the
        library computes its features once for all candidates."""
        arrays = [job.images[role] for job in jobs]
        return arrays[:1] if all(array is arrays[0] for array in arrays) else arrays

    def compute_batch(self, jobs: Sequence[Job]) -> dict[str, torch.Tensor]:
        first = jobs[0]
        images = {role: self._to_device(self._rows(jobs, role)) for role in first.images}
        autocast = (
            torch.autocast(self.device.type, dtype=AUTOCAST_DTYPES[self.precision]) if self.precision in AUTOCAST_DTYPES else nullcontext()
        )
        with torch.inference_mode(), autocast, weights.weights_dir_scope(self.config.weights_dir):
            return registry.compute(first.plan.metrics, images, first.plan.resolved, self.backbone)

    def _release_memory(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def run_batch(self, key: Any, jobs: Sequence[Job]) -> list[dict[str, float]]:
        try:
            scores = self.compute_batch(jobs)
        except (torch.OutOfMemoryError, MemoryError) as exc:
            self._release_memory()
            raise BatchTooLarge(f"out of memory at batch size {len(jobs)} ({type(exc).__name__})") from None
        except RuntimeError as exc:
            if not any(sign in str(exc) for sign in CPU_ALLOCATION_FAILURES):
                raise
            self._release_memory()  # the CPU allocator's failure is handled as CUDA's OOM is
            raise BatchTooLarge(f"out of memory at batch size {len(jobs)} (the CPU allocator failed)") from None
        except registry.MetricError as exc:
            raise invalid(exc.field, str(exc)) from None
        except ValueError as exc:
            raise invalid("sr", str(exc)) from None
        # A dataset metric's values are feature rows (B, D), kept as float32 arrays; the others are floats.
        columns = {
            name: values.double().cpu().tolist() if values.dim() == 1 else values.float().cpu().numpy() for name, values in scores.items()
        }
        return [{name: values[i] for name, values in columns.items()} for i in range(len(jobs))]

    # --- encode: once per triplet's answer -----------------------------------------------

    def encode(self, job: Job, values: dict[str, float]) -> dict:
        """A triplet's answer: its scores (±inf and NaN as null, with a warning), what they were
        computed with, and every warning its images and weights earned."""
        scores, warnings = finite_scores(values)
        warnings += [warning for metric in job.plan.metrics if metric.warn and (warning := metric.warn(values))]
        return dict(
            scores=scores,
            pretrained=self.pretrained,
            device=str(self.device),
            precision=self.precision,
            warnings=job.warnings + warnings + ([] if self.pretrained else [RANDOM_WEIGHTS_WARNING]),
        )

    @staticmethod
    def conventions(plan: Plan) -> dict:
        """The plan's conventions record, dated now."""
        return {**plan.conventions, "date": datetime.now(UTC).isoformat(timespec="seconds")}


def unused_images(metrics: Sequence[registry.Metric], roles: Iterable[str]) -> list[str]:
    """A warning for each optional upload no requested metric reads: an lr sent with
    metrics=psnr,ssim most likely meant lr_psnr or a clp metric, and was dropped without a word."""
    used = {role for metric in metrics for role in metric.needs}
    return [
        f"{role}: uploaded but not used by {', '.join(metric.name for metric in metrics)}; metrics that use it: "
        f"{', '.join(sorted(m.name for m in registry.REGISTRY.values() if role in m.needs))}"
        for role in roles
        if role in OPTIONAL_ROLES and role not in used
    ]


def _hw(size: tuple[int, int]) -> str:
    return f"{size[1]}×{size[0]}"


MOD_CROP_SLACK = 16  # pixels: beyond the largest SR scale's remainder (×8 leaves at most 7)


def _turned_hint(reference: tuple[int, int], sr: tuple[int, int]) -> str:
    """The same size turned 90°: most often a photo whose EXIF orientation one tool applied and
    another (this server, as BasicSR and pyiqa) did not."""
    if reference != sr[::-1]:
        return ""
    return (
        "; it is sr's size turned 90°: if one file carries an EXIF orientation tag, save both with the rotation "
        "applied (EXIF orientation is not applied here)"
    )


def _mod_crop_hint(reference: tuple[int, int], sr: tuple[int, int]) -> str:
    """A reference a few pixels larger than sr is usually a benchmark GT that was not cropped to a
    multiple of the scale (Urban100, Manga109): say what SR evaluation code does about it."""
    extra = (reference[0] - sr[0], reference[1] - sr[1])
    if min(extra) < 0 or max(extra) >= MOD_CROP_SLACK:
        return ""
    return (
        f"; a ground truth slightly larger than sr was usually not cropped to a multiple of the scale (mod-crop): "
        f"crop its bottom and right edges to {_hw(sr)}, as BasicSR's test datasets do, and send it again"
    )


def finite_scores(scores: dict[str, float]) -> tuple[dict[str, float | None], list[str]]:
    """JSON has no inf/NaN: report them as null with a warning (identical images → PSNR inf)."""
    out: dict[str, float | None] = {}
    warnings = []
    for name, value in scores.items():
        if math.isfinite(value):
            out[name] = value
        else:
            out[name] = None
            # psnr of identical images; lr_psnr of an SR that downscales exactly to its LR (uint8_rounding)
            reason = "the images compared are identical: MSE is 0" if value == math.inf and name.endswith("psnr") else "not finite"
            warnings.append(f"{name}: {value} reported as null ({reason})")
    return out, warnings


def too_large_for_device(max_image_pixels: int | None, exc: BaseException) -> ServiceError:
    limit = max_image_pixels
    return too_large(
        "sr",
        f"{exc}: a single image does not fit in device memory; "
        f"the pixel limit (--max-image-pixels) is {limit if limit else 'unset'}; send smaller images",
    )
