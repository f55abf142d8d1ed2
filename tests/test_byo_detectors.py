"""YuNet, SCRFD-2.5G, SCRFD-500M and RetinaFace on real photos: the faces are found, and the
four detectors' five landmarks agree with each other.

Photos: ``../shared/faces/deepface`` (the 61 labelled photos of ``identities.csv``, plus the
multi-face ``couple.jpg`` and ``selfie-many-people.jpg``). Each detector runs once per photo
(module-scoped cache); every test reads the cache.

Agreement tolerance, relative to the inter-eye distance (IED) of the face: for the main
(largest) face of every photo and both faces of ``couple.jpg``, every landmark of every
detector lies within 0.30 IED of the same landmark of every other detector, and the mean
over the five within 0.15 IED. Measured on these photos: median worst-point disagreement
0.07 IED, worst 0.23 (img67, YuNet vs RetinaFace). Small background faces (IED < 25 px) and
profiles disagree far more and are not held to it.
"""

from __future__ import annotations

import csv
import itertools
from pathlib import Path

import numpy as np
import pytest
from byo_packs import DETECTOR_FILES, detector_file
from conftest import SHARED_FACES, require_shared_faces

from service.config import Settings
from service.errors import ModelPackError
from service.models.byo_pack import parse_detector_spec
from service.models.byo_presets import DETECTOR_PRESETS
from service.pipeline.decode import decode_image
from service.pipeline.onnx_detectors import build_detector, nms
from service.pipeline.types import Detections

DEEPFACE = SHARED_FACES / "deepface"
MULTI = ("couple.jpg", "selfie-many-people.jpg")
MAX_POINT_IED = 0.30
MAX_MEAN_IED = 0.15


def _labelled() -> list[str]:
    with open(DEEPFACE / "identities.csv", newline="") as f:
        return [row["file"] for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def found() -> dict[str, dict[str, Detections]]:
    """photo → detector preset → detections (each detector run once per photo)."""
    require_shared_faces()
    detectors = {
        name: build_detector(detector_file(name), parse_detector_spec(DETECTOR_PRESETS[name]))
        for name in DETECTOR_FILES
    }
    out: dict[str, dict[str, Detections]] = {}
    for photo in [*_labelled(), *MULTI]:
        image = decode_image((DEEPFACE / photo).read_bytes(), Settings().decode)
        out[photo] = {name: d.detect(image.rgb) for name, d in detectors.items()}
    return out


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union)


def _largest(d: Detections) -> int:
    areas = (d.boxes[:, 2] - d.boxes[:, 0]) * (d.boxes[:, 3] - d.boxes[:, 1])
    return int(np.argmax(areas))


def _ied(landmarks: np.ndarray) -> float:
    return float(np.linalg.norm(landmarks[0] - landmarks[1]))


def test_every_detector_finds_a_face_in_every_labelled_photo(
    found: dict[str, dict[str, Detections]],
) -> None:
    assert len(_labelled()) == 61
    for photo in _labelled():
        for name, d in found[photo].items():
            assert len(d) >= 1, f"{name} found no face in {photo}"
            assert d.boxes.dtype == np.float32 and d.boxes.shape == (len(d), 4)
            assert d.landmarks is not None and d.landmarks.shape == (len(d), 5, 2)
            assert np.all(np.diff(d.scores) <= 0), "ordered by score"
            assert d.scores[0] >= DETECTOR_PRESETS[name]["score_threshold"]


def test_multi_face_photos(found: dict[str, dict[str, Detections]]) -> None:
    for name in DETECTOR_FILES:
        assert len(found["couple.jpg"][name]) == 2, name
        assert len(found["selfie-many-people.jpg"][name]) == 6, name
    # The same six people: every face of one detector overlaps one face of each other.
    ref = found["selfie-many-people.jpg"]["retinaface_mnet025"]
    for name in DETECTOR_FILES:
        other = found["selfie-many-people.jpg"][name]
        for box in ref.boxes:
            assert max(_iou(box, b) for b in other.boxes) >= 0.5, name


def _main_faces(found: dict[str, dict[str, Detections]]) -> list[tuple[str, dict[str, np.ndarray]]]:
    """(photo, detector → (5, 2) landmarks) for each face held to the tolerance."""
    out = []
    for photo in _labelled():
        per = found[photo]
        ref = per["retinaface_mnet025"].boxes[_largest(per["retinaface_mnet025"])]
        lms = {}
        for name, d in per.items():
            i = _largest(d)
            assert _iou(ref, d.boxes[i]) >= 0.5, f"{photo}: {name}'s largest face is another"
            assert d.landmarks is not None
            lms[name] = d.landmarks[i]
        out.append((photo, lms))
    couple = found["couple.jpg"]
    ref_d = couple["retinaface_mnet025"]
    for k in range(2):
        lms = {}
        for name, d in couple.items():
            j = max(range(len(d)), key=lambda j: _iou(ref_d.boxes[k], d.boxes[j]))
            assert d.landmarks is not None
            lms[name] = d.landmarks[j]
        out.append((f"couple.jpg#{k}", lms))
    return out


