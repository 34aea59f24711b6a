"""VMAF (Netflix's libvmaf, through FFmpeg's ``libvmaf`` filter) of a clip: models ``vmaf_v0.6.1``
(``vmaf``) and ``vmaf_v0.6.1neg`` (``vmaf_neg``). Higher is better.

FFmpeg is the one ``imageio-ffmpeg`` ships (built with libvmaf), else an ``ffmpeg`` on the PATH
whose filters include ``libvmaf``. Two sources:

- **video files** (``vmaf_of_videos``): FFmpeg decodes both and hands their planes to libvmaf as
  they are, with no RGB round trip: the number ``ffmpeg -i dist -i ref -lavfi libvmaf`` prints.
  The two must share pixel format (so bit depth and chroma subsampling), range and size; else
  the call is refused, never converted silently.
- **frames** (``vmaf``): 8-bit RGB frames go to FFmpeg as raw video and become YUV 4:2:0 with its
  default conversion (``format=yuv420p``: BT.601 limited range, swscale's default chroma
  filter), the same a user gets from ``-i frames/%d.png -lavfi "...format=yuv420p..."``.
"""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

VMAF_MODELS = {"vmaf": "vmaf_v0.6.1", "vmaf_neg": "vmaf_v0.6.1neg"}
INSTALL_HINT = "pip install imageio-ffmpeg (its FFmpeg is built with libvmaf), or put an FFmpeg with libvmaf on the PATH"
YUV_CONVERSION = "RGB24 → yuv420p by FFmpeg's format filter (swscale defaults: BT.601 limited range)"


@functools.lru_cache(maxsize=1)
def ffmpeg_with_libvmaf() -> str | None:
    """The FFmpeg binary to run, or None where no FFmpeg with libvmaf is installed."""
    candidates = []
    try:
        import imageio_ffmpeg

        candidates.append(imageio_ffmpeg.get_ffmpeg_exe())
    except (ImportError, RuntimeError):
        pass
    if shutil.which("ffmpeg"):
        candidates.append(shutil.which("ffmpeg"))
    for binary in candidates:
        filters = subprocess.run([binary, "-hide_banner", "-filters"], capture_output=True, text=True).stdout
        if " libvmaf " in filters:
            return binary
    return None


def video_format(path: Path) -> dict:
    """What libvmaf would read from a video file: pixel format, size, range and colour tags."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        context = stream.codec_context
        return dict(
            pix_fmt=context.pix_fmt,
            width=context.width,
            height=context.height,
            color_range=int(getattr(context, "color_range", 0) or 0),
            colorspace=int(getattr(context, "colorspace", 2) or 2),
        )


class FormatMismatch(ValueError):
    """The distorted and reference videos differ in what libvmaf reads: refused, not converted."""


def vmaf_of_videos(sr: Path, gt: Path, metric: str = "vmaf") -> tuple[np.ndarray, dict]:
    """Per-frame VMAF of two video files on their decoded planes, as ``ffmpeg -i sr -i gt -lavfi libvmaf``."""
    formats = {role: video_format(path) for role, path in (("sr", sr), ("gt", gt))}
    differing = [key for key in ("pix_fmt", "width", "height", "color_range") if formats["sr"][key] != formats["gt"][key]]
    if differing:
        said = ", ".join(f"{key} {formats['sr'][key]} vs {formats['gt'][key]}" for key in differing)
        raise FormatMismatch(f"{metric}: the sr and gt videos differ in {said}; libvmaf compares planes as decoded: encode both alike")
    graph = f"[0:v][1:v]libvmaf=model=version={VMAF_MODELS[metric]}"
    values, version, binary = _run_libvmaf([("-i", str(Path(sr).resolve())), ("-i", str(Path(gt).resolve()))], graph, metric)
    source = formats["sr"]
    record = dict(model=VMAF_MODELS[metric], libvmaf=version, ffmpeg=binary, yuv=f"the source planes: {source['pix_fmt']}, no conversion")
    return values, dict(record, source=source)


def _run_libvmaf(inputs: list[tuple[str, ...]], graph: str, metric: str) -> tuple[np.ndarray, str | None, str]:
    """FFmpeg with ``inputs`` through ``graph`` (ending in a ``libvmaf`` filter): per-frame values, libvmaf's version."""
    binary = ffmpeg_with_libvmaf()
    if binary is None:
        raise RuntimeError(f"{metric} needs FFmpeg with libvmaf: {INSTALL_HINT}")
    with tempfile.TemporaryDirectory(prefix="loss-service-vmaf-") as work:
        log = Path(work) / "vmaf.json"
        arguments = [item for group in inputs for item in group]
        # the log is named relative to the working directory: a path in a filter graph needs escaping
        command = [
            binary,
            "-hide_banner",
            "-v",
            "error",
            *arguments,
            "-lavfi",
            graph + ":log_fmt=json:log_path=vmaf.json",
            "-f",
            "null",
            "-",
        ]
        done = subprocess.run(command, capture_output=True, text=True, cwd=work)
        if done.returncode != 0:
            raise RuntimeError(f"FFmpeg's libvmaf failed: {done.stderr.strip()[-500:]}")
        result = json.loads(log.read_text())
    return np.array([frame["metrics"]["vmaf"] for frame in result["frames"]], dtype=np.float64), result.get("version"), binary


def vmaf(sr: np.ndarray, gt: np.ndarray, metric: str = "vmaf") -> tuple[np.ndarray, dict]:
    """Per-frame VMAF of (T, H, W, 3) uint8 RGB clips, and the record of how it was computed."""
    if sr.shape != gt.shape or sr.dtype != np.uint8:
        raise ValueError(f"vmaf needs two uint8 clips of one shape, got {sr.shape} {sr.dtype} and {gt.shape} {gt.dtype}")
    height, width = sr.shape[1:3]
    with tempfile.TemporaryDirectory(prefix="loss-service-frames-") as frames:
        paths = {role: Path(frames) / f"{role}.rgb" for role in ("sr", "gt")}
        sr.tofile(paths["sr"])
        gt.tofile(paths["gt"])
        raw = ("-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}")
        graph = (
            f"[0:v]format=yuv420p[d];[1:v]format=yuv420p[r];[d][r]libvmaf=model=version={VMAF_MODELS[metric]}:log_fmt=json:log_path={{log}}"
        )
        values, version, binary = _run_libvmaf([(*raw, "-i", str(paths["sr"])), (*raw, "-i", str(paths["gt"]))], graph, metric)
    return values, dict(model=VMAF_MODELS[metric], libvmaf=version, yuv=YUV_CONVERSION, ffmpeg=binary)
