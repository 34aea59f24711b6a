"""MUSIQ (Ke et al., "MUSIQ: Multi-scale Image Quality Transformer", ICCV 2021), as its authors'
released checkpoints compute it.

Written from the paper and the authors' published procedure (their JAX code). The image, mapped
to [−1, 1], is taken at three scales: resized, keeping its aspect ratio, so that its longer side
is 224 and 384 (TensorFlow's Gaussian resize, σ = 0.5, radius 1.5, no antialiasing), and at its
own size. Each scale is cut into 32 × 32 patches (TensorFlow's ``SAME`` padding: zeros, split
between the sides); a patch becomes a token through a small ResNet (a weight-standardised 7 × 7
stride-2 convolution, GroupNorm, ReLU, a 3 × 3 max pool, one bottleneck unit) and a linear
embedding. A token gets the learned embedding of its hashed position (the patch grid mapped onto
a 10 × 10 grid by nearest neighbour) and of its scale; a class token goes first, a 14-layer
pre-norm transformer follows, and a linear head on the class token gives the score (for a
10-bucket checkpoint, AVA's, the mean of the softmax over ratings 1–10).

The authors pad each resized scale to a fixed token count and mask the padding out of every
attention; a masked token changes no other token's value, so here the padding is never built.
Sizes are read from the checkpoint (``*.npz``, the authors' flat ``opt/target/...`` names).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from losses.nets import weights as W

StateDict = Mapping[str, torch.Tensor]
PATCH = 32
LONGER_SIDES = (224, 384)  # the resized scales, in the authors' sorted order (scale ids 0, 1; own size 2)
GAUSSIAN_RADIUS, GAUSSIAN_SIGMA = 1.5, 0.5  # TensorFlow's GaussianKernelFunc
STEM_WIDTH = 64
PREFIX = "opt/target/"


# --- preprocessing -----------------------------------------------------------------------------


def resized_size(height: int, width: int, longer: int) -> tuple[int, int]:
    """The aspect-preserving size whose longer side is ``longer``, in TensorFlow's float32
    arithmetic (``round`` halves to even)."""
    ratio = torch.tensor(float(longer), dtype=torch.float32) / torch.tensor(float(max(height, width)), dtype=torch.float32)
    size = torch.round(torch.tensor([height, width], dtype=torch.float32) * ratio).to(torch.int64)
    return int(size[0]), int(size[1])


@functools.lru_cache(maxsize=64)
def gaussian_resize_matrix(in_length: int, out_length: int) -> torch.Tensor:
    """(out × in) weights of TensorFlow's ``scale_and_translate`` with its Gaussian kernel and
    ``antialias=False``: output x samples input position (x + ½)·in/out; the inputs whose centres
    (i + ½) lie within the kernel's radius of it are weighted exp(−d²/2σ²), then normalised.
    Positions and distances are float32 as TensorFlow computes them: the kernel is cut off at
    the radius, so a distance of 1.5 rounded either way adds or drops a tap."""
    f32 = torch.float32
    scale = torch.tensor(out_length, dtype=f32) / torch.tensor(in_length, dtype=f32)
    sample = (torch.arange(out_length, dtype=f32) + 0.5) * (1.0 / scale)
    distance = (torch.arange(in_length, dtype=f32) + 0.5)[None, :] - sample[:, None]
    squared = -(distance * distance)
    weights = torch.exp(squared.double() / (2.0 * GAUSSIAN_SIGMA**2)).to(f32) * (distance.abs() < GAUSSIAN_RADIUS)
    return (weights * (1.0 / weights.sum(dim=1, keepdim=True))).double()


def gaussian_resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, C, H, W) → (B, C, *size) with TensorFlow's Gaussian resize (in float64)."""
    rows = gaussian_resize_matrix(x.shape[-2], size[0]).to(x.device)
    cols = gaussian_resize_matrix(x.shape[-1], size[1]).to(x.device)
    return (rows @ x.double() @ cols.T).to(x.dtype)


