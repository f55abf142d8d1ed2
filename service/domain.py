"""Domain requests and results of the face service: what the engine takes and returns.

These are transport-free; ``service.transport.convert`` is the only module that turns them into and
out of protobuf messages.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from service.pipeline.quality import QualityLimits, QualityPolicy
from service.pipeline.types import FloatArray

__all__ = ["QualityLimits", "QualityPolicy"]  # re-exported: part of the domain vocabulary


class Decision(enum.Enum):
    MATCH = "MATCH"
    NO_MATCH = "NO_MATCH"
    AMBIGUOUS = "AMBIGUOUS"
    NEED_HINT = "NEED_HINT"


class CollectionKind(enum.Enum):
    """Assurance level: *pay* uses the strict threshold, *member* the lenient one."""

    PAY = "PAY"
    MEMBER = "MEMBER"


@dataclass(frozen=True, slots=True)
class FaceBox:
    """The face used, in the original image's pixels after EXIF orientation."""

    left: float
    top: float
    right: float
    bottom: float
    score: float


@dataclass(frozen=True, slots=True)
class FaceQuality:
    """Per-image quality of an enrolled or probed face, as the quality gate measured it
    (see ``service.pipeline.quality`` for each measure)."""

    box: FaceBox
    inter_eye_px: float
    detection_score: float
    sharpness: float = 0.0  # variance of the Laplacian of the grey chip centre
    yaw_deg: float = 0.0  # pose estimate from the 5 landmarks
    pitch_deg: float = 0.0
    roll_deg: float = 0.0
    brightness: float = 0.0  # mean luma 0..255 of the chip centre
    clipped_fraction: float = 0.0  # of the chip centre's pixels, black or white
    outside_fraction: float = 0.0  # of the face box, outside the image
    other_face_ratio: float = 0.0  # largest other face's area / this face's
    face_count: int = 1  # faces found in the image
    liveness_score: float | None = None  # fused real-probability, when liveness ran


@dataclass(frozen=True, slots=True)
class CollectionSpec:
    name: str
    kind: CollectionKind = CollectionKind.MEMBER
    # None = take the model pack's calibrated default for the collection kind.
    threshold: float | None = None
    margin: float | None = None
    # Above this many enrolled users an un-hinted Identify answers NEED_HINT; 0 = never.
    hint_required_above: int | None = None
    # Store templates under a secret per-collection transform that can be re-issued.
    revocable: bool = False
    # Changes to the server's quality limits for Enroll and for Identify/Verify.
    enroll_quality: QualityLimits = field(default_factory=QualityLimits)
    identify_quality: QualityLimits = field(default_factory=QualityLimits)
    # None = the server's rule for the kind ([liveness] require_for); True/False = this
    # collection requires liveness, or does not.
    require_liveness: bool | None = None
    # MATCH answers carry the user's Enroll metadata (never the phone). Off: it may be
    # personal, and a terminal should get it only where the operator chose to.
    identify_returns_metadata: bool = False


@dataclass(frozen=True, slots=True)
class CollectionUpdate:
    """Changes to a collection's tunables; None = keep. Quality limits, when given, replace
    the collection's own limits; ``reset_require_liveness`` goes back to the server's rule
    for the kind."""

    name: str
    threshold: float | None = None
    margin: float | None = None
    hint_required_above: int | None = None
    enroll_quality: QualityLimits | None = None
    identify_quality: QualityLimits | None = None
    require_liveness: bool | None = None
    reset_require_liveness: bool = False
    identify_returns_metadata: bool | None = None


