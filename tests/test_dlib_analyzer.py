"""The default analyzer's detection policy: automatic upsampling and the detection-only
downscale of large photos, through the real models."""

from __future__ import annotations

import numpy as np
from conftest import grace_hopper_path
from PIL import Image

from service.pipeline.dlib_analyzer import DlibAnalyzer, choose_upsample, detection_view
from service.pipeline.types import DecodedImage


def test_choose_upsample() -> None:
    assert choose_upsample(-1, 150, 150) == 1  # small frame: look at it twice the size
    assert choose_upsample(-1, 480, 640) == 0  # terminal frame: faces are large
    assert choose_upsample(0, 150, 150) == 0 and choose_upsample(2, 480, 640) == 2


def test_detection_view_shrinks_only_large_images() -> None:
    small = np.zeros((100, 200, 3), np.uint8)
    view, back = detection_view(small, 1280)
    assert view is small and back == 1.0
    big = np.zeros((1000, 3000, 3), np.uint8)
    view, back = detection_view(big, 1280)
    assert view.shape == (427, 1280, 3) and back == 3000 / 1280
    assert detection_view(big, 0)[0] is big  # 0 = never shrink


def test_large_photo_is_detected_on_a_shrunk_copy_in_full_resolution_coordinates(
    analyzer: DlibAnalyzer,
) -> None:
    with Image.open(grace_hopper_path()) as im:
        rgb = np.asarray(im.convert("RGB"))
        big = np.asarray(im.convert("RGB").resize((rgb.shape[1] * 3, rgb.shape[0] * 3)))
    small_faces = analyzer.locate(DecodedImage(np.ascontiguousarray(rgb), "JPEG"))
    big_faces = analyzer.locate(DecodedImage(np.ascontiguousarray(big), "JPEG"))
    assert len(small_faces) == len(big_faces) == 1
    # Same face, three times the coordinates (detection ran on a ~1280 px copy). MMOD boxes
    # are quantised by its 8-px cells and pyramid levels, so they agree to a few percent.
    width = float(big_faces.boxes[0, 2] - big_faces.boxes[0, 0])
    np.testing.assert_allclose(big_faces.boxes[0], small_faces.boxes[0] * 3, atol=0.08 * width)
    np.testing.assert_allclose(big_faces.landmarks[0], small_faces.landmarks[0] * 3, atol=15)
    chips = analyzer.align(DecodedImage(np.ascontiguousarray(big), "JPEG"), big_faces)
    small_chips = analyzer.align(DecodedImage(np.ascontiguousarray(rgb), "JPEG"), small_faces)
    a = analyzer.embed_chips(chips)[0]
    b = analyzer.embed_chips(small_chips)[0]
    assert float(a @ b) > 0.97