def test_landmarks_agree_across_detectors(found: dict[str, dict[str, Detections]]) -> None:
    faces = _main_faces(found)
    assert len(faces) == 63
    worst = 0.0
    for photo, lms in faces:
        for a, b in itertools.combinations(sorted(lms), 2):
            ied = (_ied(lms[a]) + _ied(lms[b])) / 2
            dist = np.linalg.norm(lms[a] - lms[b], axis=1) / ied
            worst = max(worst, float(dist.max()))
            assert dist.max() <= MAX_POINT_IED, (photo, a, b, dist.round(3))
            assert dist.mean() <= MAX_MEAN_IED, (photo, a, b, dist.round(3))
    assert worst > 0.0  # four different networks never agree to the pixel


def test_landmarks_are_in_arcface_order(found: dict[str, dict[str, Detections]]) -> None:
    """Image-left eye, image-right eye, nose, image-left and image-right mouth corners."""
    for photo, lms in _main_faces(found):
        for name, p in lms.items():
            assert p[0, 0] < p[1, 0] and p[3, 0] < p[4, 0], (photo, name)
            eyes_y, mouth_y = (p[0, 1] + p[1, 1]) / 2, (p[3, 1] + p[4, 1]) / 2
            assert eyes_y < p[2, 1] < mouth_y, (photo, name)


def test_thresholds_from_the_spec_are_applied() -> None:
    """A stricter score threshold drops the weaker faces; a looser NMS keeps more boxes."""
    require_shared_faces()
    image = decode_image((DEEPFACE / "img54.jpg").read_bytes(), Settings().decode)
    base = dict(DETECTOR_PRESETS["scrfd_2.5g"])
    path = detector_file("scrfd_2.5g")
    normal = build_detector(path, parse_detector_spec(base)).detect(image.rgb)
    strict = build_detector(path, parse_detector_spec({**base, "score_threshold": 0.7}))
    kept = strict.detect(image.rgb)
    assert 1 <= len(kept) < len(normal) and kept.scores.min() >= 0.7
    # Neighbouring anchors of one face all score high once the threshold is low: NMS at
    # the preset's IoU merges them, a permissive IoU does not.
    low = {**base, "score_threshold": 0.3}
    merged = build_detector(path, parse_detector_spec(low)).detect(image.rgb)
    loose = build_detector(path, parse_detector_spec({**low, "nms_iou": 0.95}))
    assert len(loose.detect(image.rgb)) > len(merged)


def test_output_names_come_from_the_manifest_not_the_shapes() -> None:
    """det_500m with scrfd_2.5g's output names is refused, naming what is missing."""
    with pytest.raises(ModelPackError, match=r"outputs the model lacks: .*score_16=466") as info:
        build_detector(
            detector_file("scrfd_500m"), parse_detector_spec(DETECTOR_PRESETS["scrfd_2.5g"])
        )
    assert info.value.metadata["field"] == "detector.outputs"
    wrong_size = {**DETECTOR_PRESETS["yunet_2023mar"], "input_size": [320, 320]}
    with pytest.raises(ModelPackError, match="fixed at 640x640"):
        build_detector(detector_file("yunet_2023mar"), parse_detector_spec(wrong_size))


def test_nms_keeps_the_best_of_overlapping_boxes() -> None:
    boxes = np.array(
        [[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 10.5]], np.float64
    )
    scores = np.array([0.8, 0.9, 0.5, 0.7])
    assert nms(boxes, scores, 0.5).tolist() == [1, 2]
    assert nms(boxes, scores, 0.99).tolist() == [1, 0, 3, 2]
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.5).tolist() == []


def test_empty_image_gives_empty_detections_of_the_right_shape(tmp_path: Path) -> None:
    blank = np.full((480, 640, 3), 128, np.uint8)
    for name in DETECTOR_FILES:
        d = build_detector(detector_file(name), parse_detector_spec(DETECTOR_PRESETS[name]))
        out = d.detect(blank)
        assert len(out) == 0 and out.boxes.shape == (0, 4)
        assert out.landmarks is not None and out.landmarks.shape == (0, 5, 2)
