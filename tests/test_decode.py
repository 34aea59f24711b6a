"""Decoding checked value by value against a direct decode: 16-bit precision (values that differ
below 1/255), WebP, TIFF, CMYK and palette conversion, and EXIF orientation left unapplied."""

import io
import warnings

import numpy as np
import png
import pytest
from PIL import Image

from service.common import decode as decode_module
from service.common.decode import decode

RNG = np.random.default_rng(17)
RGB = RNG.integers(0, 256, (23, 31, 3), dtype=np.uint8)
WIDE = RNG.integers(0, 65536, (23, 31, 3), dtype=np.uint16)  # not multiples of 257: 8 bits would lose them


def encoded(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def png16(array: np.ndarray, bitdepth: int = 16, **params) -> bytes:
    """A PNG written by pypng (not libpng, not Pillow): greyscale or colour, alpha from the shape."""
    height, width = array.shape[:2]
    planes = 1 if array.ndim == 2 else array.shape[2]
    buffer = io.BytesIO()
    png.Writer(width, height, bitdepth=bitdepth, greyscale=planes in (1, 2), alpha=planes in (2, 4), **params).write(
        buffer, array.reshape(height, width * planes).tolist()
    )
    return buffer.getvalue()


PNG_LAYOUTS = [(bits, 1) for bits in (1, 2, 4)] + [(bits, planes) for bits in (8, 16) for planes in (1, 2, 3, 4)]


@pytest.fixture(params=[True, False], ids=["libpng", "without-imagecodecs"])
def libpng(request, monkeypatch):
    """Each PNG test runs with the server extra's libpng and as the client install (Pillow, pypng)
    reads, for ``report``'s gallery: both must give the stored values."""
    if request.param and not decode_module.LIBPNG:
        pytest.skip("imagecodecs is not installed")
    monkeypatch.setattr(decode_module, "LIBPNG", request.param)
    return request.param


@pytest.mark.parametrize("interlace", [False, True])
@pytest.mark.parametrize("bits, planes", PNG_LAYOUTS)
def test_every_png_layout_reads_the_stored_values(bits, planes, interlace, libpng):
    """Each bit depth × colour type × interlacing, written by pypng: the stored values over
    2^bits − 1 (what libpng and Pillow both read a 1/2/4-bit grey as), alpha dropped with a warning."""
    stored = RNG.integers(0, 2**bits, (23, 31, planes) if planes > 1 else (23, 31))
    decoded = decode(png16(stored, bits, interlace=interlace), "sr")
    colour = stored[..., None] if planes == 1 else stored[..., : 1 if planes == 2 else 3]
    assert np.array_equal(decoded.pixels, np.broadcast_to(colour / (2**bits - 1), (23, 31, 3)).astype(np.float32))
    assert decoded.warnings == (["sr: alpha channel dropped"] if planes in (2, 4) else [])


@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("interlace", [False, True])
def test_a_colour_key_hides_no_channel_at_any_depth(bits, interlace, libpng):
    """tRNS on RGB: the stored values, no alpha warning, at 16 bits as at 8 (pypng's asDirect and
    libpng's default both turn a colour key into an alpha channel)."""
    stored = RNG.integers(0, 2**bits, (23, 31, 3))
    decoded = decode(png16(stored, bits, interlace=interlace, transparent=tuple(int(v) for v in stored[0, 0])), "sr")
    assert decoded.warnings == [] and np.array_equal(decoded.pixels, (stored / (2**bits - 1)).astype(np.float32))


def test_odd_ancillary_chunks_change_nothing_and_print_nothing(capfd):
    """A PNG with a malformed colour profile (libpng prints a warning on stderr for one)."""
    data = encoded(Image.fromarray(RGB), "PNG", icc_profile=b"not a colour profile")
    assert b"iCCP" in data
    decoded = decode(data, "sr")
    assert np.array_equal(decoded.pixels, RGB / np.float32(255)) and decoded.warnings == []
    assert capfd.readouterr().err == ""


def test_16bit_png_keeps_every_bit(libpng):
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


# --- every class of the hardening corpus, in process: status, field, message, values ---

from service.common.errors import ServiceError  # noqa: E402


def npy(array: np.ndarray, version=None) -> bytes:
    buffer = io.BytesIO()
    if version is None:
        np.save(buffer, array, allow_pickle=array.dtype.hasobject)
    else:
        np.lib.format.write_array(buffer, array, version=version, allow_pickle=False)
    return buffer.getvalue()


def refused(data: bytes, **limits) -> ServiceError:
    with pytest.raises(ServiceError) as caught:
        decode(data, "gt", **limits)
    assert caught.value.detail[0]["loc"] == ["body", "gt"]
    return caught.value


def test_empty_upload_is_415():
    error = refused(b"")
    assert (error.kind, error.message) == ("unsupported_media", "gt: empty file")


@pytest.mark.parametrize("dtype, scale", [(np.uint8, 255.0), (np.uint16, 65535.0)])
def test_npy_integers_scale_by_their_range(dtype, scale):
    array = RNG.integers(0, np.iinfo(dtype).max + 1, (5, 7, 3)).astype(dtype)
    decoded = decode(npy(array), "sr")
    assert np.array_equal(decoded.pixels, array.astype(np.float32) / np.float32(scale)) and decoded.warnings == []
    assert decoded.pixels.dtype == np.float32 and decoded.size == (5, 7)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_npy_floats_in_unit_range_pass_unchanged(dtype):
    array = RNG.random((6, 4, 3)).astype(dtype)
    decoded = decode(npy(array), "sr")
    assert np.array_equal(decoded.pixels, array.astype(np.float32)) and decoded.warnings == []


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float16, np.float32, np.float64])
def test_npy_big_endian_decodes_as_its_native_twin(dtype):
    """A big-endian file (saved on such a machine, or by a tool that writes '>u2') holds the same numbers."""
    native = (RNG.random((5, 7, 3)) * (np.iinfo(dtype).max if np.dtype(dtype).kind == "u" else 1)).astype(dtype)
    swapped = native.astype(np.dtype(dtype).newbyteorder(">"))
    assert swapped.dtype.byteorder == ">" or swapped.dtype.itemsize == 1
    big, little = decode(npy(swapped), "sr"), decode(npy(native), "sr")
    assert np.array_equal(big.pixels, little.pixels) and big.warnings == little.warnings == []


