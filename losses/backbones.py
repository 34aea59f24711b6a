"""Frozen feature backbones (VGG16, VGG19, DINOv2 ViT-B/14) behind one interface.

``backbone(x, layers)`` returns ``{layer_name: feature_map}`` for images ``x`` in [0, 1];
the forward pass stops at the deepest requested layer. ``get_backbone`` keeps one shared
instance per (name, device, pretrained, weights dir) so every loss in a process reuses it.
"""

from __future__ import annotations

import os
import threading
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from . import weights as W

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RANDOM_INIT_SEED = 0


def to_rgb(x: torch.Tensor) -> torch.Tensor:
    """Replicate grayscale (C=1) to three channels."""
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


class Backbone(nn.Module):
    """Common behaviour: frozen, always in eval mode, ImageNet normalisation built in."""

    layer_names: tuple[str, ...] = ()

    def __init__(self, name: str, pretrained: bool):
        super().__init__()
        self.name = name
        self.pretrained = pretrained
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def freeze(self) -> "Backbone":
        for parameter in self.parameters():
            parameter.requires_grad_(False)
        return self.eval()

    def train(self, mode: bool = True) -> "Backbone":
        """Stay in eval mode whatever a parent module asks: the backbone is a fixed metric."""
        return super().train(False)

    def prepare(self, x: torch.Tensor, normalize: bool) -> torch.Tensor:
        x = to_rgb(x).to(self.mean.dtype)
        return (x - self.mean) / self.std if normalize else x

    def check_layers(self, layers: Iterable[str]) -> list[str]:
        layers = list(layers)
        unknown = [layer for layer in layers if layer not in self.layer_names]
        if unknown:
            raise ValueError(f"{self.name} has no layer(s) {unknown}; valid: {list(self.layer_names)}")
        return layers


VGG_CONFIGS = {"vgg16": (2, 2, 3, 3, 3), "vgg19": (2, 2, 4, 4, 4)}


def vgg_layer_names(convs_per_stage: tuple[int, ...]) -> list[str]:
    """Names for torchvision's ``features`` indices: conv/relu per stage, then pool."""
    names = []
    for stage, n_convs in enumerate(convs_per_stage, start=1):
        for conv in range(1, n_convs + 1):
            names += [f"conv{stage}_{conv}", f"relu{stage}_{conv}"]
        names.append(f"pool{stage}")
    return names


class VGGFeatures(Backbone):
    """torchvision's VGG ``features`` (the classifier is never built)."""

    def __init__(self, name: str, features: nn.Sequential, pretrained: bool):
        super().__init__(name, pretrained)
        self.features = features
        self.layer_names = tuple(vgg_layer_names(VGG_CONFIGS[name]))
        self.freeze()

    def _apply(self, fn, recurse=True):
        """Keep the weights channels-last on a CPU, where oneDNN runs VGG ~25% faster in that
        layout (BENCHMARKS.md); on CUDA keep cuDNN's native NCHW (not measured on a GPU)."""
        module = super()._apply(fn, recurse)
        if self.mean.device.type == "cpu":
            for parameter in self.features.parameters():
                if parameter.dim() == 4:
                    parameter.data = parameter.data.contiguous(memory_format=torch.channels_last)
        return module

    def forward(self, x: torch.Tensor, layers: Iterable[str], normalize: bool = True) -> dict[str, torch.Tensor]:
        wanted = set(self.check_layers(layers))
        deepest = max(self.layer_names.index(layer) for layer in wanted)
        out = {}
        h = self.prepare(x, normalize)
        if h.device.type == "cpu":
            h = h.contiguous(memory_format=torch.channels_last)
        for index in range(deepest + 1):
            h = self.features[index](h)
            if self.layer_names[index] in wanted:
                out[self.layer_names[index]] = h
        return out


DINO_BLOCKS = 8
DINO_PATCH = 14


