"""Images as uploads: a path, bytes, PIL image, NumPy array or torch tensor → (filename, bytes,
content type). Integers travel as PNG, floats losslessly as ``.npy``; torch is never imported
here (a tensor's own methods are used)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

CHANNELS = (1, 2, 3, 4)  # grey, grey + alpha, RGB, RGBA
CONTENT_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".webp": "image/webp",
    ".bmp": "image/bmp",
    ".tif": "image/tiff",
    ".tiff": "image/tiff",
    ".npy": "application/octet-stream",
}


def _png(array: np.ndarray) -> bytes:
    """uint8 / uint16 H×W or H×W×C as PNG (pypng keeps 16-bit colour, which Pillow cannot)."""
    import png

    height, width = array.shape[:2]
    planes = 1 if array.ndim == 2 else array.shape[2]
    greyscale, alpha = planes in (1, 2), planes in (2, 4)
    buffer = io.BytesIO()
    writer = png.Writer(width, height, greyscale=greyscale, alpha=alpha, bitdepth=8 * array.dtype.itemsize)
    writer.write(buffer, array.reshape(height, width * planes))
    return buffer.getvalue()


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def _tensor_to_array(tensor: Any, role: str) -> np.ndarray:
    """(C, H, W) or (1, C, H, W) tensor → H×W×C array (torch is already imported by the caller).
    An integer tensor keeps its dtype: uint8 from ``torchvision.io.read_image`` travels as PNG, as
    a uint8 array does (made float, its 0–255 values would be clamped to 1). Floats become float32."""
    tensor = tensor.detach().cpu()
    array = (tensor.float() if tensor.is_floating_point() else tensor).numpy()
    if array.ndim == 4:
        if array.shape[0] != 1:
            raise ValueError(f"{role}: pass one image per field, got a batch of {array.shape[0]}")
        array = array[0]
    if array.ndim == 3 and array.shape[0] not in CHANNELS:
        raise ValueError(
            f"{role}: tensors are (C, H, W) with C in 1..4, got shape {tuple(tensor.shape)}; "
            "for an (H, W, C) tensor pass t.permute(2, 0, 1)"
        )
    return np.moveaxis(array, 0, -1) if array.ndim == 3 else array


def _image_array(array: np.ndarray, role: str) -> np.ndarray:
    """H×W or H×W×C with C in 1..4, as the server decodes ``.npy``; a batch of one is its image.
    Checked here: pypng's "Expected 96 values but got 1024" named neither the field nor the shape."""
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim == 2 or (array.ndim == 3 and array.shape[2] in CHANNELS):
        return array
    hint = "; channels first? pass np.moveaxis(a, 0, -1)" if array.ndim == 3 and array.shape[0] in CHANNELS else ""
    raise ValueError(f"{role}: arrays are H×W or H×W×C with C in 1..4, got shape {array.shape}{hint}")


def _pil_image(image: Any, role: str) -> tuple[str, bytes, str]:
    """PNG where PNG holds the mode; else TIFF, which keeps CMYK, YCbCr, LAB, 32-bit integer and
    float pixels as stored, for the server to convert as it converts such a file; else (HSV) RGB."""
    for fmt, suffix, content_type in (("PNG", "png", "image/png"), ("TIFF", "tif", "image/tiff")):
        buffer = io.BytesIO()
        try:
            image.save(buffer, format=fmt)
        except OSError:  # "cannot write mode CMYK as PNG"
            continue
        return f"{role}.{suffix}", buffer.getvalue(), content_type
    return _pil_image(image.convert("RGB"), role)


def _to_numpy(value: Any) -> np.ndarray:
    return value.detach().cpu().numpy() if type(value).__module__.startswith("torch") else np.asarray(value)


def encode_image(image: Any, role: str) -> tuple[str, bytes, str]:
    """A path, bytes, PIL image, NumPy array or torch tensor → (filename, bytes, content type).

    uint8/uint16 arrays travel as PNG, float arrays losslessly as ``.npy``.
    """
    if isinstance(image, (str, Path)):
        path = Path(image)
        return path.name, path.read_bytes(), CONTENT_TYPES.get(path.suffix.lower(), "application/octet-stream")
    if isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
        return (f"{role}.npy", data, CONTENT_TYPES[".npy"]) if data.startswith(b"\x93NUMPY") else (role, data, "application/octet-stream")
    if type(image).__module__.startswith("PIL."):
        return _pil_image(image, role)
    if type(image).__module__.startswith("torch"):
        image = _tensor_to_array(image, role)
    if isinstance(image, np.ndarray):
        image = _image_array(image, role)
        if image.dtype.newbyteorder("=") in (np.uint8, np.uint16):  # either byte order
            return f"{role}.png", _png(image), "image/png"
        if image.dtype.kind == "f":
            return f"{role}.npy", _npy(image.astype(np.float32, copy=False)), CONTENT_TYPES[".npy"]
        raise TypeError(f"{role}: arrays must be uint8, uint16 or float, got {image.dtype}")
    raise TypeError(f"{role}: unsupported image type {type(image).__name__}")
