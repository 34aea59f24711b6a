"""The conventions record: everything a score depends on besides the pixels, so that a number
can be reproduced years later (each metric's resolved options and convention, the pixel
conventions, the weight files with their sha256, device, precision, versions, date).
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from losses.nets import weights as W
from losses.nets.backbones import backbone_spec
from losses.psnr_ssim import Y_OFFSET, Y_WEIGHTS
from losses.registry import Metric

PIXEL_CONVENTION = {
    "data_range": "images decoded to [0, 1] (8-bit / 255, 16-bit / 65535); PSNR, SSIM, MS-SSIM and LR-PSNR "
    "on the [0, 255] scale in float64, without rounding (lr_psnr's uint8_rounding: SR and LR read "
    "as 8-bit and the downscale rounded after each pass, as the NTIRE 2022 scorer)",
    "y_channel": f"Y = {Y_OFFSET:g} + {Y_WEIGHTS[0]}·R + {Y_WEIGHTS[1]}·G + {Y_WEIGHTS[2]}·B with R, G, B in [0, 1] "
    "(ITU-R BT.601 studio swing, MATLAB rgb2ycbcr), unrounded",
    "crop_border": "pixels removed from every edge before PSNR/SSIM/MS-SSIM (LR pixels for lr_psnr)",
}


def package_version() -> str:
    try:
        return importlib.metadata.version("loss-service")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def file_record(path: Path) -> dict[str, str]:
    return dict(file=path.name, sha256=W.file_sha256(path))


def weight_files(metrics: Sequence[Metric], resolved: Mapping[str, dict], pretrained: bool, weights_dir=None) -> dict[str, dict]:
    """Backbone checkpoints and per-metric weight files (LPIPS heads, DISTS α/β) the metrics read."""
    record: dict[str, dict] = {}
    for backbone in sorted({b for m in metrics for b in m.backbones(resolved[m.name])}):
        if pretrained:
            record[backbone] = file_record(W.resolve(backbone_spec(backbone).weights, weights_dir))
        else:
            record[backbone] = dict(file=None, sha256=None, note="random weights (pretrained=False)")
    for metric in metrics:
        for spec in metric.weights:
            record[spec.name] = file_record(W.resolve(spec, weights_dir))
    return record


AVERAGING = {
    "image": "one value per image",
    "clip": "per clip: the mean over its frames (frame metrics, vmaf) or over its pairs of frames (tof, tlp, after skip); "
    "over clips: BasicSR's mean of the clips' means (losses.dataset_means)",
    "set": "one value per pair of sets, from each set's features",
}


def conventions(
    metrics: Sequence[Metric],
    resolved: Mapping[str, dict],
    *,
    device: Any = "cpu",
    precision: str = "fp32",
    pretrained: bool = True,
    weights_dir=None,
    clip: bool = False,
) -> dict[str, Any]:
    """The record for scoring ``metrics`` with ``resolved`` options (see ``registry.resolve_options``);
    ``clip``: the metrics score the frames of a clip. The one writer of the record: the library, the
    server and ``eval`` all take theirs from here."""
    return dict(
        package="loss-service",
        version=package_version(),
        torch=torch.__version__,
        date=datetime.now(UTC).isoformat(timespec="seconds"),
        device=str(device),
        precision=precision,
        pretrained=pretrained,
        metrics={
            m.name: dict(
                options=dict(resolved[m.name]),
                lower_is_better=m.lower_is_better,
                convention=m.convention,
                backbones=sorted(m.backbones(resolved[m.name])),
                weights=sorted({*m.backbones(resolved[m.name]), *(spec.name for spec in m.weights)}),
            )
            for m in metrics
        },
        averaging={kind: AVERAGING[kind] for kind in AVERAGING if kind in {m.kind for m in metrics} | ({"clip"} if clip else set())},
        pixels=PIXEL_CONVENTION,
        weights=weight_files(metrics, resolved, pretrained, weights_dir),
    )
