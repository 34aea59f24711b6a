"""VGG feature (perceptual) losses: Σ_k w_k · crit(φ_k(x), φ_k(y)) (SPEC §3.2)."""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

from .features import BackboneLoss, FeatureView, extract

CRITERIA = {
    "l1": lambda a, b: (a - b).abs(),
    "l2": lambda a, b: (a - b).pow(2),
}

# Named presets; each is also a metric of the service.
PERCEPTUAL_PRESETS: dict[str, dict] = {
    # The "VSR training fix" PerceptualLoss: features[:4], [:9], [:16], [:23].
    "perceptual": dict(
        backbone="vgg16",
        layers=("relu1_2", "relu2_2", "relu3_3", "relu4_3"),
        layer_weights=(0.25, 0.25, 0.25, 0.25),
        criterion="l1",
        resize=None,
    ),
    # The knowledge-distillation VGGPerceptualLoss (it omitted normalisation: normalize=False).
    "vgg_relu2_2": dict(backbone="vgg16", layers=("relu2_2",), layer_weights=(1.0,), criterion="l1", resize=224),
}


def feature_distance(
    fx: Mapping[str, torch.Tensor], fy: Mapping[str, torch.Tensor], layer_weights: Mapping[str, float], criterion: str
) -> torch.Tensor:
    """Per-sample Σ_k w_k · mean(crit(φ_k(x), φ_k(y))), shape (B,)."""
    crit = CRITERIA[criterion]
    return sum(w * crit(fx[k], fy[k]).flatten(1).mean(dim=1) for k, w in layer_weights.items())


class PerceptualLoss(BackboneLoss):
    """Perceptual loss on a frozen VGG; differentiable w.r.t. the first argument."""

    def __init__(
        self,
        backbone: str = "vgg16",
        layers: Sequence[str] = ("relu1_2", "relu2_2", "relu3_3", "relu4_3"),
        layer_weights: Sequence[float] | None = None,
        criterion: str = "l1",
        resize: int | None = None,
        normalize: bool = True,
        pretrained: bool = True,
        weights_dir=None,
    ):
        if backbone not in ("vgg16", "vgg19"):
            raise ValueError(f"PerceptualLoss backbone must be 'vgg16' or 'vgg19', got {backbone!r}")
        if criterion not in CRITERIA:
            raise ValueError(f"criterion must be one of {sorted(CRITERIA)}, got {criterion!r}")
        layers = tuple(layers)
        layer_weights = tuple(layer_weights) if layer_weights is not None else (1.0,) * len(layers)
        if len(layer_weights) != len(layers):
            raise ValueError(f"{len(layers)} layers but {len(layer_weights)} layer weights")
        super().__init__(backbone, pretrained, weights_dir)
        self.view = FeatureView(backbone, layers, resize, normalize)
        self.layer_weights = dict(zip(layers, layer_weights))
        self.criterion = criterion

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "PerceptualLoss":
        if name not in PERCEPTUAL_PRESETS:
            raise ValueError(f"unknown preset {name!r}; valid: {sorted(PERCEPTUAL_PRESETS)}")
        return cls(**{**PERCEPTUAL_PRESETS[name], **overrides})

    def per_sample(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        backbone = self.backbone_for(x)
        return feature_distance(extract(backbone, x, self.view), extract(backbone, y, self.view), self.layer_weights, self.criterion)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.per_sample(x, y).mean().to(x.dtype)


class VGGPerceptualLoss(PerceptualLoss):
    """Compatibility name for the KD ``VGGPerceptualLoss`` (VGG16 relu2_2, resize to 224)."""

    def __init__(self, resize: bool = True, layer: str = "relu2_2", normalize: bool = True, **kwargs):
        super().__init__("vgg16", (layer,), (1.0,), "l1", 224 if resize else None, normalize, **kwargs)
