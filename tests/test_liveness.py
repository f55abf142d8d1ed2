"""Liveness (PAD) with the Apache-2.0 MiniFASNetV2 + V1SE models from ../shared/models/pad.

Crop geometry and the OpenCV-compatible resize are checked without the models; everything
that runs a model skips with a reason when the shared models (or photos) are absent.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, SHARED_MODELS, require_shared_faces
from fixtures.make_liveness_fixtures import CV2_CASES, CV2_SIZE, pattern

from service.errors import InvalidArgument, LivenessFailed, ModelPackError
from service.pipeline import liveness as lv
from service.pipeline.decode import decode_image
from service.pipeline.types import DecodedImage

FIXTURES = ROOT / "tests" / "fixtures"
PAD_DIR = SHARED_MODELS / "pad"
BOXES = json.loads((FIXTURES / "liveness_boxes.json").read_text())


def require_pad() -> Path:
    if not (PAD_DIR / "MiniFASNetV2.onnx").is_file():
        pytest.skip(f"needs the MiniFASNet PAD models at {PAD_DIR} (absent on this machine)")
    return PAD_DIR


@pytest.fixture(scope="module")
def detector() -> lv.LivenessDetector:
    return lv.LivenessDetector(lv.LivenessModel.minifasnet_pair(require_pad()))


def photo(key: str) -> DecodedImage:
    return decode_image((require_shared_faces() / key).read_bytes())


# ---- crop geometry and resize (no model) ---------------------------------------------------


def test_context_box_is_the_box_scaled_about_its_centre() -> None:
    # Box 100..199 (width 100 by the authors' +1 convention), centre 150, scale 2 → 50..250.
    crops = lv.context_boxes(np.array([[100.0, 100.0, 199.0, 199.0]]), 2.0, 1000, 1000)
    assert crops.tolist() == [[50, 50, 250, 250]]


def test_context_box_is_shifted_inside_not_cut() -> None:
    crops = lv.context_boxes(np.array([[0.0, 300.0, 99.0, 399.0]]), 2.0, 1000, 500)
    x0, y0, x1, y1 = crops[0]
    assert (x0, x1) == (0, 200)  # moved right by 50 instead of losing its left part
    assert (y0, y1) == (250, 450)  # inside already: centre 350 ± 100
    assert x1 - x0 == 200 and y1 - y0 == 200


def test_context_box_scale_shrinks_to_fit_the_image() -> None:
    # 4× a 100-px box would be 400 px; the image is 300 high → the scale becomes 299/100.
    crops = lv.context_boxes(np.array([[100.0, 100.0, 199.0, 199.0]]), 4.0, 1000, 300)
    x0, y0, x1, y1 = crops[0]
    assert (y0, y1) == (0, 299) and x1 - x0 == 299


def test_resize_matches_opencv_inter_linear() -> None:
    """Reference: cv2.resize(INTER_LINEAR) outputs stored by make_liveness_fixtures.py."""
    rgb = pattern(301, 203)
    with np.load(FIXTURES / "cv2_inter_linear.npz") as ref:
        for name, crop in CV2_CASES.items():
            mine = lv.crop_resize_bgr(rgb, np.array([crop]), CV2_SIZE)[0].transpose(1, 2, 0)
            diff = np.abs(mine - ref[name].astype(np.float32))
            # OpenCV uses 11-bit fixed-point weights; float arithmetic differs by ≤ 1 level.
            assert diff.max() <= 1.0, name
            assert (diff > 0).mean() < 0.2, name


def test_resize_output_is_bgr_chw_and_exact_without_scaling() -> None:
    rgb = np.zeros((80, 80, 3), np.uint8)
    rgb[..., 0] = 200  # red
    rgb[10, 20] = (1, 2, 3)
    out = lv.crop_resize_bgr(rgb, np.array([[0, 0, 79, 79]]), 80)
    assert out.shape == (1, 3, 80, 80) and out.dtype == np.float32
    assert out[0, 2, 0, 0] == 200 and out[0, 0, 0, 0] == 0  # channel 2 is red: BGR
    assert out[0, :, 10, 20].tolist() == [3, 2, 1]


# ---- the real models -----------------------------------------------------------------------


def test_attacks_rejected_live_sample_accepted(detector: lv.LivenessDetector) -> None:
    scores = {}
    for name in ("image_F1.jpg", "image_F2.jpg", "image_T1.jpg"):
        key = f"antispoof/{name}"
        scores[name] = float(detector.score(photo(key), np.array([BOXES[key]]))[0])
    print("antispoof fused scores:", {k: round(v, 3) for k, v in scores.items()})
    for attack in ("image_F1.jpg", "image_F2.jpg"):
        key = f"antispoof/{attack}"
        with pytest.raises(LivenessFailed) as info:
            detector.check(photo(key), BOXES[key])
        md = info.value.metadata
        assert md["check"] == "liveness"
        assert float(md["score"]) == pytest.approx(scores[attack], abs=1e-3)
        assert float(md["threshold"]) == lv.DEFAULT_THRESHOLD
    assert scores["image_F1.jpg"] < 0.3 and scores["image_F2.jpg"] < 0.05
    live = detector.check(photo("antispoof/image_T1.jpg"), BOXES["antispoof/image_T1.jpg"])
    assert live > 0.95


def test_real_analyzer_boxes_give_the_same_verdicts(analyzer, detector) -> None:  # type: ignore[no-untyped-def]
    """Re-detect with the service's analyzer (automatic upsampling) and re-score the samples.

    The fixture's boxes were made at upsample 1; the automatic policy looks at these 640×480
    frames without upsampling, which finds the same face with a somewhat larger box.
    """
    for name, live in (("image_F1.jpg", False), ("image_F2.jpg", False), ("image_T1.jpg", True)):
        image = photo(f"antispoof/{name}")
        faces = analyzer.locate(image)
        assert len(faces) == 1
        assert box_iou(faces.boxes[0], BOXES[f"antispoof/{name}"]) > 0.6
        score = float(detector.score(image, faces.boxes[:1])[0])
        assert (score >= detector.threshold) == live, (name, score)


def test_genuine_photos_are_mostly_accepted(detector: lv.LivenessDetector) -> None:
    """Every single-person deepface photo (web photos of real people, not live captures, so
    a harder case than a terminal's camera): report the distribution; most must pass."""
    keys = sorted(k for k in BOXES if k.startswith("deepface/"))
    scores = np.array(
        [float(detector.score(photo(k), np.array([BOXES[k]]))[0]) for k in keys], np.float64
    )
    accepted = int((scores >= detector.threshold).sum())
    print(
        f"genuine deepface n={len(scores)} accepted={accepted} min={scores.min():.3f} "
        f"p10={np.percentile(scores, 10):.3f} median={np.median(scores):.3f}"
    )
    assert len(scores) >= 50
    assert accepted >= 20
    assert accepted / len(scores) >= 0.8
    assert np.median(scores) > 0.9


def test_batch_equals_one_at_a_time(detector: lv.LivenessDetector) -> None:
    image = photo("antispoof/image_T1.jpg")
    boxes = np.array(
        [BOXES["antispoof/image_T1.jpg"], [0, 0, 120, 120], [300, 400, 479, 639]], np.float32
    )
    together = detector.score(image, boxes)
    singles = np.concatenate([detector.score(image, boxes[i : i + 1]) for i in range(3)])
    assert together.shape == (3,) and together.dtype == np.float32
    np.testing.assert_allclose(together, singles, atol=1e-5)
    assert all(s.batched for s in detector._sessions)


def test_empty_boxes_keep_shape(detector: lv.LivenessDetector) -> None:
    out = detector.score(photo("antispoof/image_T1.jpg"), np.zeros((0, 4), np.float32))
    assert out.shape == (0,) and out.dtype == np.float32


def test_threshold_is_configurable() -> None:
    lenient = lv.LivenessDetector(lv.LivenessModel.minifasnet_pair(require_pad()), threshold=0.0)
    key = "antispoof/image_F2.jpg"
    assert lenient.check(photo(key), BOXES[key]) < 0.05  # passes: nothing is below 0


# ---- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("boxes", "message"),
    [
        (np.zeros((4,)), "shape"),
        (np.zeros((2, 5)), "shape"),
        ([[np.nan, 0, 10, 10]], "finite"),
        ([[10, 10, 5, 20]], "right >= left"),
        ([[1000, 10, 1100, 100]], "outside"),
        ([["a", 0, 1, 1]], "numbers"),
    ],
)
def test_bad_boxes_are_invalid_argument(
    detector: lv.LivenessDetector, boxes: object, message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message):
        detector.score(photo("antispoof/image_T1.jpg"), boxes)  # type: ignore[arg-type]


