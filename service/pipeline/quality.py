"""Quality gate: is this face good enough to enrol, or to identify with?

``assess`` measures one located face — its size (inter-eye distance), sharpness, head pose,
exposure, how much of it lies outside the frame and whether another face is comparably
large — and lists the checks that fail under a ``QualityPolicy``; ``check`` turns failures
into ``MultipleFaces`` / ``LowQuality`` errors whose metadata says which check failed and by
how much, so a terminal can tell the customer what to change. Enrolment uses the strict
``QualityPolicy.enroll()``: a poor template hurts every later identification. Identify uses
the lenient ``QualityPolicy.identify()``: a probe only has to be usable.

Measurements (all cheap numpy, well under a millisecond per face):

* ``inter_eye_px``: distance between the two eye centres (mean of each eye's two corners),
  in image pixels.
* ``sharpness``: variance of the 4-neighbour Laplacian of the grey (BT.601 luma) chip, over
  the chip's central region where the face is. Blur removes the high frequencies it measures.
  Sensor noise and JPEG blocking raise it, so it bounds blur, not image quality in general.
* ``brightness``: mean luma of that region, 0..255; ``clipped_fraction``: fraction of its
  pixels at or below ``CLIP_DARK`` or at or above ``CLIP_BRIGHT`` (lost detail).
* ``outside_fraction``: fraction of the detector box's area outside the image (a face cut
  by the frame edge; MMOD boxes may extend past the border).
* ``other_face_ratio``: area of the largest *other* face / area of this face.
* Pose from the five landmarks (dlib order: image-right eye outer/inner corners, image-left
  eye outer/inner corners, nose base) — an ESTIMATE from a rigid average head under
  orthographic projection, not a measurement; see ``estimate_pose``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import numpy as np
import numpy.typing as npt

from service.errors import InvalidArgument, LowQuality, MultipleFaces, NoFace
from service.pipeline.types import DecodedImage, FloatArray, LocatedFaces, UInt8Array

# Pose model (see estimate_pose). Depth of the nose point in front of the eye centres, in
# units of the eye-centre distance: 0.41 on MediaPipe's canonical face model (eye centres
# 6.30 cm apart, nose base 2.59 cm in front of them, 4.71 cm below them). The frontal
# vertical offset is calibrated per landmark layout instead (see FRONTAL_NOSE_DROP).
NOSE_DEPTH = 0.41

# Landmark layouts (``LocatedFaces.layout``): which rows of the (5, 2) points are the eyes
# and the nose. "dlib5": image-right eye outer, inner, image-left eye outer, inner corners,
# nose base. "arcface5": image-left eye centre, image-right eye centre, nose tip, image-left
# mouth corner, image-right mouth corner (the subject's right eye first, as in the ArcFace
# template and YuNet/SCRFD/RetinaFace outputs).
DLIB5 = "dlib5"
ARCFACE5 = "arcface5"


@dataclass(frozen=True, slots=True)
class LandmarkLayout:
    image_right_eye: tuple[int, ...]  # rows averaged into the image-right eye centre
    image_left_eye: tuple[int, ...]
    nose: int


LAYOUTS: dict[str, LandmarkLayout] = {
    DLIB5: LandmarkLayout(image_right_eye=(0, 1), image_left_eye=(2, 3), nose=4),
    ARCFACE5: LandmarkLayout(image_right_eye=(1,), image_left_eye=(0,), nose=2),
}

# Vertical offset of the nose point below the eye line over the eye-centre distance, yaw
# corrected, for a frontal face, per layout (the nose base and the nose tip sit at different
# heights). dlib5: median 0.750 on dlib 5-point landmarks of 300 LFW photos (mostly
# near-frontal; MediaPipe's canonical model gives 0.75 too). arcface5: 0.59, the value that
# puts the median estimated pitch of YuNet-2023mar landmarks of 300 LFW photos (every 13th
# person's first photo) at zero; the same procedure on dlib landmarks of those photos gives
# 0.743. tests/test_quality.py checks that LFW's median pose stays near zero with both.
# NOSE_DEPTH is the nose base's for both; the tip stands further out, so yaw reads somewhat
# high for arcface5 (errs strict). A layout missing here has no measured value: estimate_pose
# refuses it rather than guess.
FRONTAL_NOSE_DROP: dict[str, float] = {DLIB5: 0.75, ARCFACE5: 0.59}


def layout_of(name: str) -> LandmarkLayout:
    try:
        return LAYOUTS[name]
    except KeyError:
        raise InvalidArgument(
            f"unknown landmark layout {name!r}; known: {', '.join(sorted(LAYOUTS))}"
        ) from None


def frontal_nose_drop(layout: str) -> float:
    layout_of(layout)
    try:
        return FRONTAL_NOSE_DROP[layout]
    except KeyError:
        raise InvalidArgument(
            f"no frontal nose offset is calibrated for landmark layout {layout!r}, so head "
            "pose cannot be estimated from it; measure its median on frontal photos and add "
            "it to quality.FRONTAL_NOSE_DROP"
        ) from None


# Luma at or beyond these counts as clipped (no detail left).
CLIP_DARK = 8
CLIP_BRIGHT = 247
# Central fraction of the aligned chip used for sharpness and exposure: with dlib's chip
# padding the face fills roughly the middle; the corners are background.
CHIP_CENTRE = 0.6


@dataclass(frozen=True, kw_only=True)
class QualityPolicy:
    """Limits for one use (enrol or identify); collections may override any of them."""

    min_inter_eye_px: float
    min_sharpness: float  # minimum Laplacian variance of the grey chip centre ("max blur")
    max_yaw_deg: float
    max_pitch_deg: float
    max_roll_deg: float
    min_brightness: float  # mean luma 0..255
    max_brightness: float
    max_clipped_fraction: float
    max_outside_fraction: float
    comparable_face_ratio: float  # another face this large relative to ours → MultipleFaces

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise InvalidArgument(f"quality policy: {f.name} must be a finite number >= 0")
        if self.min_brightness > self.max_brightness:
            raise InvalidArgument("quality policy: min_brightness > max_brightness")

    @classmethod
    def enroll(cls) -> QualityPolicy:
        """Strict: the template is used for every later match."""
        return cls(
            min_inter_eye_px=40.0,
            min_sharpness=30.0,
            max_yaw_deg=25.0,
            max_pitch_deg=25.0,
            max_roll_deg=20.0,
            min_brightness=50.0,
            max_brightness=215.0,
            max_clipped_fraction=0.15,
            max_outside_fraction=0.02,
            comparable_face_ratio=0.5,
        )

    @classmethod
    def identify(cls) -> QualityPolicy:
        """Lenient: only what makes a match unreliable or the customer ambiguous."""
        return cls(
            min_inter_eye_px=18.0,
            min_sharpness=10.0,
            max_yaw_deg=40.0,
            max_pitch_deg=35.0,
            max_roll_deg=30.0,
            min_brightness=30.0,
            max_brightness=235.0,
            max_clipped_fraction=0.35,
            max_outside_fraction=0.15,
            comparable_face_ratio=0.6,
        )


@dataclass(frozen=True, kw_only=True)
class QualityLimits:
    """A partial ``QualityPolicy``: the limits to change, None = keep the base policy's.

    Server settings (``[quality.enroll]``, ``[quality.identify]``) apply on top of the
    presets, and a collection's own limits on top of those.
    """

    min_inter_eye_px: float | None = None
    min_sharpness: float | None = None
    max_yaw_deg: float | None = None
    max_pitch_deg: float | None = None
    max_roll_deg: float | None = None
    min_brightness: float | None = None
    max_brightness: float | None = None
    max_clipped_fraction: float | None = None
    max_outside_fraction: float | None = None
    comparable_face_ratio: float | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            name, value = f.name, getattr(self, f.name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InvalidArgument(
                    f"quality limit {name} must be a number", metadata={"field": name}
                )
            if not math.isfinite(value) or value < 0:
                raise InvalidArgument(
                    f"quality limit {name} must be a finite number >= 0, got {value}",
                    metadata={"field": name},
                )

    def items(self) -> dict[str, float]:
        """The limits that are set, by name."""
        return {
            f.name: float(getattr(self, f.name))
            for f in fields(self)
            if getattr(self, f.name) is not None
        }

    def apply(self, base: QualityPolicy) -> QualityPolicy:
        """``base`` with these limits replacing its own (``InvalidArgument`` when the result
        is inconsistent, e.g. min_brightness above max_brightness)."""
        return replace(base, **self.items()) if self.items() else base

    def then(self, top: QualityLimits) -> QualityLimits:
        """These limits with ``top``'s set ones replacing them."""
        return QualityLimits(**{**self.items(), **top.items()})


