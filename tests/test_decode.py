"""decode_image: every pixel mode the accepted formats produce, EXIF orientation, limits,
and hostile input (bombs, truncation, other formats, random and mutated bytes).

Images are generated here with Pillow (or written byte by byte where Pillow cannot write the
variant), plus matplotlib's real grace_hopper.jpg.
"""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from collections.abc import Iterable
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from service.config import DecodeLimits
from service.errors import ImageTooLarge, ImageUndecodable, InvalidArgument, InvalidInput
from service.pipeline.decode import ALPHA_BACKGROUND, MAX_JPEG_SCANS, MIN_SIDE, decode_image
from service.pipeline.types import DecodedImage
from tests.conftest import grace_hopper_path

GREY = ALPHA_BACKGROUND[0]


# ---------------------------------------------------------------- helpers


def encode(im: Image.Image, fmt: str, **params: Any) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **params)
    return buf.getvalue()


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_file(
    width: int,
    height: int,
    *,
    bit_depth: int,
    colour_type: int,
    rows: Iterable[bytes] | None,
    extra: Iterable[tuple[bytes, bytes]] = (),
) -> bytes:
    """A PNG written by hand; rows are raw scanlines without the filter byte (None: no IDAT)."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    out = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr)
    for kind, body in extra:
        out += png_chunk(kind, body)
    if rows is not None:
        packer = zlib.compressobj(9)
        idat = b"".join(packer.compress(b"\x00" + row) for row in rows) + packer.flush()
        out += png_chunk(b"IDAT", idat)
    return out + png_chunk(b"IEND", b"")


def assert_valid(image: DecodedImage, limits: DecodeLimits = DecodeLimits()) -> None:  # noqa: B008
    rgb = image.rgb
    assert isinstance(rgb, np.ndarray)
    assert rgb.dtype == np.uint8
    assert rgb.ndim == 3 and rgb.shape[2] == 3
    assert rgb.flags.c_contiguous
    assert image.format in ("JPEG", "PNG", "WEBP")
    assert MIN_SIDE <= image.width <= limits.max_side
    assert MIN_SIDE <= image.height <= limits.max_side
    assert image.width * image.height <= limits.max_pixels


def decode_ok(data: bytes, **kw: Any) -> np.ndarray:
    image = decode_image(data, **kw)
    assert_valid(image, kw.get("limits", DecodeLimits()))
    return image.rgb


def upright_pattern(width: int = 48, height: int = 32) -> np.ndarray:
    """Asymmetric under all 8 orientations: distinct corner colours plus a gradient."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 // (width - 1), y * 255 // (height - 1), (x + 2 * y) % 256], axis=-1)
    rgb = rgb.astype(np.uint8)
    rgb[:8, :8] = (255, 0, 0)
    rgb[:8, -8:] = (0, 255, 0)
    rgb[-8:, :8] = (0, 0, 255)
    return rgb


def stored_for_orientation(upright: np.ndarray, orientation: int) -> np.ndarray:
    """The pixels a camera stores so that EXIF ``orientation`` displays ``upright``.

    Written from the EXIF definitions of where row 0 / column 0 go, independently of Pillow.
    """
    stored = {
        1: upright,
        2: upright[:, ::-1],
        3: upright[::-1, ::-1],
        4: upright[::-1, :],
        5: upright.swapaxes(0, 1),  # row 0 = visual left, col 0 = visual top
        6: np.rot90(upright, 1),  # row 0 = visual right, col 0 = visual top
        7: np.rot90(upright, 2).swapaxes(0, 1),  # row 0 = visual right, col 0 = visual bottom
        8: np.rot90(upright, -1),  # row 0 = visual left, col 0 = visual bottom
    }[orientation]
    return np.ascontiguousarray(stored)


def with_orientation(upright: np.ndarray, orientation: int, fmt: str, **params: Any) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored = Image.fromarray(stored_for_orientation(upright, orientation))
    return encode(stored, fmt, exif=exif.tobytes(), **params)


