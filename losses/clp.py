"""CLP: contrastive perceptual loss, a triplet margin on deep features (SPEC §3.5).

Anchor = SR, positive = target, negative = LR (bicubic-resized to SR size, and replaced by
1 − target wherever it equals the target exactly).
"""

from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F

from .features import BackboneLoss, FeatureView, extract

CLP_BACKBONES: dict[str, tuple[FeatureView, dict[str, float]]] = {
    "dinov2": (
        FeatureView("dinov2", tuple(f"block{i}" for i in range(8))),
        dict(zip((f"block{i}" for i in range(8)), (1.0, 0.5, 0.5, 1.0, 0.5, 0.5, 1.0, 0.1))),
    ),
    "vgg19": (
        FeatureView("vgg19", ("relu1_2", "relu2_2", "relu3_4", "relu4_4", "relu5_4")),
        dict(relu1_2=0.5, relu2_2=0.5, relu3_4=1.0, relu4_4=1.0, relu5_4=1.0),
    ),
}
CLP_ALIASES = {"vgg": "vgg19"}
TRIPLET = dict(margin=1.0, p=2, eps=1e-6)


def resize_like(lr: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Bicubic resize (align_corners=True) to the reference's H×W, clamped to [0, 1]."""
    if lr.shape[-2:] == reference.shape[-2:]:
        return lr
    return F.interpolate(lr, size=reference.shape[-2:], mode="bicubic", align_corners=True).clamp(0.0, 1.0)


def clp_negative(lr: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The negative: LR at target size, with 1 − target where it equals the target (a new tensor)."""
    lr = resize_like(lr, target)
    return torch.where(lr == target, 1.0 - target, lr)


def clp_from_features(
    anchor: Mapping[str, torch.Tensor],
    positive: Mapping[str, torch.Tensor],
    negative: Mapping[str, torch.Tensor],
    layer_weights: Mapping[str, float],
) -> torch.Tensor:
    """Per-sample CLP (B,): mean over layers of the triplet loss over every (sample, channel) row."""
    per_layer = []
    for layer, weight in layer_weights.items():
        rows = [(f[layer] * weight).flatten(2) for f in (anchor, positive, negative)]
        batch, channels = rows[0].shape[:2]
        loss = F.triplet_margin_loss(*(r.reshape(batch * channels, -1) for r in rows), reduction="none", **TRIPLET)
        per_layer.append(loss.view(batch, channels).mean(dim=1))
    return torch.stack(per_layer).mean(dim=0)


class CLPLoss(BackboneLoss):
    """``CLPLoss(model)(sr, target, lr)``: loss_weight · mean over layers of the triplet margin loss."""

    def __init__(self, model: str = "dinov2", loss_weight: float = 1.0, pretrained: bool = True, weights_dir=None):
        model = CLP_ALIASES.get(model, model)
        if model not in CLP_BACKBONES:
            raise ValueError(f"CLP model must be one of {sorted(CLP_BACKBONES) + sorted(CLP_ALIASES)}, got {model!r}")
        super().__init__(model, pretrained, weights_dir)
        self.view, self.layer_weights = CLP_BACKBONES[model]
        self.loss_weight = loss_weight

    def per_sample(self, sr: torch.Tensor, target: torch.Tensor, lr: torch.Tensor) -> torch.Tensor:
        backbone = self.backbone_for(sr)
        negative = clp_negative(lr, target)
        features = [extract(backbone, image, self.view) for image in (sr, target, negative)]
        return self.loss_weight * clp_from_features(*features, self.layer_weights)

    def forward(self, sr: torch.Tensor, target: torch.Tensor, lr: torch.Tensor) -> torch.Tensor:
        return self.per_sample(sr, target, lr).mean().to(sr.dtype)