def test_npy_float64_beyond_float32_range_is_clamped_not_called_inf():
    array = np.array([[[1e39, 0.5, -1e300]]], dtype=np.float64)  # finite, but inf once cast to float32
    decoded = decode(npy(array), "sr")
    assert np.array_equal(decoded.pixels, np.array([[[1.0, 0.5, 0.0]]], dtype=np.float32))
    assert decoded.warnings == ["sr: .npy values outside [0, 1] were clamped"]


def test_npy_version_2_header_and_channel_counts():
    gray = RNG.random((3, 5)).astype(np.float32)
    decoded = decode(npy(gray, version=(2, 0)), "sr")
    assert np.array_equal(decoded.pixels, np.repeat(gray[..., None], 3, axis=2))
    one = decode(npy(gray[..., None]), "sr").pixels
    assert np.array_equal(one, decoded.pixels)
    for channels in (2, 4):
        array = RNG.random((3, 5, channels)).astype(np.float32)
        decoded = decode(npy(array), "lr")
        expected = array[..., :-1] if channels == 4 else np.repeat(array[..., :1], 3, axis=2)
        assert np.array_equal(decoded.pixels, expected) and decoded.warnings == ["lr: alpha channel dropped"]
        assert decoded.pixels.flags.c_contiguous


def test_npy_values_outside_unit_range_are_clamped_with_a_warning():
    array = np.array([[[-0.5, 0.25, 1.5]]], dtype=np.float32)
    decoded = decode(npy(array), "sr")
    assert np.array_equal(decoded.pixels, np.array([[[0.0, 0.25, 1.0]]], dtype=np.float32))
    assert decoded.warnings == ["sr: .npy values outside [0, 1] were clamped"]
    for values in ([[[0.0, 0.5, 1.0]]], [[[1.0, 1.0, 1.0]]], [[[0.0, 0.0, 0.0]]]):  # the bounds themselves pass
        assert decode(npy(np.array(values, dtype=np.float32)), "sr").warnings == []
    for values in ([[[1.0001, 0.5, 0.5]]], [[[-1e-4, 0.5, 0.5]]]):
        assert decode(npy(np.array(values, dtype=np.float32)), "sr").warnings != []


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_npy_nan_or_inf_is_422(bad):
    array = np.full((4, 4, 3), 0.5, dtype=np.float32)
    array[1, 2, 0] = bad
    error = refused(npy(array))
    assert (error.kind, error.message) == ("invalid", "gt: .npy holds NaN or Inf values")