def composite(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha.astype(np.float64)[..., None] / 255.0
    return rgb.astype(np.float64) * a + GREY * (1.0 - a)


def rng_rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


# ---------------------------------------------------------------- a real photo


def test_grace_hopper_jpeg_matches_pillow_rgb() -> None:
    path = grace_hopper_path()
    rgb = decode_ok(path.read_bytes())
    with Image.open(path) as im:
        expected = np.asarray(im.convert("RGB"))
    assert rgb.shape == (600, 512, 3)
    np.testing.assert_array_equal(rgb, expected)


def test_result_is_read_only_and_format_named() -> None:
    image = decode_image(grace_hopper_path().read_bytes())
    assert image.format == "JPEG"
    assert not image.rgb.flags.writeable  # frozen result: stages must not write into it


@pytest.mark.parametrize("wrap", [bytes, bytearray, memoryview])
def test_accepts_bytes_like(wrap: Any) -> None:
    data = encode(Image.fromarray(rng_rgb(20, 30)), "PNG")
    np.testing.assert_array_equal(decode_ok(wrap(data)), rng_rgb(20, 30))


# ---------------------------------------------------------------- pixel modes


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_rgb_lossless_round_trip(fmt: str) -> None:
    src = rng_rgb(33, 47)
    params = {"lossless": True} if fmt == "WEBP" else {}
    image = decode_image(encode(Image.fromarray(src), fmt, **params))
    assert image.format == fmt
    np.testing.assert_array_equal(image.rgb, src)


def test_grey_png_and_jpeg() -> None:
    grey = np.random.default_rng(1).integers(0, 256, (24, 40), dtype=np.uint8)
    rgb = decode_ok(encode(Image.fromarray(grey), "PNG"))
    np.testing.assert_array_equal(rgb, np.repeat(grey[..., None], 3, axis=2))
    flat = np.full((24, 40), 77, np.uint8)
    rgb = decode_ok(encode(Image.fromarray(flat), "JPEG"))
    assert np.abs(rgb.astype(int) - 77).max() <= 1
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()


def test_one_bit_png() -> None:
    bits = np.random.default_rng(2).integers(0, 2, (20, 36)).astype(bool)
    rgb = decode_ok(encode(Image.fromarray(bits), "PNG"))
    np.testing.assert_array_equal(rgb, np.where(bits[..., None], 255, 0).repeat(3, axis=2))


def test_palette_png_without_transparency() -> None:
    palette = rng_rgb(1, 256, seed=3).reshape(-1)
    idx = np.random.default_rng(4).integers(0, 256, (18, 22), dtype=np.uint8)
    im = Image.new("P", (22, 18))
    im.putdata(idx.reshape(-1).tolist())
    im.putpalette(palette.tolist())
    rgb = decode_ok(encode(im, "PNG"))
    np.testing.assert_array_equal(rgb, palette.reshape(256, 3)[idx])


def test_palette_png_with_single_transparent_index() -> None:
    idx = np.zeros((20, 20), np.uint8)
    idx[:, 10:] = 1
    im = Image.new("P", (20, 20))
    im.putdata(idx.reshape(-1).tolist())
    im.putpalette([200, 10, 10, 0, 0, 0] + [0] * 762)
    rgb = decode_ok(encode(im, "PNG", transparency=1))
    assert (rgb[:, :10] == (200, 10, 10)).all()
    assert (rgb[:, 10:] == GREY).all()  # transparent black is grey, not black


def test_palette_png_with_alpha_per_entry() -> None:
    idx = np.tile(np.arange(4, dtype=np.uint8).repeat(5), (16, 1))  # 16 x 20
    im = Image.new("P", (20, 16))
    im.putdata(idx.reshape(-1).tolist())
    colours = [(255, 255, 255), (0, 0, 0), (255, 0, 0), (10, 200, 30)]
    im.putpalette([c for rgb in colours for c in rgb] + [0] * (768 - 12))
    alphas = [0, 64, 200, 255]
    rgb = decode_ok(encode(im, "PNG", transparency=bytes(alphas)))
    for i, (colour, alpha) in enumerate(zip(colours, alphas, strict=True)):
        want = composite(np.array(colour, np.uint8)[None], np.array([alpha], np.uint8))[0]
        assert np.abs(rgb[:, i * 5 : i * 5 + 5].astype(float) - want).max() <= 1.0


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_rgba_is_composited_over_grey(fmt: str) -> None:
    src = rng_rgb(24, 32, seed=5)
    alpha = np.random.default_rng(6).integers(0, 256, (24, 32), dtype=np.uint8)
    alpha[:4] = 0
    alpha[-4:] = 255
    rgba = np.dstack([src, alpha])
    params = {"lossless": True, "exact": True} if fmt == "WEBP" else {}
    rgb = decode_ok(encode(Image.fromarray(rgba), fmt, **params))
    assert (rgb[:4] == GREY).all()
    np.testing.assert_array_equal(rgb[-4:], src[-4:])
    assert np.abs(rgb.astype(float) - composite(src, alpha)).max() <= 1.0


def test_grey_alpha_png() -> None:
    grey = np.random.default_rng(7).integers(0, 256, (16, 24), dtype=np.uint8)
    alpha = np.random.default_rng(8).integers(0, 256, (16, 24), dtype=np.uint8)
    rgb = decode_ok(encode(Image.fromarray(np.dstack([grey, alpha])), "PNG"))
    want = composite(np.repeat(grey[..., None], 3, axis=2), alpha)
    assert np.abs(rgb.astype(float) - want).max() <= 1.0


def test_rgb_png_with_transparent_colour() -> None:
    src = np.full((16, 16, 3), 40, np.uint8)
    src[:8] = (1, 2, 3)
    rgb = decode_ok(encode(Image.fromarray(src), "PNG", transparency=(1, 2, 3)))
    assert (rgb[:8] == GREY).all()
    assert (rgb[8:] == 40).all()


def test_sixteen_bit_grey_png_is_scaled_not_clipped() -> None:
    values = np.array([0, 255, 256, 1000, 32768, 65280, 65535], np.uint16)
    grey16 = np.tile(np.repeat(values, 3), (16, 1))  # 16 x 21
    im = Image.fromarray(grey16)
    assert im.mode == "I;16"
    data = encode(im, "PNG")
    with Image.open(io.BytesIO(data)) as check:
        assert check.mode.startswith("I")  # it really is a 16-bit file
    rgb = decode_ok(data)
    want = np.round(grey16.astype(float) * 255 / 65535).astype(np.uint8)
    np.testing.assert_array_equal(rgb[..., 0], want)
    assert rgb[0, 9, 0] == 4  # 1000 -> 4; clipping would give 255
    assert (rgb[..., 0] == rgb[..., 2]).all()


def test_sixteen_bit_grey_png_with_transparent_value() -> None:
    rows = [struct.pack(">16H", *([4660] * 8 + [60000] * 8)) for _ in range(16)]
    data = png_file(
        16, 16, bit_depth=16, colour_type=0, rows=rows, extra=[(b"tRNS", struct.pack(">H", 4660))]
    )
    rgb = decode_ok(data)
    assert (rgb[:, :8] == GREY).all()
    assert (rgb[:, 8:] == round(60000 * 255 / 65535)).all()


def test_sixteen_bit_rgb_png() -> None:
    # Pillow cannot write 16-bit RGB, so the file is written by hand.
    values = np.random.default_rng(9).integers(0, 65536, (16, 20, 3), dtype=np.uint16)
    data = png_file(
        20, 16, bit_depth=16, colour_type=2, rows=[row.astype(">u2").tobytes() for row in values]
    )
    rgb = decode_ok(data)
    assert np.abs(rgb.astype(float) - values.astype(float) * 255 / 65535).max() <= 1.0


def test_cmyk_jpeg_with_adobe_marker() -> None:
    patches = [
        ((255, 0, 0, 0), (0, 255, 255)),  # cyan
        ((0, 255, 0, 0), (255, 0, 255)),  # magenta
        ((0, 0, 255, 0), (255, 255, 0)),  # yellow
        ((0, 0, 0, 255), (0, 0, 0)),  # black
        ((0, 0, 0, 0), (255, 255, 255)),  # paper
    ]
    cmyk = np.zeros((16, 16 * len(patches), 4), np.uint8)
    for i, (ink, _) in enumerate(patches):
        cmyk[:, i * 16 : (i + 1) * 16] = ink
    data = encode(
        Image.frombytes("CMYK", (cmyk.shape[1], cmyk.shape[0]), cmyk.tobytes()), "JPEG", quality=95
    )
    with Image.open(io.BytesIO(data)) as check:
        assert check.mode == "CMYK" and "adobe" in check.info  # stored inverted, Adobe-style
    rgb = decode_ok(data)
    for i, (_, want) in enumerate(patches):
        centre = rgb[4:12, i * 16 + 4 : i * 16 + 12].astype(int)
        assert np.abs(centre - np.array(want)).max() <= 8, (i, centre.mean(axis=(0, 1)))


def test_ycbcr_and_rgb_coded_jpegs() -> None:
    src = upright_pattern()
    base = decode_ok(encode(Image.fromarray(src), "JPEG", quality=95)).astype(int)
    from_ycbcr = decode_ok(encode(Image.fromarray(src).convert("YCbCr"), "JPEG", quality=95))
    keep_rgb = decode_ok(encode(Image.fromarray(src), "JPEG", quality=95, keep_rgb=True))
    assert np.abs(from_ycbcr.astype(int) - base).mean() < 2.0
    assert np.abs(keep_rgb.astype(int) - src.astype(int)).mean() < 4.0


def test_progressive_jpeg() -> None:
    src = upright_pattern()
    rgb = decode_ok(encode(Image.fromarray(src), "JPEG", quality=95, progressive=True))
    assert np.abs(rgb.astype(int) - src.astype(int)).mean() < 4.0


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_animation_gives_first_frame(fmt: str) -> None:
    red = Image.new("RGB", (20, 20), (255, 0, 0))
    blue = Image.new("RGB", (20, 20), (0, 0, 255))
    params = {"lossless": True} if fmt == "WEBP" else {}
    data = encode(red, fmt, save_all=True, append_images=[blue], duration=100, **params)
    with Image.open(io.BytesIO(data)) as check:
        assert getattr(check, "n_frames", 1) == 2
    rgb = decode_ok(data)
    assert (rgb == (255, 0, 0)).all()


def test_multi_picture_jpeg_gives_first_picture() -> None:
    red = Image.new("RGB", (24, 24), (255, 0, 0))
    blue = Image.new("RGB", (24, 24), (0, 0, 255))
    data = encode(red, "MPO", save_all=True, append_images=[blue])
    with Image.open(io.BytesIO(data)) as check:
        assert check.format == "MPO"
    image = decode_image(data)
    assert image.format == "JPEG"
    assert np.abs(image.rgb.astype(int) - (255, 0, 0)).max() <= 2


# ---------------------------------------------------------------- EXIF orientation


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "JPEG"])
def test_exif_orientation_gives_upright_pixels(fmt: str, orientation: int) -> None:
    upright = upright_pattern()
    params: dict[str, Any] = {"lossless": True} if fmt == "WEBP" else {}
    if fmt == "JPEG":
        params = {"quality": 98, "subsampling": 0}
    rgb = decode_ok(with_orientation(upright, orientation, fmt, **params))
    assert rgb.shape == upright.shape
    if fmt == "JPEG":
        assert np.abs(rgb.astype(int) - upright.astype(int)).mean() < 2.0
        assert (np.abs(rgb[2:6, 2:6].astype(int) - (255, 0, 0)) < 24).all()  # red top-left
    else:
        np.testing.assert_array_equal(rgb, upright)


