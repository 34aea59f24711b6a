"""DISTS (Ding et al., 2020): structure and texture similarity on VGG16 with L2 pooling.

Statistics on the input and on 5 stages (3 + 64 + 128 + 256 + 512 + 512 channels), per
channel: S1 = (2μxμy + c1)/(μx² + μy² + c1), S2 = (2σxy + c2)/(σx² + σy² + c2), c1 = c2 = 1e-6.
DISTS = 1 − Σ(α·S1 + β·S2) / Σ(α + β), with α, β the ``dists-pytorch`` package's ``weights.pt``.
The input stage uses the raw [0, 1] image; the stages use the ImageNet-normalised pass.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from losses.nets import weights as W
from losses.nets.backbones import to_rgb
from losses.nets.features import FeatureLoss, FeatureView, ImageBatch, LayerTerm
from losses.nets.models import MODELS
from losses.nets.weight_files import DISTS_ALPHA_BETA

DISTS_VIEW = FeatureView.of("vgg16_l2pool", ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3"))
DISTS_CHANNELS = (3, 64, 128, 256, 512, 512)
C1 = C2 = 1e-6


def dists_weights_path(weights_dir=None) -> Path:
    """α/β's file, resolved and verified like every weight file."""
    return W.resolve(DISTS_ALPHA_BETA, weights_dir)


def load_alpha_beta(weights_dir=None) -> tuple[torch.Tensor, torch.Tensor]:
    """α and β, each (1475,), from their weight file (read with weights_only)."""
    state = W.load_state_dict(dists_weights_path(weights_dir))
    return state["alpha"].flatten(), state["beta"].flatten()


def _similarity(x: torch.Tensor, y: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """Σ_c α_c·S1 + β_c·S2 for one stage (the input image or a layer), per sample (B,).

    In float32 at least, under no autocast: S1 and S2 lie near 1 and DISTS is 1 minus their
    weighted mean, which 16-bit floats cannot resolve (bfloat16's step at 1 is 0.008); with
    ``--precision bf16`` the score was off by ~1e-3, more than DISTS itself between close images."""
    with torch.autocast(x.device.type, enabled=False):
        dtype = torch.promote_types(x.dtype, torch.float32)
        return _similarity_in(x.to(dtype), y.to(dtype), alpha, beta)


def _similarity_in(x: torch.Tensor, y: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    x_mean, y_mean = x.mean((2, 3), keepdim=True), y.mean((2, 3), keepdim=True)
    s1 = (2 * x_mean * y_mean + C1) / (x_mean**2 + y_mean**2 + C1)
    x_var, y_var = ((x - x_mean) ** 2).mean((2, 3), keepdim=True), ((y - y_mean) ** 2).mean((2, 3), keepdim=True)
    xy_cov = (x * y).mean((2, 3), keepdim=True) - x_mean * y_mean
    s2 = (2 * xy_cov + C2) / (x_var + y_var + C2)
    return ((alpha.view(1, -1, 1, 1).to(x) * s1).sum(1) + (beta.view(1, -1, 1, 1).to(x) * s2).sum(1)).flatten()


def _stage_weights(alpha: torch.Tensor, beta: torch.Tensor, stage: int) -> tuple[torch.Tensor, torch.Tensor]:
    """α and β of one stage (0: the input image, i: the i-th layer), divided by Σ(α + β)."""
    w_sum = alpha.sum() + beta.sum()
    return torch.split(alpha / w_sum, DISTS_CHANNELS)[stage], torch.split(beta / w_sum, DISTS_CHANNELS)[stage]


@dataclass(frozen=True, eq=False)
class DISTSLayer:
    """One layer's α·S1 + β·S2 sum; ``alpha_beta`` gives (α, β) on a device."""

    alpha_beta: Callable[[torch.device], tuple[torch.Tensor, torch.Tensor]]

    def __call__(self, layer: str, weight: float, maps) -> torch.Tensor:
        fx, fy = maps
        stage = DISTS_VIEW.layers.index(layer) + 1
        return _similarity(fx, fy, *_stage_weights(*self.alpha_beta(fx.device), stage))


def dists_term(alpha_beta: Callable[[torch.device], tuple[torch.Tensor, torch.Tensor]]) -> LayerTerm:
    return LayerTerm(DISTS_VIEW, ("sr", "gt"), DISTSLayer(alpha_beta))


def dists_per_sample(batch: ImageBatch, term: LayerTerm) -> torch.Tensor:
    """Per-sample DISTS (B,) between ``sr`` and ``gt``: 1 − Σ over the input and each layer."""
    reduced = batch.reduced(term)
    alpha, beta = term.fn.alpha_beta(batch.device)
    total = _similarity(to_rgb(batch["sr"]), to_rgb(batch["gt"]), *_stage_weights(alpha, beta, 0))
    for layer in DISTS_VIEW.layers:
        total = total + reduced[layer]
    return 1 - total


class DISTSLoss(FeatureLoss):
    """DISTS between [0, 1] images, differentiable (a training loss too); mean over the batch."""

    def __init__(self, pretrained: bool = True, weights_dir=None):
        super().__init__(pretrained, weights_dir)
        self.require(DISTS_VIEW.backbone)
        alpha, beta = load_alpha_beta(weights_dir)
        self.register_buffer("alpha", alpha, persistent=False)
        self.register_buffer("beta", beta, persistent=False)
        self.term = dists_term(lambda device: (self.alpha, self.beta))

    def per_sample(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return dists_per_sample(self.batch((self.term,), sr=x, gt=y), self.term)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.per_sample(x, y).mean().to(x.dtype)


def shared_alpha_beta(device) -> tuple[torch.Tensor, torch.Tensor]:
    """α, β on ``device``, loaded once, for the registry's batched scoring."""
    key = ("dists_alpha_beta", str(torch.device(device)), W.explicit_dir())
    return MODELS.get(key, lambda: tuple(t.to(device) for t in load_alpha_beta()))


# The registry's DISTS: α and β loaded once per device.
DISTS_TERM = dists_term(shared_alpha_beta)
