"""``POST /v1/score/clip``: one clip, as two video files (``sr``, ``gt``) or as ordered frame
uploads (repeated ``sr`` and ``gt`` fields), scored by ``losses.score_clip`` on the device thread:
per-frame values of the frame metrics, TecoGAN's tof/tlp per pair of frames, per-clip means.

Sizes are checked before decoding: each frame's from its header against ``--max-image-pixels``
and the memory estimate, a video's from its stream header, and the clip's frames × H × W against
``--max-clip-pixels`` (all 413).
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass

import numpy as np
import torch

from losses import registry
from losses.temporal import CLIP_METRICS, TECOGAN_SKIP, score_clip
from losses.vmaf import INSTALL_HINT, ffmpeg_with_libvmaf

from ..common.errors import comma_list, invalid, json_object, too_large, unavailable, unsupported
from ..common.protocol import CLIP_OPTIONS, METRICS_FIELD, OPTIONS_FIELD
from .scoring import Plan, Scorer

DEFAULT_CLIP_METRICS = "psnr,ssim,tof"  # what any server can score (tlp needs alexnet, vmaf libvmaf)
VIDEO_MAGICS = (b"\x1aE\xdf\xa3", b"RIFF", b"YUV4MPEG2")  # Matroska/WebM, AVI, y4m; MP4/MOV: 'ftyp' at byte 4


@dataclass(frozen=True)
class ClipPlan:
    """A clip request parsed once: the frame metrics' plan (None for clip metrics alone), the clip
    metrics (tof, tlp, vmaf, vmaf_neg), and the frames left out at each end for tof and tlp."""

    frames: Plan | None
    temporal: tuple[str, ...]
    skip: int

    def conventions(self, scorer: Scorer) -> dict:
        record = scorer.conventions(self.frames) if self.frames else {}
        record["clip"] = dict(
            temporal=list(self.temporal),
            skip=self.skip,
            averaging="per clip: the mean over its frames (frame metrics) or its pairs of frames (tof, tlp)",
            tof="TecoGAN metrics.py: Farnebäck flow (0.5, 3, 15, 3, 5, 1.2, 0) of COLOR_RGB2GRAY 8-bit frames, crop_8x8",
            tlp="TecoGAN metrics.py: 100·|LPIPS-Alex v0.1(gt[t−1], gt[t]) − LPIPS-Alex(sr[t−1], sr[t])| on crop_8x8 frames",
        )
        return record


def plan_clip(scorer: Scorer, metrics_field: str | None, options_field: str | None) -> ClipPlan:
    names = comma_list(metrics_field or DEFAULT_CLIP_METRICS)
    options = json_object(options_field or "{}", OPTIONS_FIELD, '{"skip": 2, "crop_border": 4}')
    skip = options.pop("skip", TECOGAN_SKIP)
    if not isinstance(skip, int) or isinstance(skip, bool) or skip < 0:
        raise invalid(OPTIONS_FIELD, f"options: skip must be a whole number of frames ≥ 0, got {skip!r}")
    temporal = tuple(name for name in dict.fromkeys(names) if name in CLIP_METRICS)
    framewise = [name for name in names if name not in CLIP_METRICS]
    if {"vmaf", "vmaf_neg"} & set(temporal) and ffmpeg_with_libvmaf() is None:
        raise unavailable(METRICS_FIELD, f"vmaf needs FFmpeg with libvmaf on the server: {INSTALL_HINT}")
    if "tlp" in temporal:
        scorer.plan("lpips_alex", None)  # refuses the request (503) where LPIPS-Alex's model is not loaded
    frames = scorer.plan(",".join(framewise), json.dumps(options)) if framewise else None
    if frames is None and options:
        raise invalid(OPTIONS_FIELD, f"options {sorted(options)} given, but {', '.join(temporal)} take only {list(CLIP_OPTIONS)}")
    return ClipPlan(frames, temporal, skip)


def is_video(data: bytes) -> bool:
    return data.startswith(VIDEO_MAGICS) or data[4:8] == b"ftyp"


def read_video(data: bytes, field: str, max_clip_pixels: int | None) -> np.ndarray:
    """A video upload's frames (T, H, W, 3) uint8; decoding stops at --max-clip-pixels (413)."""
    import av

    from losses.video import ClipTooLarge
    from losses.video import read_video as decode_video

    try:
        frames, _ = decode_video(io.BytesIO(data), max_clip_pixels)
    except ClipTooLarge as exc:
        raise too_large(field, f"{field}: {exc} (--max-clip-pixels)") from None
    except (av.error.FFmpegError, IndexError, ValueError) as exc:
        raise unsupported(field, f"{field}: not a decodable video ({exc})") from None
    return frames