@pytest.mark.parametrize("value", [0, 9, 65535])
def test_out_of_range_orientation_is_ignored(value: int) -> None:
    upright = upright_pattern()
    exif = Image.Exif()
    exif[0x0112] = value
    data = encode(Image.fromarray(upright), "PNG", exif=exif.tobytes())
    np.testing.assert_array_equal(decode_ok(data), upright)


@pytest.mark.parametrize(
    "exif_block",
    [
        b"Exif\x00\x00garbage that is not TIFF",
        b"Exif\x00\x00II*\x00\x08\x00\x00\x00\xff\xff",  # IFD claims 65535 entries, has none
        b"Exif\x00\x00MM\x00*\x7f\xff\xff\xff",  # IFD offset far past the end
        b"Exif\x00\x00II*\x00\x08\x00\x00\x00\x01\x00\x12\x01\x03\x00\x01\x00",  # cut mid-tag
    ],
)
def test_corrupt_exif_keeps_the_image(exif_block: bytes) -> None:
    src = upright_pattern()
    clean = encode(Image.fromarray(src), "JPEG", quality=95)
    assert clean[:2] == b"\xff\xd8"
    app1 = b"\xff\xe1" + struct.pack(">H", len(exif_block) + 2) + exif_block
    data = clean[:2] + app1 + clean[2:]
    # Pillow *warns* about corrupt EXIF while opening a JPEG; pytest's "-W error" would turn
    # that into an exception, so restore the production behaviour (warnings are reported,
    # not raised) for this one call.
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        rgb = decode_ok(data)
    np.testing.assert_array_equal(rgb, decode_ok(clean))


