"""MANIQA (Yang et al., "MANIQA: Multi-dimension Attention Network for No-Reference Image Quality
Assessment", CVPR Workshops 2022), as its authors' released checkpoints compute it.

Written from the paper and the authors' published architecture. A 224² crop, normalised to
[−1, 1], goes through a ViT-B/8 (timm's ``VisionTransformer``); the patch tokens of its blocks 6–9
are concatenated (4 × 768 channels on the 28 × 28 grid). Two stages follow, each two transposed
attention blocks (attention between channels, over the 784 token positions) and a scale Swin
stage (a 1×1 convolution to fewer channels, then Swin layers whose output is added back scaled
by 0.8). Each of the 784 positions gives a score and a weight; the crop's score is their
weighted mean. An image's score is the mean over its crops (``crop_positions``).

Sizes are read from the checkpoint (the authors' give ViT-B/8, 768 channels, windows of 4), so a
checkpoint of this layout loads by its own key names. The ViT's blocks after the 10th, its final
norm and its classifier are in the checkpoints but never read, like the Swin stages' unused
``downsample`` convolutions and the buffers derived from the sizes; every other key must be there.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from losses.nets import weights as W

StateDict = Mapping[str, torch.Tensor]
CROP = 224
FEATURE_BLOCKS = (6, 7, 8, 9)  # ViT blocks whose patch tokens MANIQA reads
SWIN_HEADS = 4  # the authors' num_heads=[4, 4]; a checkpoint does not record it
VIT_HEAD_DIM = 64  # ViT-B: 768 channels in 12 heads
CROP_PROTOCOLS = ("resize", "five_point", "random20")
SCALE = 0.8  # the Swin stages' residual scale of the KonIQ-10k and KADID-10k checkpoints
RANDOM_CROPS, RANDOM_SEED = 20, 20  # the authors' predict_one_image.py: 20 crops after setup_seed(20)
# Keys a checkpoint holds that the score never reads (see the module docstring).
UNREAD = ("vit.norm.", "vit.head.", "vit.fc_norm.", ".downsample.", "relative_position_index", "attn_mask")


def crop_positions(height: int, width: int, protocol: str) -> list[tuple[int, int]]:
    """(top, left) of each 224² crop of an image: ``five_point`` is the authors' evaluation crop
    set (the four corners, then the centre), ``random20`` their one-image script's 20 positions
    (``np.random.randint`` after seeding 20, top then left per crop). ``resize`` has no crops."""
    if protocol == "five_point":
        bottom, right = height - CROP, width - CROP
        return [(0, 0), (0, right), (bottom, 0), (bottom, right), (height // 2 - CROP // 2, width // 2 - CROP // 2)]
    if protocol == "random20":
        generator = np.random.RandomState(RANDOM_SEED)  # the legacy global generator's sequence
        positions = []
        for _ in range(RANDOM_CROPS):
            # The authors' randint(0, h − 224) fails on a side of exactly 224; its one position is 0.
            top = int(generator.randint(0, max(height - CROP, 1)))
            positions.append((top, int(generator.randint(0, max(width - CROP, 1)))))
        return positions
    raise ValueError(f"unknown crop protocol {protocol!r}; valid: {list(CROP_PROTOCOLS)}")


def opencv_bicubic(x: torch.Tensor, size: int) -> torch.Tensor:
    """``cv2.resize(..., interpolation=INTER_CUBIC)`` to size², as the authors' KonIQ-10k loader
    resizes: Keys' cubic with a = −0.75, half-pixel centres, replicated edges and no
    antialiasing (which is PyTorch's bicubic), rounded to 8 bits as OpenCV's uint8 output is.
    On photos this gives opencv-python's bytes but for ≤ 1 level on 0.5–1.1e-4 of the pixels (its
    Intel IPP path rounds its own way; tests/test_maniqa.py measures it). The rounding passes
    gradients straight through, so the view stays differentiable."""
    resized = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False)
    rounded = (resized * 255).round().clamp(0, 255) / 255
    return resized + (rounded - resized).detach()


class TransposedAttention(nn.Module):
    """Attention between channels (C × C, over N token positions), with a residual. The output
    is the authors' ``(attn @ v).transpose(1, 2).reshape(B, C, N)``: a transpose then a reshape,
    which reorders the values (it is not the identity); the checkpoints were trained with it."""

    def __init__(self, tokens: int):
        super().__init__()
        self.c_q, self.c_k, self.c_v = nn.Linear(tokens, tokens), nn.Linear(tokens, tokens), nn.Linear(tokens, tokens)
        self.scale = tokens**-0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, tokens = x.shape
        attention = (self.c_q(x) @ self.c_k(x).transpose(-2, -1) * self.scale).softmax(dim=-1)
        return (attention @ self.c_v(x)).transpose(1, 2).reshape(batch, channels, tokens) + x


class WindowAttention(nn.Module):
    """Multi-head self-attention inside square windows, with Swin's learned relative position bias."""

    def __init__(self, dim: int, window: int, heads: int):
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
        relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
        self.register_buffer("index", relative[..., 0] * (2 * window - 1) + relative[..., 1], persistent=False)
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        windows, tokens, dim = x.shape
        q, k, v = self.qkv(x).reshape(windows, tokens, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        attention = (q * self.scale) @ k.transpose(-2, -1)
        attention = attention + self.relative_position_bias_table[self.index].permute(2, 0, 1)
        if mask is not None:
            per_image = attention.view(-1, mask.shape[0], self.heads, tokens, tokens) + mask[None, :, None]
            attention = per_image.view(windows, self.heads, tokens, tokens)
        return self.proj((attention.softmax(dim=-1) @ v).transpose(1, 2).reshape(windows, tokens, dim))


def partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """(B, H, W, C) → (B·windows, window², C), windows in row-major order."""
    b, h, w, c = x.shape
    return x.view(b, h // window, window, w // window, window, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, window * window, c)


def merge(windows: torch.Tensor, window: int, h: int, w: int) -> torch.Tensor:
    """The inverse of ``partition``."""
    c = windows.shape[-1]
    return windows.view(-1, h // window, w // window, window, window, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, h, w, c)


class SwinBlock(nn.Module):
    """Pre-norm window attention (cyclically shifted by half a window when ``shift``) and an MLP."""

    def __init__(self, dim: int, side: int, window: int, shift: int, hidden: int):
        super().__init__()
        if side <= window:  # one window covers the grid: Swin neither partitions nor shifts
            window, shift = side, 0
        self.side, self.window, self.shift = side, window, shift
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window, SWIN_HEADS)
        self.mlp = nn.Sequential()
        self.mlp.fc1, self.mlp.act, self.mlp.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)
        self.register_buffer("mask", self.shift_mask() if shift else None, persistent=False)

    def shift_mask(self) -> torch.Tensor:
        """−100 between tokens that the cyclic shift brought from different regions, 0 elsewhere."""
        regions = torch.zeros(1, self.side, self.side, 1)
        bounds = (slice(0, -self.window), slice(-self.window, -self.shift), slice(-self.shift, None))
        for label, (rows, cols) in enumerate((r, c) for r in bounds for c in bounds):
            regions[:, rows, cols, :] = label
        labels = partition(regions, self.window).squeeze(-1)
        different = labels[:, None, :] != labels[:, :, None]
        return torch.zeros(different.shape).masked_fill(different, -100.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, tokens, c = x.shape
        h = self.norm1(x).view(b, self.side, self.side, c)
        if self.shift:
            h = torch.roll(h, shifts=(-self.shift, -self.shift), dims=(1, 2))
        h = merge(self.attn(partition(h, self.window), self.mask), self.window, self.side, self.side)
        if self.shift:
            h = torch.roll(h, shifts=(self.shift, self.shift), dims=(1, 2))
        x = x + h.reshape(b, tokens, c)
        return x + self.mlp(self.norm2(x))


class SwinLayer(nn.Module):
    """Swin blocks (alternately shifted), then a 3×3 convolution with ReLU on the token grid."""

    def __init__(self, dim: int, side: int, depth: int, window: int, hidden: int):
        super().__init__()
        self.side = side
        self.blocks = nn.ModuleList(SwinBlock(dim, side, window, 0 if i % 2 == 0 else window // 2, hidden) for i in range(depth))
        self.conv = nn.Conv2d(dim, dim, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        b, tokens, c = x.shape
        grid = F.relu(self.conv(x.transpose(1, 2).reshape(b, c, self.side, self.side)))
        return grid.flatten(2).transpose(1, 2)


class ScaleSwin(nn.Module):
    """The scale Swin stage: each layer's output, times ``scale``, added to its input."""

    def __init__(self, dim: int, side: int, depths: list[int], window: int, hidden: int, scale: float):
        super().__init__()
        self.scale = scale
        self.layers = nn.ModuleList(SwinLayer(dim, side, depth, window, hidden) for depth in depths)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        x = x.flatten(2).transpose(1, 2)
        for layer in self.layers:
            x = self.scale * layer(x) + x
        return x.transpose(1, 2).reshape(b, c, h, w)


def head(dim: int, final: nn.Module) -> nn.Sequential:
    """Linear → ReLU → (dropout) → Linear → ``final``, indexed as the checkpoints name it."""
    return nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Identity(), nn.Linear(dim, 1), final)


class MANIQA(nn.Module):
    """One crop batch (N, 3, 224, 224), normalised to [−1, 1], → (N,) scores."""

    def __init__(self, sizes: dict, scale: float):
        super().__init__()
        import timm.models.vision_transformer as vit

        dim, side = sizes["vit_dim"], sizes["side"]
        self.side = side
        self.vit = vit.VisionTransformer(
            img_size=side * sizes["patch"],
            patch_size=sizes["patch"],
            embed_dim=dim,
            depth=FEATURE_BLOCKS[-1] + 1,
            num_heads=max(1, dim // VIT_HEAD_DIM),
            mlp_ratio=sizes["vit_hidden"] / dim,
            num_classes=0,
        )
        self.vit.norm = nn.Identity()
        tokens, channels = side * side, sizes["dim"]
        self.tablock1 = nn.ModuleList(TransposedAttention(tokens) for _ in range(sizes["tab"]))
        self.conv1 = nn.Conv2d(dim * len(FEATURE_BLOCKS), channels, 1)
        self.swintransformer1 = ScaleSwin(channels, side, sizes["depths"], sizes["window"], sizes["hidden"], scale)
        self.tablock2 = nn.ModuleList(TransposedAttention(tokens) for _ in range(sizes["tab"]))
        self.conv2 = nn.Conv2d(channels, channels // 2, 1)
        self.swintransformer2 = ScaleSwin(channels // 2, side, sizes["depths"], sizes["window"], sizes["hidden"], scale)
        self.fc_score = head(channels // 2, nn.ReLU())
        self.fc_weight = head(channels // 2, nn.Sigmoid())

    def vit_features(self, x: torch.Tensor) -> torch.Tensor:
        """The patch tokens of blocks 6–9, concatenated: (N, 4·D, side²)."""
        h = self.vit._pos_embed(self.vit.patch_embed(x))
        read = []
        for index, block in enumerate(self.vit.blocks):
            h = block(h)
            if index in FEATURE_BLOCKS:
                read.append(h[:, self.vit.num_prefix_tokens :])
        return torch.cat(read, dim=2).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Crops already normalised to [−1, 1] → (N,) scores."""
        h = self.vit_features(x)
        n, side = h.shape[0], self.side
        for block in self.tablock1:
            h = block(h)
        h = self.swintransformer1(self.conv1(h.view(n, -1, side, side)))
        h = h.flatten(2)
        for block in self.tablock2:
            h = block(h)
        h = self.swintransformer2(self.conv2(h.view(n, -1, side, side))).flatten(2).transpose(1, 2)
        score, weight = self.fc_score(h), self.fc_weight(h)
        return (score * weight).sum(dim=(1, 2)) / weight.sum(dim=(1, 2))


# The authors' configuration (ViT-B/8, 768 channels, windows of 4, two layers of two blocks).
AUTHORS_SIZES = dict(vit_dim=768, vit_hidden=3072, patch=8, side=28, dim=768, hidden=768, window=4, depths=[2, 2], tab=2)


def architecture(state: StateDict) -> dict:
    """The sizes a checkpoint was built with, read from its tensors' shapes."""

    def layers(prefix: str) -> list[int]:
        found = {int(k[len(prefix) :].split(".")[0]) for k in state if k.startswith(prefix)}
        return sorted(found)

    try:
        tokens = state["tablock1.0.c_q.weight"].shape[0]
        depths = [len(layers(f"swintransformer1.layers.{i}.blocks.")) for i in layers("swintransformer1.layers.")]
        return dict(
            vit_dim=state["vit.patch_embed.proj.weight"].shape[0],
            vit_hidden=state["vit.blocks.0.mlp.fc1.weight"].shape[0],
            patch=state["vit.patch_embed.proj.weight"].shape[-1],
            side=math.isqrt(tokens),
            dim=state["conv1.weight"].shape[0],
            hidden=state["swintransformer1.layers.0.blocks.0.mlp.fc1.weight"].shape[0],
            window=(math.isqrt(state["swintransformer1.layers.0.blocks.0.attn.relative_position_bias_table"].shape[0]) + 1) // 2,
            depths=depths,
            tab=len(layers("tablock1.")),
        )
    except KeyError as exc:
        raise W.WeightsError(f"MANIQA checkpoint: missing key {exc.args[0]!r} (is this one of the authors' MANIQA checkpoints?)") from None


def load_maniqa(state: StateDict | None, scale: float = SCALE) -> MANIQA:
    """MANIQA with ``state`` loaded (every read key, by name), or seeded random weights of the
    authors' sizes when ``state`` is None (explicit opt-in only)."""
    if state is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return MANIQA(AUTHORS_SIZES, scale)
    model = MANIQA(architecture(state), scale)
    read = {k: v for k, v in state.items() if not any(part in k for part in UNREAD)}
    read = {k: v for k, v in read.items() if not (k.startswith("vit.blocks.") and int(k.split(".")[2]) > FEATURE_BLOCKS[-1])}
    missing, unexpected = model.load_state_dict(read, strict=False)
    if missing or unexpected:
        raise W.WeightsError(f"MANIQA checkpoint: missing keys {sorted(missing)[:5]}, unexpected keys {sorted(unexpected)[:5]}")
    return model
