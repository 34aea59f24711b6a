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
metrics are over the pairs (t−1, t) with skip < t < T − skip. Frames run through the library in
chunks, so a long clip never sits in memory as float32 all at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

TEMPORAL_METRICS = ("tof", "tlp")


def _libvmaf_missing() -> str | None:
    from .vmaf import INSTALL_HINT, ffmpeg_with_libvmaf

    return None if ffmpeg_with_libvmaf() is not None else f"needs FFmpeg with libvmaf: {INSTALL_HINT}"


@dataclass(frozen=True)
class ClipMetric:
    """A metric of a whole clip, outside the per-image registry: its catalogue entry and what it
    needs beyond the library (``missing()``: why it cannot run here, or None)."""

    name: str
    lower_is_better: bool
    description: str
    convention: str
    backbone: str | None = None
    missing: Callable[[], str | None] = lambda: None

    def catalogue_entry(self) -> dict:
        reason = self.missing()
        return dict(
            name=self.name,
            lower_is_better=self.lower_is_better,
            needs=["sr", "gt"],
            options={"skip": TECOGAN_SKIP} if self.name in TEMPORAL_METRICS else {},
            backbone=self.backbone,
            description=self.description,
            convention=self.convention,
            dataset=False,
            clip=True,
            available=reason is None,
            unavailable_reason=reason,
        )


CLIP_CATALOGUE = {
    metric.name: metric
    for metric in (
        ClipMetric(
            "tof",
            True,
            "temporal: mean L2 norm of GT's minus SR's Farnebäck flow between consecutive frames",
            "TecoGAN metrics.py: OpenCV calcOpticalFlowFarneback on RGB2GRAY frames, crop_8x8, 2 frames skipped at each end",
        ),
        ClipMetric(
            "tlp",
            True,
            "temporal: 100·|LPIPS-Alex(gt[t−1], gt[t]) − LPIPS-Alex(sr[t−1], sr[t])|",
            "TecoGAN metrics.py on crop_8x8 frames, LPIPS v0.1 AlexNet, 2 frames skipped at each end",
            backbone="alexnet",
        ),
        *(
            ClipMetric(
                name,
                False,
                f"VMAF ({model}) per frame and per clip, Netflix's libvmaf through FFmpeg",
                "FFmpeg libvmaf filter on yuv420p frames (FFmpeg's default BT.601 limited conversion)",
                missing=_libvmaf_missing,
            )
            for name, model in (("vmaf", "vmaf_v0.6.1"), ("vmaf_neg", "vmaf_v0.6.1neg"))
        ),
    )
}
# Metrics of a whole clip that are not in the per-image registry: the temporal ones, and VMAF.
CLIP_METRICS = tuple(CLIP_CATALOGUE)
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


def chunks(length: int, size: int) -> Iterable[slice]:
    for start in range(0, length, size):
        yield slice(start, min(start + size, length))


