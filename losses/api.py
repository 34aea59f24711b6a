"""The one-call library API: ``list_metrics``, ``create_metric``, ``score`` and ``conventions``.

``score`` is what ``loss-service score --local``, the bench and the server's scorer call, so
a number printed by any of them is the number the library gives.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

from losses.nets import weights as W
from losses.nets.backbones import backbone_spec, get_backbone
from losses.nets.features import FeatureLoss
from losses.nets.weights import weights_dir_scope
from losses.plan import Plan, make_plan
from losses.record import conventions as conventions_record
from losses.registry import KINDS, REGISTRY, compute
from losses.sets.statistics import SetFeatures

DEFAULT_METRICS = ("psnr", "ssim", "perceptual")


def list_metrics(kind: str | None = None) -> list[dict]:
    """The catalogue: one entry per metric (name, kind, lower_is_better, needs, options, backbone,
    and whether it can run here: ``available``, ``unavailable_reason``; VMAF needs FFmpeg with
    libvmaf). ``kind`` keeps one kind: ``image`` (``score``), ``clip`` (``score_clip``) or ``set``
    (``dataset_score``)."""
    if kind is not None and kind not in KINDS:
        raise ValueError(f"unknown metric kind {kind!r}; kinds are {KINDS}")
    return [metric.catalogue_entry() for metric in REGISTRY.values() if kind in (None, metric.kind)]


def score(
    sr: torch.Tensor,
    gt: torch.Tensor | None = None,
    lr: torch.Tensor | None = None,
    teacher: torch.Tensor | None = None,
    metrics: Sequence[str] = DEFAULT_METRICS,
    device=None,
    pretrained: bool = True,
    weights_dir=None,
    plan: Plan | None = None,
    **options: Any,
) -> dict[str, torch.Tensor]:
    """Score (B, C, H, W) images in [0, 1]: ``{metric: (B,)}``, plus ``{metric.component: (B,)}``
    for composite metrics. ``options`` are shared by the metrics that take them (e.g.
    ``crop_border=4, y_channel=True``); an option no chosen metric takes is an error.

    ``gt`` may be left out for metrics that need only ``sr`` (``niqe``). ``gt``, ``lr`` or
    ``teacher`` may hold one image for B candidates in ``sr`` (ranking
    candidates against one reference): its backbone features are computed once.

    ``plan`` (``losses.plan.make_plan``) replaces ``metrics`` and ``options``: a training loop that
    scores every step plans once.

    Gradients flow wherever the metric is differentiable; wrap the call in
    ``torch.inference_mode()`` when scoring only.
    """
    plan = plan or make_plan(metrics, options)
    device = torch.device(device) if device is not None else sr.device
    images = {role: image.to(device) for role, image in dict(sr=sr, gt=gt, lr=lr, teacher=teacher).items() if image is not None}
    with weights_dir_scope(weights_dir):
        return compute(plan.metrics, images, plan.resolved, lambda name: get_backbone(name, device, pretrained, weights_dir))


def conventions(
    metrics: Sequence[str] = DEFAULT_METRICS,
    device="cpu",
    precision: str = "fp32",
    pretrained: bool = True,
    weights_dir=None,
    **options: Any,
) -> dict:
    """The conventions record of ``score(..., metrics, **options)``: resolved options, pixel
    conventions, weight files with sha256, device, precision, versions and date."""
    plan = make_plan(metrics, options, kinds=KINDS)
    return conventions_record(
        plan.metrics, plan.resolved, device=device, precision=precision, pretrained=pretrained, weights_dir=weights_dir
    )


class MetricModule(FeatureLoss):
    """One registered metric with fixed options, as an ``nn.Module`` returning (B,) values.

    Call it with the images the metric needs: ``module(sr, gt, lr=None, teacher=None)``. For a
    composite metric the value is its ``total``; ``components`` gives every term.
    """

    def __init__(self, name: str, pretrained: bool = True, weights_dir=None, **options: Any):
        super().__init__(pretrained, weights_dir)
        plan = make_plan([name], options)
        (self.metric,) = plan.metrics
        self.options = plan.resolved
        for backbone in sorted(self.metric.backbones(self.options[name])):
            self.require(backbone)

    def components(self, sr, gt=None, lr=None, teacher=None) -> dict[str, torch.Tensor]:
        images = {role: image for role, image in dict(sr=sr, gt=gt, lr=lr, teacher=teacher).items() if image is not None}
        with weights_dir_scope(self.weights_dir):
            return compute([self.metric], images, self.options, self.backbones_on(sr.device))

    def forward(self, sr, gt=None, lr=None, teacher=None) -> torch.Tensor:
        return self.components(sr, gt, lr, teacher)[self.metric.name]

    def extra_repr(self) -> str:
        return f"{self.metric.name}, options={self.options[self.metric.name]}, pretrained={self.pretrained}"


def create_metric(name: str, pretrained: bool = True, weights_dir=None, **options: Any) -> MetricModule:
    """``create_metric("ssim", crop_border=4)`` → an ``nn.Module``; see ``MetricModule``."""
    return MetricModule(name, pretrained, weights_dir, **options)


def set_plan(metrics: Sequence[str] | str, options: dict | None = None) -> Plan:
    """The plan of set metrics (fid, kid); they must read one extractor's features."""
    plan = make_plan(metrics, options, kinds=("set",))
    extractors = {metric.dataset.extractor(plan.resolved[metric.name]) for metric in plan.metrics}
    if len(extractors) > 1:
        raise ValueError(f"metrics {list(plan.names)} read different features {sorted(extractors)}; score them separately")
    return plan


