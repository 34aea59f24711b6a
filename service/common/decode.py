"""Decode uploads into float32 H×W×3 arrays in [0, 1] (docs/metrics.md, "Conventions"), or fail with a clear 4xx.

PNG (8/16 bit), JPEG, WebP, BMP, TIFF (8/16 bit, 32-bit integer, float) and NumPy ``.npy``
(never with pickle). Alpha is dropped with a warning; palette, grayscale and CMYK become RGB;
EXIF orientation is not applied; an animation or a multi-page TIFF is refused. Where the server
extra's imagecodecs is installed, PNGs are read by its libpng, every bit and ~2× faster than
Pillow; without it (the client install's ``report``) Pillow and pypng read the same pixels. Where
Pillow would drop bits (16-bit colour PNG and TIFF), misread them (signed or 16-bit MinIsWhite
TIFF) or cannot read the file (float or 32-bit colour TIFF), pypng and tifffile do.
"""

from __future__ import annotations

import importlib.util
import io
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import ServiceError, invalid, too_large, unsupported

IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "TIFF")
# Pillow's name for a JPEG carrying extra pictures (phone and camera previews, a stereo pair's other
# view) after the one every JPEG viewer shows: that first picture is the image.
JPEG_WITH_PICTURES = "MPO"
NPY_MAGIC = b"\x93NUMPY"
NPY_SCALES = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}
NPY_FLOATS = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))
TIFF_MAGICS = (b"II*\x00", b"MM\x00*")
MIN_IS_WHITE = 0  # TIFF PhotometricInterpretation
SUBFILE_TYPE_TAG, REDUCED_RESOLUTION = 254, 1  # TIFF NewSubfileType; its bit 0 marks a reduced-resolution page
TIFF_PAGES_READ = 16  # pages read to find a stack: any pyramid's levels, not a million 1-pixel pages
LIBPNG = importlib.util.find_spec("imagecodecs") is not None  # the server extra; imported when first used


@dataclass
class Decoded:
    pixels: np.ndarray  # float32, H×W×3, [0, 1]
    warnings: list[str] = field(default_factory=list)

    @property
    def size(self) -> tuple[int, int]:
        return self.pixels.shape[0], self.pixels.shape[1]


SizeCheck = Callable[[int, int], None]


def decode(data: bytes, field_name: str, max_pixels: int | None = None, check_size: SizeCheck | None = None) -> Decoded:
    """Decode one upload. The size is checked from the header, before any pixel is decoded:
    against ``max_pixels`` and then ``check_size(height, width)`` (e.g. a memory estimate)."""
    if not data:
        raise unsupported(field_name, f"{field_name}: empty file")
    limits = _SizeLimits(field_name, max_pixels, check_size)
    if data.startswith(NPY_MAGIC):
        return _decode_npy(data, field_name, limits)
    return _decode_image(data, field_name, limits)


@dataclass
class _SizeLimits:
    field_name: str
    max_pixels: int | None
    check_size: SizeCheck | None

    def __call__(self, height: int, width: int) -> None:
        if height < 1 or width < 1:
            raise invalid(self.field_name, f"{self.field_name}: {width}×{height} image is empty; width and height must be at least 1")
        if self.max_pixels is not None and height * width > self.max_pixels:
            raise too_large(
                self.field_name,
                f"{self.field_name}: {width}×{height} = {width * height} pixels exceeds the "
                f"limit of {self.max_pixels} (--max-image-pixels)",
            )
        if self.check_size is not None:
            self.check_size(height, width)


def _to_rgb(array: np.ndarray, field_name: str, warnings: list[str]) -> np.ndarray:
    """H×W or H×W×C (C in 1, 2, 3, 4) → H×W×3, dropping alpha with a warning."""
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[2] not in (1, 2, 3, 4):
        raise invalid(field_name, f"{field_name}: expected H×W or H×W×C with C in 1..4, got shape {array.shape}")
    if array.shape[2] in (2, 4):
        warnings.append(f"{field_name}: alpha channel dropped")
        array = array[..., :-1]
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    return np.ascontiguousarray(array)


