"""The MMOD tiled pyramid and pyramid_up against hand-computed layouts and slow references.

``dlib_resize_loop`` below is a per-pixel transcription of dlib's bilinear ``resize_image``
(four float32 SIMD lanes whose sample position accumulates in float32, then a scalar tail in
double), so the vectorised code must equal it bit for bit. ``ideal_resize`` is the textbook
align-corners formula in double; dlib's float32 positions drift from it by up to ~1e-5.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from service.errors import InvalidArgument
from service.pipeline.pyramid import (
    build_tiled_pyramid,
    pyramid_level_sizes,
    pyramid_up,
    resize_bilinear_f32,
    resize_bilinear_u8,
    tiled_pyramid_layout,
)

MEAN = (122.782, 117.001, 104.298)
f32 = np.float32


def dlib_resize_loop(src: np.ndarray, out_h: int, out_w: int, *, to_uint8: bool) -> np.ndarray:
    """One (h, w) plane, pixel by pixel, the way dlib's resize_image code does it."""
    in_h, in_w = src.shape
    out = np.zeros((out_h, out_w), np.uint8 if to_uint8 else np.float32)
    x_scale = (in_w - 1) / max(out_w - 1, 1)
    y_scale = (in_h - 1) / max(out_h - 1, 1)
    y = -y_scale
    for r in range(out_h):
        y += y_scale
        top = math.floor(y)
        bottom = min(top + 1, in_h - 1)
        tb = y - top
        tb32, itb32 = f32(tb), f32(1 - tb)
        x0 = -4 * x_scale
        lanes = [f32(x0 + j * x_scale) for j in range(4)]
        step = f32(4 * x_scale)
        c = 0
        while True:
            lanes = [f32(v + step) for v in lanes]
            lefts = [int(v) for v in lanes]
            if lefts[3] + 1 >= in_w:
                break
            for j in range(4):
                left = lefts[j]
                lr = f32(lanes[j] - f32(left))
                ilr = f32(f32(1) - lr)
                v = f32(f32(itb32 * ilr) * f32(src[top, left]))
                v = f32(v + f32(f32(itb32 * lr) * f32(src[top, left + 1])))
                v = f32(v + f32(f32(tb32 * ilr) * f32(src[bottom, left])))
                v = f32(v + f32(f32(tb32 * lr) * f32(src[bottom, left + 1])))
                out[r, c + j] = int(v) if to_uint8 else v
            c += 4
        x = -x_scale + c * x_scale
        while c < out_w:
            x += x_scale
            left = math.floor(x)
            right = min(left + 1, in_w - 1)
            tl, tr = src[top, left], src[top, right]
            bl, br = src[bottom, left], src[bottom, right]
            if to_uint8:
                lr64 = x - left
                v64 = (1 - tb) * ((1 - lr64) * float(tl) + lr64 * float(tr)) + tb * (
                    (1 - lr64) * float(bl) + lr64 * float(br)
                )
                out[r, c] = int(v64)
            else:
                lr = f32(x - left)
                h_top = f32(f32((f32(1) - lr) * f32(tl)) + f32(lr * f32(tr)))
                h_bot = f32(f32((f32(1) - lr) * f32(bl)) + f32(lr * f32(br)))
                out[r, c] = f32((1 - tb) * float(h_top) + tb * float(h_bot))
            c += 1
    return out