@dataclass(frozen=True, slots=True)
class QualityFailure:
    """One failed check: its name, the measured value and the limit it broke."""

    check: str
    value: float
    limit: float
    hint: str  # what the customer can do about it


@dataclass(frozen=True, slots=True)
class FaceQualityReport:
    inter_eye_px: float
    sharpness: float
    yaw_deg: float  # > 0: face turned towards the image's right
    pitch_deg: float  # > 0: chin up; < 0: chin down (saturates, see estimate_pose)
    roll_deg: float  # > 0: head tilted clockwise in the image
    brightness: float
    clipped_fraction: float
    outside_fraction: float
    other_face_ratio: float  # 0 when it is the only face
    face_count: int
    failures: tuple[QualityFailure, ...]  # under the policy given to assess()

    @property
    def passed(self) -> bool:
        return not self.failures


def _eyes(lm: npt.NDArray[np.float64], layout: str) -> tuple[np.ndarray, np.ndarray]:
    spec = layout_of(layout)
    right = lm[..., list(spec.image_right_eye), :].mean(axis=-2)
    left = lm[..., list(spec.image_left_eye), :].mean(axis=-2)
    return right, left


def eye_centres(
    landmarks: npt.NDArray[np.floating], layout: str = DLIB5
) -> tuple[FloatArray, FloatArray]:
    """(..., 2) image-right and image-left eye centres of (..., 5, 2) 5-point landmarks in
    ``layout`` (dlib5: mean of each eye's two corners; arcface5: the eye-centre points)."""
    right, left = _eyes(np.asarray(landmarks, np.float64), layout)
    return right.astype(np.float32), left.astype(np.float32)


