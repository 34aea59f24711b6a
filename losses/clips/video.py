"""Clips from disk: a folder of frames, or a video file (PyAV), as (T, H, W, 3) uint8 RGB frames.

- **Frames** are ordered by the number in their name, as BasicSR and TecoGAN sort them (a plain
  sort first, then by the digits of the name), not lexicographically: ``9.png`` before ``10.png``.
- **Videos** (mp4, mkv, avi, mov, y4m) decode in presentation order. YUV becomes RGB with the
  colour matrix and range the stream declares, BT.601 limited range where it declares none; what
  was used is returned with the frames, for the conventions record.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

VIDEO_SUFFIXES = (".mp4", ".mkv", ".avi", ".mov", ".y4m")
FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
DEFAULT_MATRIX, DEFAULT_RANGE = "ITU601", "MPEG"  # PyAV's names: BT.601, limited ("tv") range


def frame_number(name: str) -> int:
    """The number in a frame's name (TecoGAN's ``int(''.join(filter(str.isdigit, name)) or -1)``)."""
    return int("".join(filter(str.isdigit, name)) or -1)


def frame_paths(folder: str | Path) -> list[Path]:
    """The frames of a folder, in clip order."""
    paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in FRAME_SUFFIXES and not p.name.startswith("."))
    return sorted(paths, key=lambda p: frame_number(p.name))


class ClipTooLarge(ValueError):
    """A clip of more frames × pixels than the caller allows; raised before decoding the rest."""


def read_video(path, max_pixels: int | None = None) -> tuple[np.ndarray, dict]:
    """A video's frames, (T, H, W, 3) uint8 RGB, and how they were converted: the colour matrix,
    the range, and whether each came from the stream or is the default. ``path`` may be a file
    object. Decoding stops with ``ClipTooLarge`` once frames × H × W would exceed ``max_pixels``."""
    import av

    frames, conversion = [], None
    with av.open(path if hasattr(path, "read") else str(path)) as container:
        stream = container.streams.video[0]
        for frame in container.decode(stream):
            if max_pixels is not None and (len(frames) + 1) * frame.width * frame.height > max_pixels:
                raise ClipTooLarge(f"more than {max_pixels} frames × pixels at frame {len(frames)} ({frame.width}×{frame.height})")
            if conversion is None:
                conversion = _conversion(frame)
            if conversion["rgb_source"]:
                frames.append(frame.to_ndarray(format="rgb24"))
            else:
                frames.append(
                    frame.reformat(
                        format="rgb24",
                        src_colorspace=conversion["matrix"],
                        src_color_range=conversion["range"],
                    ).to_ndarray()
                )
    if not frames:
        raise ValueError(f"{path}: no video frames could be decoded")
    for index in range(1, len(frames)):
        _same_size(path, f"{index}", frames[0], frames[index])
    return np.stack(frames), dict(conversion, frames=len(frames), codec=stream.codec_context.name)


def _same_size(clip: Path, frame: str, first: np.ndarray, current: np.ndarray) -> None:
    """A clip's frames share one size: a frame of another names the clip and itself."""
    if current.shape != first.shape:
        (height, width), (first_height, first_width) = current.shape[:2], first.shape[:2]
        raise ValueError(f"{clip}: frame {frame} is {width}×{height} but the clip's first frame is {first_width}×{first_height}")


def _conversion(frame) -> dict:
    """The YUV → RGB conversion of ``frame``: RGB sources need none; YUV uses the declared matrix
    and range, BT.601 limited where the stream leaves them unspecified."""
    pixel_format = frame.format.name
    if pixel_format.startswith(("rgb", "bgr", "gbr")):
        return dict(pixel_format=pixel_format, rgb_source=True, matrix=None, range=None, declared=True)
    matrix_name, range_name = _declared(frame)
    return dict(
        pixel_format=pixel_format,
        rgb_source=False,
        matrix=matrix_name or DEFAULT_MATRIX,
        range=range_name or DEFAULT_RANGE,
        declared=dict(matrix=matrix_name is not None, range=range_name is not None),
    )


# FFmpeg's AVColorSpace and AVColorRange values, as PyAV names them for ``reformat``.
MATRICES = {1: "ITU709", 4: "FCC", 5: "ITU601", 6: "ITU601", 7: "SMPTE240M", 9: "BT2020"}  # 6: SMPTE 170M = BT.601
RANGES = {1: "MPEG", 2: "JPEG"}


def _declared(frame) -> tuple[str | None, str | None]:
    """The stream's colour matrix and range as PyAV names, None where unspecified."""
    return MATRICES.get(int(frame.colorspace)), RANGES.get(int(frame.color_range))


def read_clip(path: str | Path) -> tuple[np.ndarray, dict]:
    """A clip from a folder of frames or a video file: (T, H, W, 3) uint8 RGB and how it was read."""
    from PIL import Image

    path = Path(path)
    if path.is_dir():
        paths = frame_paths(path)
        if not paths:
            raise ValueError(f"{path}: no frames ({', '.join(FRAME_SUFFIXES)})")
        frames = []
        for frame in paths:
            try:
                with Image.open(frame) as image:
                    frames.append(np.asarray(image.convert("RGB")))
            except OSError as exc:
                raise ValueError(f"{path}: frame {frame.name} cannot be read ({exc})") from None
            _same_size(path, frame.name, frames[0], frames[-1])
        return np.stack(frames), dict(source="frames", frames=len(frames), order="by the number in the name")
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        raise ValueError(f"{path}: not a folder of frames or a video ({', '.join(VIDEO_SUFFIXES)})")
    frames, conversion = read_video(path)
    return frames, dict(source="video", **conversion)
