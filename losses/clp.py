"""CLP: contrastive perceptual loss, a triplet margin on deep features (docs/metrics.md).

Anchor = SR, positive = target, negative = LR (bicubic-resized to SR size, and replaced by
1 − target wherever it equals the target exactly).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from losses.nets.features import FeatureLoss, FeatureView, ImageBatch, LayerTerm

CLP_VIEWS: dict[str, FeatureView] = {
    "dinov2": FeatureView.of("dinov2", {f"block{i}": w for i, w in enumerate((1.0, 0.5, 0.5, 1.0, 0.5, 0.5, 1.0, 0.1))}),
    "vgg19": FeatureView.of("vgg19", dict(relu1_2=0.5, relu2_2=0.5, relu3_4=1.0, relu4_4=1.0, relu5_4=1.0)),
}
CLP_ALIASES = {"vgg": "vgg19"}
TRIPLET = dict(margin=1.0, p=2, eps=1e-6)
NEGATIVE = "clp_negative"


def resize_like(lr: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Bicubic resize (align_corners=True) to the reference's H×W, clamped to [0, 1]."""
    if lr.shape[-2:] == reference.shape[-2:]:
        return lr
    return F.interpolate(lr, size=reference.shape[-2:], mode="bicubic", align_corners=True).clamp(0.0, 1.0)


def clp_negative(lr: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The negative: LR at target size, with 1 − target where it equals the target (a new tensor)."""
    lr = resize_like(lr, target)
    return torch.where(lr == target, 1.0 - target, lr)


def _weighted_distance(a: torch.Tensor, b: torch.Tensor, weight: float) -> torch.Tensor:
    """‖w·a − w·b + eps‖₂ over H×W per (sample, channel), as ``pairwise_distance`` on the
    weighted rows computes it, without materialising weighted copies of a and b."""
    diff = a - b
    if weight != 1.0:
        diff.mul_(weight)
    return torch.linalg.vector_norm(diff.add_(TRIPLET["eps"]), dim=(2, 3))


def triplet_layer(layer: str, weight: float, maps) -> torch.Tensor:
    """One layer's triplet margin loss (p = 2) on the weighted maps, meaned over channels: (B,)."""
    anchor, positive, negative = maps
    loss = TRIPLET["margin"] + _weighted_distance(anchor, positive, weight) - _weighted_distance(anchor, negative, weight)
    return loss.clamp_min(0.0).mean(dim=1)


def _derive_negative(batch: ImageBatch) -> None:
    batch.derived(NEGATIVE, lambda: clp_negative(batch.shared("lr"), batch.shared("gt")))


CLP_TERMS: dict[str, LayerTerm] = {
    name: LayerTerm(view, ("sr", "gt", NEGATIVE), triplet_layer, _derive_negative) for name, view in CLP_VIEWS.items()
}


def clp_per_sample(batch: ImageBatch, term: LayerTerm) -> torch.Tensor:
    """Per-sample CLP (B,): mean over layers of the triplet loss over every (sample, channel) row."""
    reduced = batch.reduced(term)
    return torch.stack([reduced[layer] for layer in term.view.layers]).mean(dim=0)


class CLPLoss(FeatureLoss):
    """``CLPLoss(backbone)(sr, target, lr)``: loss_weight · mean over layers of the triplet margin loss.

    ``backbone`` is ``dinov2`` or ``vgg19`` (``vgg`` is an alias); ``model=`` is the seed's name
    for the same argument.
    """

    def __init__(
        self, backbone: str = "dinov2", loss_weight: float = 1.0, pretrained: bool = True, weights_dir=None, *, model: str | None = None
    ):
        if model is not None:
            backbone = model
        backbone = CLP_ALIASES.get(backbone, backbone)
        if backbone not in CLP_VIEWS:
            raise ValueError(f"CLP backbone must be one of {sorted(CLP_VIEWS) + sorted(CLP_ALIASES)}, got {backbone!r}")
        super().__init__(pretrained, weights_dir)
        self.term = CLP_TERMS[backbone]
        self.loss_weight = loss_weight
        self.require(backbone)

    def per_sample(self, sr: torch.Tensor, target: torch.Tensor, lr: torch.Tensor) -> torch.Tensor:
        return self.loss_weight * clp_per_sample(self.batch(sr=sr, gt=target, lr=lr), self.term)

    def forward(self, sr: torch.Tensor, target: torch.Tensor, lr: torch.Tensor) -> torch.Tensor:
        return self.per_sample(sr, target, lr).mean().to(sr.dtype)
