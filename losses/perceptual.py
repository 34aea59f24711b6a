"""VGG feature (perceptual) losses: Σ_k w_k · crit(φ_k(x), φ_k(y)) (docs/metrics.md)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from losses.nets.features import FeatureLoss, FeatureView, ImageBatch, LayerTerm, LayerWeights

CRITERIA = {
    "l1": lambda a, b: (a - b).abs(),
    "l2": lambda a, b: (a - b).pow(2),
}
PERCEPTUAL_BACKBONES = ("vgg16", "vgg19")
DEFAULT_LAYERS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3")

# Named presets (PerceptualLoss keyword arguments); each is also a metric of the service.
PERCEPTUAL_PRESETS: dict[str, dict] = {
    # The "VSR training fix" PerceptualLoss: features[:4], [:9], [:16], [:23].
    "perceptual": dict(
        backbone="vgg16", layer_weights=dict(relu1_2=0.25, relu2_2=0.25, relu3_3=0.25, relu4_3=0.25), criterion="l1", resize=None
    ),
    # The knowledge-distillation VGGPerceptualLoss (it omitted normalisation: normalize=False).
    "vgg_relu2_2": dict(backbone="vgg16", layer_weights=dict(relu2_2=1.0), criterion="l1", resize=224),
}


def preset_view(name: str, normalize: bool = True) -> FeatureView:
    preset = PERCEPTUAL_PRESETS[name]
    return FeatureView.of(preset["backbone"], preset["layer_weights"], resize=preset["resize"], normalize=normalize)


@dataclass(frozen=True)
class LayerDistance:
    """One layer's share of a perceptual loss: w_k · mean(crit(φ_k(x), φ_k(y))), per sample."""

    criterion: str = "l1"

    def __call__(self, layer: str, weight: float, maps) -> torch.Tensor:
        fx, fy = maps
        return weight * CRITERIA[self.criterion](fx, fy).mean(dim=(1, 2, 3))


def distance_term(view: FeatureView, x: str = "sr", y: str = "gt", criterion: str = "l1") -> LayerTerm:
    return LayerTerm(view, (x, y), LayerDistance(criterion))


def feature_distance(batch: ImageBatch, term: LayerTerm) -> torch.Tensor:
    """Per-sample Σ_k w_k · mean(crit(φ_k(x), φ_k(y))) between the term's two roles, shape (B,)."""
    reduced = batch.reduced(term)
    return sum(reduced[layer] for layer in term.view.layers)


class PerceptualLoss(FeatureLoss):
    """Perceptual loss on a frozen VGG; differentiable w.r.t. the first argument.

    ``layer_weights`` is a mapping ``{layer: weight}`` (then ``layers`` may be omitted) or a
    sequence paired with ``layers`` (default: relu1_2, relu2_2, relu3_3, relu4_3, weight 1 each);
    a layer the backbone lacks is refused here, at construction.
    """

    def __init__(
        self,
        backbone: str = "vgg16",
        layers: Sequence[str] | None = None,
        layer_weights: LayerWeights | Sequence[float] | None = None,
        criterion: str = "l1",
        resize: int | None = None,
        normalize: bool = True,
        pretrained: bool = True,
        weights_dir=None,
    ):
        if backbone not in PERCEPTUAL_BACKBONES:
            raise ValueError(f"PerceptualLoss backbone must be one of {list(PERCEPTUAL_BACKBONES)}, got {backbone!r}")
        if criterion not in CRITERIA:
            raise ValueError(f"criterion must be one of {sorted(CRITERIA)}, got {criterion!r}")
        super().__init__(pretrained, weights_dir)
        if isinstance(layer_weights, Mapping):
            if layers is not None and tuple(layers) != tuple(layer_weights):
                raise ValueError(f"layers {list(layers)} disagree with the layer_weights mapping {list(layer_weights)}")
            self.view = FeatureView.of(backbone, layer_weights, resize=resize, normalize=normalize)
        else:
            self.view = FeatureView.of(backbone, layers or DEFAULT_LAYERS, layer_weights, resize=resize, normalize=normalize)
        self.criterion = criterion
        self.term = distance_term(self.view, criterion=criterion)
        self.require(backbone)

    @property
    def layer_weights(self) -> dict[str, float]:
        return self.view.weights

    @classmethod
    def from_preset(cls, name: str, **overrides) -> PerceptualLoss:
        if name not in PERCEPTUAL_PRESETS:
            raise ValueError(f"unknown preset {name!r}; valid: {sorted(PERCEPTUAL_PRESETS)}")
        return cls(**{**PERCEPTUAL_PRESETS[name], **overrides})

    def per_sample(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return feature_distance(self.batch(sr=x, gt=y), self.term)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.per_sample(x, y).mean().to(x.dtype)


class VGGPerceptualLoss(PerceptualLoss):
    """Compatibility name for the KD ``VGGPerceptualLoss`` (VGG16 relu2_2, resize to 224)."""

    def __init__(self, resize: bool = True, layer: str = "relu2_2", normalize: bool = True, **kwargs):
        super().__init__("vgg16", layer_weights={layer: 1.0}, resize=224 if resize else None, normalize=normalize, **kwargs)