def _decode_npy(data: bytes, field_name: str, check: _SizeLimits) -> Decoded:
    stream = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(stream)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(stream)  # the header alone: check the size before loading
    except Exception as exc:  # noqa: BLE001 - any malformed header is the client's
        raise unsupported(field_name, f"{field_name}: malformed .npy header ({exc})") from None
    if dtype.hasobject:
        raise unsupported(field_name, f"{field_name}: .npy object arrays are refused (they need pickle)")
    if len(shape) not in (2, 3):
        raise invalid(field_name, f"{field_name}: .npy must be H×W or H×W×C, got shape {shape}")
    check(shape[0], shape[1])
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as exc:  # noqa: BLE001
        raise unsupported(field_name, f"{field_name}: unreadable .npy ({exc})") from None
    warnings: list[str] = []
    pixels = _unit_pixels(array, field_name, ".npy", warnings)
    if pixels is None:
        raise unsupported(field_name, f"{field_name}: .npy dtype {array.dtype} unsupported; use uint8, uint16, float16, float32 or float64")
    return Decoded(_to_rgb(pixels, field_name, warnings), warnings)


def _scaled(array: np.ndarray, scale: float) -> np.ndarray:
    """``array.astype(np.float32) / scale``, value for value, with one float32 allocation instead
    of two: the second large temporary made glibc hand pages back and fault them in again on
    every call (256² RGB: 0.68 → 0.04 ms, 352 → 0 page faults)."""
    return np.divide(array, np.float32(scale), dtype=np.float32)


def _unit_pixels(array: np.ndarray, field_name: str, float_source: str, warnings: list[str]) -> np.ndarray | None:
    """uint8 / 255, uint16 / 65535, floats by ``unit_range``; None for any other dtype. Either
    byte order (a big-endian ``.npy`` holds the same numbers). Floats are checked and clamped in
    their own precision, so a finite float64 beyond float32's range is clamped, not called Inf."""
    native = array.dtype.newbyteorder("=")
    if native in NPY_SCALES:
        return _scaled(array, NPY_SCALES[native])
    if native in NPY_FLOATS:
        return unit_range(array, field_name, float_source, warnings).astype(np.float32)
    return None


def unit_range(pixels: np.ndarray, field_name: str, source: str, warnings: list[str]) -> np.ndarray:
    """The one rule for every float or wide-integer source (.npy, float/int32 TIFF): NaN or Inf
    is a 422; values outside [0, 1] are clamped, with a warning."""
    if not np.isfinite(pixels).all():
        raise invalid(field_name, f"{field_name}: {source} holds NaN or Inf values")
    if pixels.min() < 0.0 or pixels.max() > 1.0:  # never empty: the size check refuses 0×N first
        warnings.append(f"{field_name}: {source} values outside [0, 1] were clamped")
        pixels = pixels.clip(0.0, 1.0)
    return pixels


def _is_16bit_color_png(image: Image.Image, data: bytes) -> bool:
    # IHDR (complete, or Pillow would not have opened the file): bit depth at byte 24, colour
    # type at 25 (2 = RGB, 6 = RGBA, 4 = grey + alpha).
    return image.format == "PNG" and data[24] == 16 and data[25] in (2, 4, 6)


def _decode_16bit_png(data: bytes) -> np.ndarray:
    """An interlaced 16-bit colour PNG: Pillow reduces it to 8 bits; pypng keeps every bit. The
    stored samples (``read``, not ``asDirect``): a tRNS colour key adds no alpha, as with libpng."""
    import png

    try:
        width, height, rows, info = png.Reader(bytes=data).read()
        return np.vstack(list(rows)).reshape(height, width, info["planes"])  # rows are array('H'): uint16
    except png.Error as exc:  # a truncated or corrupt file, like Pillow's OSError for 8-bit PNGs
        raise ValueError(str(exc)) from None


def _libpng_reads(image: Image.Image) -> bool:
    """Where imagecodecs is installed, every PNG but an interlaced one (libpng warns on stderr about each) and a palette with
    transparency (whose alpha drop with a warning is Pillow's conversion): the same pixels as
    Pillow or pypng, ~2× Pillow's speed at 8 bits, ~20× pypng's at 16, and off the GIL."""
    return LIBPNG and image.format == "PNG" and not image.info.get("interlace") and not (image.mode == "P" and "transparency" in image.info)


def _decode_png(data: bytes) -> np.ndarray:
    """uint8 or uint16, H×W or H×W×C, as stored (palettes expanded, 1/2/4-bit grey scaled to 8)."""
    import imagecodecs

    try:
        return imagecodecs.png_decode(_critical_chunks(data))
    except imagecodecs.PngError as exc:
        raise ValueError(str(exc)) from None