def score_clip(
    sr: torch.Tensor,
    gt: torch.Tensor,
    lr: torch.Tensor | None = None,
    metrics: Sequence[str] = ("psnr", "ssim", "tof", "tlp"),
    skip: int = TECOGAN_SKIP,
    chunk: int = 16,
    device=None,
    pretrained: bool = True,
    weights_dir=None,
    overlap_flow: bool = True,
    **options: Any,
) -> dict:
    """Score one clip, (T, C, H, W) frames in [0, 1] or uint8 (``lr`` frames may be smaller); uint8
    frames become float32 a chunk at a time, so a long clip never sits in memory as float32.

    Returns ``per_frame`` ({metric: (T,) array} for the frame metrics, computed on every frame),
    ``temporal`` ({metric: array} for tof/tlp, one value per pair (t−1, t) with skip < t < T − skip),
    ``frames`` ({metric: the frame index t of each value}), ``per_clip`` (each metric's mean) and
    ``details`` (how VMAF was computed: model, libvmaf version, YUV conversion). ``vmaf`` and
    ``vmaf_neg`` run FFmpeg's libvmaf on the whole clip's 8-bit frames.

    With ``overlap_flow`` tOF's optical flows (OpenCV, which releases the GIL) run on a worker
    thread while the backbones score the frames; the values are the same either way.
    """
    from .api import score

    names = [metrics] if isinstance(metrics, str) else list(metrics)
    temporal = [name for name in names if name in TEMPORAL_METRICS]
    framewise = [name for name in names if name not in CLIP_METRICS]
    if sr.shape != gt.shape or sr.ndim != 4:
        raise ValueError(f"sr and gt must be (T, C, H, W) clips of one shape, got {tuple(sr.shape)} and {tuple(gt.shape)}")
    frames = sr.shape[0]
    first, last = skip + 1, frames - skip  # pairs (t−1, t) for first ≤ t < last
    flows = None
    if "tof" in temporal:

        def tof_parts() -> list[np.ndarray]:
            return [
                flow_differences(to_uint8(sr[p.start - 1 : p.stop]), to_uint8(gt[p.start - 1 : p.stop])) for p in _pairs(first, last, chunk)
            ]

        flows = _started(tof_parts, overlap_flow)
    per_frame: dict[str, list[float]] = {}
    setup = dict(device=device, pretrained=pretrained, weights_dir=weights_dir)
    for part in chunks(frames, chunk) if framewise else ():
        images = dict(sr=as_unit(sr[part]), gt=as_unit(gt[part]), lr=None if lr is None else as_unit(lr[part]))
        with torch.inference_mode():
            values = score(**images, metrics=framewise, **setup, **options)
        for name, value in values.items():
            per_frame.setdefault(name, []).extend(value.double().cpu().tolist())
    details = {}
    for name in (name for name in names if name in ("vmaf", "vmaf_neg")):
        from .vmaf import vmaf

        values, details[name] = vmaf(to_uint8(sr), to_uint8(gt), name)
        per_frame[name] = values.tolist()
    indices = list(range(first, last))
    results: dict[str, np.ndarray] = {}
    if "tlp" in temporal:
        results["tlp"] = np.concatenate(
            [
                lpips_differences(as_unit(sr[p.start - 1 : p.stop]), as_unit(gt[p.start - 1 : p.stop]), _lpips_alex(setup))
                for p in _pairs(first, last, chunk)
            ]
            or [np.empty(0)]
        )
    if flows is not None:
        results = {"tof": np.concatenate(flows.result() or [np.empty(0)]), **results}
    clip = {name: float(np.mean(values)) for name, values in per_frame.items()}
    clip.update({name: float(np.mean(values)) if len(values) else float("nan") for name, values in results.items()})
    return dict(
        per_frame={name: np.array(values) for name, values in per_frame.items()},
        temporal=results,
        frames={**{name: list(range(frames)) for name in per_frame}, **{name: indices for name in results}},
        per_clip=clip,
        details=details,
    )


def _started(compute: Callable[[], list[np.ndarray]], in_background: bool) -> Future:
    """``compute()`` as a future: on a thread of its own, started now, or computed at once."""
    if not in_background:
        done: Future = Future()
        done.set_result(compute())
        return done
    pool = ThreadPoolExecutor(1, thread_name_prefix="tof-flow")
    future = pool.submit(compute)
    pool.shutdown(wait=False)
    return future


def _pairs(first: int, last: int, chunk: int) -> list[slice]:
    """The frame indices t of the pairs (t−1, t), in chunks."""
    return [slice(start, min(start + chunk, last)) for start in range(first, last, chunk)]


def _lpips_alex(setup: dict):
    from .api import score

    def lpips_alex(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return score(x, y, metrics=["lpips_alex"], **setup)["lpips_alex"]

    return lpips_alex


def dataset_means(clips: dict[str, dict]) -> dict[str, dict[str, float]]:
    """BasicSR's video averaging: each clip's mean first, then the mean over clips; the
    frame-weighted mean (every frame or pair of every clip counted once) beside it."""
    names = sorted({name for clip in clips.values() for name in clip["per_clip"]})
    out = {}
    for name in names:
        per_clip = [clip["per_clip"][name] for clip in clips.values() if name in clip["per_clip"]]
        values = [clip["per_frame"].get(name, clip["temporal"].get(name)) for clip in clips.values() if name in clip["per_clip"]]
        counted = np.concatenate([np.asarray(v, dtype=np.float64) for v in values])
        out[name] = dict(clip_mean=float(np.mean(per_clip)), frame_weighted_mean=float(counted.mean()), clips=len(per_clip))
    return out
