"""Frozen feature backbones behind one interface, each declared once as a ``BackboneSpec``.

A spec holds everything about a backbone: its builder, its checkpoint (file names, hash
prefix, source URL), its input normalisation and its layer names. Weight resolution,
``weights fetch``/``list``, the server's ``--models`` choices and the catalogue all read
``BACKBONES``; adding a backbone is one ``register_backbone`` call plus its builder.

``backbone(x, layers)`` returns ``{layer_name: feature_map}`` for images ``x`` in [0, 1];
the forward pass stops at the deepest requested layer. ``get_backbone`` keeps one shared
instance per (name, device, pretrained, weights dir) so every loss in a process reuses it.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from losses.nets import weights as W
from losses.nets.clip import CLIP_MEAN, CLIP_STD, load_clip, prompt_tokens
from losses.nets.clip import LAYERS as CLIP_LAYERS
from losses.nets.maniqa import CROP, CROP_PROTOCOLS, crop_positions, load_maniqa, opencv_bicubic
from losses.nets.models import MODELS
from losses.nets.musiq import load_musiq
from losses.nets.tables import add_named
from losses.nets.weight_files import ALEXNET_FILE, CLIP_RN50_FILE, DINOV2_FILE, MANIQA_FILES, MUSIQ_FILES, VGG16_FILE, VGG19_FILE

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RANDOM_INIT_SEED = 0

StateDict = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class BackboneSpec:
    """One backbone, declared once (compare torchvision's ``Weights`` and timm's ``PretrainedCfg``).

    ``build(spec, state)`` returns the ``Backbone`` with ``state`` loaded, or with the seeded
    random initialisation when ``state`` is None (explicit opt-in only).
    """

    name: str
    build: Callable[[BackboneSpec, StateDict | None], Backbone]
    layers: tuple[str, ...]
    weights: W.WeightSpec  # its checkpoint, declared once in ``weights.WEIGHT_FILES``
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    # The smallest H and W its deepest layer accepts (strided layers shrink the image to nothing).
    min_side: int = 1
    description: str = ""


BACKBONES: dict[str, BackboneSpec] = {}


def register_backbone(spec: BackboneSpec) -> BackboneSpec:
    return add_named(BACKBONES, spec, "backbone")


def backbone_spec(name: str) -> BackboneSpec:
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; valid: {sorted(BACKBONES)}")
    return BACKBONES[name]


def to_rgb(x: torch.Tensor) -> torch.Tensor:
    """Replicate grayscale (C=1) to three channels; any other count but 3, or an integer dtype
    (a uint8 image would be normalised as if 0–255 were 0–1), is refused by name."""
    if not x.is_floating_point():
        raise ValueError(f"backbones take floating-point images in [0, 1]; got {x.dtype} (for uint8 data: x / 255)")
    if x.shape[1] not in (1, 3):
        raise ValueError(f"backbones take RGB (C = 3) or grayscale (C = 1) images; got C = {x.shape[1]}")
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


class Backbone(nn.Module):
    """Common behaviour: frozen, always in eval mode, the spec's normalisation built in."""

    def __init__(self, spec: BackboneSpec):
        super().__init__()
        self.spec = spec
        self.name = spec.name
        self.layer_names = spec.layers
        self.pretrained = True
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1), persistent=False)

    def freeze(self) -> Backbone:
        for parameter in self.parameters():
            parameter.requires_grad_(False)
        return self.eval()

    def train(self, mode: bool = True) -> Backbone:
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

    def stream(self, x: torch.Tensor, layers: Iterable[str], normalize: bool = True) -> Iterator[tuple[str, torch.Tensor]]:
        """``(layer, features)`` for the requested layers, in forward order, as the pass reaches them."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, layers: Iterable[str], normalize: bool = True) -> dict[str, torch.Tensor]:
        return dict(self.stream(x, layers, normalize))


class SequentialFeatures(Backbone):
    """A torchvision ``features`` stack (VGG, AlexNet); ``spec.layers`` names its indices."""

    def __init__(self, spec: BackboneSpec, features: nn.Sequential):
        super().__init__(spec)
        if len(features) != len(spec.layers):
            raise ValueError(f"{spec.name}: {len(features)} modules but {len(spec.layers)} layer names")
        self.features = features
        self.freeze()

    def _apply(self, fn, recurse=True):
        """Keep the weights channels-last on a CPU, oneDNN's preferred layout for convolutions;
        on CUDA keep cuDNN's native NCHW (no GPU was available to compare the two)."""
        module = super()._apply(fn, recurse)
        if self.mean.device.type == "cpu":
            for parameter in self.features.parameters():
                if parameter.dim() == 4:
                    parameter.data = parameter.data.contiguous(memory_format=torch.channels_last)
        return module

    def stream(self, x: torch.Tensor, layers: Iterable[str], normalize: bool = True) -> Iterator[tuple[str, torch.Tensor]]:
        """Stops at the deepest requested layer; a yielded layer is freed once the caller drops it."""
        wanted = set(self.check_layers(layers))
        deepest = max(self.layer_names.index(layer) for layer in wanted)
        h = self.prepare(x, normalize)
        if h.device.type == "cpu":
            h = h.contiguous(memory_format=torch.channels_last)
        for index in range(deepest + 1):
            h = self.features[index](h)
            if self.layer_names[index] in wanted:
                yield self.layer_names[index], h


