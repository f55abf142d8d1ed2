"""MmodDetector (ONNX, no dlib) against dlib's ``cnn_face_detection_model_v1`` on real photos.

The expected detections in ``fixtures/dlib_detections.json`` were produced by dlib 20.0.1
itself (``fixtures/make_dlib_detections.py``). Boxes must be identical integers and scores
equal to float rounding (the convolutions sum in a different order). The PyPI photos always
run; the shared photos skip when ``../shared/faces`` is absent.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from PIL import Image

from service.errors import InvalidArgument, ModelPackError
from service.models.dlib_dnn import parse_dnn
from service.models.mmod_onnx import build_mmod_onnx
from service.pipeline.detect import MmodDetector, lround, overlaps
from service.pipeline.types import Detections
from tests.conftest import SHARED_FACES, astronaut_rgb, grace_hopper_path, require_shared_faces

FIXTURE = Path(__file__).parent / "fixtures" / "dlib_detections.json"
EXPECTED: dict[str, list[list[float]]] = json.loads(FIXTURE.read_text())
PYPI_KEYS = sorted(k for k in EXPECTED if k.startswith("pypi:"))
SHARED_KEYS = sorted(k for k in EXPECTED if not k.startswith("pypi:"))
SCORE_TOLERANCE = 1e-3


def split_key(key: str) -> tuple[str, int]:
    """(photo reference, upsample); ``@up0`` marks photos too big to upsample in dlib."""
    if key.endswith("@up0"):
        return key[: -len("@up0")], 0
    return key, 1


def load_photo(ref: str) -> np.ndarray:
    # The raw pixels dlib saw: PIL → RGB, no EXIF rotation (dlib.load_rgb_image does none).
    if ref == "pypi:grace_hopper":
        return np.ascontiguousarray(np.asarray(Image.open(grace_hopper_path()).convert("RGB")))
    if ref == "pypi:astronaut":
        return astronaut_rgb()
    return np.ascontiguousarray(np.asarray(Image.open(SHARED_FACES / ref).convert("RGB")))


@pytest.fixture(scope="session")
def mmod_onnx_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    spec = importlib.util.find_spec("face_recognition_models")
    assert spec is not None and spec.submodule_search_locations
    dat = Path(next(iter(spec.submodule_search_locations))) / "models"
    net = parse_dnn((dat / "mmod_human_face_detector.dat").read_bytes(), "mmod")
    path = tmp_path_factory.mktemp("mmod") / "mmod.onnx"
    onnx.save(build_mmod_onnx(net), path)
    return path


@pytest.fixture(scope="session")
def detectors(mmod_onnx_path: Path) -> dict[int, MmodDetector]:
    return {u: MmodDetector(mmod_onnx_path, upsample=u, threads=2) for u in (0, 1)}


def check_parity(key: str, detectors: dict[int, MmodDetector]) -> None:
    ref, upsample = split_key(key)
    found = detectors[upsample].detect(load_photo(ref))
    expected = np.asarray(EXPECTED[key], np.float64).reshape(-1, 5)
    assert found.boxes.dtype == np.float32 and found.scores.dtype == np.float32
    assert found.landmarks is None
    assert found.boxes.astype(np.int64).tolist() == expected[:, :4].astype(np.int64).tolist(), key
    diff = np.abs(found.scores.astype(np.float64) - expected[:, 4])
    assert diff.max(initial=0.0) < SCORE_TOLERANCE, (key, diff)
    assert (np.diff(found.scores) <= 0).all()


def test_fixture_covers_enough_photos_and_faces() -> None:
    assert len(PYPI_KEYS) == 2 and len(SHARED_KEYS) >= 20
    assert sum(len(v) for v in EXPECTED.values()) >= 25
    assert any(len(v) >= 3 for v in EXPECTED.values())  # a crowd photo


@pytest.mark.parametrize("key", PYPI_KEYS)
def test_pypi_photo_matches_dlib(key: str, detectors: dict[int, MmodDetector]) -> None:
    assert EXPECTED[key], "the PyPI photos each show a face"
    check_parity(key, detectors)


@pytest.mark.parametrize("key", SHARED_KEYS)
def test_shared_photo_matches_dlib(key: str, detectors: dict[int, MmodDetector]) -> None:
    require_shared_faces()
    check_parity(key, detectors)


def test_no_face_gives_empty_detections_of_the_right_shape(
    detectors: dict[int, MmodDetector],
) -> None:
    flat = np.full((120, 160, 3), 128, np.uint8)
    found = detectors[1].detect(flat)
    assert len(found) == 0
    assert found.boxes.shape == (0, 4) and found.boxes.dtype == np.float32
    assert found.scores.shape == (0,) and found.scores.dtype == np.float32


def test_tiny_images_are_handled(detectors: dict[int, MmodDetector]) -> None:
    for shape in [(1, 1, 3), (3, 7, 3), (6, 6, 3), (0, 5, 3)]:
        found = detectors[0].detect(np.zeros(shape, np.uint8))
        assert isinstance(found, Detections) and len(found) == 0


def test_bad_input_is_rejected(detectors: dict[int, MmodDetector]) -> None:
    det = detectors[0]
    bad: list[object] = [
        np.zeros((10, 10), np.uint8),
        np.zeros((10, 10, 4), np.uint8),
        np.zeros((10, 10, 3), np.float32),
        np.zeros((10, 20, 3), np.uint8)[:, ::2],  # not C-contiguous
        b"not an image",
    ]
    for value in bad:
        with pytest.raises(InvalidArgument):
            det.detect(value)  # type: ignore[arg-type]


def test_bad_configuration_is_rejected(mmod_onnx_path: Path) -> None:
    with pytest.raises(InvalidArgument):
        MmodDetector(mmod_onnx_path, upsample=-1)
    with pytest.raises(InvalidArgument):
        MmodDetector(mmod_onnx_path, threads=0)


def test_a_model_without_mmod_metadata_is_refused(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["image"], ["scores"])],
        "identity",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 3, "H", "W"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "identity.onnx"
    onnx.save(model, path)
    with pytest.raises(ModelPackError, match="not a facegate-converted dlib MMOD"):
        MmodDetector(path)
    with pytest.raises(ModelPackError, match="cannot load"):
        MmodDetector(tmp_path / "missing.onnx")


def test_nms_overlap_divides_by_the_bounding_box_not_the_union() -> None:
    iou = 0.3382761351109955
    a, b = (0, 0, 19, 19), (5, 6, 24, 25)
    # inner 15·14 = 210; true IoU 210/590 = 0.356 would suppress, dlib's 210/(25·26) = 0.323
    # does not.
    assert not overlaps(a, b, iou, 1.0)
    assert overlaps(a, (5, 5, 24, 24), iou, 1.0)  # 225/625 = 0.36
    assert not overlaps(a, (20, 0, 39, 19), iou, 1.0)  # touching edges share no pixel
    assert overlaps(a, (2, 2, 5, 5), iou, 0.99)  # covers all of the small box
    assert not overlaps(a, (2, 2, 5, 5), iou, 1.0)


def test_lround_rounds_halves_away_from_zero() -> None:
    values = np.array([-2.5, -1.5, -0.5, -0.4, 0.4, 0.5, 1.5, 2.5, 3.2, -3.7])
    assert lround(values).tolist() == [-3, -2, -1, 0, 0, 1, 2, 3, 3, -4]
