"""Knowledge-distillation losses on images and on feature maps (SPEC §3.4)."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .hybrid import weighted_result
from .perceptual import PerceptualLoss


def kd_pixel_terms(student: torch.Tensor, gt: torch.Tensor, teacher: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-sample L1(student, GT) and L1(student, teacher), shape (B,)."""
    return {
        "l1_gt": (student - gt).abs().flatten(1).mean(dim=1),
        "l1_teacher": (student - teacher).abs().flatten(1).mean(dim=1),
    }


class KDImageLoss(nn.Module):
    """total = L1(student, GT) + λ_kd·L1(student, teacher) + λ_vgg·VGG(student, teacher).

    VGG is the ``vgg_relu2_2`` preset. Returns every component (detached floats) and ``total``.
    """

    def __init__(self, lambda_kd: float = 1.0, lambda_vgg: float = 0.1, normalize: bool = True, pretrained=True, weights_dir=None):
        super().__init__()
        self.weights = dict(l1_gt=1.0, l1_teacher=lambda_kd, vgg=lambda_vgg)
        self.vgg = (
            PerceptualLoss.from_preset("vgg_relu2_2", normalize=normalize, pretrained=pretrained, weights_dir=weights_dir)
            if lambda_vgg > 0
            else None
        )

    def forward(self, student: torch.Tensor, gt: torch.Tensor, teacher: torch.Tensor) -> dict:
        terms = kd_pixel_terms(student, gt, teacher)
        terms["vgg"] = (
            self.vgg.per_sample(student, teacher)
            if self.vgg is not None
            else torch.zeros(student.shape[0], dtype=student.dtype, device=student.device)
        )
        return weighted_result(terms, self.weights, student.dtype)


FEATURE_CRITERIA = {
    "l1": F.l1_loss,
    "l2": F.mse_loss,
    "cosine": lambda s, t: (1.0 - F.cosine_similarity(s, t, dim=1)).mean(),
}


class FeatureKDLoss(nn.Module):
    """Σ_i w_i · crit(student_i, teacher_i) over lists of (B, C, H, W) feature maps.

    ``cosine`` is 1 − cosine similarity over the channel axis, averaged over B, H, W.
    """

    def __init__(self, criterion: str = "l1", layer_weights: Sequence[float] | None = None):
        super().__init__()
        if criterion not in FEATURE_CRITERIA:
            raise ValueError(f"criterion must be one of {sorted(FEATURE_CRITERIA)}, got {criterion!r}")
        self.criterion = criterion
        self.layer_weights = None if layer_weights is None else list(layer_weights)

    def forward(self, student_features: Sequence[torch.Tensor], teacher_features: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(student_features) != len(teacher_features):
            raise ValueError(f"{len(student_features)} student maps but {len(teacher_features)} teacher maps")
        weights = self.layer_weights or [1.0] * len(student_features)
        if len(weights) != len(student_features):
            raise ValueError(f"{len(student_features)} maps but {len(weights)} layer weights")
        crit = FEATURE_CRITERIA[self.criterion]
        return sum(w * crit(s, t) for w, s, t in zip(weights, student_features, teacher_features))
