"""Similarity transforms and face-chip extraction on synthetic inputs (geometry, edges, errors)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from service.errors import InvalidArgument
from service.pipeline.align import (
    DLIB_5POINT_TEMPLATE,
    extract_chips,
    pyramid_down2,
    similarity_transform,
)

TEMPLATE = np.array(DLIB_5POINT_TEMPLATE)


def template_in_chip(size: int = 150, padding: float = 0.25) -> np.ndarray:
    """Where the template points land in a chip (the 'from' points of the alignment)."""
    return (padding + TEMPLATE) / (2 * padding + 1) * size


@pytest.mark.parametrize(("angle", "scale"), [(0.0, 1.0), (0.3, 2.5), (-2.0, 0.4), (math.pi, 1.7)])
def test_similarity_transform_recovers_known_transform(angle: float, scale: float) -> None:
    rng = np.random.default_rng(7)
    src = rng.uniform(-50, 200, (6, 2))
    a = scale * np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    t = np.array([12.5, -40.0])
    dst = src @ a.T + t
    got_a, got_t = similarity_transform(src, dst)
    assert got_a.dtype == np.float64 and got_a.shape == (2, 2) and got_t.shape == (2,)
    np.testing.assert_allclose(got_a, a, atol=1e-9)
    np.testing.assert_allclose(got_t, t, atol=1e-7)


def test_similarity_transform_is_least_squares() -> None:
    # noisy points: the fitted transform beats the true one on squared error
    rng = np.random.default_rng(3)
    src = rng.uniform(0, 100, (20, 2))
    dst = src * 1.5 + 3 + rng.normal(0, 2, src.shape)
    a, t = similarity_transform(src, dst)
    fitted = ((src @ a.T + t - dst) ** 2).sum()
    true = ((src * 1.5 + 3 - dst) ** 2).sum()
    assert fitted <= true
    assert abs(a[0, 1] + a[1, 0]) < 1e-9 and abs(a[0, 0] - a[1, 1]) < 1e-9  # no shear


@pytest.mark.parametrize(
    ("src", "dst"),
    [
        (np.zeros((1, 2)), np.zeros((1, 2))),
        (np.zeros((5, 3)), np.zeros((5, 3))),
        (np.zeros((5, 2)), np.zeros((4, 2))),
        (np.full((5, 2), np.nan), np.zeros((5, 2))),
    ],
)
def test_similarity_transform_rejects_bad_points(src: np.ndarray, dst: np.ndarray) -> None:
    with pytest.raises(InvalidArgument):
        similarity_transform(src, dst)


def naive_pyramid_down2(img: np.ndarray) -> np.ndarray:
    k = np.array([1, 4, 6, 4, 1])
    h, w = img.shape[:2]
    out = np.zeros(((h - 3) // 2, (w - 3) // 2, 3), np.uint8)
    src = img.astype(np.int64)
    for r in range(out.shape[0]):
        for c in range(out.shape[1]):
            block = src[2 * r : 2 * r + 5, 2 * c : 2 * c + 5]
            out[r, c] = np.einsum("i,j,ijc->c", k, k, block) // 256
    return out


@pytest.mark.parametrize("shape", [(9, 9), (20, 31), (33, 18)])
def test_pyramid_down2_matches_the_definition(shape: tuple[int, int]) -> None:
    img = np.random.default_rng(1).integers(0, 256, (*shape, 3), dtype=np.uint8)
    np.testing.assert_array_equal(pyramid_down2(img), naive_pyramid_down2(img))


def test_pyramid_down2_of_tiny_images_is_empty() -> None:
    assert pyramid_down2(np.zeros((8, 50, 3), np.uint8)).shape == (0, 0, 3)


def naive_chip(img: np.ndarray, to_image: object, size: int) -> np.ndarray:
    """Chip pixel (x, y) is the bilinear sample at to_image(x + ½, y + ½): dlib's chip rect is
    centred on the template frame, so pixel centres sit half a pixel in."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    px, py = to_image(x + 0.5, y + 0.5)  # type: ignore[operator]
    x0 = np.floor(px).astype(int)
    y0 = np.floor(py).astype(int)
    fx = (px - x0)[..., None]
    fy = (py - y0)[..., None]
    src = img.astype(np.float64)
    top = src[y0, x0] * (1 - fx) + src[y0, x0 + 1] * fx
    bottom = src[y0 + 1, x0] * (1 - fx) + src[y0 + 1, x0 + 1] * fx
    return np.asarray(top * (1 - fy) + bottom * fy)


def assert_close_to(chip: np.ndarray, want: np.ndarray) -> None:
    # interior only; dlib truncates where the reference is exact, hence ±1
    diff = chip[1:-1, 1:-1].astype(np.float64) - np.floor(want[1:-1, 1:-1])
    assert np.abs(diff).max() <= 1


