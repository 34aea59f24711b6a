"""The worst-image gallery: crops centred on the largest local error, with an error heat map."""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...common.decode import decode
from ...common.errors import ServiceError
from .data import Run, finite


def read_image(path: str) -> np.ndarray:
    """An image as the server decoded it: float32 H×W×3 in [0, 1]."""
    try:
        return decode(Path(path).read_bytes(), Path(path).name).pixels
    except ServiceError as exc:
        raise ValueError(exc.message) from None


def largest_error_crop(sr: np.ndarray, gt: np.ndarray, size: int) -> tuple[slice, slice]:
    """A size×size window centred on the largest local error: the peak of |SR − GT| (mean over
    channels) smoothed by a Gaussian of σ = 4 px, so a region outweighs an isolated pixel."""
    from scipy.ndimage import gaussian_filter

    error = gaussian_filter(np.abs(sr.astype(np.float64) - gt).mean(axis=2), sigma=4.0, mode="nearest")
    cy, cx = np.unravel_index(int(np.argmax(error)), error.shape)
    height, width = error.shape
    h, w = min(size, height), min(size, width)
    top, left = min(max(cy - h // 2, 0), height - h), min(max(cx - w // 2, 0), width - w)
    return slice(top, top + h), slice(left, left + w)


def png_data_uri(pixels: np.ndarray) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(pixels * 255.0), 0, 255).astype(np.uint8)


def heat_map(sr: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, float]:
    """|SR − GT| (mean over channels, 0–255 scale) through the inferno colour map, scaled to its max."""
    from matplotlib import colormaps

    error = np.abs(sr.astype(np.float64) - gt).mean(axis=2) * 255.0
    peak = float(error.max())
    rgb = colormaps["inferno"](error / peak if peak > 0 else error)[..., :3]
    return to_uint8(rgb), peak


@dataclass
class GalleryEntry:
    run: Run
    image: str
    value: float
    tiles: list[tuple[str, str]]  # (caption, data URI)
    note: str = ""


def worst_images(runs: list[Run], metric: str, lower_is_better: bool, k: int) -> list[tuple[Run, str, float]]:
    """The ``k`` worst (run, image, value) over ``runs`` (one model's datasets and scales)."""
    found = [(run, image, s[metric]) for run in runs for image, s in run.scores.items() if finite(s.get(metric))]
    return sorted(found, key=lambda f: f[2], reverse=lower_is_better)[:k]


def gallery_entry(run: Run, image: str, value: float, crop: int) -> GalleryEntry:
    paths = run.paths.get(image, {})
    if "sr" not in paths or "gt" not in paths:
        return GalleryEntry(run, image, value, [], "no image paths in the results file")
    try:
        sr, gt = read_image(paths["sr"]), read_image(paths["gt"])
    except (OSError, ValueError) as exc:
        return GalleryEntry(run, image, value, [], f"cannot read the images: {exc}")
    if sr.shape != gt.shape:
        return GalleryEntry(run, image, value, [], f"SR is {sr.shape[1]}×{sr.shape[0]} but GT is {gt.shape[1]}×{gt.shape[0]}")
    rows, cols = largest_error_crop(sr, gt, crop)
    heat, peak = heat_map(sr[rows, cols], gt[rows, cols])
    where = f"crop x {cols.start}–{cols.stop}, y {rows.start}–{rows.stop} of {gt.shape[1]}×{gt.shape[0]}"
    return GalleryEntry(
        run,
        image,
        value,
        [
            ("GT", png_data_uri(to_uint8(gt[rows, cols]))),
            ("SR", png_data_uri(to_uint8(sr[rows, cols]))),
            (f"|SR − GT|, max {peak:.0f}/255", png_data_uri(heat)),
        ],
        where,
    )