# ---------------------------------------------------------------- argument checks


@pytest.mark.parametrize("value", ["a string", None, 42, [1, 2, 3], np.zeros(10, np.uint8)])
def test_wrong_argument_types(value: Any) -> None:
    with pytest.raises(InvalidArgument, match="bytes"):
        decode_image(value)


@pytest.mark.parametrize("empty", [b"", bytearray(), memoryview(b"")])
def test_empty(empty: Any) -> None:
    with pytest.raises(ImageUndecodable, match="empty"):
        decode_image(empty)


def test_over_max_bytes() -> None:
    data = encode(Image.fromarray(rng_rgb(64, 64)), "PNG")
    with pytest.raises(ImageTooLarge) as info:
        decode_image(data, DecodeLimits(max_bytes=len(data) - 1))
    assert info.value.metadata == {"bytes": str(len(data)), "limit": str(len(data) - 1)}
    assert info.value.reason == "IMAGE_TOO_LARGE"
    decode_ok(data, limits=DecodeLimits(max_bytes=len(data)))
    for wrap in (bytearray, memoryview):
        with pytest.raises(ImageTooLarge):
            decode_image(wrap(data), DecodeLimits(max_bytes=len(data) - 1))


def test_released_memoryview() -> None:
    view = memoryview(encode(Image.fromarray(rng_rgb(20, 20)), "PNG"))
    view.release()
    with pytest.raises(InvalidArgument):
        decode_image(view)