def test_npy_refusals_name_the_problem():
    error = refused(npy(np.array([[None, 1]], dtype=object)))
    assert (error.kind, error.message) == ("unsupported_media", "gt: .npy object arrays are refused (they need pickle)")
    for shape in ((5,), (2, 3, 4, 3)):
        error = refused(npy(np.zeros(shape, np.uint8)))
        assert (error.kind, error.message) == ("invalid", f"gt: .npy must be H×W or H×W×C, got shape {shape}")
    error = refused(npy(np.zeros((3, 4, 5), np.uint8)))
    assert (error.kind, error.message) == ("invalid", "gt: expected H×W or H×W×C with C in 1..4, got shape (3, 4, 5)")
    for dtype in (np.int32, np.bool_, np.complex64):
        error = refused(npy(np.zeros((3, 4, 3), dtype)))
        assert error.kind == "unsupported_media"
        assert error.message == f"gt: .npy dtype {np.dtype(dtype)} unsupported; use uint8, uint16, float16, float32 or float64"
    error = refused(NPY_MAGIC_ONLY := b"\x93NUMPY\x01\x00garbage")
    assert error.kind == "unsupported_media" and error.message.startswith("gt: malformed .npy header (") and NPY_MAGIC_ONLY
    truncated = npy(np.zeros((64, 64, 3), np.float32))[:-100]
    error = refused(truncated)
    assert error.kind == "unsupported_media" and error.message.startswith("gt: unreadable .npy (")


@pytest.mark.parametrize("shape", [(0, 5, 3), (5, 0), (0, 0)])
def test_empty_arrays_are_422(shape):
    error = refused(npy(np.zeros(shape, np.uint8)))
    height, width = shape[:2]
    assert (error.kind, error.message) == ("invalid", f"gt: {width}×{height} image is empty; width and height must be at least 1")


