"""``POST /v1/score/clip``: one clip, as two video files (``sr``, ``gt``) or as ordered frame
uploads (repeated ``sr`` and ``gt`` fields), scored by ``losses.score_clip`` on the device thread:
per-frame values of the frame metrics, TecoGAN's tof/tlp per pair of frames, per-clip means.

Sizes are checked before decoding: each frame's from its header against ``--max-image-pixels``
and the memory estimate, a video's from its stream header, and the clip's frames × H × W against
``--max-clip-pixels`` (all 413).
"""

from __future__ import annotations

import io
import math
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from losses import registry
from losses.clips.scoring import CLIP_KINDS, score_clip
from losses.clips.vmaf import FormatMismatch

from ..common.errors import invalid, too_large, unavailable, unsupported
from ..common.protocol import METRICS_FIELD
from .scoring import Plan, Scorer

DEFAULT_CLIP_METRICS = "psnr,ssim,tof"  # what any server can score (tlp needs alexnet, vmaf libvmaf)
VIDEO_MAGICS = (b"\x1aE\xdf\xa3", b"RIFF", b"YUV4MPEG2")  # Matroska/WebM, AVI, y4m; MP4/MOV: 'ftyp' at byte 4


def plan_clip(scorer: Scorer, metrics_field: str | None, options_field: str | None) -> Plan:
    """One plan of frame (image) and clip metrics; ``skip`` is an option of tof and tlp."""
    return scorer.plan(metrics_field or DEFAULT_CLIP_METRICS, options_field, kinds=CLIP_KINDS)


def is_video(data: bytes) -> bool:
    return data.startswith(VIDEO_MAGICS) or data[4:8] == b"ftyp"


def read_video(data: bytes, field: str, max_clip_pixels: int | None) -> np.ndarray:
    """A video upload's frames (T, H, W, 3) uint8; decoding stops at --max-clip-pixels (413)."""
    import av

    from losses.clips.video import ClipTooLarge
    from losses.clips.video import read_video as decode_video

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


@contextmanager
def video_sources(uploads: dict[str, list[bytes]]) -> Iterator[dict[str, Path] | None]:
    """Both roles' video files on disk while the clip is scored (VMAF reads their planes), or None
    unless both roles are one video upload each."""
    if not all(len(files) == 1 and is_video(files[0]) for files in uploads.values()):
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="loss-service-clip-") as folder:
        paths = {role: Path(folder) / role for role in uploads}
        for role, path in paths.items():
            path.write_bytes(uploads[role][0])
        yield paths


def run(scorer: Scorer, plan: Plan, clips: dict[str, np.ndarray], sources: dict[str, Path] | None = None) -> dict:
    """Score on the device thread with the request's plan; the answer in JSON's terms (non-finite values as null)."""
    return score(plan, clips, sources, device=scorer.device, pretrained=scorer.pretrained, weights_dir=scorer.config.weights_dir)


def score(plan: Plan, clips: dict[str, np.ndarray], sources: dict[str, Path] | None, **setup) -> dict:
    """``score_clip`` of decoded (T, H, W, 3) clips, ``setup`` its device, pretrained and weights_dir;
    the answer in JSON's terms (non-finite values as null). Also what ``eval --ray``'s clip actors call."""
    sr, gt = (torch.from_numpy(clips[role]).permute(0, 3, 1, 2) for role in ("sr", "gt"))  # converted chunk by chunk
    try:
        result = score_clip(sr, gt, plan=plan, sources=sources, **setup)
    except registry.MetricError as exc:
        raise invalid(exc.field, str(exc)) from None
    except FormatMismatch as exc:  # VMAF of two videos that libvmaf would not read alike
        raise invalid("gt", str(exc)) from None
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