def patches(x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """(B, C, H, W) → (B, rows·cols, C, 32, 32) patches in row-major order after TensorFlow's
    ``SAME`` padding with zeros (the padding split as floor above/left, the rest below/right)."""
    height, width = x.shape[-2:]
    rows, cols = math.ceil(height / PATCH), math.ceil(width / PATCH)
    pad_h, pad_w = rows * PATCH - height, cols * PATCH - width
    x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
    b, c = x.shape[:2]
    grid = x.view(b, c, rows, PATCH, cols, PATCH).permute(0, 2, 4, 1, 3, 5)
    return grid.reshape(b, rows * cols, c, PATCH, PATCH), rows, cols


def hashed_positions(rows: int, cols: int, grid: int) -> torch.Tensor:
    """Each patch's index in the ``grid`` × ``grid`` position table: rows and columns mapped by
    TensorFlow 1's nearest-neighbour resize (floor(i · grid / count), no half-pixel centres)."""

    def nearest(count: int) -> torch.Tensor:
        scale = torch.tensor(grid, dtype=torch.float32) / torch.tensor(count, dtype=torch.float32)
        return torch.floor(torch.arange(count, dtype=torch.float32) * scale).to(torch.int64).clamp(max=grid - 1)

    return (nearest(rows)[:, None] * grid + nearest(cols)[None, :]).flatten()


def multiscale_tokens(x: torch.Tensor, grid: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The patches of every scale of ``x`` (in [−1, 1]) with their hashed positions and scale ids:
    (B, L, C, 32, 32), (L,), (L,)."""
    height, width = x.shape[-2:]
    scales = [gaussian_resize(x, resized_size(height, width, longer)) for longer in LONGER_SIDES] + [x]
    cut, positions, scale_ids = [], [], []
    for scale_id, image in enumerate(scales):
        part, rows, cols = patches(image)
        cut.append(part)
        positions.append(hashed_positions(rows, cols, grid))
        scale_ids.append(torch.full((rows * cols,), scale_id, dtype=torch.int64))
    return torch.cat(cut, dim=1), torch.cat(positions).to(x.device), torch.cat(scale_ids).to(x.device)


# --- the network ---------------------------------------------------------------------------------


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's ``SAME`` padding of one side: (before, after)."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class StdConv(nn.Conv2d):
    """A bias-free convolution with ``SAME`` padding whose kernel is standardised per output
    channel, (w − mean) / (std + 1e-5), as the authors' ``StdConv`` does on every call."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1):
        super().__init__(cin, cout, kernel, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        mean = w.mean(dim=(1, 2, 3), keepdim=True)
        w = (w - mean) / ((w - mean).pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt() + 1e-5)
        (top, bottom), (left, right) = (same_padding(n, self.kernel_size[0], self.stride[0]) for n in x.shape[-2:])
        return F.conv2d(F.pad(x, (left, right, top, bottom)), w, stride=self.stride)


class Bottleneck(nn.Module):
    """The authors' ``ResidualUnit``: 1×1, 3×3, 1×1 (×4 channels) with GroupNorm (ε 1e-4), a
    projected shortcut."""

    def __init__(self, cin: int, features: int):
        super().__init__()
        out = features * 4
        self.conv_proj, self.gn_proj = StdConv(cin, out, 1), nn.GroupNorm(32, out, eps=1e-4)
        self.conv1, self.gn1 = StdConv(cin, features, 1), nn.GroupNorm(32, features, eps=1e-4)
        self.conv2, self.gn2 = StdConv(features, features, 3), nn.GroupNorm(32, features, eps=1e-4)
        self.conv3, self.gn3 = StdConv(features, out, 1), nn.GroupNorm(32, out, eps=1e-4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.gn_proj(self.conv_proj(x))
        x = F.relu(self.gn1(self.conv1(x)))
        x = F.relu(self.gn2(self.conv2(x)))
        return F.relu(residual + self.gn3(self.conv3(x)))


class EncoderBlock(nn.Module):
    """Pre-norm self-attention and MLP (tanh-approximated GELU, as ``flax.nn.gelu``), LayerNorm ε 1e-6."""

    def __init__(self, dim: int, heads: int, hidden: int):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.query, self.key, self.value, self.out = (nn.Linear(dim, dim) for _ in range(4))
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, tokens, dim = x.shape
        h = self.norm1(x)
        q, k, v = (proj(h).view(n, tokens, self.heads, -1).transpose(1, 2) for proj in (self.query, self.key, self.value))
        # One token per 32² patch at the image's own size: a 2048² image has ~4,300 tokens, so the
        # attention matrix is never built whole where a fused kernel can avoid it (CUDA).
        attended = F.scaled_dot_product_attention(q, k, v)
        x = x + self.out(attended.transpose(1, 2).reshape(n, tokens, dim))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x)), approximate="tanh"))


