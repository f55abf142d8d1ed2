"""Rows the store returns and takes: plain frozen values, no SQL (that is in the backends)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from service.pipeline.types import FloatArray


@dataclass(frozen=True, slots=True)
class CollectionRow:
    """A collection as stored. To create one, the engine passes a row with ``id`` 0 and the
    store returns it with its id and creation time."""

    id: int  # never reused: names a collection's snapshot and change log
    name: str
    kind: str
    threshold: float
    margin: float
    hint_required_above: int
    model_id: str
    created_at: float
    transform_gen: int = 0  # revocable templates: the secret transform's generation, 0 = off
    # The collection's own quality limits ({limit name: value}) and liveness choice
    # (None = the server's rule for its kind).
    enroll_quality: Mapping[str, float] = field(default_factory=dict)
    identify_quality: Mapping[str, float] = field(default_factory=dict)
    require_liveness: bool | None = None
    identify_returns_metadata: bool = False  # MATCH answers carry the user's metadata


@dataclass(frozen=True, slots=True)
class UserRow:
    collection: str
    uid: str
    metadata: dict[str, str]
    phone_hash: str | None
    phone_bucket: str | None
    created_at: float
    updated_at: float
    face_count: int


@dataclass(frozen=True, slots=True)
class NewFace:
    """One face to enrol, as the engine measured it."""

    template: FloatArray  # (D,) float32, L2-normalised
    image_digest: str  # keyed hash of the image bytes (idempotent re-enrolment)
    box: tuple[float, float, float, float]
    det_score: float
    inter_eye_px: float


@dataclass(frozen=True, slots=True)
class FaceRow:
    face_id: int
    uid: str
    template: FloatArray
    partition: str | None  # the user's phone bucket
    image_digest: str


@dataclass(frozen=True, slots=True)
class EnrollOutcome:
    created: bool
    added: tuple[FaceRow, ...]  # faces to add to the index (new, or moved to a new bucket)
    removed_face_ids: tuple[int, ...]  # faces to drop from the index (moved to new ids)
    new_face_ids: tuple[int, ...]  # ids of the NewFace rows, in the order given
    renamed: dict[int, int]  # old face id -> new face id of faces moved to a new bucket


@dataclass(frozen=True, slots=True)
class ChangesSince:
    added: tuple[int, ...]
    removed: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ImportedUser:
    """A new user given as one template (ImportTemplates)."""

    uid: str
    template: FloatArray  # (D,) float32, L2-normalised
    phone: tuple[str, str] | None  # (keyed hash of the number, keyed hash of its last 4 digits)
    metadata: Mapping[str, str]
