"""InceptionV3 as FID and KID use it: the 2015-12-05 TensorFlow graph ported to PyTorch.

The network is torchvision's ``Inception3`` with the four block types the TensorFlow graph
computes differently (the port pytorch-fid and torch-fidelity both load):

- average pooling inside the A, C and E blocks leaves the zero padding out of the mean
  (``count_include_pad=False``), as TensorFlow's average pool does;
- the last E block (``Mixed_7c``) pools its fourth branch with a 3×3 max pool, not an average.

Three input handlings, one per tool whose FID/KID numbers papers print; each is a "layer" of
this backbone (``pool3``, ``pool3_clean_fid``, ``pool3_pytorch_fid``), all the same network and
``pool3`` (``Mixed_7c`` averaged over space, 2048 values per image):

- ``pool3``, torch-fidelity's ``FeatureExtractorInceptionV3`` (the TensorFlow reference's): images
  in [0, 1] to the 0–255 scale, resized to 299×299 with TensorFlow 1.x bilinear sampling
  (``tf1_bilinear_resize``, no antialiasing) in float32, mapped by ``(x − 128) / 128``;
- ``pool3_clean_fid``, clean-fid's "clean" mode (pyiqa's default): 8-bit pixels, each channel
  resized by PIL's bicubic filter in float32 mode 'F' (antialiased), clipped to [0, 255], mapped
  by ``(x − 128) / 128``;
- ``pool3_pytorch_fid``, pytorch-fid's ``InceptionV3``: images in [0, 1] resized by PyTorch's
  bilinear interpolation (``align_corners=False``, no antialiasing), mapped by ``2x − 1``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from losses.nets.backbones import Backbone, BackboneSpec, StateDict, _seeded_init, load_into_empty, register_backbone, to_rgb
from losses.nets.weight_files import FID_INCEPTION_FILE

INPUT_SIDE = 299
POOL3_DIM = 2048


def tf1_bilinear_resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """TensorFlow 1.x ``resize_bilinear`` with ``align_corners=False``: output pixel i samples the
    input at i · (in / out), with no half-pixel offset (PyTorch's bilinear samples at
    (i + ½) · in / out − ½), clamping the upper neighbour at the last row or column."""

    def taps(length_in: int, length_out: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        position = torch.arange(length_out, dtype=x.dtype, device=x.device) * torch.tensor(length_in / length_out, dtype=torch.float32)
        low = position.long()
        return low, (low + 1).clamp_max(length_in - 1), position - low.to(x.dtype)

    rows_low, rows_high, row_weight = taps(x.shape[-2], size[0])
    cols_low, cols_high, col_weight = taps(x.shape[-1], size[1])
    top, bottom = x[..., rows_low, :], x[..., rows_high, :]

    def along_columns(h: torch.Tensor) -> torch.Tensor:
        left, right = h[..., cols_low], h[..., cols_high]
        return left + (right - left) * col_weight

    upper, lower = along_columns(top), along_columns(bottom)
    return upper + (lower - upper) * row_weight[:, None]


def torch_fidelity_input(x: torch.Tensor) -> torch.Tensor:
    """torch-fidelity: [0, 1] → 0–255, TF1 bilinear to 299², (x − 128) / 128."""
    return (tf1_bilinear_resize(x * 255.0, (INPUT_SIDE, INPUT_SIDE)) - 128) / 128


def clean_fid_input(x: torch.Tensor) -> torch.Tensor:
    """clean-fid's "clean" mode: 8-bit pixels (as it reads files), each channel resized by PIL's
    bicubic in float32 mode 'F', clipped to [0, 255], then (x − 128) / 128."""
    from PIL import Image

    pixels = (x.detach() * 255.0).round().clamp(0, 255).to("cpu", torch.float32).numpy()
    resized = np.empty((*pixels.shape[:2], INPUT_SIDE, INPUT_SIDE), dtype=np.float32)
    for index in np.ndindex(*pixels.shape[:2]):
        channel = Image.fromarray(pixels[index], mode="F").resize((INPUT_SIDE, INPUT_SIDE), resample=Image.BICUBIC)
        resized[index] = np.asarray(channel).clip(0, 255)
    return (torch.from_numpy(resized).to(x.device) - 128) / 128


def pytorch_fid_input(x: torch.Tensor) -> torch.Tensor:
    """pytorch-fid: PyTorch bilinear to 299² (align_corners=False), then 2x − 1."""
    return 2 * F.interpolate(x, size=(INPUT_SIDE, INPUT_SIDE), mode="bilinear", align_corners=False) - 1


INPUT_HANDLING = {"pool3": torch_fidelity_input, "pool3_clean_fid": clean_fid_input, "pool3_pytorch_fid": pytorch_fid_input}


def _tf_avg_pool(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


def _fid_blocks():
    """torchvision's Inception blocks with the TensorFlow graph's pooling (module docstring)."""
    from torchvision.models.inception import InceptionA, InceptionC, InceptionE

    class FIDInceptionA(InceptionA):
        def forward(self, x):
            branches = [self.branch1x1(x), self.branch5x5_2(self.branch5x5_1(x))]
            branches.append(self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))))
            branches.append(self.branch_pool(_tf_avg_pool(x)))
            return torch.cat(branches, 1)

    class FIDInceptionC(InceptionC):
        def forward(self, x):
            seven = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
            double = self.branch7x7dbl_1(x)
            for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
                double = layer(double)
            return torch.cat([self.branch1x1(x), seven, double, self.branch_pool(_tf_avg_pool(x))], 1)

    class FIDInceptionE(InceptionE):
        pool = staticmethod(_tf_avg_pool)

        def forward(self, x):
            three = self.branch3x3_1(x)
            three = torch.cat([self.branch3x3_2a(three), self.branch3x3_2b(three)], 1)
            double = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
            double = torch.cat([self.branch3x3dbl_3a(double), self.branch3x3dbl_3b(double)], 1)
            return torch.cat([self.branch1x1(x), three, double, self.branch_pool(self.pool(x))], 1)

    class FIDInceptionEMaxPool(FIDInceptionE):
        pool = staticmethod(lambda x: F.max_pool2d(x, kernel_size=3, stride=1, padding=1))

    return FIDInceptionA, FIDInceptionC, FIDInceptionE, FIDInceptionEMaxPool


def fid_inception_v3() -> nn.Module:
    """The FID network: torchvision ``Inception3`` (1008 classes as in the TensorFlow graph, no
    auxiliary head, no input transform) with the TensorFlow-compatible blocks swapped in."""
    from torchvision.models.inception import Inception3

    block_a, block_c, block_e, block_e_max = _fid_blocks()
    model = Inception3(num_classes=1008, aux_logits=False, transform_input=False, init_weights=False)
    model.Mixed_5b = block_a(192, pool_features=32)
    model.Mixed_5c = block_a(256, pool_features=64)
    model.Mixed_5d = block_a(288, pool_features=64)
    model.Mixed_6b = block_c(768, channels_7x7=128)
    model.Mixed_6c = block_c(768, channels_7x7=160)
    model.Mixed_6d = block_c(768, channels_7x7=160)
    model.Mixed_6e = block_c(768, channels_7x7=192)
    model.Mixed_7b = block_e(1280)
    model.Mixed_7c = block_e_max(2048)
    return model


# The stages up to pool3 in forward order (``Inception3.forward`` also runs dropout and fc).
STAGES = (
    "Conv2d_1a_3x3",
    "Conv2d_2a_3x3",
    "Conv2d_2b_3x3",
    "maxpool1",
    "Conv2d_3b_1x1",
    "Conv2d_4a_3x3",
    "maxpool2",
    "Mixed_5b",
    "Mixed_5c",
    "Mixed_5d",
    "Mixed_6a",
    "Mixed_6b",
    "Mixed_6c",
    "Mixed_6d",
    "Mixed_6e",
    "Mixed_7a",
    "Mixed_7b",
    "Mixed_7c",
    "avgpool",
)


class InceptionFeatures(Backbone):
    """The FID InceptionV3's ``pool3`` features of images in [0, 1], as (B, 2048, 1, 1) maps."""

    def __init__(self, spec: BackboneSpec, model: nn.Module):
        super().__init__(spec)
        self.model = model
        self.freeze()

    def stream(self, x: torch.Tensor, layers: Iterable[str], normalize: bool = True) -> Iterator[tuple[str, torch.Tensor]]:
        """``pool3`` under each requested input handling (the module docstring; ``normalize`` does
        not apply: each tool's scaling is part of it), in float32 even under autocast."""
        # float32 whatever the caller's autocast (the server's --precision): FID and KID are
        # defined on the float32 features the tools compute, and 16-bit ones shift them.
        with torch.autocast(x.device.type, enabled=False):
            for layer in self.check_layers(layers):
                h = INPUT_HANDLING[layer](to_rgb(x).float())
                for stage in STAGES:
                    h = getattr(self.model, stage)(h)
                yield layer, h


def build_fid_inception(spec: BackboneSpec, state: StateDict | None) -> InceptionFeatures:
    """The FID network with ``pt_inception-2015-12-05-6726825d.pth`` (pytorch-fid's and
    torch-fidelity's file; its ``fc`` is loaded too, so a checkpoint must be the whole network)."""
    model = _seeded_init(fid_inception_v3) if state is None else load_into_empty(fid_inception_v3, dict(state))
    return InceptionFeatures(spec, model)


FID_INCEPTION = register_backbone(
    BackboneSpec(
        "inception_v3_fid",
        build_fid_inception,
        tuple(INPUT_HANDLING),
        FID_INCEPTION_FILE,
        description="InceptionV3 2015-12-05 pool3 (FID/KID), TensorFlow 1.x input handling",
    )
)
