"""VMAF (Netflix's libvmaf, through FFmpeg's ``libvmaf`` filter) of a clip: models ``vmaf_v0.6.1``
(``vmaf``) and ``vmaf_v0.6.1neg`` (``vmaf_neg``). Higher is better.

FFmpeg is the one ``imageio-ffmpeg`` ships (built with libvmaf), else an ``ffmpeg`` on the PATH
whose filters include ``libvmaf``. The 8-bit RGB frames go to FFmpeg as raw video and become YUV
4:2:0 with its default conversion (``format=yuv420p``: BT.601 limited range, swscale's default
chroma filter), the same a user gets from ``-i frames/%d.png -lavfi "...format=yuv420p..."``.
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


def vmaf(sr: np.ndarray, gt: np.ndarray, metric: str = "vmaf") -> tuple[np.ndarray, dict]:
    """Per-frame VMAF of (T, H, W, 3) uint8 RGB clips, and the record of how it was computed."""
    binary = ffmpeg_with_libvmaf()
    if binary is None:
        raise RuntimeError(f"{metric} needs FFmpeg with libvmaf: {INSTALL_HINT}")
    if sr.shape != gt.shape or sr.dtype != np.uint8:
        raise ValueError(f"vmaf needs two uint8 clips of one shape, got {sr.shape} {sr.dtype} and {gt.shape} {gt.dtype}")
    height, width = sr.shape[1:3]
    with tempfile.TemporaryDirectory(prefix="loss-service-vmaf-") as work:
        paths = {role: Path(work) / f"{role}.rgb" for role in ("sr", "gt")}
        sr.tofile(paths["sr"])
        gt.tofile(paths["gt"])
        log = Path(work) / "vmaf.json"
        raw = ["-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}"]
        graph = (
            f"[0:v]format=yuv420p[d];[1:v]format=yuv420p[r];[d][r]libvmaf=model=version={VMAF_MODELS[metric]}:log_fmt=json:log_path={log}"
        )
        command = [
            binary,
            "-hide_banner",
            "-v",
            "error",
            *raw,
            "-i",
            str(paths["sr"]),
            *raw,
            "-i",
            str(paths["gt"]),
            "-lavfi",
            graph,
            "-f",
            "null",
            "-",
        ]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"FFmpeg's libvmaf failed: {done.stderr.strip()[-500:]}")
        result = json.loads(log.read_text())
    values = np.array([frame["metrics"]["vmaf"] for frame in result["frames"]], dtype=np.float64)
    return values, dict(model=VMAF_MODELS[metric], libvmaf=result.get("version"), yuv=YUV_CONVERSION, ffmpeg=binary)
