"""Clips: per-frame metrics averaged as BasicSR's video validation averages them, and the temporal
metrics of TecoGAN (Chu et al., "Learning Temporal Coherence via Self-Supervision for GAN-based
Video Generation", 2020), exact to its ``metrics.py``.

- ``tof``: for each pair of consecutive frames, the Farnebäck optical flow of GT and of SR
  (OpenCV, ``calcOpticalFlowFarneback(prev, cur, None, 0.5, 3, 15, 3, 5, 1.2, 0)`` on
  ``COLOR_RGB2GRAY`` uint8 frames), both cropped by ``crop_8x8``; the mean over pixels of the
  L2 norm of their difference. Lower is better.
- ``tlp``: 100 · |LPIPS-Alex(gt[t−1], gt[t]) − LPIPS-Alex(sr[t−1], sr[t])| on ``crop_8x8`` frames.
  Lower is better.

TecoGAN leaves out ``skip`` = 2 frames at each end of a clip (its ``cutfr``): the temporal
metrics are over the pairs (t−1, t) with skip < t < T − skip. ``skip`` is an option of these two
entries, and ``ClipFrames.pairs`` is the one place it is applied.

This module declares the clip metrics (``CLIP_SPECS``); the registry turns each into a catalogue
entry of kind ``clip``, and ``losses.clips.scoring.score_clip`` runs them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from losses.clips import vmaf as libvmaf
from losses.lpips_loss import LPIPS_HEADS, LPIPS_TERMS, lpips_per_sample
from losses.nets.features import ImageBatch, LayerTerm
from losses.nets.weights import WeightSpec
from losses.psnr_ssim import psnr

TECOGAN_SKIP = 2
FARNEBACK = dict(pyr_scale=0.5, levels=3, winsize=15, iterations=3, poly_n=5, poly_sigma=1.2, flags=0)


def crop_8x8(height: int, width: int) -> tuple[slice, slice]:
    """TecoGAN's centred crop to multiples of 32 with at least 8 pixels cut from each side."""
    h, w = height // 32 * 32, width // 32 * 32
    while h > height - 16:
        h -= 32
    while w > width - 16:
        w -= 32
    top, left = (height - h) // 2, (width - w) // 2
    return slice(top, top + h), slice(left, left + w)


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    """(T, 3, H, W) in [0, 1] (or uint8) → (T, H, W, 3) uint8, the 8-bit frames TecoGAN reads from PNGs."""
    if frames.dtype != torch.uint8:
        frames = (frames.detach().to("cpu", torch.float64).clamp(0, 1) * 255.0).round().to(torch.uint8)
    return frames.cpu().permute(0, 2, 3, 1).numpy()


def as_unit(frames: torch.Tensor) -> torch.Tensor:
    """uint8 frames (as a video decodes) as float32 in [0, 1]; float frames as they are."""
    return frames.float() / 255.0 if frames.dtype == torch.uint8 else frames