@pytest.mark.parametrize("side", [1, 8, MIN_SIDE - 1])
def test_too_small_for_a_face(side: int) -> None:
    data = encode(Image.new("RGB", (side, 100)), "PNG")
    with pytest.raises(InvalidArgument, match="too small"):
        decode_image(data)
    decode_ok(encode(Image.new("RGB", (MIN_SIDE, MIN_SIDE)), "PNG"))


# ---------------------------------------------------------------- limits and bombs


def test_one_bit_png_declaring_400_megapixels_is_refused_before_decoding() -> None:
    # 20000 x 20000 1-bit, all zero: ~50 KB of zlib that would inflate to 400 Mpx.
    rows = (bytes(2500) for _ in range(20000))
    data = png_file(20000, 20000, bit_depth=1, colour_type=0, rows=rows)
    assert len(data) < 200_000
    with pytest.raises(ImageTooLarge) as info:
        decode_image(data)
    assert info.value.metadata["limit_name"] == "max_side"
    assert info.value.metadata["pixels"] == str(400_000_000)
    with pytest.raises(ImageTooLarge) as info:
        decode_image(data, DecodeLimits(max_side=30_000))
    assert info.value.metadata["limit_name"] == "max_pixels"


def test_palette_png_of_100_megapixels_is_refused_not_warned() -> None:
    # 100 Mpx is inside the band where Pillow's global guard only *warns* (pytest turns that
    # warning into an error, so this also proves Pillow's guard never runs first).
    palette = (b"PLTE", bytes([0, 0, 0, 255, 255, 255]))
    data = png_file(
        10000,
        10000,
        bit_depth=8,
        colour_type=3,
        rows=(bytes(10000) for _ in range(10000)),
        extra=[palette],
    )
    assert len(data) < 500_000
    assert Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < 10**8
    with pytest.raises(ImageTooLarge) as info:
        decode_image(data)
    assert info.value.metadata == {
        "width": "10000",
        "height": "10000",
        "pixels": "100000000",
        "limit": str(DecodeLimits().max_pixels),
        "limit_name": "max_pixels",
    }