class DINOv2Features(Backbone):
    """timm's ``vit_base_patch14_dinov2``: the first 8 blocks' normed patch tokens as maps."""

    layer_names = tuple(f"block{i}" for i in range(DINO_BLOCKS))

    def __init__(self, model: nn.Module, pretrained: bool):
        super().__init__("dinov2", pretrained)
        model.blocks = model.blocks[:DINO_BLOCKS]
        self.model = model
        self.freeze()

    @staticmethod
    def pad_to_patch_multiple(x: torch.Tensor) -> torch.Tensor:
        """Reflect-pad H and W to the next multiple of 14, split between the two sides."""
        pad_h, pad_w = (-x.shape[-2]) % DINO_PATCH, (-x.shape[-1]) % DINO_PATCH
        if pad_h == 0 and pad_w == 0:
            return x
        if pad_h >= x.shape[-2] or pad_w >= x.shape[-1]:
            raise ValueError(f"image {tuple(x.shape[-2:])} is too small to reflect-pad to a multiple of {DINO_PATCH}")
        return F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), mode="reflect")

    def forward(self, x: torch.Tensor, layers: Iterable[str], normalize: bool = True) -> dict[str, torch.Tensor]:
        layers = self.check_layers(layers)
        indices = sorted(self.layer_names.index(layer) for layer in layers)
        h = self.pad_to_patch_multiple(self.prepare(x, normalize))
        maps = self.model.forward_intermediates(
            h, indices=indices, norm=True, output_fmt="NCHW", intermediates_only=True, stop_early=True
        )
        return {self.layer_names[i]: fmap for i, fmap in zip(indices, maps)}


def _seeded_init(build):
    """Random initialisation that is the same in every process (explicit opt-in only)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        return build()


def build_vgg(name: str, pretrained: bool = True, weights_dir=None) -> VGGFeatures:
    import torchvision

    features = _seeded_init(lambda: getattr(torchvision.models, name)(weights=None).features)
    if pretrained:
        path = W.resolve(W.WEIGHT_SPECS[name], weights_dir)
        state = W.load_state_dict(path)
        features_state = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
        if not features_state:
            raise W.WeightsError(f"{path}: no 'features.*' keys; is this a torchvision {name} checkpoint?")
        features.load_state_dict(features_state)
    return VGGFeatures(name, features, pretrained)


def build_dinov2(pretrained: bool = True, weights_dir=None) -> DINOv2Features:
    import timm
    from timm.models.vision_transformer import checkpoint_filter_fn

    model = _seeded_init(
        lambda: timm.create_model(
            "vit_base_patch14_dinov2.lvd142m", pretrained=False, num_classes=0, dynamic_img_size=True
        )
    )
    if pretrained:
        path = W.resolve(W.WEIGHT_SPECS["dinov2"], weights_dir)
        model.load_state_dict(checkpoint_filter_fn(W.load_state_dict(path), model))
    return DINOv2Features(model, pretrained)


BUILDERS = {
    "vgg16": lambda pretrained, weights_dir: build_vgg("vgg16", pretrained, weights_dir),
    "vgg19": lambda pretrained, weights_dir: build_vgg("vgg19", pretrained, weights_dir),
    "dinov2": lambda pretrained, weights_dir: build_dinov2(pretrained, weights_dir),
}

_shared: dict[tuple, Backbone] = {}
_shared_lock = threading.Lock()


def get_backbone(name: str, device="cpu", pretrained: bool = True, weights_dir=None) -> Backbone:
    """The process-wide instance of ``name`` on ``device`` (built on first use)."""
    if name not in BUILDERS:
        raise ValueError(f"unknown backbone {name!r}; valid: {sorted(BUILDERS)}")
    device = torch.device(device)
    key = (name, str(device), pretrained, str(weights_dir or os.environ.get("LOSS_SERVICE_WEIGHTS_DIR", "")))
    with _shared_lock:
        if key not in _shared:
            # Built outside any caller's inference_mode: inference tensors as weights would make
            # every later backward() through the shared instance fail.
            with torch.inference_mode(False):
                _shared[key] = BUILDERS[name](pretrained, weights_dir).to(device)
        return _shared[key]


def clear_shared_backbones() -> None:
    """Forget the shared instances (tests switch weight directories)."""
    with _shared_lock:
        _shared.clear()
