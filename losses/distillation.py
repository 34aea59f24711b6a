"""DistillationLoss: logit and feature distillation for classifiers / recognisers (docs/metrics.md).

total = α·hard + β·Σ_i aux_i + γ·(term1 + term2); β is applied once to the sum (the original
compounded it across feature indices; that is not reproduced). No τ² factor.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

MMD_KERNEL_FACTORS = (1, 2, 4, 8, 16)
# σ² of a block of all-zero distances (e.g. B = 1) would be 0; the floor keeps exp(−0/σ²) = 1.
MMD_MIN_SIGMA2 = 1e-12


def soft_cross_entropy(logits: torch.Tensor, target_probs: torch.Tensor) -> torch.Tensor:
    """mean_b Σ_k −p_k · log_softmax(logits)_k."""
    return -(target_probs * F.log_softmax(logits, dim=-1)).sum(dim=-1).mean()


def token_aux(x: torch.Tensor, y: torch.Tensor, power: int) -> torch.Tensor:
    """L2-normalise (B, N, C) over C, then mean over (B, N) of Σ_C |x − y|^power."""
    diff = F.normalize(x, dim=-1) - F.normalize(y, dim=-1)
    return diff.abs().pow(power).sum(dim=-1).mean()


def _squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return ((a * a).sum(1, keepdim=True) + (b * b).sum(1) - 2 * a @ b.T).clamp_min(0.0)


def mk_mmd(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Multi-kernel MMD between teacher x and student y, both (B, N, C)."""
    x = F.normalize(F.normalize(x, dim=-1).flatten(1), dim=1)
    y = F.normalize(F.normalize(y, dim=-1).flatten(1), dim=1)
    batch = x.shape[0]
    # A sample's distance to itself is exactly 0; computed as |a|² + |a|² − 2a·a it is rounding
    # noise (~1e-8), which for B = 1 would become the block's σ² and turn K_xx from 1 into e^(−1/2f).
    eye = torch.eye(batch, dtype=torch.bool, device=x.device)
    blocks = [_squared_distances(x, x).masked_fill(eye, 0.0), _squared_distances(y, y).masked_fill(eye, 0.0), _squared_distances(x, y)]
    sigma2 = [d.mean().clamp_min(MMD_MIN_SIGMA2) for d in blocks]
    total = x.new_zeros(())
    for factor in MMD_KERNEL_FACTORS:
        k_xx, k_yy, k_xy = (torch.exp(-d / (2 * factor * s)).sum() for d, s in zip(blocks, sigma2))
        total = total + (k_xx + k_yy - 2 * k_xy) / batch**2
    return total


AUX_LOSSES = {
    "l1": lambda x, y: token_aux(x, y, 1),
    "l2": lambda x, y: token_aux(x, y, 2),
    "mk-mmd": mk_mmd,
}


class DistillationLoss(nn.Module):
    def __init__(
        self,
        logit_loss: str | None = None,
        aux_loss: str | None = None,
        features_index: Sequence[int] = (-1,),
        tau: float = 3.0,
        mode: str | None = None,
        lambda1: float = 1.0,
        lambda2: float = 1.0,
        alpha: float = 1.0,
        beta: float = 1.0,
        gamma: float = 1.0,
        spatial_avg: str | None = None,
        multiple_lrs: int | None = None,
    ):
        super().__init__()
        choices = dict(
            logit_loss=(None, "soft_entropy"), aux_loss=(None, *AUX_LOSSES), mode=(None, "student_softening"), spatial_avg=(None, "mean")
        )
        for name, valid in choices.items():
            if locals()[name] not in valid:
                raise ValueError(f"{name} must be one of {list(valid)}, got {locals()[name]!r}")
        if multiple_lrs is not None and multiple_lrs < 1:
            raise ValueError(f"multiple_lrs must be a positive int, got {multiple_lrs!r}")
        self.logit_loss, self.aux_loss, self.features_index = logit_loss, aux_loss, list(features_index)
        self.tau, self.mode, self.spatial_avg, self.multiple_lrs = tau, mode, spatial_avg, multiple_lrs
        self.lambda1, self.lambda2, self.alpha, self.beta, self.gamma = lambda1, lambda2, alpha, beta, gamma

    def _aux(self, teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
        loss = AUX_LOSSES[self.aux_loss]
        if self.spatial_avg == "mean":
            teacher = teacher.mean(dim=-2, keepdim=True)
            student = student.mean(dim=-2, keepdim=True)
        if self.multiple_lrs is None:
            return loss(teacher, student)
        if student.dim() != 4 or student.shape[1] != self.multiple_lrs:
            raise ValueError(
                f"multiple_lrs={self.multiple_lrs} needs student features (B, {self.multiple_lrs}, N, C), got {tuple(student.shape)}"
            )
        return sum(loss(teacher, student[:, j]) for j in range(self.multiple_lrs))

    def forward(
        self,
        teacher_logits: torch.Tensor,
        teacher_features: Sequence[torch.Tensor],
        student_logits: torch.Tensor,
        student_features: Sequence[torch.Tensor],
        labels: torch.Tensor,
        student_logits_teacher_features: torch.Tensor | None = None,
    ) -> dict:
        zero = student_logits.new_zeros(())
        hard = soft_cross_entropy(student_logits, labels)
        term1 = term2 = zero
        if self.logit_loss == "soft_entropy":
            teacher_probs = F.softmax(teacher_logits / self.tau, dim=-1)
            student = student_logits / self.tau if self.mode == "student_softening" else student_logits
            term1 = self.lambda1 * soft_cross_entropy(student, teacher_probs)
            if student_logits_teacher_features is not None:
                term2 = self.lambda2 * soft_cross_entropy(student_logits_teacher_features, teacher_probs)
            elif self.lambda2 > 0:
                raise ValueError("lambda2 > 0 needs student_logits_teacher_features; pass it or set lambda2=0")
        aux_terms = {}
        if self.aux_loss is not None:
            for index in self.features_index:
                aux_terms[f"aux_{index}"] = self._aux(teacher_features[index], student_features[index])
        aux = sum(aux_terms.values(), zero)
        total = self.alpha * hard + self.beta * aux + self.gamma * (term1 + term2)
        components = dict(hard=hard, term1=term1, term2=term2, aux=aux, **aux_terms)
        return {**{k: float(v.detach()) for k, v in components.items()}, "total": total}