def test_size_check_precedes_pixel_decoding() -> None:
    # No pixel data at all: decoding would fail as undecodable, so ImageTooLarge proves the
    # header check came first.
    headers_only = png_file(10000, 10000, bit_depth=8, colour_type=2, rows=None)
    with pytest.raises(ImageTooLarge):
        decode_image(headers_only)
    with pytest.raises(ImageUndecodable):
        decode_image(png_file(100, 100, bit_depth=8, colour_type=2, rows=None))


def test_side_limit() -> None:
    data = png_file(13000, 16, bit_depth=1, colour_type=0, rows=(bytes(1625) for _ in range(16)))
    with pytest.raises(ImageTooLarge) as info:
        decode_image(data)
    assert info.value.metadata["limit_name"] == "max_side"
    assert info.value.metadata["width"] == "13000"


@pytest.mark.parametrize(
    ("fmt", "params"),
    [("JPEG", {}), ("PNG", {}), ("WEBP", {}), ("WEBP", {"lossless": True})],
)
def test_pixel_limit_uses_the_declared_size(fmt: str, params: dict[str, Any]) -> None:
    data = encode(Image.fromarray(rng_rgb(50, 70)), fmt, **params)
    with pytest.raises(ImageTooLarge) as info:
        decode_image(data, DecodeLimits(max_pixels=70 * 50 - 1))
    assert (info.value.metadata["width"], info.value.metadata["height"]) == ("70", "50")
    decode_ok(data, limits=DecodeLimits(max_pixels=70 * 50))


def test_webp_with_alpha_declares_size_in_vp8x() -> None:
    rgba = np.dstack([rng_rgb(40, 30), np.full((40, 30), 128, np.uint8)])
    data = encode(Image.fromarray(rgba), "WEBP")
    assert data[12:16] == b"VP8X"
    with pytest.raises(ImageTooLarge) as info:
        decode_image(data, DecodeLimits(max_side=39))
    assert (info.value.metadata["width"], info.value.metadata["height"]) == ("30", "40")


def test_webp_canvas_bomb_is_refused_before_the_decoder_exists() -> None:
    # VP8X header declaring a 16384 x 16384 canvas and nothing else.
    vp8x = b"VP8X" + struct.pack("<I", 10) + b"\x00" * 4 + (16383).to_bytes(3, "little") * 2
    data = b"RIFF" + struct.pack("<I", 4 + len(vp8x)) + b"WEBP" + vp8x
    with pytest.raises(ImageTooLarge) as info:
        decode_image(data)
    assert info.value.metadata["width"] == "16384"


def test_jpeg_with_too_many_scans() -> None:
    clean = encode(Image.fromarray(rng_rgb(32, 32)), "JPEG", progressive=True)
    data = clean + b"\xff\xda\x00\x08\x01\x01\x00\x00\x3f\x00" * MAX_JPEG_SCANS
    with pytest.raises(ImageTooLarge) as info:
        decode_image(data)
    assert int(info.value.metadata["scans"]) > MAX_JPEG_SCANS


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_does_not_depend_on_pillows_global_guard(fmt: str, monkeypatch: pytest.MonkeyPatch) -> None:
    data = encode(Image.fromarray(rng_rgb(64, 64)), fmt)
    # 4096 px is over this limit, where Image.open would warn (an error under pytest).
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3000)
    assert decode_ok(data).shape == (64, 64, 3)


def test_pillows_global_guard_error_becomes_image_too_large(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Pillow's WebP plugin still applies its (error-only) guard while opening; if a process
    # lowers that guard below our limits, the refusal must still be a clean ImageTooLarge.
    data = encode(Image.fromarray(rng_rgb(64, 64)), "WEBP")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageTooLarge):
        decode_image(data)


