"""HybridLoss: weighted pixel, multi-scale, gradient and perceptual terms (SPEC §3.3)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .perceptual import PerceptualLoss

HYBRID_PRESETS = {
    "default": dict(l1_weight=0.6, ms_weight=0.2, grad_weight=0.2, perceptual_weight=0.0),
    "p4_optimised": dict(l1_weight=1.0, ms_weight=0.0, grad_weight=0.0, perceptual_weight=0.1),
}


def _per_sample_mean(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).mean(dim=1)


def pixel_terms(pred: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-sample l1, ms (one 2× average-pool) and grad (forward differences) terms, shape (B,)."""
    dx = lambda t: (t[..., :, 1:] - t[..., :, :-1]).abs()  # noqa: E731
    dy = lambda t: (t[..., 1:, :] - t[..., :-1, :]).abs()  # noqa: E731
    return {
        "l1": _per_sample_mean((pred - target).abs()),
        "ms": _per_sample_mean((F.avg_pool2d(pred, 2, 2) - F.avg_pool2d(target, 2, 2)).abs()),
        "grad": 0.5 * (_per_sample_mean((dx(pred) - dx(target)).abs()) + _per_sample_mean((dy(pred) - dy(target)).abs())),
    }


def weighted_result(terms: dict[str, torch.Tensor], weights: dict[str, float], dtype) -> dict:
    """Batch-mean every term into a detached float and add the weighted ``total`` tensor."""
    means = {name: value.mean() for name, value in terms.items()}
    total = sum(weights[name] * means[name] for name in means)
    result = {name: float(value.detach()) for name, value in means.items()}
    result["total"] = total.to(dtype)
    return result


class HybridLoss(nn.Module):
    """total = l1_weight·l1 + ms_weight·ms + grad_weight·grad + perceptual_weight·perceptual.

    Returns every component (detached floats) and ``total`` (a tensor with gradient). Weights
    can be overridden per call; the perceptual backbone is built only when its weight is > 0.
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
        super().__init__()
        self.weights = dict(l1=l1_weight, ms=ms_weight, grad=grad_weight, perceptual=perceptual_weight)
        self._perceptual_args = dict(pretrained=pretrained, weights_dir=weights_dir)
        self.perceptual = PerceptualLoss.from_preset("perceptual", **self._perceptual_args) if perceptual_weight > 0 else None

    @classmethod
    def from_preset(cls, name: str, **kwargs) -> "HybridLoss":
        return cls(**{**HYBRID_PRESETS[name], **kwargs})

    def forward(self, pred: torch.Tensor, target: torch.Tensor, **weight_overrides: float) -> dict:
        weights = dict(self.weights)
        for key, value in weight_overrides.items():
            name = key.removesuffix("_weight")
            if name not in weights:
                raise TypeError(f"unknown weight {key!r}; valid: {[k + '_weight' for k in self.weights]}")
            weights[name] = value
        terms = pixel_terms(pred, target)
        if weights["perceptual"] > 0:
            if self.perceptual is None:
                self.perceptual = PerceptualLoss.from_preset("perceptual", **self._perceptual_args)
            terms["perceptual"] = self.perceptual.per_sample(pred, target)
        else:
            terms["perceptual"] = torch.zeros(pred.shape[0], dtype=pred.dtype, device=pred.device)
        return weighted_result(terms, weights, pred.dtype)
