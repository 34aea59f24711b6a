"""Knowledge-distillation losses on images and on feature maps (docs/metrics.md)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from losses.hybrid import batch_means, per_sample_mean
from losses.nets.features import FeatureLoss, ImageBatch, LayerTerm
from losses.perceptual import distance_term, feature_distance, preset_view

KD_DEFAULTS = dict(lambda_kd=1.0, lambda_vgg=0.1)


def teacher_distance_term(normalize: bool = True) -> LayerTerm:
    """The ``vgg_relu2_2`` distance between the student (sr) and the teacher."""
    return distance_term(preset_view("vgg_relu2_2", normalize), "sr", "teacher")


KD_VGG_TERM = teacher_distance_term()


def kd_terms(batch: ImageBatch, lambdas: dict[str, float], vgg_term: LayerTerm = KD_VGG_TERM) -> dict[str, torch.Tensor]:
    """Per-sample L1(student, GT), L1(student, teacher), VGG relu2_2(student, teacher) (only
    computed when λ_vgg > 0) and ``total`` = l1_gt + λ_kd·l1_teacher + λ_vgg·vgg, each (B,)."""
    student = batch["sr"]
    terms = {
        "l1_gt": per_sample_mean((student - batch["gt"]).abs()),
        "l1_teacher": per_sample_mean((student - batch["teacher"]).abs()),
        "vgg": feature_distance(batch, vgg_term) if lambdas["lambda_vgg"] > 0 else batch.zeros(),
    }
    terms["total"] = terms["l1_gt"] + lambdas["lambda_kd"] * terms["l1_teacher"] + lambdas["lambda_vgg"] * terms["vgg"]
    return terms


class KDImageLoss(FeatureLoss):
    """total = L1(student, GT) + λ_kd·L1(student, teacher) + λ_vgg·VGG(student, teacher).

    VGG is the ``vgg_relu2_2`` preset. Returns every component (detached floats) and ``total``.
    """

    def __init__(self, lambda_kd: float = 1.0, lambda_vgg: float = 0.1, normalize: bool = True, pretrained=True, weights_dir=None):
        super().__init__(pretrained, weights_dir)
        self.lambdas = dict(lambda_kd=lambda_kd, lambda_vgg=lambda_vgg)
        self.term = teacher_distance_term(normalize)
        if lambda_vgg > 0:
            self.require(self.term.view.backbone)

    def forward(self, student: torch.Tensor, gt: torch.Tensor, teacher: torch.Tensor) -> dict:
        batch = self.batch((self.term,), sr=student, gt=gt, teacher=teacher)
        return batch_means(kd_terms(batch, self.lambdas, self.term), student.dtype)


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
