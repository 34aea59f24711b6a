"""How a loss looks at images through a backbone: ``FeatureView`` (a backbone, weighted layers
and the preprocessing before it), ``ImageBatch`` (a batch's images plus a feature cache, so
each image passes each backbone once), and ``FeatureLoss``, the base of backbone losses.

Every loss formula takes an ``ImageBatch``: the library classes build one from their call's
arguments, the registry builds one per scored batch, so each formula exists once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import weights as W
from .backbones import Backbone, backbone_spec, get_backbone

LayerWeights = Mapping[str, float] | Sequence[str]


@dataclass(frozen=True)
class FeatureView:
    """A backbone, the layers read from it with their weights, and the preprocessing before it.

    One type serves perceptual, CLP and LPIPS alike. Build it with ``FeatureView.of``; a layer
    the backbone does not have is refused here, at construction.
    """

    backbone: str
    layer_weights: tuple[tuple[str, float], ...]
    resize: int | None = None
    normalize: bool = True

    def __post_init__(self) -> None:
        valid = backbone_spec(self.backbone).layers
        unknown = [layer for layer, _ in self.layer_weights if layer not in valid]
        if unknown:
            raise ValueError(f"{self.backbone} has no layer(s) {unknown}; valid: {list(valid)}")
        if not self.layer_weights:
            raise ValueError("a feature view needs at least one layer")

    @classmethod
    def of(cls, backbone: str, layers: LayerWeights, weights: Sequence[float] | None = None,
           resize: int | None = None, normalize: bool = True) -> "FeatureView":
        """``layers`` is a mapping ``{layer: weight}``, or names with ``weights`` (default 1.0 each)."""
        if isinstance(layers, Mapping):
            if weights is not None:
                raise ValueError("give layer weights either as a mapping or as a sequence, not both")
            pairs = tuple((str(k), float(v)) for k, v in layers.items())
        else:
            names = (layers,) if isinstance(layers, str) else tuple(layers)
            weights = (1.0,) * len(names) if weights is None else tuple(weights)
            if len(weights) != len(names):
                raise ValueError(f"{len(names)} layers but {len(weights)} layer weights")
            pairs = tuple((str(k), float(v)) for k, v in zip(names, weights))
        return cls(backbone, pairs, resize, normalize)

    @property
    def layers(self) -> tuple[str, ...]:
        return tuple(layer for layer, _ in self.layer_weights)

    @property
    def weights(self) -> dict[str, float]:
        return dict(self.layer_weights)

    @property
    def preprocessing(self) -> tuple:
        """Views with equal preprocessing can share one forward pass."""
        return (self.backbone, self.resize, self.normalize)

    def extract(self, backbone: Backbone, x: torch.Tensor, layers: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
        """Run ``x`` through ``backbone`` as this view says (``layers`` may widen the set read)."""
        if self.resize is not None:
            x = F.interpolate(x, size=(self.resize, self.resize), mode="bilinear", align_corners=False)
        return backbone(x, layers or self.layers, normalize=self.normalize)


class ImageBatch:
    """A batch's images by role plus a cache, so each image passes each backbone view once.

    Views with equal preprocessing share one forward pass, read at the union of the layers
    that ``views`` ask for (e.g. ``perceptual`` and ``lpips_vgg`` share VGG16).

    A role given as one image for a batch of B (one reference for B candidates) is shared: its
    features are computed once and broadcast, and ``batch[role]`` is a broadcast view of B rows.
    """

    def __init__(self, images: Mapping[str, torch.Tensor], backbone: Callable[[str], Backbone],
                 views: Iterable[FeatureView] = ()):
        self.images = dict(images)
        self.size = max(image.shape[0] for image in self.images.values())
        for role, image in self.images.items():
            if image.shape[0] not in (1, self.size):
                raise ValueError(f"{role} holds {image.shape[0]} images but the batch has {self.size}: give one "
                                 f"{role} per sr image, or one for the whole batch")
        self._backbone = backbone
        self._layers: dict[tuple, set[str]] = {}
        for view in views:
            self._layers.setdefault(view.preprocessing, set()).update(view.layers)
        self._features: dict[tuple, dict[str, torch.Tensor]] = {}

    def __getitem__(self, role: str) -> torch.Tensor:
        return self._full(self.images[role])

    def shared(self, role: str) -> torch.Tensor:
        """The role's images as given: one row when one image serves the whole batch."""
        return self.images[role]

    def _full(self, x: torch.Tensor) -> torch.Tensor:
        return x if x.shape[0] == self.size else x.expand(self.size, *x.shape[1:])

    def derived(self, name: str, make: Callable[[], torch.Tensor]) -> torch.Tensor:
        """An image computed from the inputs once per batch (e.g. CLP's negative); ``make``
        should build it from ``shared`` images so a shared reference stays one row."""
        if name not in self.images:
            self.images[name] = make()
        return self._full(self.images[name])

    def features(self, role: str, view: FeatureView) -> dict[str, torch.Tensor]:
        key = (role, view.preprocessing)
        if key not in self._features:
            layers = sorted(self._layers.get(view.preprocessing, set()) | set(view.layers))
            self._features[key] = view.extract(self._backbone(view.backbone), self.images[role], layers)
        return {layer: self._full(value) for layer, value in self._features[key].items()}

    @property
    def device(self) -> torch.device:
        return self.images["sr"].device

    def zeros(self) -> torch.Tensor:
        sr = self.images["sr"]
        return torch.zeros(self.size, dtype=sr.dtype, device=sr.device)


class FeatureLoss(nn.Module):
    """A loss that reads shared frozen backbones on the input's device.

    The backbones are not submodules: never saved in the loss's state dict, never moved by
    ``.to()``, never trained. ``require`` checks a backbone's checkpoint, so with
    ``pretrained=True`` a missing file fails at construction, not in the first training step.
    """

    def __init__(self, pretrained: bool = True, weights_dir=None):
        super().__init__()
        self.pretrained = pretrained
        self.weights_dir = weights_dir

    def require(self, backbone: str) -> None:
        if self.pretrained:
            W.resolve(backbone_spec(backbone).weights, self.weights_dir)

    def backbones_on(self, device: torch.device) -> Callable[[str], Backbone]:
        return lambda name: get_backbone(name, device, self.pretrained, self.weights_dir)

    def batch(self, views: Iterable[FeatureView] = (), **images: torch.Tensor) -> ImageBatch:
        return ImageBatch(images, self.backbones_on(next(iter(images.values())).device), views)
