"""Decode untrusted image bytes (JPEG, PNG, WebP) into EXIF-upright 8-bit RGB.

This is the service's first contact with hostile input, so the order of operations is the
defence:

1. the argument type and byte count are checked before anything parses it;
2. the container is identified by its magic bytes (JPEG, PNG and WebP only);
3. the declared size is read from the header and checked against ``DecodeLimits`` before a
   single pixel buffer exists (for WebP we parse the header ourselves, because Pillow's WebP
   plugin creates its decoder, which allocates the canvas, while opening);
4. only then are pixels decoded, with Pillow's ``LOAD_TRUNCATED_IMAGES`` left False so a
   truncated file is an error, never a half-grey picture.

Pillow's own decompression-bomb guard (``Image.MAX_IMAGE_PIXELS``) is process-global and only
*warns* between 1x and 2x its limit; we never rely on it. We open files through the format
plugins directly instead of ``Image.open``, which is where that guard (and its warning) lives;
``warnings.catch_warnings`` would be the other way, but it swaps process-global state and is
not thread-safe, and decoding runs on many worker threads at once.

Cost is O(max_pixels): the largest buffers are the decoded image, one converted copy and the
returned array. ``Image.draft`` could decode big JPEGs at 1/2..1/8 scale inside the DCT to save
memory and time; we deliberately keep full resolution (small faces in large photos need it)
and let the limits bound the cost instead.
"""

from __future__ import annotations

import io
import logging
import struct
from typing import Final

import numpy as np
from PIL import Image, ImageFile, JpegImagePlugin, PngImagePlugin, WebPImagePlugin

from service.config import DecodeLimits
from service.errors import ImageTooLarge, ImageUndecodable, InvalidArgument
from service.pipeline.types import DecodedImage, UInt8Array

__all__ = ["MAX_JPEG_SCANS", "MIN_SIDE", "decode_image"]

log = logging.getLogger(__name__)

# A face needs some pixels; dlib's smallest detector window is 40 px, other detectors ~10-16 px.
MIN_SIDE: Final = 16

# Each progressive-JPEG scan makes libjpeg walk the whole coefficient buffer again, so a file
# of thousands of tiny scans is a CPU bomb that stays well under max_bytes. Real encoders
# write ~10 scans (plus one per embedded thumbnail); 256 leaves ample room.
MAX_JPEG_SCANS: Final = 256

# Transparent pixels are composited over mid-grey rather than white or black: grey is close
# to the mean colour CNN face models subtract, so cut-out backgrounds carry almost no signal,
# and it draws no maximal-contrast edge against dark hair (as white would) or a dark
# subject's outline (as black would), either of which can pull a detector's box.
ALPHA_BACKGROUND: Final = (128, 128, 128)

_PNG_MAGIC: Final = b"\x89PNG\r\n\x1a\n"
_ACCEPTED: Final = "JPEG, PNG and WebP"

# Everything Pillow (and its C decoders) is known to raise on malformed input; anything else
# is still turned into ImageUndecodable, but logged with its traceback as unexpected.
_DECODE_ERRORS: Final = (
    OSError,  # truncated data, "broken data stream", "could not create decoder object"
    SyntaxError,  # bad headers, broken PNG chunks/CRCs ("not a ... file")
    ValueError,  # bad values inside headers (MPO offsets, ICC/EXIF sizes, modes)
    EOFError,  # PNG/WebP ran out of data mid-chunk
    struct.error,  # short header fields
    IndexError,
    KeyError,
    TypeError,
    ZeroDivisionError,
)

_TRANSPOSE: Final = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_EXIF_ORIENTATION_TAG: Final = 0x0112


def decode_image(
    data: bytes | bytearray | memoryview,
    limits: DecodeLimits = DecodeLimits(),  # noqa: B008
) -> DecodedImage:
    """Decode ``data`` into an upright, C-contiguous, read-only (H, W, 3) uint8 RGB image.

    Raises ``InvalidArgument`` for a non-bytes argument or an image too small to hold a face,
    ``ImageTooLarge`` for too many bytes or a declared size over ``limits`` (checked before
    decoding), ``ImageUndecodable`` for anything that is not a complete JPEG, PNG or WebP.
    """
    payload = _as_bytes(data, limits.max_bytes)
    if not payload:
        raise ImageUndecodable("empty image: no bytes were sent")
    fmt = _sniff_format(payload)
    if fmt == "WEBP":
        # Must precede opening: the WebP plugin allocates the canvas in its constructor.
        _check_size(_webp_declared_size(payload), limits)
    elif fmt == "JPEG":
        _check_jpeg_scans(payload)

    try:
        return _decode(payload, fmt, limits)
    except (ImageTooLarge, ImageUndecodable, InvalidArgument):
        raise
    except Image.DecompressionBombError as exc:
        # Pillow's WebP plugin applies the process-global guard while opening; reachable only
        # when that guard is set below our limits (ours run first otherwise).
        raise ImageTooLarge(f"{fmt} image is too large: {exc}") from exc
    except _DECODE_ERRORS as exc:
        raise ImageUndecodable(
            f"{fmt} data is corrupt or truncated: {_describe(exc)}", metadata={"format": fmt}
        ) from exc
    except MemoryError:
        raise
    except Exception as exc:
        # Any byte string must end in a result or an InvalidInput, never an unexpected type.
        # (Under ``-W error`` this is also where a Pillow warning about bad data lands.)
        log.warning("unexpected %s while decoding %s", type(exc).__name__, fmt, exc_info=True)
        raise ImageUndecodable(
            f"{fmt} data could not be decoded: {_describe(exc)}", metadata={"format": fmt}
        ) from exc


