"""LPIPS (VGG variant) on the shared VGG16 backbone.

The learned 1×1 "lin" layers come from the file shipped inside the ``lpips`` package. LPIPS's
scaling layer on [-1, 1] inputs, (2x − 1 − shift)/scale with shift = 2·mean − 1 and
scale = 2·std, is ImageNet normalisation of [0, 1] inputs, so the VGG16 pass that serves the
perceptual losses serves LPIPS too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from .features import BackboneLoss, FeatureView, extract

LPIPS_VIEW = FeatureView("vgg16", ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3"))
LPIPS_CHANNELS = (64, 128, 256, 512, 512)


def lpips_lin_weights_path() -> Path:
    import lpips

    return Path(lpips.__file__).parent / "weights" / "v0.1" / "vgg.pth"


def build_lin_layers() -> nn.ModuleList:
    """The five 1×1 convolutions of LPIPS v0.1 (VGG), loaded from the ``lpips`` package."""
    from lpips import NetLinLayer

    lins = nn.ModuleList(NetLinLayer(channels, use_dropout=True) for channels in LPIPS_CHANNELS)
    state = torch.load(lpips_lin_weights_path(), map_location="cpu", weights_only=True)
    lins.load_state_dict({k.replace("lin", "", 1): v for k, v in state.items()})
    for parameter in lins.parameters():
        parameter.requires_grad_(False)
    return lins.eval()


def _unit_normalize(f: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    return f / (f.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)


def lpips_from_features(fx: Mapping[str, torch.Tensor], fy: Mapping[str, torch.Tensor], lins: nn.ModuleList) -> torch.Tensor:
    """Per-sample LPIPS (B,): Σ_layers spatial mean of lin((n(φx) − n(φy))²)."""
    total = 0
    for layer, lin in zip(LPIPS_VIEW.layers, lins):
        diff = (_unit_normalize(fx[layer]) - _unit_normalize(fy[layer])).pow(2)
        total = total + lin(diff).mean(dim=(1, 2, 3))
    return total


class LPIPS(BackboneLoss):
    """LPIPS distance between [0, 1] images; differentiable w.r.t. the first argument."""

    def __init__(self, pretrained: bool = True, weights_dir=None):
        super().__init__("vgg16", pretrained, weights_dir)
        self.lins = build_lin_layers()

    def train(self, mode: bool = True) -> "LPIPS":
        """The lin layers' dropout must stay off: LPIPS is a fixed metric."""
        return super().train(False)

    def per_sample(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        backbone = self.backbone_for(x)
        if self.lins[0].model[-1].weight.device != x.device:
            self.lins.to(x.device)
        return lpips_from_features(extract(backbone, x, LPIPS_VIEW), extract(backbone, y, LPIPS_VIEW), self.lins)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.per_sample(x, y).mean().to(x.dtype)


_shared_lins: dict[str, nn.ModuleList] = {}


def shared_lin_layers(device) -> nn.ModuleList:
    """One copy of the lin layers per device, for the registry's batched scoring."""
    key = str(torch.device(device))
    if key not in _shared_lins:
        with torch.inference_mode(False):  # see get_backbone
            _shared_lins[key] = build_lin_layers().to(device)
    return _shared_lins[key]