class MUSIQ(nn.Module):
    """Images (B, 3, H, W) in [0, 1] → (B,) scores."""

    def __init__(self, sizes: dict):
        super().__init__()
        dim, self.grid = sizes["dim"], sizes["grid"]
        self.conv_root, self.gn_root = StdConv(3, STEM_WIDTH, 7, 2), nn.GroupNorm(32, STEM_WIDTH, eps=1e-6)
        self.unit = Bottleneck(STEM_WIDTH, STEM_WIDTH)
        stem_side = PATCH // 4
        self.embedding = nn.Linear(STEM_WIDTH * 4 * stem_side * stem_side, dim)
        self.positions = nn.Parameter(torch.zeros(self.grid * self.grid, dim))
        self.scales = nn.Parameter(torch.zeros(sizes["scales"], dim))
        self.cls = nn.Parameter(torch.zeros(1, dim))
        self.blocks = nn.ModuleList(EncoderBlock(dim, sizes["heads"], sizes["hidden"]) for _ in range(sizes["layers"]))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, sizes["classes"])
        self.register_buffer("ratings", torch.arange(1, sizes["classes"] + 1, dtype=torch.float32), persistent=False)

    def tokens(self, patches: torch.Tensor) -> torch.Tensor:
        """(N, 3, 32, 32) patches → (N, dim) embeddings; the ResNet's output flattened as (h, w, c)."""
        x = F.relu(self.gn_root(self.conv_root(patches)))
        (top, bottom), (left, right) = (same_padding(n, 3, 2) for n in x.shape[-2:])
        x = F.max_pool2d(F.pad(x, (left, right, top, bottom), value=float("-inf")), 3, 2)
        return self.embedding(self.unit(x).permute(0, 2, 3, 1).flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cut, positions, scale_ids = multiscale_tokens(x * 2 - 1, self.grid)
        b, length = cut.shape[:2]
        h = self.tokens(cut.flatten(0, 1)).view(b, length, -1) + self.positions[positions] + self.scales[scale_ids]
        h = torch.cat([self.cls.expand(b, 1, -1), h], dim=1)
        for block in self.blocks:
            h = block(h)
        logits = self.head(self.norm(h)[:, 0])
        return logits[:, 0] if logits.shape[1] == 1 else logits.softmax(dim=-1) @ self.ratings


# --- the checkpoint --------------------------------------------------------------------------------

# The authors' names (after ``opt/target/``) → this module's, with the array's layout change:
# flax kernels are (kh, kw, in, out) and (in, out); attention's (in, heads, d) and (heads, d, out).
CONV, DENSE, HEADS_IN, HEADS_OUT, SAME, ROW, FLAT = "conv", "dense", "heads_in", "heads_out", "same", "row", "flat"


def key_map(layers: int) -> dict[str, tuple[str, str]]:
    names = {"conv_root/kernel": ("conv_root.weight", CONV)}
    names.update({f"gn_root/{leaf}": (f"gn_root.{ours}", SAME) for leaf, ours in (("scale", "weight"), ("bias", "bias"))})
    for part in ("_proj", "1", "2", "3"):
        names[f"block1/unit1/conv{part}/kernel"] = (f"unit.conv{part}.weight", CONV)
        for leaf, ours in (("scale", "weight"), ("bias", "bias")):
            names[f"block1/unit1/gn{part}/{leaf}"] = (f"unit.gn{part}.{ours}", SAME)
    names.update(
        {
            "embedding/kernel": ("embedding.weight", DENSE),
            "embedding/bias": ("embedding.bias", SAME),
            "Transformer/posembed_input/pos_embedding": ("positions", ROW),
            "Transformer/scaleembed_input/scale_embedding": ("scales", ROW),
            "Transformer/cls": ("cls", ROW),
            "Transformer/encoder_norm/scale": ("norm.weight", SAME),
            "Transformer/encoder_norm/bias": ("norm.bias", SAME),
            "head/kernel": ("head.weight", DENSE),
            "head/bias": ("head.bias", SAME),
        }
    )
    for i in range(layers):
        block, ours = f"Transformer/encoderblock_{i}/", f"blocks.{i}."
        for flax_norm, norm in (("LayerNorm_0", "norm1"), ("LayerNorm_2", "norm2")):
            names[f"{block}{flax_norm}/scale"] = (f"{ours}{norm}.weight", SAME)
            names[f"{block}{flax_norm}/bias"] = (f"{ours}{norm}.bias", SAME)
        for proj in ("query", "key", "value", "out"):
            names[f"{block}SelfAttention_1/{proj}/kernel"] = (f"{ours}{proj}.weight", HEADS_OUT if proj == "out" else HEADS_IN)
            names[f"{block}SelfAttention_1/{proj}/bias"] = (f"{ours}{proj}.bias", FLAT)
        for dense, fc in (("Dense_0", "fc1"), ("Dense_1", "fc2")):
            names[f"{block}MlpBlock_3/{dense}/kernel"] = (f"{ours}{fc}.weight", DENSE)
            names[f"{block}MlpBlock_3/{dense}/bias"] = (f"{ours}{fc}.bias", SAME)
    return names


def to_torch(array: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == CONV:
        return array.permute(3, 2, 0, 1)
    if layout == DENSE:
        return array.T
    if layout == HEADS_IN:  # (in, heads, d) → (heads·d, in)
        return array.reshape(array.shape[0], -1).T
    if layout == HEADS_OUT:  # (heads, d, out) → (out, heads·d)
        return array.reshape(-1, array.shape[-1]).T
    if layout == FLAT:  # a query, key or value bias (heads, d) → (heads·d,)
        return array.reshape(-1)
    if layout == ROW:  # (1, n, dim) → (n, dim)
        return array.reshape(-1, array.shape[-1])
    return array


def architecture(state: StateDict) -> dict:
    """The sizes a checkpoint (the authors' names, ``opt/target/`` prefix) was built with."""
    try:
        query = state[PREFIX + "Transformer/encoderblock_0/SelfAttention_1/query/kernel"]
        layers = len({k.split("/")[3] for k in state if k.startswith(PREFIX + "Transformer/encoderblock_")})
        return dict(
            dim=state[PREFIX + "embedding/kernel"].shape[1],
            heads=query.shape[1],
            hidden=state[PREFIX + "Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel"].shape[1],
            layers=layers,
            grid=math.isqrt(state[PREFIX + "Transformer/posembed_input/pos_embedding"].shape[1]),
            scales=state[PREFIX + "Transformer/scaleembed_input/scale_embedding"].shape[1],
            classes=state[PREFIX + "head/kernel"].shape[1],
        )
    except KeyError as exc:
        raise W.WeightsError(f"MUSIQ checkpoint: missing key {exc.args[0]!r} (is this one of the authors' MUSIQ .npz files?)") from None


# The authors' MUSIQ: 384-d tokens, 6 heads, MLP 1152, 14 layers, a 10 × 10 position grid, 3 scales.
AUTHORS_SIZES = dict(dim=384, heads=6, hidden=1152, layers=14, grid=10, scales=3, classes=1)


def load_musiq(state: StateDict | None, classes: int = 1) -> MUSIQ:
    """MUSIQ with ``state`` loaded (every key, by the authors' name), or seeded random weights of
    the authors' sizes when ``state`` is None (explicit opt-in only)."""
    if state is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return MUSIQ(dict(AUTHORS_SIZES, classes=classes))
    sizes = architecture(state)
    names = key_map(sizes["layers"])
    given = {k.removeprefix(PREFIX) for k in state if k.startswith(PREFIX)}
    missing, unexpected = sorted(set(names) - given), sorted(given - set(names))
    if missing or unexpected:
        raise W.WeightsError(f"MUSIQ checkpoint: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}")
    model = MUSIQ(sizes)
    model.load_state_dict({ours: to_torch(state[PREFIX + theirs], layout) for theirs, (ours, layout) in names.items()})
    return model
