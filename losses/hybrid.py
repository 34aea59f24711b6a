"""HybridLoss: weighted pixel, multi-scale, gradient and perceptual terms (docs/metrics.md)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from losses.nets.features import FeatureLoss, ImageBatch
from losses.perceptual import distance_term, feature_distance, preset_view

HYBRID_PRESETS = {
    "default": dict(l1_weight=0.6, ms_weight=0.2, grad_weight=0.2, perceptual_weight=0.0),
    "p4_optimised": dict(l1_weight=1.0, ms_weight=0.0, grad_weight=0.0, perceptual_weight=0.1),
}
HYBRID_TERMS = ("l1", "ms", "grad", "perceptual")
PERCEPTUAL_TERM = distance_term(preset_view("perceptual"))


def per_sample_mean(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).mean(dim=1)


def hybrid_terms(batch: ImageBatch, weights: Mapping[str, float]) -> dict[str, torch.Tensor]:
    """Per-sample l1, ms (one 2× average-pool), grad (forward differences), perceptual (only
    computed when its weight is > 0) and ``total`` = Σ ``<term>_weight`` · term, each (B,)."""
    pred, target = batch["sr"], batch["gt"]
    dx = lambda t: (t[..., :, 1:] - t[..., :, :-1]).abs()  # noqa: E731
    dy = lambda t: (t[..., 1:, :] - t[..., :-1, :]).abs()  # noqa: E731
    terms = {
        "l1": per_sample_mean((pred - target).abs()),
        "ms": per_sample_mean((F.avg_pool2d(pred, 2, 2) - F.avg_pool2d(target, 2, 2)).abs()),
        "grad": 0.5 * (per_sample_mean((dx(pred) - dx(target)).abs()) + per_sample_mean((dy(pred) - dy(target)).abs())),
        "perceptual": feature_distance(batch, PERCEPTUAL_TERM) if weights["perceptual_weight"] > 0 else batch.zeros(),
    }
    terms["total"] = sum(weights[f"{name}_weight"] * terms[name] for name in HYBRID_TERMS)
    return terms


def batch_means(terms: Mapping[str, torch.Tensor], dtype: torch.dtype) -> dict:
    """The library classes' answer: every component batch-meaned to a detached float, and
    ``total`` the batch mean as a tensor with gradient."""
    result = {name: float(value.detach().mean()) for name, value in terms.items() if name != "total"}
    result["total"] = terms["total"].mean().to(dtype)
    return result


class HybridLoss(FeatureLoss):
    """total = l1_weight·l1 + ms_weight·ms + grad_weight·grad + perceptual_weight·perceptual.

    Returns every component (detached floats) and ``total`` (a tensor with gradient). Weights
    can be overridden per call; the perceptual backbone is needed only when its weight is > 0.
    """

    def __init__(
        self,
        l1_weight: float = 0.6,
        ms_weight: float = 0.2,
        grad_weight: float = 0.2,
        perceptual_weight: float = 0.0,
        pretrained: bool = True,
        weights_dir=None,
    ):
        super().__init__(pretrained, weights_dir)
        self.weights = dict(l1_weight=l1_weight, ms_weight=ms_weight, grad_weight=grad_weight, perceptual_weight=perceptual_weight)
        if perceptual_weight > 0:
            self.require(PERCEPTUAL_TERM.view.backbone)

    @classmethod
    def from_preset(cls, name: str, **kwargs) -> HybridLoss:
        return cls(**{**HYBRID_PRESETS[name], **kwargs})

    def forward(self, pred: torch.Tensor, target: torch.Tensor, **weight_overrides: float) -> dict:
        unknown = sorted(set(weight_overrides) - set(self.weights))
        if unknown:
            raise TypeError(f"unknown weight(s) {unknown}; valid: {list(self.weights)}")
        weights = {**self.weights, **weight_overrides}
        terms = hybrid_terms(self.batch((PERCEPTUAL_TERM,), sr=pred, gt=target), weights)
        return batch_means(terms, pred.dtype)