def ideal_resize(src: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Textbook align-corners bilinear resize in double (x = c·scale)."""
    in_h, in_w = src.shape
    xs = np.arange(out_w) * ((in_w - 1) / max(out_w - 1, 1))
    ys = np.arange(out_h) * ((in_h - 1) / max(out_h - 1, 1))
    x0 = np.floor(xs).astype(int)
    y0 = np.floor(ys).astype(int)
    x1 = np.minimum(x0 + 1, in_w - 1)
    y1 = np.minimum(y0 + 1, in_h - 1)
    fx = (xs - x0)[None, :]
    fy = (ys - y0)[:, None]
    s = src.astype(np.float64)
    top = (1 - fx) * s[y0][:, x0] + fx * s[y0][:, x1]
    bot = (1 - fx) * s[y1][:, x0] + fx * s[y1][:, x1]
    out: np.ndarray = (1 - fy) * top + fy * bot
    return out


def test_level_sizes_shrink_by_five_sixths_until_too_small() -> None:
    assert pyramid_level_sizes(100, 120) == [
        (100, 120), (83, 100), (69, 83), (57, 69), (47, 57), (39, 47), (32, 39), (26, 32),
        (21, 26), (17, 21), (14, 17), (11, 14), (9, 11), (7, 9), (5, 7),
    ]  # fmt: skip
    assert pyramid_level_sizes(6, 6) == [(6, 6), (5, 5)]
    assert pyramid_level_sizes(5, 100) == [(5, 100)]  # 4 rows would be below the minimum
    assert pyramid_level_sizes(0, 10) == []


def test_layout_of_a_100x120_image() -> None:
    # Hand-computed from dlib's rules. Heights 100,83,69,57,47,39,32,26,21,17,14,11,9,7,5
    # (widths 120,100,83,...,7); total_height = 537 + 15·10 - 20 = 667. The first column
    # stops before level 5 (47 wide <= 120-57-10, and (406-100)·2 >= 667-100), so it is
    # 406-10 = 396 rows high; the rest stack bottom-up, right-aligned, from row 406.
    rects, rows, cols = tiled_pyramid_layout(100, 120)
    assert (rows, cols) == (396 + 22, 120 + 22)
    assert rects.tolist() == [
        [11, 11, 130, 110], [11, 121, 110, 203], [11, 214, 93, 282], [11, 293, 79, 349],
        [11, 360, 67, 406],
        [84, 368, 130, 406], [92, 326, 130, 357], [99, 290, 130, 315], [105, 259, 130, 279],
        [110, 232, 130, 248], [114, 208, 130, 221], [117, 187, 130, 197], [120, 168, 130, 176],
        [122, 151, 130, 157], [124, 136, 130, 140],
    ]  # fmt: skip


def test_layout_drops_levels_that_would_touch_level_zero() -> None:
    # 152x77 has 18 levels; the last (5 rows x 1 column) would sit at column 87, rows
    # 162..166, and level 0 covers columns 11..87, rows 11..162: one shared pixel drops it.
    assert len(pyramid_level_sizes(152, 77)) == 18
    assert pyramid_level_sizes(152, 77)[-1] == (5, 1)
    rects, rows, cols = tiled_pyramid_layout(152, 77)
    assert (rows, cols) == (604, 99)
    assert len(rects) == 17
    assert rects[0].tolist() == [11, 11, 87, 162]
    assert rects[-1].tolist() == [86, 177, 87, 182]


def test_layout_of_a_narrow_image_is_a_single_column() -> None:
    # 60x8: heights 60,50,41,34,28,23,19 (widths 8,6,5,4,3,2,1, then 0 ends it). No level is
    # ever narrow enough to sit beside its predecessor, so all stack in one column.
    rects, rows, cols = tiled_pyramid_layout(60, 8)
    assert (rows, cols) == (sum((60, 50, 41, 34, 28, 23, 19)) + 6 * 10 + 22, 30)
    assert rects[:, 0].tolist() == [11] * 7
    assert rects[:, 1].tolist() == [11, 81, 141, 192, 236, 274, 307]


@pytest.mark.parametrize("shape", [(37, 53), (120, 90), (240, 320), (480, 640), (501, 700)])
def test_layout_tiles_are_disjoint_inside_the_canvas_and_sized_like_the_levels(
    shape: tuple[int, int],
) -> None:
    rects, rows, cols = tiled_pyramid_layout(*shape)
    sizes = pyramid_level_sizes(*shape)
    assert len(rects) >= 2
    assert cols == shape[1] + 22
    mask = np.zeros((rows, cols), np.int32)
    for (left, top, right, bottom), (h, w) in zip(rects, sizes, strict=False):
        assert (bottom - top + 1, right - left + 1) == (h, w)
        mask[top : bottom + 1, left : right + 1] += 1
    assert mask.max() == 1
    assert mask[:11].sum() == mask[-11:].sum() == mask[:, :11].sum() == mask[:, -11:].sum() == 0


def test_level_zero_is_the_normalised_image_and_the_rest_is_zero_outside_tiles() -> None:
    rng = np.random.default_rng(7)
    img = rng.integers(0, 256, (61, 83, 3), dtype=np.uint8)
    pyr = build_tiled_pyramid(img, MEAN)
    assert pyr.tensor.dtype == np.float32 and pyr.tensor.shape[:2] == (1, 3)
    left, top, right, bottom = (int(v) for v in pyr.rects[0])
    level0 = pyr.tensor[0, :, top : bottom + 1, left : right + 1]
    expected = (
        img.transpose(2, 0, 1).astype(np.float32) - np.asarray(MEAN, np.float32).reshape(3, 1, 1)
    ) / 256
    np.testing.assert_array_equal(level0, expected)
    outside = np.ones(pyr.tensor.shape[2:], bool)
    for left, top, right, bottom in pyr.rects:
        outside[top : bottom + 1, left : right + 1] = False
    assert not pyr.tensor[0][:, outside].any()


def test_each_level_is_a_bilinear_resize_of_the_previous_float_tile() -> None:
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (41, 57, 3), dtype=np.uint8)
    pyr = build_tiled_pyramid(img, MEAN)
    tiles = [pyr.tensor[0, :, t : b + 1, l : r + 1] for l, t, r, b in pyr.rects]  # noqa: E741
    assert len(tiles) >= 4
    for prev, cur in itertools.pairwise(tiles):
        for ch in range(3):
            expected = dlib_resize_loop(prev[ch], *cur.shape[1:], to_uint8=False)
            np.testing.assert_array_equal(cur[ch], expected)
            np.testing.assert_allclose(cur[ch], ideal_resize(prev[ch], *cur.shape[1:]), atol=2e-5)


@pytest.mark.parametrize(
    ("in_h", "in_w", "out_h", "out_w"),
    [(9, 13, 7, 10), (5, 5, 1, 1), (1, 7, 3, 3), (6, 17, 11, 29), (30, 41, 25, 34)],
)
def test_resize_matches_the_per_pixel_loop_for_odd_shapes(
    in_h: int, in_w: int, out_h: int, out_w: int
) -> None:
    rng = np.random.default_rng(in_h * 100 + in_w)
    src = (rng.random((1, in_h, in_w)) - 0.5).astype(np.float32)
    got = resize_bilinear_f32(src, out_h, out_w)[0]
    np.testing.assert_array_equal(got, dlib_resize_loop(src[0], out_h, out_w, to_uint8=False))
    rgb = rng.integers(0, 256, (in_h, in_w, 3), dtype=np.uint8)
    got_u8 = resize_bilinear_u8(rgb, out_h, out_w)
    for ch in range(3):
        expected = dlib_resize_loop(rgb[:, :, ch], out_h, out_w, to_uint8=True)
        np.testing.assert_array_equal(got_u8[:, :, ch], expected)


def test_pyramid_up_size_and_values() -> None:
    rng = np.random.default_rng(5)
    img = rng.integers(0, 256, (13, 19, 3), dtype=np.uint8)
    up = pyramid_up(img)
    assert up.shape == (27, 40, 3) and up.dtype == np.uint8  # (2H+1) x (2W+2)
    for ch in range(3):
        np.testing.assert_array_equal(
            up[:, :, ch], dlib_resize_loop(img[:, :, ch], 27, 40, to_uint8=True)
        )
        # Truncation, not rounding: never above the exact value, at most one level below.
        diff = np.floor(ideal_resize(img[:, :, ch], 27, 40) + 1e-6) - up[:, :, ch]
        assert diff.min() >= 0 and diff.max() <= 1
    assert (up[0, 0] == img[0, 0]).all()


def test_pyramid_up_of_a_flat_image_stays_flat_where_dlib_keeps_it() -> None:
    img = np.full((8, 8, 3), 200, np.uint8)
    up = pyramid_up(img)
    assert up.shape == (17, 18, 3)
    # float32 weight sums of 1-ulp-less-than-one truncate 200 to 199 in dlib; never lower.
    assert set(np.unique(up).tolist()) <= {199, 200}
    assert resize_bilinear_u8(img, 8, 8).tolist() == img.tolist()


def test_upsample_goes_through_pyramid_up() -> None:
    rng = np.random.default_rng(2)
    img = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    once = build_tiled_pyramid(img, MEAN, upsample=1)
    explicit = build_tiled_pyramid(pyramid_up(img), MEAN)
    np.testing.assert_array_equal(once.tensor, explicit.tensor)
    np.testing.assert_array_equal(once.rects, explicit.rects)


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((4, 4), np.uint8),
        np.zeros((4, 4, 4), np.uint8),
        np.zeros((4, 4, 3), np.float32),
        [[0, 0, 0]],
    ],
)
def test_bad_input_is_rejected(bad: object) -> None:
    with pytest.raises(InvalidArgument):
        build_tiled_pyramid(bad, MEAN)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        pyramid_up(bad)  # type: ignore[arg-type]


def test_tiny_image_gives_an_empty_canvas() -> None:
    pyr = build_tiled_pyramid(np.zeros((0, 5, 3), np.uint8), MEAN)
    assert pyr.tensor.shape == (1, 3, 0, 0) and pyr.rects.shape == (0, 4)