def test_translated_face_samples_the_shifted_window() -> None:
    rng = np.random.default_rng(5)
    img = rng.integers(0, 256, (300, 300, 3), dtype=np.uint8)

    def to_image(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return u + 40, v + 60

    pts = np.stack(to_image(*template_in_chip().T), axis=1)
    chip = extract_chips(img, pts[None].astype(np.float32))[0]
    assert_close_to(chip, naive_chip(img, to_image, 150))


def test_rotated_face_is_turned_upright() -> None:
    # The face turned by +90° in the image: the chip un-rotates it.
    rng = np.random.default_rng(6)
    img = rng.integers(0, 256, (300, 300, 3), dtype=np.uint8)

    def to_image(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return 50 + 150 - v, 70 + u

    pts = np.stack(to_image(*template_in_chip().T), axis=1)
    chip = extract_chips(img, pts[None].astype(np.float32))[0]
    assert_close_to(chip, naive_chip(img, to_image, 150))


def test_large_face_uses_the_pyramid_and_keeps_colour() -> None:
    # A face 8× the chip size in a flat-colour image: the pyramid and the bilinear
    # resampling keep the colour (truncation may lose 1).
    img = np.empty((1600, 1600, 3), np.uint8)
    img[:] = (200, 120, 40)
    pts = template_in_chip() * 8 + 200
    chip = extract_chips(img, pts[None].astype(np.float32))[0].astype(int)
    assert (np.abs(chip - (200, 120, 40)) <= 1).all()


def test_face_over_the_border_is_black_outside() -> None:
    img = np.full((200, 200, 3), 255, np.uint8)
    pts = template_in_chip() - (75, 0)  # left half of the chip lies left of the image
    chip = extract_chips(img, pts[None].astype(np.float32))[0]
    assert (chip[:, :70] == 0).all()
    assert (chip[:, 80:] >= 254).all()
    far = template_in_chip() + 10_000
    assert not extract_chips(img, far[None].astype(np.float32)).any()


def test_several_faces_and_custom_template() -> None:
    rng = np.random.default_rng(9)
    img = rng.integers(0, 256, (400, 400, 3), dtype=np.uint8)
    pts = np.stack([template_in_chip() + 10, template_in_chip() + 200]).astype(np.float32)
    chips = extract_chips(img, pts)
    assert chips.shape == (2, 150, 150, 3) and chips.dtype == np.uint8
    np.testing.assert_array_equal(chips[1], extract_chips(img, pts[1:])[0])
    # an ArcFace-style 112×112 chip with its own template and no padding
    arc = np.array([[38.29, 51.70], [73.53, 51.50], [56.03, 71.74], [41.55, 92.37], [70.73, 92.20]])
    small = extract_chips(
        img, (arc + 100)[None].astype(np.float32), size=112, padding=0.0, template=arc / 112
    )
    assert small.shape == (1, 112, 112, 3)

    def to_image(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return u + 100, v + 100

    assert_close_to(small[0], naive_chip(img, to_image, 112))


def test_empty_landmarks_keep_shape() -> None:
    img = np.zeros((50, 50, 3), np.uint8)
    out = extract_chips(img, np.zeros((0, 5, 2), np.float32))
    assert out.shape == (0, 150, 150, 3) and out.dtype == np.uint8
    assert extract_chips(img, np.zeros((0, 5, 2), np.float32), size=112).shape == (0, 112, 112, 3)


@pytest.mark.parametrize(
    ("img", "pts", "kwargs"),
    [
        (np.zeros((50, 50), np.uint8), np.zeros((1, 5, 2)), {}),
        (np.zeros((50, 50, 3), np.float32), np.zeros((1, 5, 2)), {}),
        (np.zeros((50, 50, 3), np.uint8), np.zeros((1, 4, 2)), {}),
        (np.zeros((50, 50, 3), np.uint8), np.zeros((5, 2)), {}),
        (np.zeros((50, 50, 3), np.uint8), np.full((1, 5, 2), np.inf), {}),
        (np.zeros((50, 50, 3), np.uint8), np.zeros((1, 5, 2)), {"size": 0}),
        (np.zeros((50, 50, 3), np.uint8), np.zeros((1, 5, 2)), {"padding": -0.1}),
        (np.zeros((50, 50, 3), np.uint8), np.zeros((1, 5, 2)), {"template": np.zeros((3, 2))}),
    ],
)
def test_bad_inputs_are_rejected(
    img: np.ndarray, pts: np.ndarray, kwargs: dict[str, object]
) -> None:
    with pytest.raises(InvalidArgument):
        extract_chips(img, pts.astype(np.float32), **kwargs)  # type: ignore[arg-type]
