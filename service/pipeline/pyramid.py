"""dlib's tiled image pyramid (``input_rgb_image_pyramid<pyramid_down<6>>``) and ``pyramid_up``.

The MMOD detector does not run on the photo itself: dlib packs the photo and its 5/6-scaled
copies into one padded canvas, normalises it to ``(pixel - mean) / 256`` and runs the fully
convolutional net once over the canvas (docs/dlib-models.md §5.2). Detections are mapped back
through the tile rectangles, so the layout here must equal dlib's to the pixel.

The resizes reproduce dlib's ``resize_image`` bilinear code paths operation by operation
(float32 SIMD lanes with a float32-accumulated sample position, then a scalar double tail),
because ``pyramid_up`` truncates to uint8 and a one-ulp difference in a weight turns 255
into 254. Everything is vectorised: per level we precompute the index and weight vectors
once and gather whole rows, then whole columns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from service.errors import InvalidArgument
from service.pipeline.types import FloatArray, UInt8Array

IntArray = npt.NDArray[np.int64]

PYRAMID_PADDING = 10  # rows/columns of zeros between tiles
PYRAMID_OUTER_PADDING = 11  # zeros around the whole canvas
_MIN_LEVEL_HEIGHT = 5  # dlib stops the pyramid below this many rows
_PYRAMID_RATE = (6 - 1.0) / 6  # pyramid_down<6>: each level is 5/6 of the previous one
_BAND_ELEMENTS = 1 << 16  # resize work per band of rows (floats per temporary)


@dataclass(frozen=True, slots=True)
class TiledPyramid:
    """The network input and where each pyramid level sits in it.

    ``tensor`` is (1, 3, H, W) float32, planar R, G, B; zero (= the mean colour) outside the
    tiles. ``rects`` is (L, 4) int64 inclusive [left, top, right, bottom] per level, level 0
    being the full-resolution image.
    """

    tensor: FloatArray
    rects: IntArray


def pyramid_level_sizes(height: int, width: int) -> list[tuple[int, int]]:
    """(rows, cols) of every pyramid level, level 0 first (dlib's build loop)."""
    if height * width == 0:
        return []
    sizes = [(height, width)]
    nr, nc = height, width
    while True:
        nr = math.floor(_PYRAMID_RATE * nr)
        nc = math.floor(_PYRAMID_RATE * nc)
        if nr * nc == 0 or nr < _MIN_LEVEL_HEIGHT:
            return sizes
        sizes.append((nr, nc))


def tiled_pyramid_layout(
    height: int,
    width: int,
    padding: int = PYRAMID_PADDING,
    outer_padding: int = PYRAMID_OUTER_PADDING,
) -> tuple[IntArray, int, int]:
    """Tile rectangles (L, 4) and the canvas (rows, cols), as compute_tiled_image_pyramid_details.

    Levels go down a first column until the rest fits beside them; the rest are stacked
    bottom-up in a right-aligned second column, and levels that would overlap level 0 are
    dropped.
    """
    sizes = pyramid_level_sizes(height, width)
    if not sizes:
        return np.zeros((0, 4), np.int64), 0, 0
    h0, w0 = sizes[0]
    total_height = sum(h + padding for h, _ in sizes) - 2 * padding
    col_height = 0
    prev_width = 0
    for h, w in sizes:
        if w <= w0 - prev_width - padding and (col_height - h0) * 2 >= total_height - h0:
            break
        col_height += h + padding
        prev_width = w
    col_height -= padding
    canvas_rows = col_height + 2 * outer_padding
    canvas_cols = w0 + 2 * outer_padding

    rects: list[tuple[int, int, int, int]] = []
    y = outer_padding
    i = 0
    while y < col_height + outer_padding and i < len(sizes):
        h, w = sizes[i]
        rects.append((outer_padding, y, outer_padding + w - 1, y + h - 1))
        y += h + padding
        i += 1
    y -= padding
    l0, t0, r0, b0 = rects[0]
    while i < len(sizes):
        h, w = sizes[i]
        # Bottom-right corner is (O+w0-1, y-1); the tile grows up and to the left from it.
        right, bottom = outer_padding + w0 - 1, y - 1
        left, top = right - (w - 1), bottom - (h - 1)
        if max(l0, left) <= min(r0, right) and max(t0, top) <= min(b0, bottom):
            break  # would overlap level 0: dlib drops this level and all smaller ones
        rects.append((left, top, right, bottom))
        y -= h + padding
        i += 1
    return np.asarray(rects, np.int64).reshape(-1, 4), canvas_rows, canvas_cols


# --------------------------------------------------------------------------------------------
# dlib's bilinear resize (align-corners sampling), reproduced exactly.


@dataclass(frozen=True, slots=True)
class _Axis:
    """Sampling along one axis for the SIMD part of dlib's resize_image.

    ``lo``/``hi`` are source indices, ``w_lo``/``w_hi`` float32 weights.
    """

    lo: IntArray
    hi: IntArray
    w_lo: FloatArray
    w_hi: FloatArray


@dataclass(frozen=True, slots=True)
class _Plan:
    """How dlib samples one (in_h, in_w) → (out_h, out_w) resize."""

    top: IntArray
    bottom: IntArray
    tb_frac: npt.NDArray[np.float64]  # per output row, double
    simd: _Axis  # columns [0, n_simd) in float32 SIMD lanes
    tail_x: npt.NDArray[np.float64]  # double sample positions of columns [n_simd, out_w)
    tail_left: IntArray
    tail_right: IntArray

    @property
    def n_simd(self) -> int:
        return int(self.simd.lo.shape[0])


def _accumulate_f64(start: float, step: float, n: int) -> npt.NDArray[np.float64]:
    """start+step, start+2·step, ... added one step at a time in double, like dlib's loops."""
    seq = np.full(n + 1, step, dtype=np.float64)
    seq[0] = start
    return np.add.accumulate(seq)[1:]


def _accumulate_f32(start: float, step: float, n: int) -> FloatArray:
    """The same sequence added one step at a time in float32 (a SIMD lane's position)."""
    seq = np.full(n + 1, step, dtype=np.float32)
    seq[0] = start
    return np.add.accumulate(seq, dtype=np.float32)[1:]


def _plan(in_h: int, in_w: int, out_h: int, out_w: int) -> _Plan:
    x_scale = (in_w - 1) / float(max(out_w - 1, 1))
    y_scale = (in_h - 1) / float(max(out_h - 1, 1))

    # Rows: y accumulates in double from -y_scale.
    y = _accumulate_f64(-y_scale, y_scale, out_h)
    top = np.floor(y).astype(np.int64)
    bottom = np.minimum(top + 1, in_h - 1)
    tb_frac = y - top

    # Columns: four float32 lanes start at float(x0 + j·s) with x0 = -4s and each step adds
    # float(4s) in float32; dlib stops the SIMD loop at the first group of four whose last
    # lane's right neighbour falls off the image, and finishes the row in scalar double code.
    n_groups = out_w // 4 + 2  # enough groups to reach the stopping one
    x0 = -4 * x_scale
    step = np.float32(4 * x_scale)
    lanes = np.empty((n_groups, 4), np.float32)
    for j in range(4):
        lanes[:, j] = _accumulate_f32(float(np.float32(x0 + j * x_scale)), float(step), n_groups)
    left_all = lanes.astype(np.int32).astype(np.int64)  # cvttps: truncation toward zero
    stop = np.flatnonzero(left_all[:, 3] + 1 >= in_w)
    n_groups_simd = int(stop[0]) if stop.size else n_groups
    n_simd = min(4 * n_groups_simd, out_w)
    xs = lanes.reshape(-1)[:n_simd]
    lo = left_all.reshape(-1)[:n_simd]
    w_hi = xs - lo.astype(np.float32)
    w_lo = np.float32(1) - w_hi
    simd = _Axis(lo=lo, hi=lo + 1, w_lo=w_lo, w_hi=w_hi)

    n_tail = out_w - n_simd
    tail_x = _accumulate_f64(-x_scale + n_simd * x_scale, x_scale, n_tail)
    tail_left = np.floor(tail_x).astype(np.int64)
    tail_right = np.minimum(tail_left + 1, in_w - 1)
    return _Plan(top, bottom, tb_frac, simd, tail_x, tail_left, tail_right)


def _resize_into(src: FloatArray, out: FloatArray | UInt8Array) -> None:
    """dlib's bilinear ``resize_image`` of planar (C, h, w) float32 data into ``out``.

    A uint8 ``out`` selects the rgb_pixel code path (float32 lanes truncated to uint8, a
    double tail truncated to uint8), a float32 one the float-pixel path (float32 lanes, a tail
    mixing float32 rows in double).
    """
    c, in_h, in_w = src.shape
    _, out_h, out_w = out.shape
    to_uint8 = out.dtype == np.uint8
    if out.size == 0 or src.size == 0:
        return
    p = _plan(in_h, in_w, out_h, out_w)
    n = p.n_simd
    s = p.simd
    tb32 = p.tb_frac.astype(np.float32)
    inv_tb32 = (1.0 - p.tb_frac).astype(np.float32)
    lr64 = p.tail_x - p.tail_left
    lr32 = lr64.astype(np.float32)
    inv_lr32 = np.float32(1) - lr32
    # Every output column reads source columns (left, right): the SIMD lanes' (lo, lo+1),
    # then the scalar tail's. Gathering columns is the expensive step, so each band gathers
    # them once from the source rows it spans and then picks whole rows (cheap copies) for
    # the top and bottom neighbours — fewer gathers than output pixels, 4x fewer upsampling.
    cols_left = np.concatenate([s.lo, p.tail_left])
    cols_right = np.concatenate([s.hi, p.tail_right])
    # Work through the output a band of rows at a time so the temporaries stay in cache.
    band = max(4, _BAND_ELEMENTS // max(c * in_w, 1))
    for r0 in range(0, out_h, band):
        r1 = min(r0 + band, out_h)
        first, last = int(p.top[r0]), int(p.bottom[r1 - 1])
        block = np.ascontiguousarray(src[:, first : last + 1])  # take() wants it contiguous
        left = block.take(cols_left, axis=2)
        right = block.take(cols_right, axis=2)
        top = p.top[r0:r1] - first
        bottom = p.bottom[r0:r1] - first
        tl, tr = left.take(top, axis=1), right.take(top, axis=1)
        bl, br = left.take(bottom, axis=1), right.take(bottom, axis=1)
        if n:
            # out = tl·(1-tb)(1-lr) + tr·(1-tb)lr + bl·tb(1-lr) + br·tb·lr with every weight a
            # float32 product and the sum taken left to right in float32, as the SIMD lanes do.
            itb = inv_tb32[r0:r1, None]
            tb = tb32[r0:r1, None]
            acc = tl[:, :, :n] * (itb * s.w_lo)
            acc += tr[:, :, :n] * (itb * s.w_hi)
            acc += bl[:, :, :n] * (tb * s.w_lo)
            acc += br[:, :, :n] * (tb * s.w_hi)
            out[:, r0:r1, :n] = acc.astype(np.int32) if to_uint8 else acc
        if n < out_w:
            tb64 = p.tb_frac[r0:r1, None]
            t_l, t_r, b_l, b_r = tl[:, :, n:], tr[:, :, n:], bl[:, :, n:], br[:, :, n:]
            if to_uint8:
                # The rgb scalar tail computes everything in double, then truncates.
                mixed = (1.0 - tb64) * ((1.0 - lr64) * t_l + lr64 * t_r) + tb64 * (
                    (1.0 - lr64) * b_l + lr64 * b_r
                )
                out[:, r0:r1, n:] = mixed.astype(np.int32)
            else:
                # The float scalar tail mixes each row in float32 and the two rows in double.
                h_top = (inv_lr32 * t_l + lr32 * t_r).astype(np.float64)
                h_bot = (inv_lr32 * b_l + lr32 * b_r).astype(np.float64)
                out[:, r0:r1, n:] = (1.0 - tb64) * h_top + tb64 * h_bot


def resize_bilinear_f32(src: FloatArray, out_h: int, out_w: int) -> FloatArray:
    """dlib ``resize_image`` of float planes: (C, h, w) float32 → (C, out_h, out_w) float32."""
    planes = np.ascontiguousarray(src, dtype=np.float32)  # take() copies strided input per call
    out = np.empty((planes.shape[0], out_h, out_w), np.float32)
    _resize_into(planes, out)
    return out


def resize_bilinear_u8(rgb: UInt8Array, out_h: int, out_w: int) -> UInt8Array:
    """dlib ``resize_image`` of an RGB uint8 image (H, W, 3); results are truncated, not rounded."""
    planes = np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32)
    out = np.empty((3, out_h, out_w), np.uint8)
    _resize_into(planes, out)
    return np.ascontiguousarray(out.transpose(1, 2, 0))


def _pyramid_up_size(h: int, w: int) -> tuple[int, int]:
    # rect_up of (0, 0, w-1, h-1) with point_up(p) = (p + (1.25, 0.75))·2, lround'ed; the
    # new image spans (0, 0) to its bottom-right corner: (2h+1) x (2w+2).
    return _lround((h - 1 + 0.75) * 2) + 1, _lround((w - 1 + 1.25) * 2) + 1


def _check_rgb(rgb: object) -> UInt8Array:
    if (
        not isinstance(rgb, np.ndarray)
        or rgb.dtype != np.uint8
        or rgb.ndim != 3
        or (rgb.shape[2] != 3)
    ):
        shape = getattr(rgb, "shape", None)
        dtype = getattr(rgb, "dtype", type(rgb).__name__)
        raise InvalidArgument(
            f"expected a uint8 (H, W, 3) RGB array, got shape {shape} dtype {dtype}",
            metadata={"shape": str(shape), "dtype": str(dtype)},
        )
    return rgb


def pyramid_up(rgb: UInt8Array) -> UInt8Array:
    """dlib ``pyramid_up`` (pyramid_down<2>): (H, W, 3) → (2H+1, 2W+2, 3), bilinear, truncated."""
    rgb = _check_rgb(rgb)
    h, w, _ = rgb.shape
    if h * w == 0:
        return np.zeros((0, 0, 3), np.uint8)
    return resize_bilinear_u8(rgb, *_pyramid_up_size(h, w))


def _lround(v: float) -> int:
    """C's lround: halves away from zero (Python's round() would go to even)."""
    return math.floor(abs(v) + 0.5) * (1 if v >= 0 else -1)


def build_tiled_pyramid(
    rgb: UInt8Array,
    mean_rgb: tuple[float, float, float],
    *,
    upsample: int = 0,
    padding: int = PYRAMID_PADDING,
    outer_padding: int = PYRAMID_OUTER_PADDING,
) -> TiledPyramid:
    """The MMOD input tensor for one RGB image, exactly as dlib builds it.

    ``upsample`` applies :func:`pyramid_up` that many times first (the Python API's
    ``upsample_num_times``). Level 0 is ``(pixel - mean) / 256``; each further level is the
    bilinear resize of the previous level's float tile (not of the uint8 image).
    """
    rgb = _check_rgb(rgb)
    if upsample < 0:
        raise InvalidArgument(f"upsample must be >= 0, got {upsample}")
    planes = np.ascontiguousarray(rgb.transpose(2, 0, 1))
    for _ in range(upsample):
        h, w = planes.shape[1:]
        if h * w == 0:
            break
        up = np.empty((3, *_pyramid_up_size(h, w)), np.uint8)
        _resize_into(planes.astype(np.float32), up)
        planes = up
    h, w = planes.shape[1:]
    rects, rows, cols = tiled_pyramid_layout(h, w, padding, outer_padding)
    canvas = np.zeros((1, 3, rows, cols), np.float32)
    if len(rects) == 0:
        return TiledPyramid(canvas, rects)
    mean = np.asarray(mean_rgb, np.float32).reshape(3, 1, 1)
    # dlib computes (u8 - float mean) in float, then divides by 256 (exact, a power of two).
    level = planes.astype(np.float32)
    level -= mean
    level *= np.float32(1 / 256)
    for i, rect in enumerate(rects):
        left, top, right, bottom = (int(v) for v in rect)
        if i:
            smaller = np.empty((3, bottom - top + 1, right - left + 1), np.float32)
            _resize_into(level, smaller)
            level = smaller
        canvas[0, :, top : bottom + 1, left : right + 1] = level
    return TiledPyramid(canvas, rects)