class SetExtractor:
    """The set metrics' feature extractor, built once and called per batch (an ``eval --ray`` actor
    keeps one): ``rows`` gives a (B, C, H, W) batch's features; ``meta`` names the extractor and
    the sha256 of its weights, which ``FeatureStats.merge`` compares (sums of other weights never merge)."""

    def __init__(self, metrics: Sequence[str] | str = ("fid", "kid"), device=None, pretrained: bool = True, weights_dir=None, **options):
        self.plan = set_plan(metrics, options)
        first = self.plan.metrics[0]
        extractor = first.dataset.extractor(self.plan.resolved[first.name])
        self.keep_features = any(metric.dataset.keeps(self.plan.resolved[metric.name]) for metric in self.plan.metrics)
        sha = W.file_sha256(W.resolve(backbone_spec(extractor[0]).weights, weights_dir)) if pretrained else "random"
        self.meta = dict(extractor=":".join(extractor), weights_sha256=sha)
        self.device, self.pretrained, self.weights_dir = device, pretrained, weights_dir

    def rows(self, batch: torch.Tensor) -> np.ndarray:
        """(B, dim) float64 features of a batch in [0, 1] (the network's float32 values)."""
        where = torch.device(self.device) if self.device is not None else batch.device
        with torch.inference_mode(), weights_dir_scope(self.weights_dir):
            rows = compute(
                self.plan.metrics[:1],
                {"sr": batch.to(where)},
                self.plan.resolved,
                lambda name: get_backbone(name, where, self.pretrained, self.weights_dir),
            )
        return rows[self.plan.metrics[0].name].double().cpu().numpy()

    def empty(self, dim: int, path=None) -> SetFeatures:
        """An empty set of this extractor's features (KID's rows kept where the metrics need them)."""
        return SetFeatures.empty(dim, self.keep_features, path, **self.meta)


def dataset_features(
    images: Iterable[torch.Tensor],
    metrics: Sequence[str] | str = ("fid", "kid"),
    device=None,
    pretrained: bool = True,
    weights_dir=None,
    **options: Any,
) -> SetFeatures:
    """One image set through the dataset metrics' extractor, batch by batch: ``images`` yields
    (B, C, H, W) tensors in [0, 1] (any B, any size per batch). ``options`` are the metrics' (the
    ``convention`` chooses the extractor's input handling). Only FID's sums are kept in memory;
    KID's features, when asked for, go to a memory-mapped temporary file."""
    extractor = SetExtractor(metrics, device, pretrained, weights_dir, **options)
    collected: SetFeatures | None = None
    for batch in images:
        features = extractor.rows(batch)
        if collected is None:
            collected = extractor.empty(features.shape[1])
        collected.add(features)
    if collected is None:
        raise ValueError("the image set is empty")
    return collected


def dataset_score(
    sr: Iterable[torch.Tensor] | SetFeatures,
    gt: Iterable[torch.Tensor] | SetFeatures,
    metrics: Sequence[str] | str = ("fid", "kid"),
    device=None,
    pretrained: bool = True,
    weights_dir=None,
    **options: Any,
) -> dict[str, float]:
    """FID/KID of a set of SR outputs against a set of GT images (not paired; sizes may differ).

    Each side is an iterable of (B, C, H, W) batches in [0, 1], or the ``SetFeatures`` an earlier
    ``dataset_features`` call returned (compute a GT set once, compare several models with it).
    Returns ``{"fid": …, "kid": …, "kid.std": …}``; ``options`` are KID's (``subset_size`` …).
    """
    plan = set_plan(metrics, options)
    sides = [
        side if isinstance(side, SetFeatures) else dataset_features(side, plan.names, device, pretrained, weights_dir, **options)
        for side in (sr, gt)
    ]
    wanted = ":".join(plan.metrics[0].dataset.extractor(plan.resolved[plan.metrics[0].name]))
    for side in sides:
        if side.stats.meta.get("extractor", wanted) != wanted:
            raise ValueError(f"features from {side.stats.meta['extractor']} cannot give {list(plan.names)} in this convention ({wanted})")
    values: dict[str, float] = {}
    for metric in plan.metrics:
        values.update(metric.dataset.reduce(*sides, plan.resolved[metric.name]))
    return values
