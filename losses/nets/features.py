"""How a loss looks at images through a backbone: ``FeatureView`` (a backbone, weighted layers
and the preprocessing before it), ``LayerTerm`` (what a loss computes from one layer's
features), ``ImageBatch`` (a batch's images; it runs the backbone passes and reduces each layer
as the pass reaches it), and ``FeatureLoss``, the base of backbone losses.

Every loss formula takes an ``ImageBatch``: the library classes build one from their call's
arguments, the registry builds one per scored batch, so each formula exists once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from losses.nets import weights as W
from losses.nets.backbones import Backbone, backbone_spec, get_backbone
from losses.psnr_ssim import check_image

LayerWeights = Mapping[str, float] | Sequence[str]
# Pixels one backbone pass forwards at most (rows × H × W): a batch runs in sample slices below
# it, so the first stages' activations (64 channels at full resolution, ~512 bytes per pixel in
# flight) stay near 1 GiB, while a slice is still large enough to keep a GPU busy (8 rows of
# 512²: 4 SR/GT pairs). One image larger than this still goes whole.
PASS_PIXELS = 2**21


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
    def of(
        cls, backbone: str, layers: LayerWeights, weights: Sequence[float] | None = None, resize: int | None = None, normalize: bool = True
    ) -> FeatureView:
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

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        if self.resize is not None:
            x = F.interpolate(x, size=(self.resize, self.resize), mode="bilinear", align_corners=False)
        return x

    def stream(self, backbone: Backbone, x: torch.Tensor, layers: Iterable[str] | None = None) -> Iterator[tuple[str, torch.Tensor]]:
        """``(layer, features)`` in forward order as ``backbone`` reaches them (``layers`` may widen the set)."""
        return backbone.stream(self.preprocess(x), layers or self.layers, normalize=self.normalize)

    def extract(self, backbone: Backbone, x: torch.Tensor, layers: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
        """Every read layer at once (for inspection; losses reduce layer by layer, see ``LayerTerm``)."""
        return dict(self.stream(backbone, x, layers))


# (layer, weight, one feature map per role) → per-sample contribution (B,).
LayerFn = Callable[[str, float, Sequence[torch.Tensor]], torch.Tensor]


@dataclass(frozen=True, eq=False)
class LayerTerm:
    """What a loss needs from a backbone: ``fn`` applied to each layer of ``view`` as soon as the
    forward pass reaches it, over the features of ``roles`` (e.g. sr and gt), after which the
    layer is freed. ``prepare`` derives an input image the roles name (CLP's negative).

    Terms are compared by identity: declare each once (a module constant or an attribute of a
    loss) so that every metric using it reads one result.
    """

    view: FeatureView
    roles: tuple[str, ...]
    fn: LayerFn
    prepare: Callable[[ImageBatch], None] | None = None


class ImageBatch:
    """A batch's images by role, and the backbone passes its ``LayerTerm``s need.

    The terms given at construction are planned together: terms whose views have equal
    preprocessing share one forward pass, read at the union of their layers (``perceptual`` and
    ``lpips_vgg`` share VGG16). The pass takes the roles of all its terms as one concatenated
    batch and hands each layer to every term that reads it, then lets it go: the peak holds one
    layer, not every tapped layer of every role. When gradients are needed the roles run as
    separate batches in lockstep instead, so a frozen reference never enters the graph. A batch
    larger than ``PASS_PIXELS`` runs in sample slices (the results are per sample, so exact).

    A role given as one image for a batch of B (one reference for B candidates) is shared: it
    passes the backbone once per slice, its features are broadcast, and ``batch[role]`` is a
    broadcast view.
    """

    def __init__(self, images: Mapping[str, torch.Tensor], backbone: Callable[[str], Backbone], terms: Iterable[LayerTerm] = ()):
        for role, image in images.items():  # the loss classes come here without ``registry.compute``
            check_image(image, role)
        self.images = dict(images)
        self.size = max(image.shape[0] for image in self.images.values())
        for role, image in self.images.items():
            if image.shape[0] not in (1, self.size):
                raise ValueError(
                    f"{role} holds {image.shape[0]} images but the batch has {self.size}: give one "
                    f"{role} per sr image, or one for the whole batch"
                )
        self._backbone = backbone
        self._planned: dict[tuple, list[LayerTerm]] = {}
        for term in terms:
            group = self._planned.setdefault(term.view.preprocessing, [])
            if term not in group:
                group.append(term)
        self._reduced: dict[LayerTerm, dict[str, torch.Tensor]] = {}

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

    def reduced(self, term: LayerTerm) -> dict[str, torch.Tensor]:
        """``{layer: term.fn(layer, weight, features)}`` for each layer of the term's view, (B,) each."""
        if term not in self._reduced:
            group = self._planned.get(term.view.preprocessing, [])
            self._run([t for t in group if t not in self._reduced] if term in group else [term])
        return self._reduced[term]

    def _run(self, terms: list[LayerTerm]) -> None:
        """The forward passes for ``terms`` (equal preprocessing), in sample slices of at most
        ``PASS_PIXELS`` forwarded pixels; each per-sample result is exact whatever the slicing."""
        for term in terms:
            if term.prepare is not None:
                term.prepare(self)
        roles = list(dict.fromkeys(role for term in terms for role in term.roles))
        height, width = self.images[roles[0]].shape[-2:]
        step = max(1, PASS_PIXELS // (len(roles) * height * width))
        parts = [self._pass(terms, roles, start, min(start + step, self.size)) for start in range(0, self.size, step)]
        for term in terms:
            self._reduced[term] = {layer: torch.cat([part[term][layer] for part in parts]) for layer in parts[0][term]}

    def _pass(self, terms: list[LayerTerm], roles: list[str], start: int, stop: int) -> dict[LayerTerm, dict[str, torch.Tensor]]:
        """One pass over samples start:stop of ``roles`` (a shared reference enters once), each
        layer handed to the terms that read it and then let go."""
        images = {role: image if image.shape[0] == 1 else image[start:stop] for role, image in self.images.items() if role in roles}
        size = stop - start
        view = terms[0].view
        layers = sorted({layer for term in terms for layer in term.view.layers})
        needs_grad = torch.is_grad_enabled() and any(images[role].requires_grad for role in roles)
        groups = [[role] for role in roles] if needs_grad else [roles]
        backbone = self._backbone(view.backbone)
        streams = [view.stream(backbone, torch.cat([images[role] for role in group]), layers) for group in groups]
        reduced: dict[LayerTerm, dict[str, torch.Tensor]] = {term: {} for term in terms}
        for outputs in zip(*streams):
            layer = outputs[0][0]
            features = {}
            for group, (_, maps) in zip(groups, outputs):
                for role, part in zip(group, maps.split([images[role].shape[0] for role in group])):
                    features[role] = part if part.shape[0] == size else part.expand(size, *part.shape[1:])
            for term in terms:
                if layer in term.view.weights:
                    reduced[term][layer] = term.fn(layer, term.view.weights[layer], [features[role] for role in term.roles])
            del features, outputs
        return reduced

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

    def batch(self, terms: Iterable[LayerTerm] = (), **images: torch.Tensor) -> ImageBatch:
        return ImageBatch(images, self.backbones_on(next(iter(images.values())).device), terms)