def _as_bytes(data: object, max_bytes: int) -> bytes:
    """The payload as bytes, refusing other types and (before any copy) too many bytes."""
    if isinstance(data, memoryview):
        try:
            size = data.nbytes
        except ValueError as exc:  # a released view
            raise InvalidArgument(f"image memoryview is not readable: {exc}") from exc
    elif isinstance(data, bytes | bytearray):
        size = len(data)
    else:
        raise InvalidArgument(
            f"image must be bytes, bytearray or memoryview, not {type(data).__name__}",
            metadata={"type": type(data).__name__},
        )
    if size > max_bytes:
        raise ImageTooLarge(
            f"image is {size} bytes; the limit is {max_bytes}",
            metadata={"bytes": str(size), "limit": str(max_bytes)},
        )
    return data if isinstance(data, bytes) else bytes(data)


def _sniff_format(payload: bytes) -> str:
    """Name the container from its magic bytes; reject every other format by name."""
    if payload.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if payload.startswith(_PNG_MAGIC):
        return "PNG"
    if payload[:4] == b"RIFF" and payload[8:12] == b"WEBP":
        return "WEBP"
    other = _other_pillow_format(payload[:16])
    if other is not None:
        raise ImageUndecodable(
            f"unsupported image format {other}; only {_ACCEPTED} are accepted",
            metadata={"format": other},
        )
    raise ImageUndecodable(
        f"data is not a recognisable image (only {_ACCEPTED} are accepted; "
        f"first bytes {payload[:8].hex()})"
    )


def _other_pillow_format(prefix: bytes) -> str | None:
    """Which other Pillow format would claim these bytes, judged by magic bytes alone."""
    Image.init()  # registers every plugin once; later calls return at once
    for name in Image.ID:
        _factory, accept = Image.OPEN[name]
        if accept is None:  # formats without a magic test would claim anything
            continue
        try:
            claimed = accept(prefix)
        except Exception:  # a plugin's sniffer choking on odd bytes is not our error
            continue
        if claimed is True or (claimed and not isinstance(claimed, str)):
            return name
    return None


def _webp_declared_size(payload: bytes) -> tuple[int, int]:
    """Canvas size from a WebP header (RIFF + first chunk VP8X, VP8L or VP8), unparsed pixels."""
    chunk = payload[12:16]
    body = payload[20:30]
    if chunk == b"VP8X" and len(body) >= 10:
        width = 1 + int.from_bytes(body[4:7], "little")
        height = 1 + int.from_bytes(body[7:10], "little")
        return width, height
    if chunk == b"VP8L" and len(body) >= 5 and body[0] == 0x2F:
        bits = int.from_bytes(body[1:5], "little")
        return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    if chunk == b"VP8 " and len(body) >= 10 and body[3:6] == b"\x9d\x01\x2a":
        width = int.from_bytes(body[6:8], "little") & 0x3FFF
        height = int.from_bytes(body[8:10], "little") & 0x3FFF
        return width, height
    raise ImageUndecodable(
        "WebP header is malformed or truncated (no VP8/VP8L/VP8X chunk with a size)",
        metadata={"format": "WEBP"},
    )


def _check_jpeg_scans(payload: bytes) -> None:
    # 0xFF 0xDA (start of scan) cannot occur inside entropy-coded data, where 0xFF is always
    # stuffed with 0x00, so counting it is a safe upper bound on the number of scans.
    scans = payload.count(b"\xff\xda")
    if scans > MAX_JPEG_SCANS:
        raise ImageTooLarge(
            f"JPEG has {scans} scans; the limit is {MAX_JPEG_SCANS} (decoding cost attack)",
            metadata={"scans": str(scans), "limit": str(MAX_JPEG_SCANS)},
        )


