"""LPIPS v0.1 (VGG and AlexNet variants) on the shared backbones.

The learned 1×1 "lin" layers are the files ``weights/v0.1/<net>.pth`` of the ``lpips`` package,
declared in the weight system (``lpips_vgg_heads``, ``lpips_alex_heads``: found in a weights
directory first, else in the installed package, and verified by their sha256). LPIPS maps [0, 1] inputs to [−1, 1] and applies its scaling
layer, (2x − 1 − shift)/scale with shift = 2·mean − 1 and scale = 2·std: that is exactly
ImageNet normalisation of the [0, 1] input, so the backbone passes that serve the perceptual
losses serve LPIPS too. The distance is ``lpips(sr, gt)``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from losses.nets import weights as W
from losses.nets.features import FeatureLoss, FeatureView, ImageBatch, LayerTerm
from losses.nets.models import MODELS
from losses.nets.weight_files import LPIPS_HEADS


@dataclass(frozen=True)
class LPIPSNet:
    view: FeatureView
    channels: tuple[int, ...]


LPIPS_NETS = {
    "vgg": LPIPSNet(FeatureView.of("vgg16", ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")), (64, 128, 256, 512, 512)),
    # lpips' alexnet slices end at features[2], [5], [8], [10], [12]: after each ReLU.
    "alex": LPIPSNet(FeatureView.of("alexnet", ("relu1", "relu2", "relu3", "relu4", "relu5")), (64, 192, 384, 256, 256)),
}


def lpips_lin_weights_path(net: str, weights_dir=None) -> Path:
    """The heads' file, resolved and verified like every weight file."""
    return W.resolve(LPIPS_HEADS[net], weights_dir)


def build_lin_layers(net: str, weights_dir=None) -> nn.ModuleList:
    """The five 1×1 convolutions of LPIPS v0.1 for ``net``, loaded from their weight file."""
    from lpips import NetLinLayer

    lins = nn.ModuleList(NetLinLayer(channels, use_dropout=True) for channels in LPIPS_NETS[net].channels)
    state = W.load_state_dict(lpips_lin_weights_path(net, weights_dir))
    lins.load_state_dict({k.replace("lin", "", 1): v for k, v in state.items()})
    for parameter in lins.parameters():
        parameter.requires_grad_(False)
    return lins.eval()


def _unit_normalize(f: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """``lpips.normalize_tensor``, value for value, with a finite gradient where a feature vector
    is all zero (every channel's ReLU off): √0's derivative is inf, and inf · 0 made the lpips
    package's backward NaN there (an error under ``torch.autograd.detect_anomaly``). A squared norm
    under the smallest normal float is raised to it: its root, ~1e-19, is lost beside ``eps``."""
    squared_norm = f.pow(2).sum(dim=1, keepdim=True)
    return f / (squared_norm.clamp_min(torch.finfo(f.dtype).tiny).sqrt() + eps)


@dataclass(frozen=True, eq=False)
class LPIPSLayer:
    """One layer's LPIPS term: spatial mean of lin((n(φ sr) − n(φ gt))²), per sample.

    ``lins`` gives the net's five lin layers on a device (a loss's own, or the shared ones)."""

    net: str
    lins: Callable[[torch.device], nn.ModuleList]

    def __call__(self, layer: str, weight: float, maps) -> torch.Tensor:
        fx, fy = maps
        lin = self.lins(fx.device)[LPIPS_NETS[self.net].view.layers.index(layer)]
        return lin((_unit_normalize(fx) - _unit_normalize(fy)).pow(2)).mean(dim=(1, 2, 3))


def lpips_term(net: str, lins: Callable[[torch.device], nn.ModuleList]) -> LayerTerm:
    return LayerTerm(LPIPS_NETS[net].view, ("sr", "gt"), LPIPSLayer(net, lins))


def lpips_per_sample(batch: ImageBatch, term: LayerTerm) -> torch.Tensor:
    """Per-sample LPIPS (B,): Σ_layers spatial mean of lin((n(φ sr) − n(φ gt))²)."""
    reduced = batch.reduced(term)
    return sum(reduced[layer] for layer in term.view.layers)


class LPIPS(FeatureLoss):
    """LPIPS distance between [0, 1] images (``net`` "vgg" or "alex"); differentiable w.r.t. the first argument."""

    def __init__(self, net: str = "vgg", pretrained: bool = True, weights_dir=None):
        if net not in LPIPS_NETS:
            raise ValueError(f"LPIPS net must be one of {sorted(LPIPS_NETS)}, got {net!r}")
        super().__init__(pretrained, weights_dir)
        self.net = net
        self.view = LPIPS_NETS[net].view
        self.require(self.view.backbone)
        self.lins = build_lin_layers(net, weights_dir)
        self.term = lpips_term(net, self._lins_on)

    def train(self, mode: bool = True) -> LPIPS:
        """The lin layers' dropout must stay off: LPIPS is a fixed metric."""
        return super().train(False)

    def _lins_on(self, device: torch.device) -> nn.ModuleList:
        if self.lins[0].model[-1].weight.device != device:
            self.lins.to(device)
        return self.lins

    def per_sample(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return lpips_per_sample(self.batch((self.term,), sr=x, gt=y), self.term)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.per_sample(x, y).mean().to(x.dtype)


def shared_lin_layers(net: str, device) -> nn.ModuleList:
    """One copy of ``net``'s lin layers per device, for the registry's batched scoring."""
    key = ("lpips_heads", net, str(torch.device(device)), W.explicit_dir())
    return MODELS.get(key, lambda: build_lin_layers(net).to(device))


# The registry's LPIPS: the shared lin layers on the batch's device.
LPIPS_TERMS = {net: lpips_term(net, functools.partial(shared_lin_layers, net)) for net in LPIPS_NETS}