def test_size_limits_come_from_the_header_in_height_width_order():
    """``max_pixels`` is inclusive; ``check_size`` gets (height, width); both run before any pixel is
    decoded, so a file whose pixel data is cut short is still refused for its size."""
    image = encoded(Image.fromarray(RGB), "PNG")  # 31 wide, 23 high
    assert decode(image, "sr", max_pixels=23 * 31).size == (23, 31)
    error = refused(image, max_pixels=23 * 31 - 1)
    assert error.kind == "too_large"
    assert error.message == f"gt: 31×23 = 713 pixels exceeds the limit of {23 * 31 - 1} (--max-image-pixels)"
    seen = []
    decode(image, "sr", check_size=lambda h, w: seen.append((h, w)))
    decode(npy(np.zeros((23, 31, 3), np.uint8)), "sr", check_size=lambda h, w: seen.append((h, w)))
    assert seen == [(23, 31), (23, 31)]

    def too_big(height, width):
        raise ServiceError(413, "gt", f"{height}x{width} needs too much memory", "too_large")

    for data in (image[: len(image) // 2], npy(np.zeros((23, 31, 3), np.uint8))[:-50]):  # headers intact, pixels cut
        assert refused(data, check_size=too_big).message == "23x31 needs too much memory"
        assert refused(data, max_pixels=100).kind == "too_large"


def test_pillows_bomb_check_is_a_413(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # Pillow refuses above twice this
    error = refused(encoded(Image.fromarray(RGB), "PNG"))
    assert error.kind == "too_large" and "(--max-image-pixels)" in error.message


def test_unknown_and_corrupt_images_are_415():
    error = refused(b"hello, not an image")
    assert (error.kind, error.message) == ("unsupported_media", "gt: not a decodable image; accepted: PNG, JPEG, WEBP, BMP, TIFF or .npy")
    gif = encoded(Image.fromarray(RGB).convert("P"), "GIF")
    error = refused(gif)
    assert (error.kind, error.message) == ("unsupported_media", "gt: format GIF unsupported; accepted: PNG, JPEG, WEBP, BMP, TIFF or .npy")
    for fmt in ("PNG", "JPEG"):
        data = encoded(Image.fromarray(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)), fmt)
        error = refused(data[: len(data) // 2])
        assert error.kind == "unsupported_media" and error.message.startswith(f"gt: truncated or corrupt {fmt} (")
    error = refused(png16(WIDE)[:300])  # libpng's path fails like Pillow's, naming what broke
    assert (error.kind, error.message) == ("unsupported_media", "gt: truncated or corrupt PNG (the file ends inside its IDAT chunk)")
    error = refused(png16(WIDE, interlace=True)[:300])  # pypng's path (interlaced 16-bit colour) too
    assert error.kind == "unsupported_media" and error.message.startswith("gt: truncated or corrupt PNG (") and "IDAT" in error.message


def test_16bit_png_with_alpha_keeps_every_bit_and_drops_alpha():
    rgba = RNG.integers(0, 65536, (5, 6, 4), dtype=np.uint16)
    buffer = io.BytesIO()
    png.Writer(6, 5, bitdepth=16, greyscale=False, alpha=True).write(buffer, rgba.reshape(5, 24).tolist())
    decoded = decode(buffer.getvalue(), "sr")
    assert np.array_equal(decoded.pixels, rgba[..., :3].astype(np.float32) / 65535.0)
    assert decoded.warnings == ["sr: alpha channel dropped"]
    gray_alpha = rgba[..., :2]
    buffer = io.BytesIO()
    png.Writer(6, 5, bitdepth=16, greyscale=True, alpha=True).write(buffer, gray_alpha.reshape(5, 12).tolist())
    decoded = decode(buffer.getvalue(), "sr")
    assert np.array_equal(decoded.pixels, np.repeat(gray_alpha[..., :1].astype(np.float32) / 65535.0, 3, axis=2))
    assert decoded.warnings == ["sr: alpha channel dropped"]


def test_8bit_png_with_alpha_and_grayscale(libpng):
    rgba = RNG.integers(0, 256, (5, 6, 4), dtype=np.uint8)
    decoded = decode(encoded(Image.fromarray(rgba), "PNG"), "sr")
    assert np.array_equal(decoded.pixels, rgba[..., :3].astype(np.float32) / 255.0)
    assert decoded.warnings == ["sr: alpha channel dropped"]
    gray = RGB[..., 0]
    decoded = decode(encoded(Image.fromarray(gray), "PNG"), "sr")
    assert np.array_equal(decoded.pixels, np.repeat(gray[..., None].astype(np.float32) / 255.0, 3, axis=2))
    assert decoded.warnings == []
    bilevel = Image.fromarray(gray).convert("1")
    expected = np.repeat((np.asarray(bilevel.convert("L"), dtype=np.float32) / 255.0)[..., None], 3, axis=2)
    assert np.array_equal(decode(encoded(bilevel, "PNG"), "sr").pixels, expected)


def test_palette_transparency_is_alpha(libpng):
    palette = Image.fromarray(RGB).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    decoded = decode(encoded(palette, "PNG", transparency=0), "sr")
    assert decoded.warnings == ["sr: alpha channel dropped"]
    assert np.array_equal(decoded.pixels, np.asarray(palette.convert("RGB"), dtype=np.float32) / 255.0)
    assert decode(encoded(palette, "PNG"), "sr").warnings == []


def test_16bit_gray_tiff_keeps_every_bit():
    gray = WIDE[..., 0]
    image = Image.fromarray(gray)
    assert image.mode == "I;16"
    decoded = decode(encoded(image, "TIFF"), "sr")
    assert np.array_equal(decoded.pixels, np.repeat(gray[..., None].astype(np.float32) / 65535.0, 3, axis=2))


def test_big_endian_16bit_tiff_keeps_every_bit():
    gray = WIDE[..., 1]
    image = Image.frombytes("I;16B", (gray.shape[1], gray.shape[0]), gray.astype(">u2").tobytes())
    data = encoded(image, "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "I;16B"
    decoded = decode(data, "sr").pixels
    assert np.array_equal(decoded, np.repeat(gray[..., None].astype(np.float32) / 65535.0, 3, axis=2))


def test_32bit_integer_tiff_is_read_by_its_range():
    small = RNG.integers(0, 256, (4, 5)).astype(np.int32)  # fits 8 bits: /255
    decoded = decode(encoded(Image.fromarray(small), "TIFF"), "sr").pixels
    assert np.array_equal(decoded[..., 0], small.astype(np.float32) / 255.0)
    small[0, 0] = 255  # the 8-bit maximum is still 8-bit data
    assert decode(encoded(Image.fromarray(small), "TIFF"), "sr").pixels[0, 0, 0] == 1.0
    wide = small.copy()
    wide[0, 0] = 256  # one above 8 bits: /65535
    decoded = decode(encoded(Image.fromarray(wide), "TIFF"), "sr")
    assert np.array_equal(decoded.pixels[..., 0], wide.astype(np.float32) / 65535.0) and decoded.warnings == []
    wide[0, 1] = -3000
    decoded = decode(encoded(Image.fromarray(wide), "TIFF"), "sr")
    assert decoded.pixels[0, 1, 0] == 0.0 and decoded.warnings == ["sr: TIFF 32-bit integer values outside [0, 1] were clamped"]


def test_float_tiff_like_float_npy():
    values = RNG.random((4, 5)).astype(np.float32)
    decoded = decode(encoded(Image.fromarray(values), "TIFF"), "sr")
    assert np.array_equal(decoded.pixels[..., 1], values) and decoded.warnings == []
    values[2, 3] = 2.0
    decoded = decode(encoded(Image.fromarray(values), "TIFF"), "sr")
    assert decoded.pixels[2, 3, 2] == 1.0 and decoded.warnings == ["sr: TIFF float values outside [0, 1] were clamped"]
    for bad in (np.nan, np.inf):
        values[1, 1] = bad
        error = refused(encoded(Image.fromarray(values), "TIFF"))
        assert (error.kind, error.message) == ("invalid", "gt: TIFF float holds NaN or Inf values")


@pytest.mark.parametrize("mode", ["LAB", "YCbCr", "CMYK"])
def test_other_colour_modes_become_pillows_rgb(mode):
    image = Image.fromarray(RGB).convert(mode)
    data = encoded(image, "TIFF")
    stored = Image.open(io.BytesIO(data))
    assert stored.mode == mode
    expected = np.asarray(stored.convert("RGB"), dtype=np.float32) / 255.0
    decoded = decode(data, "sr")
    assert np.array_equal(decoded.pixels, expected) and decoded.warnings == []


def test_la_tiff_drops_alpha():
    la = Image.fromarray(RGB[..., 0]).convert("LA")
    decoded = decode(encoded(la, "TIFF"), "sr")
    assert decoded.warnings == ["sr: alpha channel dropped"]
    assert np.array_equal(decoded.pixels, np.repeat(RGB[..., :1].astype(np.float32) / 255.0, 3, axis=2))


def test_colour_key_transparency_on_rgb_and_gray_is_ignored():
    """A tRNS colour key hides no channel: the stored values are scored, with no alpha warning."""
    for array, key in ((RGB, (0, 0, 0)), (RGB[..., 0], 0)):
        data = encoded(Image.fromarray(array), "PNG", transparency=key)
        assert "transparency" in Image.open(io.BytesIO(data)).info
        decoded = decode(data, "sr")
        expected = array.astype(np.float32) / 255.0
        assert decoded.warnings == [] and np.array_equal(
            decoded.pixels, expected if array.ndim == 3 else np.repeat(expected[..., None], 3, axis=2)
        )


# --- TIFFs Pillow reads at 8 bits or not at all: tifffile ---


def tiff(array: np.ndarray, **params) -> bytes:
    import tifffile

    buffer = io.BytesIO()
    photometric = "rgb" if array.ndim == 3 and array.shape[-1] in (3, 4) or params.get("planarconfig") else "minisblack"
    extra = ["unassalpha"] if array.ndim == 3 and array.shape[-1] == 4 else None
    tifffile.imwrite(buffer, array, photometric=photometric, extrasamples=extra, **params)
    return buffer.getvalue()


@pytest.mark.parametrize("compression", [None, "zlib"])
def test_16bit_rgb_tiff_keeps_every_bit(compression):
    """Pillow opens a 16-bit RGB TIFF as 8-bit RGB; the decoder must not."""
    data = tiff(WIDE, compression=compression)
    assert Image.open(io.BytesIO(data)).mode == "RGB"  # what Pillow alone would give
    decoded = decode(data, "sr")
    assert np.array_equal(decoded.pixels, WIDE.astype(np.float32) / 65535.0) and decoded.warnings == []
    rgba = np.dstack([WIDE, WIDE[..., :1]])
    decoded = decode(tiff(rgba), "sr")
    assert np.array_equal(decoded.pixels, WIDE.astype(np.float32) / 65535.0)
    assert decoded.warnings == ["sr: alpha channel dropped"]
    planar = tiff(np.moveaxis(WIDE, -1, 0), planarconfig="separate")
    assert np.array_equal(decode(planar, "sr").pixels, WIDE.astype(np.float32) / 65535.0)


def test_float_and_32bit_rgb_tiffs_pillow_cannot_open():
    values = RNG.random((5, 7, 3)).astype(np.float32)
    decoded = decode(tiff(values), "sr")
    assert np.array_equal(decoded.pixels, values) and decoded.warnings == []
    values[1, 2, 0] = 1.5
    decoded = decode(tiff(values), "sr")
    assert decoded.pixels[1, 2, 0] == 1.0 and decoded.warnings == ["sr: TIFF float values outside [0, 1] were clamped"]
    values[0, 0, 0] = np.nan
    error = refused(tiff(values))
    assert (error.kind, error.message) == ("invalid", "gt: TIFF float holds NaN or Inf values")
    wide = WIDE.astype(np.uint32)
    decoded = decode(tiff(wide), "sr")
    assert np.array_equal(decoded.pixels, WIDE.astype(np.float32) / 65535.0)
    small = RGB.astype(np.uint32)
    assert np.array_equal(decode(tiff(small), "sr").pixels, RGB.astype(np.float32) / 255.0)
    error = refused(tiff(np.zeros((4, 4, 3), np.complex64)))
    assert (error.kind, error.message) == ("unsupported_media", "gt: TIFF samples of type complex64 unsupported")


def test_tifffile_route_checks_the_size_first_and_refuses_truncation():
    data = tiff(WIDE)  # 31 wide, 23 high
    error = refused(data, max_pixels=100)
    assert (error.kind, error.message) == ("too_large", "gt: 31×23 = 713 pixels exceeds the limit of 100 (--max-image-pixels)")
    seen = []
    decode(tiff(RNG.random((5, 7, 3)).astype(np.float32)), "sr", check_size=lambda h, w: seen.append((h, w)))
    assert seen == [(5, 7)]
    error = refused(tiff(WIDE)[:2000])
    assert error.kind == "unsupported_media" and error.message.startswith("gt: truncated, corrupt or unsupported TIFF (")


def test_signed_integer_tiffs_name_their_width_when_clamped():
    """Signed samples read by their range like Pillow's mode I, and the warning names the width."""
    for dtype, bits in ((np.int32, 32), (np.int16, 16)):
        array = RGB.astype(dtype)
        array[0, 0, 0] = -5
        decoded = decode(tiff(array), "sr")
        assert decoded.pixels[0, 0, 0] == 0.0 and np.array_equal(decoded.pixels[1:], RGB[1:].astype(np.float32) / 255.0)
        assert decoded.warnings == [f"sr: TIFF {bits}-bit integer values outside [0, 1] were clamped"]


def test_signed_gray_tiffs_pillow_would_misread():
    """Pillow reads an int8 TIFF as unsigned (−1 → 255, no warning) and an int16 one as 32-bit:
    both go through tifffile, by their range, and the warning names their width."""
    import tifffile

    for dtype, bits in ((np.int8, 8), (np.int16, 16)):
        array = (RGB[..., 0] // 2).astype(dtype)
        array[0, 0] = -1
        buffer = io.BytesIO()
        tifffile.imwrite(buffer, array)
        decoded = decode(buffer.getvalue(), "sr")
        assert decoded.pixels[0, 0, 0] == 0.0
        assert np.array_equal(decoded.pixels[1:, :, 0], array[1:].astype(np.float32) / 255.0)
        assert decoded.warnings == [f"sr: TIFF {bits}-bit integer values outside [0, 1] were clamped"]


def test_min_is_white_tiffs_read_as_shown_at_every_depth():
    """MinIsWhite stores 0 as white. Pillow inverts it at 8 bits but not at 16 or in float; every
    depth now reads as shown, so one picture gives one score whatever its depth."""
    import tifffile

    def min_is_white(array) -> bytes:
        buffer = io.BytesIO()
        tifffile.imwrite(buffer, array, photometric="miniswhite")
        return buffer.getvalue()

    gray = RGB[..., 0]
    shown = (255 - gray).astype(np.float32) / 255.0
    assert np.array_equal(decode(min_is_white(gray), "sr").pixels[..., 0], shown)
    assert np.array_equal(decode(min_is_white(gray.astype(np.uint16) * 257), "sr").pixels[..., 0], shown)
    floats = decode(min_is_white(gray.astype(np.float32) / 255.0), "sr").pixels[..., 0]
    assert np.allclose(floats, shown, rtol=0, atol=1e-7)
    error = refused(min_is_white(gray.astype(np.int32)))
    assert (error.kind, error.message) == (
        "unsupported_media",
        "gt: MinIsWhite TIFF with int32 samples unsupported; use MinIsBlack, or unsigned 8/16-bit or float samples",
    )


def tiff_pages(*pages: tuple[np.ndarray, int]) -> bytes:
    """A TIFF of (samples, NewSubfileType) pages, written by tifffile."""
    import tifffile

    buffer = io.BytesIO()
    with tifffile.TiffWriter(buffer) as writer:
        for samples, subfile_type in pages:
            writer.write(samples, photometric="rgb", subfiletype=subfile_type)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt, params", [("PNG", {}), ("WEBP", dict(lossless=True)), ("TIFF", {})])
def test_an_animation_or_a_stack_is_refused_not_scored_on_its_first_frame(fmt, params):
    """Animated PNG/WebP and multi-page TIFF were scored on their first frame, silently, while a
    stacked .npy was refused: which frame was meant is the user's to say."""
    frames = [Image.fromarray(RGB), Image.fromarray(RGB[::-1].copy()), Image.fromarray(RGB[:, ::-1].copy())]
    error = refused(encoded(frames[0], fmt, save_all=True, append_images=frames[1:], **params))
    what = "full-resolution pages (a stack)" if fmt == "TIFF" else "frames (an animation)"
    assert (error.kind, error.field) == ("invalid", "gt")
    assert error.message == f"gt: the {fmt} holds 3 {what}; upload one image per field"
    single = decode(encoded(frames[0], fmt, save_all=True, **params), "sr").pixels  # one frame, written as an animation
    assert np.array_equal(single, RGB.astype(np.float32) / 255.0)


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])  # Pillow's route and tifffile's
def test_a_tiffs_reduced_resolution_pages_are_not_images_of_their_own(dtype):
    full = RGB.astype(dtype) if dtype == np.uint8 else RGB.astype(dtype) / 255.0
    with_thumbnail = tiff_pages((full, 0), (full[::2, ::2], 1))
    assert np.allclose(decode(with_thumbnail, "sr").pixels, RGB / 255.0, rtol=0, atol=1e-7)
    error = refused(tiff_pages((full, 0), (full[::2, ::2], 1), (full, 0)))
    assert error.message == "gt: the TIFF holds 2 full-resolution pages (a stack); upload one image per field"


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_only_a_tiffs_first_pages_are_read_to_find_a_stack(dtype):
    """Every page costs a parse: 20,000 one-pixel pages took 5 s to count, and a 256 MB upload
    holds a million. The first TIFF_PAGES_READ pages decide."""
    from service.common.decode import TIFF_PAGES_READ

    full = RGB.astype(dtype)
    pixel = (full[:1, :1], 1)
    late_second = tiff_pages((full, 0), *[pixel] * (TIFF_PAGES_READ - 1), (full, 0))
    assert decode(late_second, "sr").size == RGB.shape[:2]
    error = refused(tiff_pages(*[(full[:2, :2], 0)] * (TIFF_PAGES_READ + 4)))
    assert error.message == f"gt: the TIFF holds {TIFF_PAGES_READ}+ full-resolution pages (a stack); upload one image per field"


def test_a_jpeg_with_extra_pictures_is_its_first_picture():
    """Phones and cameras write JPEGs with extra pictures after the main one (MPF); Pillow names the
    format MPO, and such a JPEG was refused as 'format MPO unsupported'. It is the picture viewers show."""
    main, other = Image.fromarray(RGB), Image.fromarray(RGB[::-1].copy())
    data = encoded(main, "MPO", save_all=True, append_images=[other])
    assert Image.open(io.BytesIO(data)).format == "MPO"
    shown = np.asarray(Image.open(io.BytesIO(encoded(main, "JPEG")))).astype(np.float32) / 255.0
    decoded = decode(data, "sr")
    assert np.array_equal(decoded.pixels, shown) and decoded.warnings == []


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])  # Pillow's route and tifffile's
@pytest.mark.parametrize("pointer", ["past the end", "back to itself", "odd garbage"])
def test_a_corrupt_pointer_to_a_second_tiff_page_leaves_the_first_readable(dtype, pointer):
    """Counting pages follows each page's pointer to the next; a corrupt one raised Pillow's
    TypeError "Missing dimensions" (a 500) or, followed in a loop by tifffile, counted one page
    as 16. The first page reads as viewers show it, as it did before pages were counted."""
    import struct

    import tifffile

    buffer = io.BytesIO()
    tifffile.imwrite(buffer, RGB.astype(dtype) if dtype == np.uint8 else RGB.astype(dtype) / 255, photometric="rgb")
    data = bytearray(buffer.getvalue())
    first = struct.unpack("<I", data[4:8])[0]
    next_pointer = first + 2 + 12 * struct.unpack("<H", data[first : first + 2])[0]
    data[next_pointer : next_pointer + 4] = struct.pack(
        "<I", {"past the end": len(data) + 1000, "back to itself": first, "odd garbage": 3}[pointer]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow warns about the corrupt tags it skips
        decoded = decode(bytes(data), "sr")
    assert np.allclose(decoded.pixels, RGB / 255.0, rtol=0, atol=1e-7)