def flow_differences(sr: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Per consecutive pair (t−1, t) of (T, H, W, 3) uint8 clips: tOF, the mean L2 norm of GT's flow minus SR's."""
    import cv2

    rows, cols = crop_8x8(*sr.shape[1:3])
    grey = {name: [cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY) for frame in clip] for name, clip in (("sr", sr), ("gt", gt))}
    values = []
    for t in range(1, len(sr)):
        flows = [cv2.calcOpticalFlowFarneback(grey[name][t - 1], grey[name][t], None, **FARNEBACK)[rows, cols] for name in ("gt", "sr")]
        difference = np.abs(flows[0] - flows[1])
        values.append(float(np.sqrt(np.sum(difference * difference, axis=-1)).mean()))
    return np.array(values)


def lpips_differences(sr: torch.Tensor, gt: torch.Tensor, lpips_alex) -> np.ndarray:
    """Per consecutive pair: tLP = 100·|LPIPS(gt[t−1], gt[t]) − LPIPS(sr[t−1], sr[t])| on crop_8x8 frames.
    ``lpips_alex(x, y)`` gives per-pair LPIPS-Alex (B,) of two (B, 3, H, W) batches."""
    rows, cols = crop_8x8(*sr.shape[-2:])
    sr, gt = sr[..., rows, cols], gt[..., rows, cols]
    target = lpips_alex(gt[:-1], gt[1:])
    output = lpips_alex(sr[:-1], sr[1:])
    return ((target - output).abs() * 100.0).double().cpu().numpy()


@dataclass(frozen=True)
class ClipFrames:
    """One clip as the clip metrics read it: (T, C, H, W) frames in [0, 1] or uint8, the chunk size
    that bounds what is float32 at once, and the backbones of the scoring call."""

    sr: torch.Tensor
    gt: torch.Tensor
    chunk: int
    backbone: Callable[[str], Any]
    # The video files the frames were decoded from ({"sr": path, "gt": path}), where there are:
    # VMAF then reads their planes as decoded, with no RGB round trip.
    sources: Mapping[str, Any] | None = None

    def pairs(self, skip: int) -> list[slice]:
        """The frame indices t of the pairs (t−1, t) with skip < t < T − skip, in chunks."""
        first, last = skip + 1, len(self.sr) - skip
        return [slice(start, min(start + self.chunk, last)) for start in range(first, last, self.chunk)]


@dataclass(frozen=True)
class ClipValues:
    """A clip metric's values: one per frame (``pairs`` False) or per pair (t−1, t), with each value's frame t."""

    values: np.ndarray
    frames: list[int]
    pairs: bool
    details: dict | None = None


@dataclass(frozen=True)
class ClipSpec:
    """A metric of a whole clip: its catalogue fields, its options, what it reads besides pixels
    (``terms``: backbone layers; ``weights``), why it cannot run here (``missing``), and whether it
    may run on a worker thread beside the backbones (``background``: it releases the GIL)."""

    name: str
    lower_is_better: bool
    description: str
    convention: str
    run: Callable[[ClipFrames, Mapping[str, Any]], ClipValues]
    options: Mapping[str, Any] = field(default_factory=dict)
    terms: tuple[LayerTerm, ...] = ()
    weights: tuple[WeightSpec, ...] = ()
    missing: Callable[[], str | None] = lambda: None
    background: bool = False


def _pair_indices(parts: list[slice]) -> list[int]:
    return [t for part in parts for t in range(part.start, part.stop)]


def tof_values(clip: ClipFrames, options: Mapping[str, Any]) -> ClipValues:
    parts = clip.pairs(options["skip"])
    values = [flow_differences(to_uint8(clip.sr[p.start - 1 : p.stop]), to_uint8(clip.gt[p.start - 1 : p.stop])) for p in parts]
    return ClipValues(np.concatenate(values or [np.empty(0)]), _pair_indices(parts), pairs=True)


def tlp_values(clip: ClipFrames, options: Mapping[str, Any]) -> ClipValues:
    term = LPIPS_TERMS["alex"]

    def lpips_alex(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return lpips_per_sample(ImageBatch({"sr": x, "gt": y}, clip.backbone, [term]), term)

    parts = clip.pairs(options["skip"])
    values = [lpips_differences(as_unit(clip.sr[p.start - 1 : p.stop]), as_unit(clip.gt[p.start - 1 : p.stop]), lpips_alex) for p in parts]
    return ClipValues(np.concatenate(values or [np.empty(0)]), _pair_indices(parts), pairs=True)


def tecogan_frames(clip: ClipFrames, skip: int) -> list[int]:
    """The frames TecoGAN's loop scores: cutfr ≤ t < T − cutfr."""
    return list(range(skip, len(clip.sr) - skip))


def _cropped(frames: torch.Tensor) -> torch.Tensor:
    rows, cols = crop_8x8(*frames.shape[-2:])
    return as_unit(frames)[..., rows, cols]


def tecogan_psnr_values(clip: ClipFrames, options: Mapping[str, Any]) -> ClipValues:
    """TecoGAN's ``psnr``: DUF's Y (BT.601, 16 + 65.481/255·R + …) of the 8-bit crop_8x8 frames, float64."""
    frames = tecogan_frames(clip, options["skip"])
    values = [psnr(_cropped(clip.sr[t : t + 1]), _cropped(clip.gt[t : t + 1]), y_channel=True) for t in frames]
    return ClipValues(torch.cat(values).numpy() if values else np.empty(0), frames, pairs=False)


def tecogan_lpips_values(clip: ClipFrames, options: Mapping[str, Any]) -> ClipValues:
    """TecoGAN's LPIPS column: LPIPS-Alex of the crop_8x8 frames (as its tLP reads them)."""
    term = LPIPS_TERMS["alex"]
    frames = tecogan_frames(clip, options["skip"])
    values = []
    for start in range(0, len(frames), clip.chunk):
        part = frames[start : start + clip.chunk]
        sr, gt = _cropped(clip.sr[part[0] : part[-1] + 1]), _cropped(clip.gt[part[0] : part[-1] + 1])
        with torch.inference_mode():
            values.append(lpips_per_sample(ImageBatch({"sr": sr, "gt": gt}, clip.backbone, [term]), term).double().cpu().numpy())
    return ClipValues(np.concatenate(values) if values else np.empty(0), frames, pairs=False)


def vmaf_values(clip: ClipFrames, options: Mapping[str, Any], name: str) -> ClipValues:
    """VMAF (model ``name``) of every frame: of the source videos' planes where the clip has them, else of its frames."""
    if clip.sources:
        values, details = libvmaf.vmaf_of_videos(clip.sources["sr"], clip.sources["gt"], name)
    else:
        values, details = libvmaf.vmaf(to_uint8(clip.sr), to_uint8(clip.gt), name)
    return ClipValues(values, list(range(len(values))), pairs=False, details=details)


def _libvmaf_missing() -> str | None:
    return None if libvmaf.ffmpeg_with_libvmaf() is not None else f"needs FFmpeg with libvmaf: {libvmaf.INSTALL_HINT}"


CLIP_SPECS = {
    spec.name: spec
    for spec in (
        ClipSpec(
            "tof",
            True,
            "temporal: mean L2 norm of GT's minus SR's Farnebäck flow between consecutive frames",
            "TecoGAN metrics.py: OpenCV calcOpticalFlowFarneback (0.5, 3, 15, 3, 5, 1.2, 0) of COLOR_RGB2GRAY 8-bit frames, "
            "crop_8x8, skip frames left out at each end",
            tof_values,
            options=dict(skip=TECOGAN_SKIP),
            background=True,
        ),
        ClipSpec(
            "tlp",
            True,
            "temporal: 100·|LPIPS-Alex(gt[t−1], gt[t]) − LPIPS-Alex(sr[t−1], sr[t])|",
            "TecoGAN metrics.py on crop_8x8 frames, LPIPS v0.1 AlexNet, skip frames left out at each end",
            tlp_values,
            options=dict(skip=TECOGAN_SKIP),
            terms=(LPIPS_TERMS["alex"],),
            weights=(LPIPS_HEADS["alex"],),
        ),
        ClipSpec(
            "tecogan_psnr",
            False,
            "PSNR as TecoGAN's metrics.py: Y of crop_8x8 frames, the frames skip ≤ t < T − skip",
            "TecoGAN metrics.py psnr (DUF's BT.601 Y on the 0–255 scale, 20·log10(255/RMSE)) on crop_8x8 frames, "
            "cutfr = skip frames left out at each end",
            tecogan_psnr_values,
            options=dict(skip=TECOGAN_SKIP),
        ),
        ClipSpec(
            "tecogan_lpips",
            True,
            "LPIPS-Alex as TecoGAN's metrics.py: crop_8x8 frames, the frames skip ≤ t < T − skip",
            "TecoGAN metrics.py LPIPS column on crop_8x8 frames, LPIPS v0.1 AlexNet (as tlp), cutfr = skip",
            tecogan_lpips_values,
            options=dict(skip=TECOGAN_SKIP),
            terms=(LPIPS_TERMS["alex"],),
            weights=(LPIPS_HEADS["alex"],),
        ),
        *(
            ClipSpec(
                name,
                False,
                f"VMAF ({model}) per frame and per clip, Netflix's libvmaf through FFmpeg",
                "FFmpeg's libvmaf filter: on the source videos' decoded planes as they are (the same pixel format, bit depth "
                "and range required of both); on frames, yuv420p by FFmpeg's default BT.601 limited conversion",
                functools.partial(vmaf_values, name=name),
                missing=_libvmaf_missing,
            )
            for name, model in libvmaf.VMAF_MODELS.items()
        ),
    )
}