def _check_size(size: tuple[int, int], limits: DecodeLimits) -> None:
    width, height = size
    pixels = width * height
    details = {"width": str(width), "height": str(height), "pixels": str(pixels)}
    if width > limits.max_side or height > limits.max_side:
        raise ImageTooLarge(
            f"image is {width}x{height} px; each side must be at most {limits.max_side}",
            metadata={**details, "limit": str(limits.max_side), "limit_name": "max_side"},
        )
    if pixels > limits.max_pixels:
        raise ImageTooLarge(
            f"image is {width}x{height} = {pixels} px; the limit is {limits.max_pixels}",
            metadata={**details, "limit": str(limits.max_pixels), "limit_name": "max_pixels"},
        )
    if width < MIN_SIDE or height < MIN_SIDE:
        raise InvalidArgument(
            f"image is {width}x{height} px, too small to contain a face "
            f"(each side must be at least {MIN_SIDE} px)",
            metadata={**details, "min_side": str(MIN_SIDE)},
        )


def _open(payload: bytes, fmt: str) -> ImageFile.ImageFile:
    fp = io.BytesIO(payload)
    if fmt == "JPEG":
        # jpeg_factory also recognises multi-picture JPEGs (MPO, e.g. phone portrait mode);
        # their first picture is the primary image.
        return JpegImagePlugin.jpeg_factory(fp)
    if fmt == "PNG":
        return PngImagePlugin.PngImageFile(fp)
    return WebPImagePlugin.WebPImageFile(fp)


def _decode(payload: bytes, fmt: str, limits: DecodeLimits) -> DecodedImage:
    im = _open(payload, fmt)
    try:
        _check_size(im.size, limits)  # header only: no pixel buffer exists yet
        # Animated PNG/WebP and MPO open on their first frame; we never seek.
        im.load()
        orientation = _exif_orientation(im)
        rgb = _to_rgb(im)
        method = _TRANSPOSE.get(orientation)
        if method is not None:
            rgb = rgb.transpose(method)
        array: UInt8Array = np.asarray(rgb)  # read-only view of Pillow's bytes, C-contiguous
    finally:
        im.close()
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ImageUndecodable(f"{fmt} decoded to an unexpected array {array.dtype}{array.shape}")
    return DecodedImage(rgb=np.ascontiguousarray(array), format=fmt)


def _exif_orientation(im: Image.Image) -> int:
    """EXIF orientation 1-8; a broken EXIF block costs the orientation, not the image."""
    try:
        value = im.getexif().get(_EXIF_ORIENTATION_TAG, 1)
    except Exception as exc:  # corrupt EXIF raises (or, under -W error, warns) many types
        log.info("ignoring unreadable EXIF (%s: %s); assuming upright", type(exc).__name__, exc)
        return 1
    if isinstance(value, int) and value in _TRANSPOSE:
        return value
    if value != 1:
        log.info("ignoring invalid EXIF orientation %r; assuming upright", value)
    return 1


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any mode the three formats produce -> mode "RGB", alpha composited over grey."""
    mode = im.mode
    if mode.startswith("I"):  # 16-bit greyscale PNG: "I;16", "I;16B", "I" (32-bit container)
        return _sixteen_bit_grey_to_rgb(im)
    has_alpha = mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in im.info
    if has_alpha:
        # convert("RGBA") also turns a palette's or single-colour tRNS transparency into an
        # alpha channel (and un-premultiplies RGBa/La).
        rgba = im.convert("RGBA")
        out = Image.new("RGB", rgba.size, ALPHA_BACKGROUND)
        out.paste(rgba, mask=rgba)
        return out
    if mode == "RGB":
        return im
    # L, 1, P, CMYK (Pillow already undid Adobe's inverted CMYK while decoding), YCbCr, RGBX.
    # CMYK uses Pillow's profile-free formula, as the reference pipeline (Pillow convert)
    # does; embedded ICC profiles are ignored for every mode for the same parity reason.
    try:
        return im.convert("RGB")
    except ValueError as exc:
        raise ImageUndecodable(f"unsupported pixel mode {mode}") from exc


def _sixteen_bit_grey_to_rgb(im: Image.Image) -> Image.Image:
    # Scale 0..65535 onto 0..255 with rounding (v * 255 / 65535); Pillow's own convert
    # would clip, turning nearly every 16-bit grey value into white.
    values = np.asarray(im)
    transparent = None
    transparency = im.info.get("transparency")
    if isinstance(transparency, int):  # tRNS: one 16-bit grey value is fully transparent
        transparent = values == transparency
    wide = np.clip(values, 0, 65535).astype(np.uint32)
    del values
    wide *= 255
    wide += 32767
    wide //= 65535
    grey = wide.astype(np.uint8)
    del wide
    if transparent is not None:
        grey[transparent] = ALPHA_BACKGROUND[0]
    return Image.fromarray(grey).convert("RGB")


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