def test_bad_image_is_invalid_argument(detector: lv.LivenessDetector) -> None:
    with pytest.raises(InvalidArgument):
        detector.score(DecodedImage(np.zeros((10, 10), np.uint8), "PNG"), np.zeros((1, 4)))
    with pytest.raises(InvalidArgument):
        detector.score(np.zeros((10, 10, 3), np.uint8), np.zeros((1, 4)))  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="box"):
        detector.check(photo("antispoof/image_T1.jpg"), [1, 2, 3])


@pytest.mark.parametrize("threshold", [-0.1, 1.5, float("nan")])
def test_bad_threshold_is_invalid_argument(threshold: float) -> None:
    with pytest.raises(InvalidArgument):
        lv.LivenessDetector(
            lv.LivenessModel.minifasnet_pair(Path("/nonexistent")), threshold=threshold
        )


def test_bad_model_settings_are_invalid_argument() -> None:
    with pytest.raises(InvalidArgument):
        lv.LivenessDetector([])
    with pytest.raises(InvalidArgument):
        lv.LivenessModel(path=Path("x.onnx"), scale=0.0)
    with pytest.raises(InvalidArgument):
        lv.LivenessModel(path=Path("x.onnx"), scale=2.7, sha256="ABC")


def test_wrong_file_for_pinned_sha256_is_model_pack_error(tmp_path: Path) -> None:
    pad = require_pad()
    v1se = lv.LivenessModel(
        path=pad / "MiniFASNetV1SE.onnx", scale=4.0, sha256=lv.MINIFASNET_V2_SHA256
    )
    with pytest.raises(ModelPackError, match="sha256"):
        lv.LivenessDetector([v1se])