def _critical_chunks(data: bytes) -> bytes:
    """The PNG without its ancillary chunks (colour profiles, text, a tRNS colour key that hides no
    channel): none changes the stored values we read, and libpng prints a line on stderr for each
    odd one ("iCCP: known incorrect sRGB profile" is common)."""
    view, kept, offset = memoryview(data), [data[:8]], 8
    while offset + 8 <= len(data):
        end = offset + 12 + int.from_bytes(view[offset : offset + 4], "big")
        kind = bytes(view[offset + 4 : offset + 8])
        if end > len(data) and kind != b"IEND":  # a lost IEND loses no pixel; Pillow reads such a file too
            raise ValueError(f"the file ends inside its {kind.decode('latin-1')} chunk")
        if not kind[0] & 0x20:  # bit 5 of a chunk type's first letter is clear for IHDR, PLTE, IDAT, IEND
            kept.append(view[offset:end])
        offset = end
    return b"".join(kept)


def _decode_image(data: bytes, field_name: str, check: _SizeLimits) -> Decoded:
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:  # Pillow's own check, at twice its limit
        raise too_large(field_name, f"{field_name}: {exc} (--max-image-pixels)") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        if data.startswith(TIFF_MAGICS):  # float or 32-bit colour TIFF: Pillow has no mode for it
            return _decode_tiff(data, field_name, check)
        raise unsupported(field_name, f"{field_name}: not a decodable image; accepted: {', '.join(IMAGE_FORMATS)} or .npy") from None
    if image.format not in IMAGE_FORMATS + (JPEG_WITH_PICTURES,):
        raise unsupported(field_name, f"{field_name}: format {image.format} unsupported; accepted: {', '.join(IMAGE_FORMATS)} or .npy")
    _refuse_many_images(image, field_name)
    if _pillow_misreads_tiff(image):
        return _decode_tiff(data, field_name, check)
    width, height = image.size
    check(height, width)
    warnings: list[str] = []
    try:
        if _libpng_reads(image):
            array = _decode_png(data)
            return Decoded(_to_rgb(_scaled(array, NPY_SCALES[array.dtype]), field_name, warnings), warnings)
        if _is_16bit_color_png(image, data):
            array = _scaled(_decode_16bit_png(data), 65535.0)
        else:
            array = _pil_to_float(image, field_name, warnings)
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise unsupported(field_name, f"{field_name}: truncated or corrupt {image.format} ({exc})") from None
    return Decoded(_to_rgb(array, field_name, warnings), warnings)


def _refuse_many_images(image: Image.Image, field_name: str) -> None:
    """A score is for one image: which frame of an animation or page of a stack was meant is the
    user's to say, not ours. An MPO's extra pictures are previews or a second view of its first."""
    frames = 1 if image.format in ("TIFF", JPEG_WITH_PICTURES) else getattr(image, "n_frames", 1)
    if frames > 1:
        raise invalid(field_name, f"{field_name}: the {image.format} holds {frames} frames (an animation); upload one image per field")
    if image.format == "TIFF":
        _refuse_a_stack(_pillow_subfile_types(image), field_name)
        image.seek(0)


def _pillow_subfile_types(image: Image.Image) -> Iterator[int]:
    """Each page's NewSubfileType, until the last page or one that cannot be read: a corrupt
    pointer to a later page ends the pages there, and the first still reads as viewers show it."""
    index = 0
    while True:
        try:
            image.seek(index)
        except Exception:  # noqa: BLE001 - EOFError at the end; TypeError, OSError… past a corrupt pointer
            return
        yield image.tag_v2.get(SUBFILE_TYPE_TAG, 0)
        index += 1


def _tifffile_subfile_types(tiff) -> Iterator[int]:
    """As ``_pillow_subfile_types``, for a TIFF only tifffile reads; a page pointing back to one
    already read (a loop, which tifffile follows) ends the pages too."""
    pages, offsets = iter(tiff.pages), set()
    while True:
        try:
            page = next(pages)
        except Exception:  # noqa: BLE001 - StopIteration at the end; a corrupt later page ends them too
            return
        if page.offset in offsets:
            return
        offsets.add(page.offset)
        yield page.subfiletype


def _refuse_a_stack(subfile_types: Iterable[int], field_name: str) -> None:
    """A TIFF with a second full-resolution page. A reduced-resolution page (a thumbnail, a pyramid
    level) is a view of another. Only the first TIFF_PAGES_READ pages are read: every page costs
    a parse, and a 256 MB upload can hold a million of them."""
    full_pages = sum(not subfile_type & REDUCED_RESOLUTION for subfile_type in islice(subfile_types, TIFF_PAGES_READ))
    if full_pages > 1:
        raise invalid(
            field_name,
            f"{field_name}: the TIFF holds {full_pages}{'+' if full_pages == TIFF_PAGES_READ else ''} "
            f"full-resolution pages (a stack); upload one image per field",
        )


