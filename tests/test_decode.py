"""Decoding checked value by value against a direct decode: 16-bit precision (values that differ
below 1/255), WebP, TIFF, CMYK and palette conversion, and EXIF orientation left unapplied."""

import io

import numpy as np
import png
import pytest
from PIL import Image

from service.decode import decode

RNG = np.random.default_rng(17)
RGB = RNG.integers(0, 256, (23, 31, 3), dtype=np.uint8)
WIDE = RNG.integers(0, 65536, (23, 31, 3), dtype=np.uint16)  # not multiples of 257: 8 bits would lose them


def encoded(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def png16(array: np.ndarray) -> bytes:
    height, width = array.shape[:2]
    planes = 1 if array.ndim == 2 else array.shape[2]
    buffer = io.BytesIO()
    png.Writer(width, height, bitdepth=16, greyscale=planes == 1).write(buffer, array.reshape(height, width * planes).tolist())
    return buffer.getvalue()


def test_16bit_png_keeps_every_bit():
    decoded = decode(png16(WIDE), "sr").pixels
    assert np.array_equal(decoded, WIDE.astype(np.float32) / 65535.0)
    assert len(np.unique(np.round(decoded * 255))) < len(np.unique(decoded))  # finer than 8 bits
    gray = decode(png16(WIDE[..., 0]), "sr").pixels
    assert np.array_equal(gray, np.repeat(WIDE[..., :1].astype(np.float32) / 65535.0, 3, axis=2))


@pytest.mark.parametrize("fmt, params", [("WEBP", dict(lossless=True)), ("TIFF", {}), ("BMP", {}), ("PNG", {})])
def test_lossless_formats_decode_exactly(fmt, params):
    decoded = decode(encoded(Image.fromarray(RGB), fmt, **params), "gt").pixels
    assert decoded.dtype == np.float32 and np.array_equal(decoded, RGB.astype(np.float32) / 255.0)


def test_cmyk_and_palette_become_pillows_rgb():
    cmyk = Image.fromarray(RGB).convert("CMYK")
    expected = np.asarray(cmyk.convert("RGB"), dtype=np.float32) / 255.0
    assert np.array_equal(decode(encoded(cmyk, "TIFF"), "sr").pixels, expected)
    palette = Image.fromarray(RGB).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    expected = np.asarray(palette.convert("RGB"), dtype=np.float32) / 255.0
    assert np.array_equal(decode(encoded(palette, "PNG"), "sr").pixels, expected)


def test_exif_orientation_is_not_applied():
    """An EXIF 'rotate 90°' tag is ignored: the pixels are scored as stored (SR datasets carry no
    orientation, and a rotated GT would no longer match its SR)."""
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° CW to display
    for fmt, params in (("JPEG", dict(quality=95)), ("WEBP", dict(lossless=True)), ("PNG", {})):
        data = encoded(Image.fromarray(RGB), fmt, exif=exif, **params)
        assert Image.open(io.BytesIO(data)).getexif().get(0x0112) == 6
        decoded = decode(data, "sr").pixels
        assert decoded.shape == RGB.shape  # 23×31 as stored, not 31×23
        assert np.array_equal(decoded, np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float32) / 255.0)