def inter_eye_distance(landmarks: npt.NDArray[np.floating], layout: str = DLIB5) -> float:
    """Distance in pixels between the two eye centres of one (5, 2) landmark set."""
    right, left = eye_centres(landmarks, layout)
    return float(np.hypot(*(right - left)))


def estimate_pose(landmarks: npt.NDArray[np.floating], layout: str = DLIB5) -> FloatArray:
    """(..., 3) [yaw, pitch, roll] in degrees from (..., 5, 2) 5-point landmarks in ``layout``
    (``InvalidArgument`` for a layout without a calibrated FRONTAL_NOSE_DROP).

    An ESTIMATE, good to several degrees near frontal and coarse beyond: the five points are
    fitted with a rigid average head — eyes level at depth 0, nose point H =
    FRONTAL_NOSE_DROP[layout] eye-distances below the eye line and D = NOSE_DEPTH in front —
    seen orthographically.

    * roll: angle of the line from the image-left to the image-right eye centre; undone
      before anything else.
    * u, v: the nose base's offset from the eye midpoint, horizontally and vertically, over
      the (foreshortened) inter-eye distance. For pitch p (then yaw θ) the model gives
      u = (H·sin p + D·cos p)·tan θ and v = (H·cos p − D·sin p) / cos θ; since the two
      brackets' squares sum to R² = H² + D², cos²θ is the root in (0, 1] of
      v²c² − (u² + v² + R²)c + R² = 0, and then p follows from v·cos θ = R·cos(p + α),
      α = atan(D / H). Positive yaw turns the nose to the image right; positive pitch lifts
      the chin (the nose base climbs towards the eye line).
    * Chin-up pitch is well determined, but the nose drop peaks at p = −α ≈ −29° and falls
      again, so a head bowed further reads as a smaller bow (never below −α; beyond about
      −2α even as chin-up). Near −α the nose base is level with the eyes in depth, so
      yaw no longer moves it sideways and a drop beyond the model's maximum is read as yaw
      (the smaller-yaw root), which fails the yaw check instead of the pitch check.
    """
    drop = frontal_nose_drop(layout)
    lm = np.asarray(landmarks, np.float64)
    right, left = _eyes(lm, layout)
    nose = lm[..., layout_of(layout).nose, :]
    eye = right - left
    d = np.maximum(np.hypot(eye[..., 0], eye[..., 1]), 1e-9)
    roll = np.arctan2(eye[..., 1], eye[..., 0])
    off = nose - (right + left) / 2
    c, s = np.cos(roll), np.sin(roll)
    u = (c * off[..., 0] + s * off[..., 1]) / d
    r2 = drop**2 + NOSE_DEPTH**2
    v = (-s * off[..., 0] + c * off[..., 1]) / d
    total = u * u + v * v + r2
    # The smaller root, written so v = 0 needs no special case.
    cos2 = 2.0 * r2 / (total + np.sqrt(np.maximum(total * total - 4.0 * v * v * r2, 0.0)))
    cos_yaw = np.sqrt(np.clip(cos2, 0.0, 1.0))
    yaw = np.sign(u) * np.arccos(cos_yaw)
    alpha = math.atan2(NOSE_DEPTH, drop)
    pitch = np.arccos(np.clip(v * cos_yaw / math.sqrt(r2), -1.0, 1.0)) - alpha
    out: FloatArray = np.degrees(np.stack([yaw, pitch, roll], axis=-1)).astype(np.float32)
    return out