@dataclass(frozen=True, slots=True)
class CollectionInfo:
    name: str
    kind: CollectionKind
    threshold: float
    margin: float
    hint_required_above: int
    model_id: str
    user_count: int
    face_count: int
    created_at: float  # unix seconds
    embedding_dim: int = 0
    revocable: bool = False  # templates under a secret transform (see CollectionSpec)
    transform_generation: int = 0  # bumped by each re-issue (`facegate crypto rotate-transform`)
    # The collection's own quality limits (what it was created with) ...
    enroll_quality_overrides: QualityLimits = field(default_factory=QualityLimits)
    identify_quality_overrides: QualityLimits = field(default_factory=QualityLimits)
    # ... and the limits in force on this server (presets < server settings < collection).
    enroll_quality: QualityPolicy | None = None
    identify_quality: QualityPolicy | None = None
    require_liveness: bool | None = None  # as created (None = the server's rule)
    # Whether this server checks liveness on this collection's faces now: required by the
    # collection or its kind AND a liveness model is configured.
    liveness_active: bool = False
    identify_returns_metadata: bool = False


@dataclass(frozen=True, slots=True)
class EnrollRequest:
    collection: str
    uid: str
    images: Sequence[bytes]
    phone_number: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    allow_duplicate: bool = False


@dataclass(frozen=True, slots=True)
class EnrollResult:
    uid: str
    face_ids: tuple[int, ...]
    qualities: tuple[FaceQuality, ...]
    created: bool  # False when the uid already existed (faces added or re-enrolment was a no-op)


@dataclass(frozen=True, slots=True)
class Candidate:
    uid: str
    score: float  # cosine similarity, higher is more similar


@dataclass(frozen=True, slots=True)
class IdentifyRequest:
    collection: str
    image: bytes | None = None
    hint: str | None = None  # last 4 digits of the phone number
    top_k: int = 5
    probe_token: str | None = None  # from an earlier NEED_HINT answer; replaces the image


@dataclass(frozen=True, slots=True)
class IdentifyResult:
    decision: Decision
    uid: str | None
    score: float
    candidates: tuple[Candidate, ...]
    face: FaceBox | None
    threshold: float
    probe_token: str | None = None
    probe_token_ttl_s: float = 0.0
    # The matched user's Enroll metadata, where the collection opted in (MATCH only).
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class VerifyRequest:
    collection: str
    uid: str
    image: bytes


@dataclass(frozen=True, slots=True)
class VerifyResult:
    match: bool
    score: float
    threshold: float
    face: FaceBox


@dataclass(frozen=True, slots=True)
class UserInfo:
    collection: str
    uid: str
    face_count: int
    has_phone: bool
    metadata: Mapping[str, str]
    created_at: float
    updated_at: float


@dataclass(frozen=True, slots=True)
class UserPage:
    users: tuple[UserInfo, ...]
    next_page_token: str  # "" when this is the last page


@dataclass(frozen=True, slots=True, eq=False)
class ImportTemplatesRequest:
    """New users given directly as templates of the collection's model (admin only)."""

    collection: str
    model_id: str
    uids: tuple[str, ...]
    embeddings: FloatArray  # (n, D) float32, L2-normalised
    phone_numbers: tuple[str | None, ...] | None = None
    metadata: tuple[Mapping[str, str], ...] | None = None

    def __eq__(self, other: object) -> bool:
        # Dataclass equality would compare the arrays element-wise (ambiguous truth value).
        if not isinstance(other, ImportTemplatesRequest):
            return NotImplemented
        return (
            (self.collection, self.model_id, self.uids, self.phone_numbers, self.metadata)
            == (other.collection, other.model_id, other.uids, other.phone_numbers, other.metadata)
            and self.embeddings.shape == other.embeddings.shape
            and bool(np.array_equal(self.embeddings, other.embeddings))
        )

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True, slots=True)
class LivenessInfo:
    """What this server does about presentation attacks."""

    configured: bool  # a PAD model is loaded; False = no liveness check anywhere
    model_ids: tuple[str, ...] = ()  # "<file>@sha256:<digest>" per model
    threshold: float = 0.0
    required_for: tuple[CollectionKind, ...] = ()  # kinds that require it by default
    check_enroll: bool = False


@dataclass(frozen=True, slots=True)
class ServerInfo:
    version: str
    model_pack: str
    model_id: str
    embedding_dim: int
    default_threshold: float
    liveness: LivenessInfo
    enroll_quality: QualityPolicy  # server defaults, before any collection's own limits
    identify_quality: QualityPolicy