def test_missing_or_garbage_model_is_model_pack_error(tmp_path: Path) -> None:
    with pytest.raises(ModelPackError, match="cannot read"):
        lv.LivenessDetector([lv.LivenessModel(path=tmp_path / "absent.onnx", scale=2.7)])
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not an onnx model")
    with pytest.raises(ModelPackError, match="cannot load"):
        lv.LivenessDetector([lv.LivenessModel(path=junk, scale=2.7)])


def test_input_size_mismatch_is_model_pack_error() -> None:
    model = lv.LivenessModel(path=require_pad() / "MiniFASNetV2.onnx", scale=2.7, input_size=112)
    with pytest.raises(ModelPackError, match="expected one float input"):
        lv.LivenessDetector([model])


def box_iou(a: object, b: object) -> float:
    """True IoU of two inclusive [l, t, r, b] boxes."""
    la, ta, ra, ba = (float(v) for v in np.asarray(a).ravel())
    lb, tb, rb, bb = (float(v) for v in np.asarray(b).ravel())
    iw = max(0.0, min(ra, rb) - max(la, lb) + 1)
    ih = max(0.0, min(ba, bb) - max(ta, tb) + 1)
    inter = iw * ih
    union = (ra - la + 1) * (ba - ta + 1) + (rb - lb + 1) * (bb - tb + 1) - inter
    return inter / union