def _luma(chip: UInt8Array) -> npt.NDArray[np.float32]:
    rgb = chip.astype(np.float32)
    luma: npt.NDArray[np.float32] = rgb @ np.array([0.299, 0.587, 0.114], np.float32)
    return luma


def chip_centre(chip: UInt8Array, fraction: float = CHIP_CENTRE) -> UInt8Array:
    h, w = chip.shape[:2]
    mh, mw = round(h * (1 - fraction) / 2), round(w * (1 - fraction) / 2)
    return chip[mh : h - mh, mw : w - mw]


def laplacian_variance(grey: npt.NDArray[np.float32]) -> float:
    """Variance of the 4-neighbour Laplacian over the interior pixels."""
    g = grey.astype(np.float64)
    lap = g[1:-1, :-2] + g[1:-1, 2:] + g[:-2, 1:-1] + g[2:, 1:-1] - 4.0 * g[1:-1, 1:-1]
    return float(lap.var())


def _box_area(boxes: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
    b = np.asarray(boxes, np.float64)
    area: npt.NDArray[np.float64] = np.maximum(b[:, 2] - b[:, 0], 0.0) * np.maximum(
        b[:, 3] - b[:, 1], 0.0
    )
    return area


def outside_fraction(box: npt.NDArray[np.floating], width: int, height: int) -> float:
    """Fraction of the box's area that lies outside the [0, width] × [0, height] image."""
    left, top, right, bottom = (float(v) for v in box)
    area = max(right - left, 0.0) * max(bottom - top, 0.0)
    if area <= 0.0:
        return 1.0
    inside_w = max(min(right, width) - max(left, 0.0), 0.0)
    inside_h = max(min(bottom, height) - max(top, 0.0), 0.0)
    return 1.0 - inside_w * inside_h / area


def _validate(image: DecodedImage, faces: LocatedFaces, index: int, chip: UInt8Array) -> None:
    if not isinstance(image, DecodedImage) or image.rgb.ndim != 3:
        raise InvalidArgument("quality needs a DecodedImage")
    n = len(faces)
    if faces.boxes.shape != (n, 4) or faces.landmarks.shape != (n, 5, 2):
        raise InvalidArgument(
            f"faces need boxes (N, 4) and landmarks (N, 5, 2), got {faces.boxes.shape} "
            f"and {faces.landmarks.shape}"
        )
    if not (np.isfinite(faces.boxes).all() and np.isfinite(faces.landmarks).all()):
        raise InvalidArgument("face boxes and landmarks must be finite")
    if not 0 <= index < n:
        raise InvalidArgument(f"face index {index} out of range for {n} faces")
    if (
        not isinstance(chip, np.ndarray)
        or chip.dtype != np.uint8
        or chip.ndim != 3
        or chip.shape[2] != 3
        or min(chip.shape[:2]) < 8
    ):
        shape = getattr(chip, "shape", None)
        raise InvalidArgument(f"chip must be an (S, S, 3) uint8 RGB array, got {shape}")


def assess(
    image: DecodedImage,
    faces: LocatedFaces,
    index: int,
    chip: UInt8Array,
    *,
    policy: QualityPolicy,
) -> FaceQualityReport:
    """Measure face ``index`` of ``faces`` (its aligned ``chip``) and list ``policy`` failures.

    ``NoFace`` when ``faces`` is empty; ``InvalidArgument`` for malformed input.
    """
    if len(faces) == 0:
        raise NoFace("no face was found in the image")
    _validate(image, faces, index, chip)
    lm = faces.landmarks[index]
    inter_eye = inter_eye_distance(lm, faces.layout)
    yaw, pitch, roll = (float(v) for v in estimate_pose(lm, faces.layout))
    centre = chip_centre(chip)
    grey = _luma(centre)
    clipped = float(np.mean((grey <= CLIP_DARK) | (grey >= CLIP_BRIGHT)))
    areas = _box_area(faces.boxes)
    others = np.delete(areas, index)
    own = float(areas[index])
    biggest_other = float(others.max()) if others.size else 0.0
    ratio = biggest_other / own if own > 0 else (math.inf if biggest_other > 0 else 0.0)
    report = FaceQualityReport(
        inter_eye_px=inter_eye,
        sharpness=laplacian_variance(grey),
        yaw_deg=yaw,
        pitch_deg=pitch,
        roll_deg=roll,
        brightness=float(grey.mean()),
        clipped_fraction=clipped,
        outside_fraction=outside_fraction(faces.boxes[index], image.width, image.height),
        other_face_ratio=ratio,
        face_count=len(faces),
        failures=(),
    )
    return _replace_failures(report, evaluate(report, policy))


def _replace_failures(
    report: FaceQualityReport, failures: tuple[QualityFailure, ...]
) -> FaceQualityReport:
    values = {f.name: getattr(report, f.name) for f in fields(report)}
    values["failures"] = failures
    return FaceQualityReport(**values)


def evaluate(report: FaceQualityReport, policy: QualityPolicy) -> tuple[QualityFailure, ...]:
    """The checks ``report`` fails under ``policy``, in a fixed order (most actionable first)."""
    p = policy
    out: list[QualityFailure] = []

    def too_low(check: str, value: float, limit: float, hint: str) -> None:
        if value < limit:
            out.append(QualityFailure(check, value, limit, hint))

    def too_high(check: str, value: float, limit: float, hint: str) -> None:
        if value > limit:
            out.append(QualityFailure(check, value, limit, hint))

    too_high("multiple_faces", report.other_face_ratio, p.comparable_face_ratio,
             "only the customer may be in front of the camera")  # fmt: skip
    too_high("outside", report.outside_fraction, p.max_outside_fraction,
             "move the face into the middle of the frame")  # fmt: skip
    too_low("inter_eye", report.inter_eye_px, p.min_inter_eye_px, "move closer to the camera")
    too_high("yaw", abs(report.yaw_deg), p.max_yaw_deg, "look straight at the camera")
    too_high("pitch", abs(report.pitch_deg), p.max_pitch_deg, "keep the head level")
    too_high("roll", abs(report.roll_deg), p.max_roll_deg, "hold the head upright")
    too_low("brightness", report.brightness, p.min_brightness, "more light on the face")
    too_high("brightness", report.brightness, p.max_brightness, "less light on the face")
    too_high("clipped", report.clipped_fraction, p.max_clipped_fraction,
             "avoid strong backlight or glare")  # fmt: skip
    too_low("sharpness", report.sharpness, p.min_sharpness,
            "hold still; the image is blurred")  # fmt: skip
    return tuple(out)


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def check(report: FaceQualityReport, policy: QualityPolicy) -> None:
    """Raise ``MultipleFaces`` or ``LowQuality`` when ``report`` fails ``policy``.

    Metadata (strings, for google.rpc.ErrorInfo): ``check`` = the failed checks' names,
    comma-separated, and for each ``<name>_value`` and ``<name>_limit``; ``hint`` = what to
    do about the first failure.
    """
    failures = evaluate(report, policy)
    if not failures:
        return
    multiple = [f for f in failures if f.check == "multiple_faces"]
    if multiple:
        f = multiple[0]
        raise MultipleFaces(
            f"{report.face_count} faces found and another is {f.value:.0%} the size of the "
            "customer's; only the customer may be in the picture",
            metadata={
                "check": f.check,
                "faces": str(report.face_count),
                "area_ratio": f"{f.value:.3f}",
                f"{f.check}_value": _fmt(f.value),
                f"{f.check}_limit": _fmt(f.limit),
                "hint": f.hint,
            },
        )
    metadata = {"check": ",".join(f.check for f in failures), "hint": failures[0].hint}
    for f in failures:
        metadata[f"{f.check}_value"] = _fmt(f.value)
        metadata[f"{f.check}_limit"] = _fmt(f.limit)
    detail = "; ".join(f"{f.check} {_fmt(f.value)} (limit {_fmt(f.limit)})" for f in failures)
    raise LowQuality(f"face quality too low: {detail}; {failures[0].hint}", metadata=metadata)