def _pillow_misreads_tiff(image: Image.Image) -> bool:
    """A TIFF Pillow opens with other values than it stores or shows: colour of more than 8 bits
    per sample (read as 8-bit), signed samples (int8 read as unsigned: −1 becomes 255), and
    MinIsWhite beyond 8 bits (Pillow inverts 1- to 8-bit MinIsWhite, but not 16-bit or float)."""
    if image.format != "TIFF":
        return False
    tags = image.tag_v2
    bits = tags.get(258, 8)  # BitsPerSample: one value, or one per sample
    sample_formats = tags.get(339, 1)  # SampleFormat: 1 unsigned, 2 signed, 3 float
    wide = max(bits if isinstance(bits, tuple) else (bits,)) > 8
    signed = 2 in (sample_formats if isinstance(sample_formats, tuple) else (sample_formats,))
    return (wide and image.mode in ("RGB", "RGBA")) or signed or (wide and tags.get(262) == MIN_IS_WHITE)


def _decode_tiff(data: bytes, field_name: str, check: _SizeLimits) -> Decoded:
    """The first page of a TIFF through tifffile, with every bit: 8/16-bit samples scale by their
    range, 32-bit integers as Pillow's mode I does, floats by the one ``unit_range`` rule."""
    import tifffile

    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tiff:
            _refuse_a_stack(_tifffile_subfile_types(tiff), field_name)
            page = tiff.pages.first
            check(page.imagelength, page.imagewidth)
            array = page.asarray()
            if page.planarconfig == tifffile.PLANARCONFIG.SEPARATE and array.ndim == 3:
                array = np.moveaxis(array, 0, -1)
            if page.photometric == MIN_IS_WHITE:
                array = _as_min_is_black(array, field_name)
    except ServiceError:
        raise
    except Exception as exc:  # noqa: BLE001 - any unreadable TIFF is the client's
        raise unsupported(field_name, f"{field_name}: truncated, corrupt or unsupported TIFF ({exc})") from None
    warnings: list[str] = []
    pixels = _unit_pixels(array, field_name, "TIFF float", warnings)
    if pixels is None and array.dtype.kind in "iu":
        pixels = _integers_by_range(array, field_name, f"TIFF {array.dtype.itemsize * 8}-bit integer", warnings)
    if pixels is None:
        raise unsupported(field_name, f"{field_name}: TIFF samples of type {array.dtype} unsupported")
    return Decoded(_to_rgb(pixels, field_name, warnings), warnings)


def _as_min_is_black(array: np.ndarray, field_name: str) -> np.ndarray:
    """MinIsWhite stores 0 as white: the values shown are the range's maximum minus the stored ones."""
    if array.dtype.kind == "u" and array.dtype.itemsize <= 2:
        return np.iinfo(array.dtype).max - array
    if array.dtype.kind == "f":
        return 1.0 - array
    raise unsupported(
        field_name,
        f"{field_name}: MinIsWhite TIFF with {array.dtype} samples unsupported; use MinIsBlack, or unsigned 8/16-bit or float samples",
    )


def _integers_by_range(array: np.ndarray, field_name: str, source: str, warnings: list[str]) -> np.ndarray:
    """Wide integers read as 8- or 16-bit data by their range (above 255: 16-bit), then clamped."""
    scaled = _scaled(array, 65535.0 if array.max() > 255 else 255.0)
    return unit_range(scaled, field_name, source, warnings)


def _pil_to_float(image: Image.Image, field_name: str, warnings: list[str]) -> np.ndarray:
    mode = image.mode
    if mode.startswith("I;16"):  # 16-bit grayscale, either byte order
        return _scaled(np.asarray(image), 65535.0)
    if mode == "I":  # 32-bit integers
        return _integers_by_range(np.asarray(image), field_name, f"{image.format} 32-bit integer", warnings)
    if mode == "F":  # 32-bit float
        return unit_range(np.asarray(image), field_name, f"{image.format} float", warnings)
    if mode not in ("RGB", "RGBA", "L", "LA"):  # palette, CMYK, YCbCr, LAB, HSV, bilevel: Pillow's conversion
        image = image.convert("RGBA" if image.has_transparency_data else "RGB")  # alpha band or a tRNS colour
    return _scaled(np.asarray(image), 255.0)  # 8 bits per channel
