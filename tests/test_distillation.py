"""DistillationLoss components against hand formulas (torch) and MK-MMD against NumPy.
Tolerance: 1e-5 relative (float32 inputs; the NumPy reference runs in float64)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from losses import DistillationLoss

REL = 1e-5


def close(a, b, rel=REL):
    return abs(float(a) - float(b)) <= rel * max(abs(float(b)), 1e-8)


@pytest.fixture()
def batch():
    g = torch.Generator().manual_seed(0)
    B, K, N, C = 4, 10, 6, 16
    labels = F.one_hot(torch.randint(0, K, (B,), generator=g), K).float()
    return dict(
        teacher_logits=torch.randn(B, K, generator=g),
        teacher_features=[torch.randn(B, N, C, generator=g) for _ in range(3)],
        student_logits=torch.randn(B, K, generator=g),
        student_features=[torch.randn(B, N, C, generator=g) for _ in range(3)],
        labels=labels,
        student_logits_teacher_features=torch.randn(B, K, generator=g),
    )


def ce(logits, probs):
    return (-(probs * torch.log(torch.exp(logits) / torch.exp(logits).sum(-1, keepdim=True))).sum(-1)).mean()


def test_hard_and_soft_entropy(batch):
    tau = 3.0
    out = DistillationLoss(logit_loss="soft_entropy", tau=tau, lambda1=0.7, lambda2=0.4, alpha=0.5, gamma=2.0)(**batch)
    hard = ce(batch["student_logits"], batch["labels"])
    pt = torch.softmax(batch["teacher_logits"] / tau, -1)
    term1 = 0.7 * ce(batch["student_logits"], pt)
    term2 = 0.4 * ce(batch["student_logits_teacher_features"], pt)
    assert close(out["hard"], hard) and close(out["term1"], term1) and close(out["term2"], term2)
    assert close(out["total"], 0.5 * hard + 2.0 * (term1 + term2))
    softened = DistillationLoss(logit_loss="soft_entropy", mode="student_softening", tau=tau)(**batch)
    assert close(softened["term1"], ce(batch["student_logits"] / tau, pt))


def test_missing_student_logits_teacher_features(batch):
    batch = {**batch, "student_logits_teacher_features": None}
    with pytest.raises(ValueError, match="student_logits_teacher_features"):
        DistillationLoss(logit_loss="soft_entropy", lambda2=1.0)(**batch)
    assert DistillationLoss(logit_loss="soft_entropy", lambda2=0.0)(**batch)["term2"] == 0.0


@pytest.mark.parametrize("power,name", [(1, "l1"), (2, "l2")])
def test_token_aux(batch, power, name):
    out = DistillationLoss(aux_loss=name, features_index=[0, 2], beta=0.3)(**batch)
    expected = []
    for i in (0, 2):
        x, y = batch["teacher_features"][i], batch["student_features"][i]
        x, y = x / x.norm(dim=-1, keepdim=True), y / y.norm(dim=-1, keepdim=True)
        expected.append((x - y).abs().pow(power).sum(-1).mean())
    assert close(out["aux_0"], expected[0]) and close(out["aux_2"], expected[1])
    hard = ce(batch["student_logits"], batch["labels"])
    # β applied once to the sum, not compounded per index.
    assert close(out["total"], hard + 0.3 * (expected[0] + expected[1]))


def numpy_mk_mmd(x: np.ndarray, y: np.ndarray) -> float:
    def prep(t):
        t = t / np.linalg.norm(t, axis=-1, keepdims=True)
        t = t.reshape(t.shape[0], -1)
        return t / np.linalg.norm(t, axis=1, keepdims=True)

    x, y = prep(x.astype(np.float64)), prep(y.astype(np.float64))
    d = lambda a, b: np.maximum(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1), 0)  # noqa: E731
    dxx, dyy, dxy = d(x, x), d(y, y), d(x, y)
    total = 0.0
    for f in (1, 2, 4, 8, 16):
        k = [np.exp(-m / (2 * f * m.mean())).sum() for m in (dxx, dyy, dxy)]
        total += (k[0] + k[1] - 2 * k[2]) / x.shape[0] ** 2
    return total


def test_mk_mmd_against_numpy(batch):
    out = DistillationLoss(aux_loss="mk-mmd")(**batch)
    ref = numpy_mk_mmd(batch["teacher_features"][-1].numpy(), batch["student_features"][-1].numpy())
    assert close(out["aux"], ref, rel=1e-4)


def test_spatial_mean_and_multiple_lrs(batch):
    g = torch.Generator().manual_seed(9)
    B, N, C = batch["teacher_features"][-1].shape
    students = [torch.randn(B, 2, N, C, generator=g)]
    teachers = [batch["teacher_features"][-1]]
    inputs = {**batch, "teacher_features": teachers, "student_features": students}
    out = DistillationLoss(aux_loss="l2", spatial_avg="mean", multiple_lrs=2)(**inputs)
    single = DistillationLoss(aux_loss="l2", spatial_avg="mean")
    expected = sum(single(**{**batch, "teacher_features": teachers, "student_features": [students[0][:, j]]})["aux"] for j in range(2))
    assert close(out["aux"], expected)
    x = teachers[0].mean(1, keepdim=True)
    y = students[0][:, 0].mean(1, keepdim=True)
    by_hand = ((x / x.norm(dim=-1, keepdim=True) - y / y.norm(dim=-1, keepdim=True)) ** 2).sum(-1).mean()
    assert close(single(**{**batch, "teacher_features": teachers, "student_features": [students[0][:, 0]]})["aux"], by_hand)


def test_invalid_options():
    with pytest.raises(ValueError, match="aux_loss"):
        DistillationLoss(aux_loss="kl")


def test_gradient(batch):
    """The gradient equals autograd through the hand formula (hard CE + soft CE, τ = 3, no τ²)."""
    batch["student_logits"].requires_grad_(True)
    DistillationLoss(logit_loss="soft_entropy")(**batch)["total"].backward()
    ours = batch["student_logits"].grad.clone()
    student = batch["student_logits"].detach().clone().requires_grad_(True)
    soft = F.softmax(batch["teacher_logits"] / 3.0, dim=1)
    hard = -(batch["labels"] * F.log_softmax(student, dim=1)).sum(1).mean()
    term1 = -(soft * F.log_softmax(student, dim=1)).sum(1).mean()
    (hard + term1).backward()
    assert ours.abs().sum() > 0
    torch.testing.assert_close(ours, student.grad, rtol=1e-5, atol=1e-7)


def test_mk_mmd_with_one_sample_uses_the_sigma_floor():
    """B = 1: the within-block distances are all 0, so σ² would be 0; the floor keeps every
    K_xx = K_yy = 1, and the cross term follows exp(−D_xy / (2·f·σ²_xy)) by hand."""
    g = torch.Generator().manual_seed(4)
    teacher, student = [torch.randn(1, 5, 8, generator=g)], [torch.randn(1, 5, 8, generator=g)]
    labels = torch.eye(3)[:1]
    out = DistillationLoss(aux_loss="mk-mmd")(torch.randn(1, 3, generator=g), teacher, torch.randn(1, 3, generator=g), student, labels)
    x = F.normalize(F.normalize(teacher[0], dim=-1).flatten(1), dim=1)
    y = F.normalize(F.normalize(student[0], dim=-1).flatten(1), dim=1)
    d_xy = ((x - y) ** 2).sum()
    expected = sum(2 - 2 * torch.exp(-d_xy / (2 * f * d_xy)) for f in (1, 2, 4, 8, 16))
    assert math.isfinite(out["aux"]) and close(out["aux"], expected)
