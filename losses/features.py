"""How a loss looks at images through a backbone, and the base class of backbone losses."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from . import weights as W
from .backbones import Backbone, get_backbone


@dataclass(frozen=True)
class FeatureView:
    """A backbone, the layers read from it, and the preprocessing before it."""

    backbone: str
    layers: tuple[str, ...]
    resize: int | None = None
    normalize: bool = True

    @property
    def preprocessing(self) -> tuple:
        """Views with equal preprocessing can share one forward pass."""
        return (self.backbone, self.resize, self.normalize)


def extract(backbone: Backbone, x: torch.Tensor, view: FeatureView, layers=None) -> dict[str, torch.Tensor]:
    """Run ``x`` through ``backbone`` as ``view`` says (``layers`` may widen the set read)."""
    if view.resize is not None:
        x = F.interpolate(x, size=(view.resize, view.resize), mode="bilinear", align_corners=False)
    return backbone(x, layers or view.layers, normalize=view.normalize)


class BackboneLoss(nn.Module):
    """A loss that reads a shared frozen backbone on the input's device.

    The backbone is not a submodule: it is never saved in the loss's state dict, never moved
    by ``.to()`` and never trained. With ``pretrained=True`` a missing checkpoint fails here,
    at construction, not in the first training step.
    """

    def __init__(self, backbone: str, pretrained: bool = True, weights_dir=None):
        super().__init__()
        self.backbone_name = backbone
        self.pretrained = pretrained
        self.weights_dir = weights_dir
        if pretrained:
            W.resolve(W.WEIGHT_SPECS[backbone], weights_dir)

    def backbone_for(self, x: torch.Tensor) -> Backbone:
        return get_backbone(self.backbone_name, x.device, self.pretrained, self.weights_dir)