# ---------------------------------------------------------------- not images / broken images


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "TIFF", "ICO", "PPM"])
def test_other_formats_are_named_and_refused(fmt: str) -> None:
    data = encode(Image.fromarray(rng_rgb(32, 32)), fmt)
    with pytest.raises(ImageUndecodable, match="only JPEG, PNG and WebP") as info:
        decode_image(data)
    assert info.value.metadata["format"] == fmt
    assert info.value.reason == "IMAGE_UNDECODABLE"


@pytest.mark.parametrize(
    "data",
    [
        b"hello, this is plain text and no image",
        b"%PDF-1.7\n",
        b"\x00" * 1000,
        np.random.default_rng(10).bytes(5000),
        np.random.default_rng(11).bytes(3),
        b"\xff\xd8\xff",  # JPEG magic only
        b"\x89PNG\r\n\x1a\n",  # PNG magic only
        b"RIFF\x00\x00\x00\x00WEBP",  # WebP magic only
    ],
)
def test_non_image_data(data: bytes) -> None:
    with pytest.raises(ImageUndecodable):
        decode_image(data)


def _photo_like(fmt: str) -> bytes:
    # Noise so every cut lands in real pixel data; progressive JPEG exercises the multi-scan path.
    params = {"JPEG": {"quality": 90}, "PNG": {}, "WEBP": {"quality": 80}}[fmt]
    return encode(Image.fromarray(rng_rgb(120, 160, seed=12)), fmt, **params)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
@pytest.mark.parametrize("fraction", [0.02, 0.1, 0.5, 0.9, 0.98])
def test_truncated(fmt: str, fraction: float) -> None:
    data = _photo_like(fmt)
    cut = data[: int(len(data) * fraction)]
    with pytest.raises(ImageUndecodable) as info:
        decode_image(cut)
    assert info.value.metadata.get("format") == fmt


def test_truncated_jpeg_just_before_end_marker() -> None:
    data = _photo_like("JPEG")
    assert data[-2:] == b"\xff\xd9"
    with pytest.raises(ImageUndecodable, match="truncated"):
        decode_image(data[:-3])


def test_png_with_broken_header_checksum() -> None:
    data = bytearray(_photo_like("PNG"))
    data[29] ^= 0xFF  # inside IHDR's CRC
    with pytest.raises(ImageUndecodable, match="PNG"):
        decode_image(bytes(data))


# ---------------------------------------------------------------- fuzz


def _fuzz_seeds() -> list[bytes]:
    exif = Image.Exif()
    exif[0x0112] = 6
    pattern = Image.fromarray(upright_pattern(40, 24))
    rgba = Image.fromarray(np.dstack([upright_pattern(24, 24), np.full((24, 24), 90, np.uint8)]))
    return [
        grace_hopper_path().read_bytes(),
        encode(pattern, "JPEG", quality=80, exif=exif.tobytes()),
        encode(pattern, "JPEG", quality=80, progressive=True),
        encode(pattern, "PNG", exif=exif.tobytes()),
        encode(pattern.convert("P"), "PNG", transparency=3),
        encode(rgba, "PNG"),
        encode(pattern, "WEBP", quality=70, exif=exif.tobytes()),
        encode(rgba, "WEBP", lossless=True),
    ]


FUZZ_SEEDS = _fuzz_seeds()


@st.composite
def mutated_images(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(FUZZ_SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "header"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip":
            data[pos] ^= draw(st.integers(1, 255))
        elif kind == "header":  # headers hold sizes, counts and offsets: hit them hardest
            pos = draw(st.integers(0, min(len(data), 200) - 1))
            data[pos] = draw(st.integers(0, 255))
        elif kind == "truncate":
            del data[pos:]
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        else:
            del data[pos : pos + draw(st.integers(1, 64))]
        if not data:
            break
    return bytes(data)


@settings(
    max_examples=400,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(mutated_images())
def test_fuzz_mutated_images_only_decode_or_raise_invalid_input(data: bytes) -> None:
    limits = DecodeLimits(max_pixels=4_000_000, max_side=4000)
    try:
        image = decode_image(data, limits)
    except InvalidInput as exc:
        assert exc.message
        return
    assert_valid(image, limits)
