"""The gate between locating faces and embedding one: select, align, quality, liveness.

For each image of a call (see docs/ARCHITECTURE.md, "How a request flows"):

1. **select** the customer's face: the largest (``service.pipeline.face_selection``), else NO_FACE;
2. **align** it into the embedder's chip;
3. **quality**: ``service.pipeline.quality.assess`` over the image, *all* located faces and
   the chip, under the call's policy (strict for Enroll, lenient for Identify and Verify),
   and ``check``: LOW_QUALITY or MULTIPLE_FACES naming the failed check, the measured value
   and the limit. The "another face of comparable size" rule lives only there;
4. **liveness** when the collection requires it and a PAD model is configured:
   LIVENESS_FAILED with the score and the threshold.

Align runs before the quality checks because sharpness and exposure are measured on the
aligned chip (the face at a fixed scale, whatever the photo's resolution); the warp costs a
fraction of a millisecond, and the same chip is then embedded.

Which policy a collection gets: the presets (``QualityPolicy.enroll()``/``.identify()``),
changed by the server's ``[quality.enroll]``/``[quality.identify]`` settings, changed again
by the collection's own limits. Liveness is required by the collection's own choice when it
made one, else by its kind (``[liveness] require_for``, default: pay collections).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

import numpy.typing as npt

from service.config import LivenessSettings, Settings
from service.domain import CollectionKind, FaceBox, FaceQuality
from service.errors import InvalidArgument
from service.pipeline.analyzer import FaceAnalyzer
from service.pipeline.face_selection import select_face
from service.pipeline.quality import QualityLimits, QualityPolicy, assess, check
from service.pipeline.timing import ALIGN, LIVENESS, QUALITY, StageTimer
from service.pipeline.types import DecodedImage, UInt8Array

log = logging.getLogger(__name__)


class LivenessCheck(Protocol):
    """What the gate needs of a PAD model (``service.pipeline.liveness.LivenessDetector``)."""

    @property
    def threshold(self) -> float: ...

    @property
    def model_ids(self) -> tuple[str, ...]:
        """Each model as ``<file name>@sha256:<digest>``."""

    def check(self, image: DecodedImage, box: npt.ArrayLike) -> float:
        """The face's fused real-probability; ``LivenessFailed`` below the threshold."""


@dataclass(frozen=True, slots=True)
class GatePolicy:
    """What one call requires of its faces."""

    quality: QualityPolicy
    liveness: LivenessCheck | None  # None: no liveness check on this call


@dataclass(frozen=True, slots=True)
class GatedFace:
    chip: UInt8Array  # (S, S, 3), ready to embed
    quality: FaceQuality


def gate_face(
    image: DecodedImage, analyzer: FaceAnalyzer, policy: GatePolicy, timer: StageTimer
) -> GatedFace:
    """Locate, select, align and check the customer's face in ``image`` (raises the
    ``FaceRejected`` subclass that says why it is refused)."""
    faces = analyzer.locate(image)  # times detect and landmarks itself
    selected = select_face(faces)
    with timer.stage(ALIGN):
        chip = analyzer.align(image, selected.face)[0]
    with timer.stage(QUALITY):
        report = assess(image, faces, selected.index, chip, policy=policy.quality)
        check(report, policy.quality)
    b = faces.boxes[selected.index]
    score = float(faces.scores[selected.index])
    liveness_score = None
    if policy.liveness is not None:
        with timer.stage(LIVENESS):
            liveness_score = policy.liveness.check(image, b)
    quality = FaceQuality(
        box=FaceBox(float(b[0]), float(b[1]), float(b[2]), float(b[3]), score),
        inter_eye_px=report.inter_eye_px,
        detection_score=score,
        sharpness=report.sharpness,
        yaw_deg=report.yaw_deg,
        pitch_deg=report.pitch_deg,
        roll_deg=report.roll_deg,
        brightness=report.brightness,
        clipped_fraction=report.clipped_fraction,
        outside_fraction=report.outside_fraction,
        other_face_ratio=report.other_face_ratio,
        face_count=report.face_count,
        liveness_score=liveness_score,
    )
    return GatedFace(chip, quality)


# ---------------------------------------------------------------- policies from settings


def server_policies(settings: Settings) -> tuple[QualityPolicy, QualityPolicy]:
    """(enroll, identify) quality policies of this server, before any collection's limits."""
    return (
        settings.quality.enroll.apply(QualityPolicy.enroll()),
        settings.quality.identify.apply(QualityPolicy.identify()),
    )


def collection_policies(
    server: tuple[QualityPolicy, QualityPolicy], enroll: QualityLimits, identify: QualityLimits
) -> tuple[QualityPolicy, QualityPolicy]:
    """A collection's (enroll, identify) policies: its own limits over the server's."""
    return enroll.apply(server[0]), identify.apply(server[1])


def kinds_requiring_liveness(settings: LivenessSettings) -> tuple[CollectionKind, ...]:
    """The kinds named by ``[liveness] require_for`` ("pay", "member", comma-separated)."""
    out: list[CollectionKind] = []
    for word in settings.require_for.split(","):
        name = word.strip().upper()
        if not name:
            continue
        try:
            kind = CollectionKind(name)
        except ValueError:
            raise InvalidArgument(
                f"setting liveness.require_for: unknown collection kind {word.strip()!r}; "
                "use pay and/or member, comma-separated",
                metadata={"setting": "liveness.require_for"},
            ) from None
        if kind not in out:
            out.append(kind)
    return tuple(out)


def liveness_required(
    kind: CollectionKind, own: bool | None, required_for: tuple[CollectionKind, ...]
) -> bool:
    """Whether a collection requires liveness: its own choice, else its kind's default."""
    return own if own is not None else kind in required_for