def vgg_layer_names(convs_per_stage: tuple[int, ...]) -> tuple[str, ...]:
    """Names for torchvision's VGG ``features`` indices: conv/relu per stage, then pool."""
    names = []
    for stage, n_convs in enumerate(convs_per_stage, start=1):
        for conv in range(1, n_convs + 1):
            names += [f"conv{stage}_{conv}", f"relu{stage}_{conv}"]
        names.append(f"pool{stage}")
    return tuple(names)


def _seeded_init(build):
    """Random initialisation that is the same in every process (explicit opt-in only)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        return build()


def torchvision_features(arch: str, state: StateDict | None) -> nn.Sequential:
    """torchvision's ``<arch>(weights=None).features`` with the checkpoint's ``features.*`` keys
    (from a checkpoint the classifier is never built, and a full checkpoint's classifier keys are
    ignored)."""
    import torchvision

    if state is None:  # the whole network is built: its random draws are the same as torchvision's
        return _seeded_init(lambda: getattr(torchvision.models, arch)(weights=None).features)
    features_state = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
    if not features_state:
        raise W.WeightsError(f"no 'features.*' keys; is this a torchvision {arch} checkpoint?")
    return load_into_empty(lambda: getattr(torchvision.models, arch)(weights=None).features, features_state)


def load_into_empty(build, state: StateDict) -> nn.Module:
    """``build()`` on the meta device, its tensors then taken from ``state`` (strictly: every key,
    each shape), cast to the module's own dtypes: no random initialisation is run only to be
    overwritten (about a second for VGG16's classifier, which the features never use)."""
    with torch.device("meta"):
        module = build()
    dtypes = {key: value.dtype for key, value in module.state_dict().items()}
    module.load_state_dict({key: value.to(dtypes.get(key, value.dtype)) for key, value in state.items()}, assign=True)
    return module


def build_torchvision_features(spec: BackboneSpec, state: StateDict | None) -> SequentialFeatures:
    """A backbone named after its torchvision architecture (vgg16, vgg19, alexnet)."""
    return SequentialFeatures(spec, torchvision_features(spec.name, state))


class L2Pool(nn.Module):
    """DISTS's L2 pooling: √(Hann-weighted 3×3 mean of x², stride 2, padding 1 + 1e-12).

    The window is ``np.hanning(5)[1:-1]`` = (½, 1, ½) as an outer product, normalised to sum 1,
    exactly as the ``dists-pytorch`` package builds it (in float32)."""

    def __init__(self, channels: int):
        super().__init__()
        hann = torch.tensor([0.5, 1.0, 0.5], dtype=torch.float64)
        window = (hann[:, None] * hann[None, :]).float()
        self.register_buffer("window", (window / window.sum()).expand(channels, 1, 3, 3).contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.conv2d(x * x, self.window, stride=2, padding=1, groups=x.shape[1])
        return (pooled + 1e-12).sqrt()


def build_vgg16_l2pool(spec: BackboneSpec, state: StateDict | None) -> SequentialFeatures:
    """VGG16 (same weight file) with the max-pool that opens stages 2–5 replaced by L2 pooling (DISTS)."""
    features = torchvision_features("vgg16", state)
    pools = [index for index, module in enumerate(features) if isinstance(module, nn.MaxPool2d)]
    for index in pools[:-1]:  # the last pool ends stage 5, after every layer DISTS reads
        features[index] = L2Pool(features[index - 2].out_channels)
    return SequentialFeatures(spec, features)


DINO_BLOCKS = 8
DINO_PATCH = 14
# The official DINOv2 code's ``interpolate_offset``: it resizes the position grid by a scale factor
# of (n + 0.1) / 37, not to an exact size, and without antialiasing.
DINO_POS_OFFSET = 0.1


def official_pos_embed(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Class token plus position embeddings for (B, h, w, C) patch tokens, as DINOv2's own
    ``interpolate_pos_encoding`` does it (timm's ``dynamic_img_size`` resizes to the exact grid
    with antialiasing instead, which differs by 3–5% per block away from 518×518)."""
    batch, height, width, dim = x.shape
    pos = model.pos_embed
    side = model.patch_embed.grid_size[0]
    if (height, width) != (side, side):
        grid = pos[:, 1:].float().reshape(1, side, side, dim).permute(0, 3, 1, 2)
        scale = ((height + DINO_POS_OFFSET) / side, (width + DINO_POS_OFFSET) / side)
        grid = F.interpolate(grid, scale_factor=scale, mode="bicubic", antialias=False)
        pos = torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, height * width, dim).to(pos.dtype)], dim=1)
    tokens = torch.cat([model.cls_token.expand(batch, -1, -1), x.reshape(batch, -1, dim)], dim=1)
    return model.pos_drop(tokens + pos)


class DINOv2Features(Backbone):
    """timm's ``vit_base_patch14_dinov2`` (its weight loading of both checkpoint layouts) with the
    official position-embedding resize: the first 8 blocks' normed patch tokens as maps."""

    def __init__(self, spec: BackboneSpec, model: nn.Module):
        super().__init__(spec)
        model.blocks = model.blocks[:DINO_BLOCKS]
        model._pos_embed = types.MethodType(official_pos_embed, model)
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

    def stream(self, x: torch.Tensor, layers: Iterable[str], normalize: bool = True) -> Iterator[tuple[str, torch.Tensor]]:
        """timm's ``forward_intermediates`` returns every block at the end; the token maps are
        small next to the image (768 × H/14 × W/14), so they are handed on from there."""
        layers = self.check_layers(layers)
        indices = sorted(set(self.layer_names.index(layer) for layer in layers))
        h = self.pad_to_patch_multiple(self.prepare(x, normalize))
        maps = self.model.forward_intermediates(h, indices=indices, norm=True, output_fmt="NCHW", intermediates_only=True, stop_early=True)
        yield from ((self.layer_names[i], fmap) for i, fmap in zip(indices, maps))


def build_dinov2(spec: BackboneSpec, state: StateDict | None) -> DINOv2Features:
    """timm's ViT-B/14 DINOv2; ``checkpoint_filter_fn`` reads both the official and timm layouts."""
    import timm
    from timm.models.vision_transformer import checkpoint_filter_fn

    def build():
        return timm.create_model("vit_base_patch14_dinov2.lvd142m", pretrained=False, num_classes=0, dynamic_img_size=True)

    if state is None:
        return DINOv2Features(spec, _seeded_init(build))
    with torch.device("meta"):
        shapes = build()  # what checkpoint_filter_fn reads of the model: its parameters' shapes
    return DINOv2Features(spec, load_into_empty(build, checkpoint_filter_fn(dict(state), shapes)))


class CLIPLogits(Backbone):
    """CLIP's ResNet image encoder against the text embeddings of CLIP-IQA's prompt pairs
    (``losses.nets.clip``): each layer is (B, pairs, 2) logits, the cosine similarities scaled by
    CLIP's temperature. The text encoder runs once here; only its normalised embeddings are kept."""

    def __init__(self, spec: BackboneSpec, state: StateDict | None):
        super().__init__(spec)
        image, text, scale = load_clip(state)
        self.visual = image
        with torch.no_grad():
            tokens = prompt_tokens(text.positional_embedding.shape[0])
            embedded = text(tokens.flatten(0, 1))
        self.register_buffer("prompts", (embedded / embedded.norm(dim=-1, keepdim=True)).view(*tokens.shape[:2], -1))
        self.register_buffer("scale", scale.detach().exp())
        self.freeze()

    def stream(self, x: torch.Tensor, layers: Iterable[str], normalize: bool = True) -> Iterator[tuple[str, torch.Tensor]]:
        wanted = self.check_layers(layers)
        trunk = self.visual.trunk(self.prepare(x, normalize))
        for layer in self.layer_names:
            if layer in wanted:
                embedding = self.visual.attnpool(trunk, positional=layer == "logits_positional")
                embedding = embedding / embedding.norm(dim=-1, keepdim=True)
                yield layer, self.scale * torch.einsum("bd,pkd->bpk", embedding, self.prompts)


class MANIQAScores(Backbone):
    """MANIQA (``losses.nets.maniqa``): each layer is a crop protocol, and its features are the
    (B,) image scores, the mean of the scores of the image's 224² crops (or of the image resized
    to 224² by ``resize``). Crops run in groups of at most ``CROPS_PER_PASS``."""

    CROPS_PER_PASS = 16

    def __init__(self, spec: BackboneSpec, state: StateDict | None):
        super().__init__(spec)
        self.model = load_maniqa(state)
        self.freeze()

    def crops(self, x: torch.Tensor, protocol: str) -> torch.Tensor:
        """(B, K, 3, 224, 224): each image's crops, in [0, 1]."""
        if protocol == "resize":
            return opencv_bicubic(x, CROP)[:, None]
        positions = crop_positions(x.shape[-2], x.shape[-1], protocol)
        return torch.stack([x[..., top : top + CROP, left : left + CROP] for top, left in positions], dim=1)

    def stream(self, x: torch.Tensor, layers: Iterable[str], normalize: bool = True) -> Iterator[tuple[str, torch.Tensor]]:
        wanted = self.check_layers(layers)
        x = to_rgb(x).to(self.mean.dtype)
        for protocol in self.layer_names:
            if protocol in wanted:
                crops = self.crops(x, protocol)
                flat = self.prepare(crops.flatten(0, 1), normalize)
                scores = torch.cat([self.model(part) for part in flat.split(self.CROPS_PER_PASS)])
                yield protocol, scores.view(crops.shape[:2]).mean(dim=1)


class MUSIQScores(Backbone):
    """MUSIQ (``losses.nets.musiq``): its one layer, ``score``, is the (B,) image scores. The
    network does its own scaling to [−1, 1] and its own multi-scale resizing."""

    def __init__(self, spec: BackboneSpec, state: StateDict | None):
        super().__init__(spec)
        self.model = load_musiq(state, classes=10 if spec.name == "musiq_ava" else 1)
        self.freeze()

    def stream(self, x: torch.Tensor, layers: Iterable[str], normalize: bool = True) -> Iterator[tuple[str, torch.Tensor]]:
        self.check_layers(layers)
        yield "score", self.model(to_rgb(x).to(self.mean.dtype))


# --- the backbones ------------------------------------------------------------------------------

register_backbone(
    BackboneSpec(
        "vgg16",
        build_torchvision_features,
        vgg_layer_names((2, 2, 3, 3, 3)),
        VGG16_FILE,
        min_side=16,
        description="torchvision VGG16 IMAGENET1K_V1 features",
    )
)
register_backbone(
    BackboneSpec(
        "vgg19",
        build_torchvision_features,
        vgg_layer_names((2, 2, 4, 4, 4)),
        VGG19_FILE,
        min_side=16,
        description="torchvision VGG19 IMAGENET1K_V1 features",
    )
)
register_backbone(
    BackboneSpec(
        "vgg16_l2pool",
        build_vgg16_l2pool,
        vgg_layer_names((2, 2, 3, 3, 3)),
        VGG16_FILE,
        description="VGG16 IMAGENET1K_V1 features with L2 pooling (DISTS); vgg16's weight file",
    )
)
register_backbone(
    BackboneSpec(
        "alexnet",
        build_torchvision_features,
        ("conv1", "relu1", "pool1", "conv2", "relu2", "pool2", "conv3", "relu3", "conv4", "relu4", "conv5", "relu5", "pool5"),
        ALEXNET_FILE,
        min_side=31,
        description="torchvision AlexNet IMAGENET1K_V1 features (LPIPS-Alex)",
    )
)
register_backbone(
    BackboneSpec(
        "dinov2",
        build_dinov2,
        tuple(f"block{i}" for i in range(DINO_BLOCKS)),
        DINOV2_FILE,
        min_side=8,
        description="DINOv2 ViT-B/14 (LVD-142M), first 8 blocks",
    )
)


# --- building and sharing -------------------------------------------------------------------------


def build_backbone(name: str, pretrained: bool = True, weights_dir=None) -> Backbone:
    """A new instance of ``name``: its checkpoint resolved, verified and loaded (or seeded random
    weights with ``pretrained=False``, an explicit opt-in)."""
    spec = backbone_spec(name)
    if not pretrained:
        model = spec.build(spec, None)
    else:
        path = W.resolve(spec.weights, weights_dir)
        try:
            model = spec.build(spec, W.load_state_dict(path))
        except (RuntimeError, KeyError) as exc:
            raise W.WeightsError(f"{path}: not a {name} checkpoint ({exc})") from exc
    model.pretrained = pretrained
    return model


def get_backbone(name: str, device="cpu", pretrained: bool = True, weights_dir=None) -> Backbone:
    """The process-wide instance of ``name`` on ``device`` (built on first use, in ``MODELS``)."""
    backbone_spec(name)
    device = torch.device(device)
    key = ("backbone", name, str(device), pretrained, W.explicit_dir(weights_dir))
    return MODELS.get(key, lambda: build_backbone(name, pretrained, weights_dir).to(device))


def clear_shared_backbones() -> None:
    """Forget every shared model (``MODELS.clear()``; tests switch weight directories)."""
    MODELS.clear()


register_backbone(
    BackboneSpec(
        "clip_rn50",
        CLIPLogits,
        CLIP_LAYERS,
        CLIP_RN50_FILE,
        mean=CLIP_MEAN,
        std=CLIP_STD,
        min_side=32,
        description="OpenAI CLIP ResNet-50 image encoder with CLIP-IQA's prompt embeddings",
    )
)
for _dataset, _label in (("koniq10k", "KonIQ-10k"), ("kadid10k", "KADID-10k")):
    register_backbone(
        BackboneSpec(
            f"maniqa_{_dataset}",
            MANIQAScores,
            CROP_PROTOCOLS,
            MANIQA_FILES[_dataset],
            mean=(0.5, 0.5, 0.5),
            std=(0.5, 0.5, 0.5),
            description=f"MANIQA (ViT-B/8, transposed attention, scale Swin) trained on {_label}",
        )
    )
for _dataset, _label in (("koniq", "KonIQ-10k"), ("spaq", "SPAQ"), ("paq2piq", "PaQ-2-PiQ"), ("ava", "AVA")):
    register_backbone(
        BackboneSpec(
            f"musiq_{_dataset}",
            MUSIQScores,
            ("score",),
            MUSIQ_FILES[_dataset],
            description=f"MUSIQ (multi-scale patch transformer, 3 scales) trained on {_label}",
        )
    )