def frames_of(uploads: list[bytes], field: str, decode_frame, max_clip_pixels: int | None) -> np.ndarray:
    """A role's clip: one video upload (uint8 frames), or ordered frame uploads decoded one by one
    (float32 in [0, 1], every bit of a 16-bit PNG kept)."""
    if len(uploads) == 1 and is_video(uploads[0]):
        frames = read_video(uploads[0], field, max_clip_pixels)
    else:
        decoded = []
        for index, data in enumerate(uploads):
            pixels = decode_frame(data, f"{field}[{index}]").pixels
            if decoded and pixels.shape != decoded[0].shape:
                raise invalid(
                    field,
                    f"{field}: frame {index} is {pixels.shape[1]}×{pixels.shape[0]} but frame 0 is "
                    f"{decoded[0].shape[1]}×{decoded[0].shape[0]}",
                )
            if max_clip_pixels is not None and (index + 1) * pixels.shape[0] * pixels.shape[1] > max_clip_pixels:
                raise too_large(field, f"{field}: more than {max_clip_pixels} frames × pixels (--max-clip-pixels) at frame {index}")
            decoded.append(pixels)
        frames = np.stack(decoded) if decoded else np.empty((0, 0, 0, 3), np.float32)
    if len(frames) < 1:
        raise invalid(field, f"{field}: no frames")
    return frames


def check_clips(clips: dict[str, np.ndarray]) -> None:
    sr, gt = clips["sr"], clips["gt"]
    if len(sr) != len(gt):
        raise invalid("gt", f"sr has {len(sr)} frames but gt has {len(gt)}; a clip's frames pair by order")
    if sr.shape[1:] != gt.shape[1:]:
        raise invalid("gt", f"gt frames are {gt.shape[2]}×{gt.shape[1]} but sr frames are {sr.shape[2]}×{sr.shape[1]}")


def finite_lists(values: dict[str, np.ndarray]) -> dict[str, list[float | None]]:
    return {name: [v if math.isfinite(v) else None for v in map(float, array)] for name, array in values.items()}


def run(scorer: Scorer, plan: ClipPlan, clips: dict[str, np.ndarray]) -> dict:
    """Score on the device thread; the answer in JSON's terms (non-finite values as null)."""
    sr, gt = (torch.from_numpy(clips[role]).permute(0, 3, 1, 2) for role in ("sr", "gt"))  # converted chunk by chunk
    metrics = [*(plan.frames.names if plan.frames else ()), *plan.temporal]
    options = dict(plan.frames.options) if plan.frames else {}
    setup = dict(device=scorer.device, pretrained=scorer.pretrained, weights_dir=scorer.config.weights_dir)
    try:
        result = score_clip(sr, gt, metrics=metrics, skip=plan.skip, **setup, **options)
    except registry.MetricError as exc:
        raise invalid(exc.field, str(exc)) from None
    except RuntimeError as exc:  # FFmpeg's libvmaf failed
        raise unavailable(METRICS_FIELD, str(exc)) from None
    return dict(
        per_frame=finite_lists(result["per_frame"]),
        temporal=finite_lists(result["temporal"]),
        frames=result["frames"],
        per_clip={name: value if math.isfinite(value) else None for name, value in result["per_clip"].items()},
        vmaf=result["details"],
    )


FIELDS_HELP = {
    "sr": "the SR clip: one video file (mp4, mkv, avi, mov, y4m) or its frames in order (repeat the field)",
    "gt": "the GT clip, as sr",
    METRICS_FIELD: f"comma list: frame metrics of GET /v1/metrics and tof, tlp, vmaf, vmaf_neg; default {DEFAULT_CLIP_METRICS}",
}
