"""Quality gate: each check on synthetic input where the truth is known, then on real photos
through the default analyzer (grace_hopper, astronaut; shared LFW photos when present)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from conftest import astronaut_rgb, grace_hopper_path, require_shared_faces
from PIL import Image, ImageFilter

from service.errors import InvalidArgument, LowQuality, MultipleFaces, NoFace
from service.pipeline import quality as q
from service.pipeline.types import DecodedImage, LocatedFaces

IDENTIFY = q.QualityPolicy.identify()
ENROLL = q.QualityPolicy.enroll()


def head_landmarks(
    yaw: float = 0.0, pitch: float = 0.0, roll: float = 0.0, *, d: float = 60.0,
    centre: tuple[float, float] = (200.0, 200.0),
) -> np.ndarray:  # fmt: skip
    """dlib 5-point landmarks of the pose model's rigid head, rotated (degrees) and projected
    orthographically; yaw > 0 turns the nose to the image right, pitch > 0 lifts the chin."""
    half_eye = 0.22  # half an eye's width, in eye distances
    pts = np.array(
        [
            [0.5 + half_eye, 0, 0], [0.5 - half_eye, 0, 0],  # image-right eye: outer, inner
            [-0.5 - half_eye, 0, 0], [-0.5 + half_eye, 0, 0],  # image-left eye: outer, inner
            [0, q.FRONTAL_NOSE_DROP[q.DLIB5], -q.NOSE_DEPTH],  # nose base, towards the camera (-z)
        ]
    )  # fmt: skip
    y, p, r = (math.radians(a) for a in (yaw, pitch, roll))
    # Yaw about the vertical axis: towards the camera (-z) becomes towards +x.
    ry = np.array([[math.cos(y), 0, -math.sin(y)], [0, 1, 0], [math.sin(y), 0, math.cos(y)]])
    # Pitch about the horizontal axis: chin up moves points in front of the eyes upwards (-y).
    rx = np.array([[1, 0, 0], [0, math.cos(p), math.sin(p)], [0, -math.sin(p), math.cos(p)]])
    rz = np.array([[math.cos(r), -math.sin(r), 0], [math.sin(r), math.cos(r), 0], [0, 0, 1]])
    world = pts @ (rz @ ry @ rx).T
    out: np.ndarray = (world[:, :2] * d + np.asarray(centre)).astype(np.float32)
    return out


def faces_of(boxes: list[list[float]], landmarks: list[np.ndarray]) -> LocatedFaces:
    return LocatedFaces(
        boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
        scores=np.ones(len(boxes), np.float32),
        landmarks=np.asarray(landmarks, np.float32).reshape(-1, 5, 2),
    )


def textured_chip(seed: int = 0, level: float = 128.0, spread: float = 40.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise = rng.normal(level, spread, (150, 150, 1))
    return np.clip(np.repeat(noise, 3, axis=2), 0, 255).astype(np.uint8)


def blank_image(w: int = 400, h: int = 400) -> DecodedImage:
    return DecodedImage(np.zeros((h, w, 3), np.uint8), "PNG")


ONE_FACE = faces_of([[140, 140, 260, 260]], [head_landmarks()])


def report_for(
    faces: LocatedFaces = ONE_FACE,
    chip: np.ndarray | None = None,
    image: DecodedImage | None = None,
    policy: q.QualityPolicy = IDENTIFY,
) -> q.FaceQualityReport:
    return q.assess(
        image or blank_image(), faces, 0, textured_chip() if chip is None else chip, policy=policy
    )


# ---- pose ----------------------------------------------------------------------------------


@pytest.mark.parametrize("yaw", [-50.0, -30.0, -10.0, 0.0, 15.0, 35.0, 60.0])
def test_yaw_is_recovered_from_the_model_head(yaw: float) -> None:
    est_yaw, est_pitch, est_roll = q.estimate_pose(head_landmarks(yaw=yaw))
    assert est_yaw == pytest.approx(yaw, abs=0.1)
    assert abs(est_pitch) < 0.1 and abs(est_roll) < 0.1


@pytest.mark.parametrize("roll", [-45.0, -20.0, 5.0, 30.0, 170.0])
def test_roll_is_the_eye_line_angle(roll: float) -> None:
    est = q.estimate_pose(head_landmarks(roll=roll, yaw=10.0))
    assert est[2] == pytest.approx(roll, abs=0.1)
    assert est[0] == pytest.approx(10.0, abs=0.1)  # roll is undone before yaw is read


@pytest.mark.parametrize("pitch", [-20.0, -10.0, 0.0, 10.0, 25.0, 45.0])
def test_pitch_is_recovered_within_its_range(pitch: float) -> None:
    est = q.estimate_pose(head_landmarks(pitch=pitch, yaw=20.0))
    assert est[1] == pytest.approx(pitch, abs=0.1)


def test_bowed_head_pitch_is_underestimated() -> None:
    """Documented limitation: the nose drop peaks at −α, so a head bowed beyond it reads as
    a smaller bow (never below −α)."""
    alpha = math.degrees(math.atan2(q.NOSE_DEPTH, q.FRONTAL_NOSE_DROP[q.DLIB5]))
    for pitch in (-35.0, -50.0):
        est = q.estimate_pose(head_landmarks(pitch=pitch))
        assert -alpha - 0.01 <= est[1] and pitch < est[1]
    assert q.estimate_pose(head_landmarks(pitch=-alpha))[1] == pytest.approx(-alpha, abs=0.5)


def test_pose_is_vectorised() -> None:
    lms = np.stack([head_landmarks(yaw=20), head_landmarks(pitch=15), head_landmarks(roll=-12)])
    est = q.estimate_pose(lms)
    assert est.shape == (3, 3) and est.dtype == np.float32
    assert est[:, 0][0] == pytest.approx(20, abs=0.1)
    assert est[:, 1][1] == pytest.approx(15, abs=0.1)
    assert est[:, 2][2] == pytest.approx(-12, abs=0.1)


@pytest.mark.parametrize(
    ("pose", "check"),
    [({"yaw": 45.0}, "yaw"), ({"yaw": -45.0}, "yaw"), ({"pitch": 40.0}, "pitch"),
     ({"roll": 35.0}, "roll")],
)  # fmt: skip
def test_pose_failures_name_the_check(pose: dict[str, float], check: str) -> None:
    angles = {"yaw": 0.0, "pitch": 0.0, "roll": 0.0, **pose}
    lm = head_landmarks(angles["yaw"], angles["pitch"], angles["roll"])
    faces = faces_of([[140, 140, 260, 260]], [lm])
    report = report_for(faces)
    assert [f.check for f in report.failures] == [check]
    with pytest.raises(LowQuality) as info:
        q.check(report, IDENTIFY)
    md = info.value.metadata
    assert md["check"] == check
    assert float(md[f"{check}_value"]) == pytest.approx(abs(next(iter(pose.values()))), abs=0.1)
    assert float(md[f"{check}_limit"]) == getattr(IDENTIFY, f"max_{check}_deg")
    assert check in info.value.message


def test_enroll_is_stricter_than_identify_on_pose() -> None:
    faces = faces_of([[140, 140, 260, 260]], [head_landmarks(yaw=30.0)])
    report = report_for(faces)
    q.check(report, IDENTIFY)
    with pytest.raises(LowQuality, match="yaw"):
        q.check(report, ENROLL)


# ---- size, blur, exposure, frame, other faces ---------------------------------------------


def test_small_face_fails_inter_eye() -> None:
    faces = faces_of([[190, 190, 210, 210]], [head_landmarks(d=12.0)])
    report = report_for(faces)
    assert report.inter_eye_px == pytest.approx(12.0, abs=0.01)
    with pytest.raises(LowQuality) as info:
        q.check(report, IDENTIFY)
    assert info.value.metadata["check"] == "inter_eye"
    assert info.value.metadata["inter_eye_limit"] == "18"


def test_blurred_chip_is_less_sharp() -> None:
    sharp = textured_chip()
    blurred = np.asarray(Image.fromarray(sharp).filter(ImageFilter.GaussianBlur(3)))
    s, b = report_for(chip=sharp), report_for(chip=blurred)
    assert s.sharpness > 50 * b.sharpness
    assert not s.failures
    assert [f.check for f in b.failures] == ["sharpness"]


def test_laplacian_variance_of_known_pattern() -> None:
    # A checkerboard of 0/1: the 4-neighbour Laplacian is ±4 everywhere → variance 16.
    board = (np.indices((20, 20)).sum(axis=0) % 2).astype(np.float32)
    assert q.laplacian_variance(board) == pytest.approx(16.0)
    assert q.laplacian_variance(np.full((20, 20), 7.0, np.float32)) == 0.0


@pytest.mark.parametrize(
    ("level", "checks"), [(12.0, {"brightness", "clipped"}), (245.0, {"brightness", "clipped"})]
)
def test_dark_and_bright_chips_fail_exposure(level: float, checks: set[str]) -> None:
    report = report_for(chip=textured_chip(level=level, spread=8.0))
    assert {f.check for f in report.failures} >= checks
    with pytest.raises(LowQuality) as info:
        q.check(report, IDENTIFY)
    assert "brightness_value" in info.value.metadata
    limit = IDENTIFY.min_brightness if level < 128 else IDENTIFY.max_brightness
    assert float(info.value.metadata["brightness_limit"]) == limit


def test_brightness_and_clipping_are_measured_on_the_chip_centre() -> None:
    chip = np.zeros((150, 150, 3), np.uint8)
    chip[30:120, 30:120] = 100  # the chip centre (middle 60 %) is mid-grey, corners are black
    report = report_for(chip=chip)
    assert report.brightness == pytest.approx(100.0, abs=0.01)
    assert report.clipped_fraction == 0.0


@pytest.mark.parametrize(
    ("box", "expected"),
    [
        ([100, 100, 200, 200], 0.0),
        ([-50, 100, 50, 200], 0.5),
        ([350, 350, 450, 450], 0.75),
        ([-10, -10, 410, 410], 1 - 400 * 400 / 420**2),
    ],
)
def test_outside_fraction(box: list[float], expected: float) -> None:
    assert q.outside_fraction(np.asarray(box, np.float32), 400, 400) == pytest.approx(expected)


def test_face_cut_by_the_frame_fails_outside() -> None:
    faces = faces_of([[-60, 140, 60, 260]], [head_landmarks(centre=(0.0, 200.0))])
    with pytest.raises(LowQuality) as info:
        q.check(report_for(faces), IDENTIFY)
    assert info.value.metadata["check"] == "outside"
    assert float(info.value.metadata["outside_value"]) == pytest.approx(0.5, abs=0.01)


def test_comparable_second_face_is_multiple_faces() -> None:
    faces = faces_of(
        [[40, 40, 160, 160], [240, 240, 340, 340]],
        [head_landmarks(centre=(100, 100)), head_landmarks(centre=(290, 290), d=50)],
    )
    report = report_for(faces)
    assert report.face_count == 2
    assert report.other_face_ratio == pytest.approx(100**2 / 120**2)
    with pytest.raises(MultipleFaces) as info:
        q.check(report, IDENTIFY)
    md = info.value.metadata
    assert md["check"] == "multiple_faces" and md["faces"] == "2"
    assert float(md["multiple_faces_limit"]) == IDENTIFY.comparable_face_ratio


def test_small_background_face_is_allowed() -> None:
    faces = faces_of(
        [[40, 40, 200, 200], [300, 300, 340, 340]],
        [head_landmarks(centre=(120, 120), d=70), head_landmarks(centre=(320, 320), d=18)],
    )
    report = report_for(faces)
    assert report.other_face_ratio == pytest.approx(40**2 / 160**2)
    q.check(report, ENROLL)


def test_multiple_failures_are_all_reported() -> None:
    faces = faces_of([[190, 190, 210, 210]], [head_landmarks(d=15.0, roll=40.0)])
    chip = textured_chip(level=10.0, spread=0.0)
    with pytest.raises(LowQuality) as info:
        q.check(report_for(faces, chip=chip), IDENTIFY)
    names = info.value.metadata["check"].split(",")
    assert {"inter_eye", "roll", "brightness", "sharpness"} <= set(names)
    for name in names:
        assert f"{name}_value" in info.value.metadata and f"{name}_limit" in info.value.metadata
    assert all(isinstance(v, str) for v in info.value.metadata.values())


def test_report_failures_follow_the_policy_given() -> None:
    faces = faces_of([[140, 140, 260, 260]], [head_landmarks(yaw=30.0)])
    assert report_for(faces, policy=IDENTIFY).passed
    strict = report_for(faces, policy=ENROLL)
    assert [f.check for f in strict.failures] == ["yaw"]


# ---- bad input -----------------------------------------------------------------------------


def test_no_face_is_no_face() -> None:
    empty = LocatedFaces(
        boxes=np.zeros((0, 4), np.float32),
        scores=np.zeros((0,), np.float32),
        landmarks=np.zeros((0, 5, 2), np.float32),
    )
    with pytest.raises(NoFace):
        q.assess(blank_image(), empty, 0, textured_chip(), policy=IDENTIFY)


@pytest.mark.parametrize(
    ("index", "chip", "message"),
    [
        (1, textured_chip(), "index"),
        (-1, textured_chip(), "index"),
        (0, textured_chip().astype(np.float32), "chip"),
        (0, textured_chip()[:, :, 0], "chip"),
    ],
)
def test_bad_input_is_invalid_argument(index: int, chip: np.ndarray, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        q.assess(blank_image(), ONE_FACE, index, chip, policy=IDENTIFY)


def test_non_finite_landmarks_are_invalid() -> None:
    lm = head_landmarks()
    lm[4, 0] = np.nan
    with pytest.raises(InvalidArgument, match="finite"):
        report_for(faces_of([[140, 140, 260, 260]], [lm]))


@pytest.mark.parametrize(
    "override", [{"max_yaw_deg": -1.0}, {"min_sharpness": math.nan}, {"min_brightness": 250.0}]
)
def test_bad_policy_is_invalid_argument(override: dict[str, float]) -> None:
    values = {**IDENTIFY.__dict__, **override}
    with pytest.raises(InvalidArgument):
        q.QualityPolicy(**values)


# ---- real photos through the default analyzer ----------------------------------------------


def located(analyzer, rgb: np.ndarray):  # type: ignore[no-untyped-def]
    image = DecodedImage(np.ascontiguousarray(rgb), "PNG")
    faces = analyzer.locate(image)
    assert len(faces) >= 1, "the detector found no face in a photo that has one"
    chips = analyzer.align(image, faces)
    return image, faces, chips


def real_photos() -> dict[str, np.ndarray]:
    return {
        "grace_hopper": np.asarray(Image.open(grace_hopper_path()).convert("RGB")),
        "astronaut": astronaut_rgb(),
    }


@pytest.mark.parametrize("name", ["grace_hopper", "astronaut"])
def test_real_photo_passes_identify_and_degraded_versions_fail(analyzer, name: str) -> None:  # type: ignore[no-untyped-def]
    rgb = real_photos()[name]
    image, faces, chips = located(analyzer, rgb)
    report = q.assess(image, faces, 0, chips[0], policy=IDENTIFY)
    assert report.passed, report.failures
    assert abs(report.yaw_deg) < 15 and abs(report.roll_deg) < 10 and abs(report.pitch_deg) < 20

    def failed(rgb2: np.ndarray) -> set[str]:
        img2, faces2, chips2 = located(analyzer, rgb2)
        return {f.check for f in q.assess(img2, faces2, 0, chips2[0], policy=IDENTIFY).failures}

    pil = Image.fromarray(rgb)
    assert "sharpness" in failed(np.asarray(pil.filter(ImageFilter.GaussianBlur(4))))
    assert "brightness" in failed((rgb * 0.12).astype(np.uint8))
    rotated = np.asarray(pil.rotate(40, resample=Image.Resampling.BILINEAR, expand=True))
    assert failed(rotated) == {"roll"}


def test_real_photo_cut_by_the_frame_fails_outside(analyzer) -> None:  # type: ignore[no-untyped-def]
    rgb = real_photos()["grace_hopper"]
    image, faces, chips = located(analyzer, rgb[:, 256:])
    report = q.assess(image, faces, 0, chips[0], policy=IDENTIFY)
    assert "outside" in {f.check for f in report.failures}


LFW_SAMPLE = 30


def test_frontal_lfw_photos_pass_identify_and_look_frontal(analyzer) -> None:  # type: ignore[no-untyped-def]
    """LFW photos are mostly near-frontal, well-exposed press photos: the lenient policy must
    accept nearly all of them, and the pose estimate must centre on frontal (this is what
    calibrates FRONTAL_NOSE_DROP). LFW crops often show other people's faces at the border,
    which MultipleFaces rightly refuses; that check is left out here."""
    root = require_shared_faces() / "lfw-devtrain" / "images"
    every = sorted(root.glob("*/*_0001.jpg"))
    paths = every[:: max(1, len(every) // LFW_SAMPLE)][:LFW_SAMPLE]
    poses, failed = [], []
    for path in paths:
        image, faces, chips = located(analyzer, np.asarray(Image.open(path).convert("RGB")))
        report = q.assess(image, faces, 0, chips[0], policy=IDENTIFY)
        poses.append((report.yaw_deg, report.pitch_deg, report.roll_deg))
        checks = [f.check for f in report.failures if f.check != "multiple_faces"]
        if checks:
            failed.append((Path(path).name, checks))
    median = np.median(np.asarray(poses), axis=0)
    assert np.all(np.abs(median) < 6.0), median
    assert len(failed) <= 2, failed


# ---- landmark layouts ----------------------------------------------------------------------


def arcface_landmarks(yaw: float = 0.0, pitch: float = 0.0, roll: float = 0.0) -> np.ndarray:
    """The pose model's head in the arcface5 order: image-left eye centre, image-right eye
    centre, nose tip, image-left and image-right mouth corners."""
    dlib = head_landmarks(yaw, pitch, roll)
    drop = q.FRONTAL_NOSE_DROP[q.ARCFACE5]
    y, p, r = (math.radians(a) for a in (yaw, pitch, roll))
    ry = np.array([[math.cos(y), 0, -math.sin(y)], [0, 1, 0], [math.sin(y), 0, math.cos(y)]])
    rx = np.array([[1, 0, 0], [0, math.cos(p), math.sin(p)], [0, -math.sin(p), math.cos(p)]])
    rz = np.array([[math.cos(r), -math.sin(r), 0], [math.sin(r), math.cos(r), 0], [0, 0, 1]])
    nose = (np.array([0.0, drop, -q.NOSE_DEPTH]) @ (rz @ ry @ rx).T)[:2] * 60.0 + 200.0
    right = dlib[0:2].mean(axis=0)
    left = dlib[2:4].mean(axis=0)
    mouth = dlib[4] + np.array([0.0, 30.0])  # the mouth corners play no part in the pose
    side = np.array([15.0, 0.0])
    out = np.stack([left, right, nose, mouth - side, mouth + side])
    return out.astype(np.float32)


def test_arcface_layout_reads_the_eye_centres() -> None:
    lm = arcface_landmarks()
    right, left = q.eye_centres(lm, q.ARCFACE5)
    assert right[0] > left[0]  # image-right eye is the second point
    assert q.inter_eye_distance(lm, q.ARCFACE5) == pytest.approx(60.0, abs=0.01)
    assert q.inter_eye_distance(head_landmarks(), q.DLIB5) == pytest.approx(60.0, abs=0.01)


@pytest.mark.parametrize(("yaw", "pitch", "roll"), [(0, 0, 0), (30, 0, 0), (-20, 15, 10)])
def test_arcface_layout_pose(yaw: float, pitch: float, roll: float) -> None:
    est = q.estimate_pose(arcface_landmarks(yaw, pitch, roll), q.ARCFACE5)
    assert est == pytest.approx([yaw, pitch, roll], abs=0.1)
    # Read as dlib points, the same five points mean something else entirely.
    assert abs(q.estimate_pose(arcface_landmarks(yaw, pitch, roll))[2] - roll) > 30


def test_unknown_or_uncalibrated_layout_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(InvalidArgument, match="unknown landmark layout"):
        q.eye_centres(head_landmarks(), "mediapipe468")
    points = arcface_landmarks()
    monkeypatch.delitem(q.FRONTAL_NOSE_DROP, q.ARCFACE5)
    with pytest.raises(InvalidArgument, match="no frontal nose offset"):
        q.estimate_pose(points, q.ARCFACE5)


def test_assess_honours_the_layout() -> None:
    lm = arcface_landmarks(yaw=30.0)
    faces = LocatedFaces(
        boxes=np.asarray([[140, 140, 260, 260]], np.float32),
        scores=np.ones(1, np.float32),
        landmarks=lm[None],
        layout=q.ARCFACE5,
    )
    report = q.assess(blank_image(), faces, 0, textured_chip(), policy=ENROLL)
    assert report.yaw_deg == pytest.approx(30.0, abs=0.1)
    assert report.inter_eye_px == pytest.approx(60.0 * math.cos(math.radians(30)), abs=0.05)
    assert [f.check for f in report.failures] == ["yaw"]


def test_yunet_lfw_landmarks_look_frontal_with_the_arcface_layout() -> None:
    """What calibrates FRONTAL_NOSE_DROP["arcface5"]: YuNet's points on LFW (mostly frontal
    press photos) must centre on a frontal pose, as dlib's do."""
    from conftest import SHARED_MODELS
    from yunet_points import YuNetPoints

    model = SHARED_MODELS / "detectors" / "face_detection_yunet_2023mar.onnx"
    root = require_shared_faces() / "lfw-devtrain" / "images"
    if not model.is_file():
        pytest.skip(f"needs the YuNet model at {model}")
    yunet = YuNetPoints(model)
    every = sorted(root.glob("*/*_0001.jpg"))
    paths = every[:: max(1, len(every) // 60)][:60]
    points = [yunet.largest(np.asarray(Image.open(p).convert("RGB"))) for p in paths]
    found = np.stack([p for p in points if p is not None])
    assert len(found) >= 55
    median = np.median(q.estimate_pose(found, q.ARCFACE5), axis=0)
    assert np.all(np.abs(median) < 6.0), median
