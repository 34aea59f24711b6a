"""The metric registry: each metric is one declarative entry plus one function.

A metric function takes a ``MetricInputs`` (the batch's images and a per-batch feature
cache) and its options, and returns per-image values of shape (B,), or a mapping with
``total`` and named components. Adding a metric means adding one ``register`` call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch

from .backbones import Backbone, get_backbone
from .clp import CLP_BACKBONES, clp_from_features, clp_negative
from .features import FeatureView, extract
from .hybrid import HYBRID_PRESETS, pixel_terms
from .kd import kd_pixel_terms
from .lpips_vgg import LPIPS_VIEW, lpips_from_features, shared_lin_layers
from .perceptual import PERCEPTUAL_PRESETS, feature_distance
from .psnr_ssim import psnr, ssim

IMAGE_ROLES = ("sr", "gt", "lr", "teacher")
MetricFn = Callable[["MetricInputs", dict], "torch.Tensor | dict[str, torch.Tensor]"]


class MetricError(ValueError):
    """A request the metrics cannot serve; ``field`` names the offending input."""

    def __init__(self, field_name: str, message: str):
        super().__init__(message)
        self.field = field_name


@dataclass(frozen=True)
class Metric:
    name: str
    fn: MetricFn
    needs: tuple[str, ...]
    lower_is_better: bool
    views: tuple[FeatureView, ...] = ()
    options: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""
    # Whether the backbone is used for the given options (HybridLoss skips it at weight 0).
    uses_backbone: Callable[[dict], bool] = lambda options: True

    @property
    def backbone(self) -> str | None:
        return self.views[0].backbone if self.views else None

    def backbones(self, options: dict) -> set[str]:
        return {view.backbone for view in self.views} if self.uses_backbone(options) else set()

    def catalogue_entry(self) -> dict:
        return dict(
            name=self.name,
            lower_is_better=self.lower_is_better,
            needs=list(self.needs),
            options=dict(self.options),
            backbone=self.backbone,
            description=self.description,
        )


REGISTRY: dict[str, Metric] = {}


def register(metric: Metric) -> Metric:
    if metric.name in REGISTRY:
        raise ValueError(f"metric {metric.name!r} registered twice")
    REGISTRY[metric.name] = metric
    return metric


class MetricInputs:
    """A batch's images plus a cache so each image passes each backbone view once.

    Views with equal preprocessing share one forward pass, read at the union of the layers
    that the batch's metrics ask for (e.g. ``perceptual`` and ``lpips_vgg`` share VGG16).
    """

    def __init__(self, images: Mapping[str, torch.Tensor], metrics: Iterable[Metric], backbone: Callable[[str], Backbone]):
        self.images = dict(images)
        self._backbone = backbone
        self._layers: dict[tuple, set[str]] = {}
        for metric in metrics:
            for view in metric.views:
                self._layers.setdefault(view.preprocessing, set()).update(view.layers)
        self._features: dict[tuple, dict[str, torch.Tensor]] = {}

    def __getitem__(self, role: str) -> torch.Tensor:
        return self.images[role]

    def derived(self, name: str, make: Callable[[], torch.Tensor]) -> torch.Tensor:
        """An image computed from the inputs once per batch (e.g. CLP's negative)."""
        if name not in self.images:
            self.images[name] = make()
        return self.images[name]

    def features(self, role: str, view: FeatureView) -> dict[str, torch.Tensor]:
        key = (role, view.preprocessing)
        if key not in self._features:
            layers = sorted(self._layers.get(view.preprocessing, set()) | set(view.layers))
            self._features[key] = extract(self._backbone(view.backbone), self.images[role], view, layers)
        return self._features[key]

    @property
    def device(self) -> torch.device:
        return self.images["sr"].device

    def zeros(self) -> torch.Tensor:
        return torch.zeros(self.images["sr"].shape[0], device=self.device)


def _view(preset: str) -> tuple[FeatureView, dict[str, float]]:
    p = PERCEPTUAL_PRESETS[preset]
    return FeatureView(p["backbone"], p["layers"], p["resize"]), dict(zip(p["layers"], p["layer_weights"]))


PERCEPTUAL_VIEW, PERCEPTUAL_WEIGHTS = _view("perceptual")
VGG_RELU2_2_VIEW, VGG_RELU2_2_WEIGHTS = _view("vgg_relu2_2")
SR_CONVENTION = dict(crop_border=0, y_channel=False)


def _perceptual(inputs: MetricInputs, x: str, y: str, view: FeatureView, weights: dict[str, float]) -> torch.Tensor:
    return feature_distance(inputs.features(x, view), inputs.features(y, view), weights, "l1")


def _hybrid(inputs: MetricInputs, options: dict) -> dict[str, torch.Tensor]:
    terms = pixel_terms(inputs["sr"], inputs["gt"])
    use_perceptual = options["perceptual_weight"] > 0
    terms["perceptual"] = _perceptual(inputs, "sr", "gt", PERCEPTUAL_VIEW, PERCEPTUAL_WEIGHTS) if use_perceptual else inputs.zeros()
    terms["total"] = sum(options[f"{name}_weight"] * terms[name] for name in ("l1", "ms", "grad", "perceptual"))
    return terms


def _kd(inputs: MetricInputs, options: dict) -> dict[str, torch.Tensor]:
    terms = kd_pixel_terms(inputs["sr"], inputs["gt"], inputs["teacher"])
    terms["vgg"] = _perceptual(inputs, "sr", "teacher", VGG_RELU2_2_VIEW, VGG_RELU2_2_WEIGHTS)
    terms["total"] = terms["l1_gt"] + options["lambda_kd"] * terms["l1_teacher"] + options["lambda_vgg"] * terms["vgg"]
    return terms


def _clp(backbone: str) -> MetricFn:
    view, weights = CLP_BACKBONES[backbone]

    def clp(inputs: MetricInputs, options: dict) -> torch.Tensor:
        inputs.derived("clp_negative", lambda: clp_negative(inputs["lr"], inputs["gt"]))
        features = [inputs.features(role, view) for role in ("sr", "gt", "clp_negative")]
        return options["loss_weight"] * clp_from_features(*features, weights)

    return clp


def _lpips(inputs: MetricInputs, options: dict) -> torch.Tensor:
    return lpips_from_features(inputs.features("sr", LPIPS_VIEW), inputs.features("gt", LPIPS_VIEW), shared_lin_layers(inputs.device))


PAIR = ("sr", "gt")
register(Metric("psnr", lambda i, o: psnr(i["sr"], i["gt"], **o), PAIR, False, options=SR_CONVENTION,
                description="PSNR in dB on the [0, 255] scale (BasicSR/MATLAB convention)"))
register(Metric("ssim", lambda i, o: ssim(i["sr"], i["gt"], **o), PAIR, False, options=SR_CONVENTION,
                description="SSIM, 11×11 Gaussian window σ=1.5, valid filtering (BasicSR/MATLAB convention)"))
register(Metric("l1", lambda i, o: (i["sr"] - i["gt"]).abs().flatten(1).mean(dim=1), PAIR, True,
                description="mean absolute error on [0, 1]"))
register(Metric("perceptual", lambda i, o: _perceptual(i, "sr", "gt", PERCEPTUAL_VIEW, PERCEPTUAL_WEIGHTS), PAIR, True,
                views=(PERCEPTUAL_VIEW,), description="VGG16 relu1_2/2_2/3_3/4_3, ¼ each, L1"))
register(Metric("vgg_relu2_2", lambda i, o: _perceptual(i, "sr", "gt", VGG_RELU2_2_VIEW, VGG_RELU2_2_WEIGHTS), PAIR, True,
                views=(VGG_RELU2_2_VIEW,), description="VGG16 relu2_2, L1, resized to 224×224"))
register(Metric("hybrid", _hybrid, PAIR, True, views=(PERCEPTUAL_VIEW,), options=HYBRID_PRESETS["default"],
                uses_backbone=lambda o: o["perceptual_weight"] > 0,
                description="l1/ms/grad/perceptual weighted sum; components as hybrid.<term>"))
register(Metric("kd", _kd, ("sr", "gt", "teacher"), True, views=(VGG_RELU2_2_VIEW,), options=dict(lambda_kd=1.0, lambda_vgg=0.1),
                description="L1(sr, gt) + λ_kd·L1(sr, teacher) + λ_vgg·VGG relu2_2(sr, teacher)"))
for _backbone in CLP_BACKBONES:
    register(Metric(f"clp_{_backbone}", _clp(_backbone), ("sr", "gt", "lr"), True, views=(CLP_BACKBONES[_backbone][0],),
                    options=dict(loss_weight=1.0), description=f"contrastive triplet perceptual loss on {_backbone} features"))
register(Metric("lpips_vgg", _lpips, PAIR, True, views=(LPIPS_VIEW,), description="LPIPS v0.1, VGG variant"))


def get_metrics(names: Sequence[str]) -> list[Metric]:
    unknown = [name for name in names if name not in REGISTRY]
    if unknown:
        raise MetricError("metrics", f"unknown metric(s) {unknown}; valid: {sorted(REGISTRY)}")
    if not names:
        raise MetricError("metrics", f"no metric requested; valid: {sorted(REGISTRY)}")
    return [REGISTRY[name] for name in dict.fromkeys(names)]


def _coerce(name: str, value: Any, default: Any) -> Any:
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    elif isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value and abs(value) != float("inf"):
            return float(value)
    expected = "a non-negative integer" if type(default) is int else type(default).__name__
    raise MetricError("options", f"option {name!r} must be {expected}, got {value!r}")


def resolve_options(metrics: Sequence[Metric], options: Mapping[str, Any]) -> dict[str, dict]:
    """Per-metric options: each metric's defaults overridden by the (shared) request options."""
    known = {key for metric in metrics for key in metric.options}
    unknown = sorted(set(options) - known)
    if unknown:
        raise MetricError("options", f"unknown option(s) {unknown} for metrics {[m.name for m in metrics]}; valid: {sorted(known)}")
    return {
        metric.name: {key: _coerce(key, options.get(key, default), default) for key, default in metric.options.items()}
        for metric in metrics
    }


def check_images(metrics: Sequence[Metric], present: Iterable[str]) -> None:
    present = set(present)
    for metric in metrics:
        missing = [role for role in metric.needs if role not in present]
        if missing:
            raise MetricError(missing[0], f"metric {metric.name!r} needs image(s) {missing}")


def compute(
    metrics: Sequence[Metric],
    images: Mapping[str, torch.Tensor],
    options: Mapping[str, dict],
    backbone: Callable[[str], Backbone] | None = None,
) -> dict[str, torch.Tensor]:
    """Score a batch: ``{name: (B,)}`` plus ``{name.component: (B,)}`` for composite metrics."""
    check_images(metrics, images)
    if backbone is None:
        device = images["sr"].device
        backbone = lambda name: get_backbone(name, device)  # noqa: E731
    inputs = MetricInputs(images, metrics, backbone)
    scores: dict[str, torch.Tensor] = {}
    for metric in metrics:
        result = metric.fn(inputs, options[metric.name])
        if isinstance(result, dict):
            scores[metric.name] = result["total"]
            scores.update({f"{metric.name}.{k}": v for k, v in result.items() if k != "total"})
        else:
            scores[metric.name] = result
    return scores
