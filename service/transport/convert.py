"""All protobuf <-> domain conversion, in one place (nothing else touches ``facegate_pb2``
field by field).

Each message of ``facegate/v1/facegate.proto`` has a ``*_to_proto`` / ``*_from_proto`` pair,
listed in ``CONVERTERS`` by the message's full name; a test checks that every message in the
file descriptor is there and round-trips. Request converters ``*_from_proto`` are where the
server checks the presence of required fields: a missing or malformed field raises
``InvalidArgument`` naming the field. Semantic checks (is this hint four digits, is this
threshold in range) belong to the engine.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, NamedTuple, TypeVar

import numpy as np
from facegate.v1 import facegate_pb2 as pb
from google.protobuf.timestamp_pb2 import Timestamp

from service.domain import (
    Candidate,
    CollectionInfo,
    CollectionKind,
    CollectionSpec,
    CollectionUpdate,
    Decision,
    EnrollRequest,
    EnrollResult,
    FaceBox,
    FaceQuality,
    IdentifyRequest,
    IdentifyResult,
    ImportTemplatesRequest,
    LivenessInfo,
    QualityLimits,
    QualityPolicy,
    ServerInfo,
    UserInfo,
    UserPage,
    VerifyRequest,
    VerifyResult,
)
from service.errors import InvalidArgument

DEFAULT_TOP_K = 5
DEFAULT_PAGE_SIZE = 100


class UserKey(NamedTuple):
    """The domain side of GetUserRequest / DeleteUserRequest."""

    collection: str
    uid: str


class UserPageRequest(NamedTuple):
    """The domain side of ListUsersRequest (page_size already defaulted)."""

    collection: str
    page_size: int = DEFAULT_PAGE_SIZE
    page_token: str = ""


# ---------------------------------------------------------------- field helpers


def _required(value: str, field: str) -> str:
    if not value:
        raise InvalidArgument(f"{field} is required", metadata={"field": field})
    return value


def _finite(value: float, field: str) -> float:
    if not math.isfinite(value):
        raise InvalidArgument(f"{field} must be a finite number", metadata={"field": field})
    return value


def _timestamp(seconds: float) -> Timestamp:
    # Whole seconds and the fraction apart: seconds * 1e9 would lose the fraction to float
    # rounding at today's epoch values (~1.7e18 ns is past 2**53).
    whole = math.floor(seconds)
    nanos = round((seconds - whole) * 1e9)
    if nanos >= 1_000_000_000:
        whole, nanos = whole + 1, nanos - 1_000_000_000
    return Timestamp(seconds=whole, nanos=nanos)


def _seconds(ts: Timestamp) -> float:
    return ts.seconds + ts.nanos / 1e9


_KIND_TO_PROTO = {
    CollectionKind.PAY: pb.COLLECTION_KIND_PAY,
    CollectionKind.MEMBER: pb.COLLECTION_KIND_MEMBER,
}
_KIND_FROM_PROTO: dict[int, CollectionKind] = {v: k for k, v in _KIND_TO_PROTO.items()}

_DECISION_TO_PROTO = {
    Decision.MATCH: pb.DECISION_MATCH,
    Decision.NO_MATCH: pb.DECISION_NO_MATCH,
    Decision.AMBIGUOUS: pb.DECISION_AMBIGUOUS,
    Decision.NEED_HINT: pb.DECISION_NEED_HINT,
}
_DECISION_FROM_PROTO: dict[int, Decision] = {v: k for k, v in _DECISION_TO_PROTO.items()}


def kind_from_proto(value: int, *, default: CollectionKind | None = None) -> CollectionKind:
    if value == pb.COLLECTION_KIND_UNSPECIFIED and default is not None:
        return default
    try:
        return _KIND_FROM_PROTO[value]
    except KeyError:
        raise InvalidArgument(
            f"kind: unknown collection kind {value}", metadata={"field": "kind"}
        ) from None


def decision_from_proto(value: int) -> Decision:
    try:
        return _DECISION_FROM_PROTO[value]
    except KeyError:
        raise InvalidArgument(f"decision: unknown decision {value}") from None


# ---------------------------------------------------------------- faces


def face_box_to_proto(box: FaceBox) -> pb.FaceBox:
    return pb.FaceBox(
        left=box.left, top=box.top, right=box.right, bottom=box.bottom, score=box.score
    )


def face_box_from_proto(msg: pb.FaceBox) -> FaceBox:
    return FaceBox(left=msg.left, top=msg.top, right=msg.right, bottom=msg.bottom, score=msg.score)


def face_quality_to_proto(q: FaceQuality) -> pb.FaceQuality:
    msg = pb.FaceQuality(
        box=face_box_to_proto(q.box),
        inter_eye_px=q.inter_eye_px,
        detection_score=q.detection_score,
        sharpness=q.sharpness,
        yaw_deg=q.yaw_deg,
        pitch_deg=q.pitch_deg,
        roll_deg=q.roll_deg,
        brightness=q.brightness,
        clipped_fraction=q.clipped_fraction,
        outside_fraction=q.outside_fraction,
        other_face_ratio=q.other_face_ratio,
        face_count=q.face_count,
    )
    if q.liveness_score is not None:
        msg.liveness_score = q.liveness_score
    return msg


def face_quality_from_proto(msg: pb.FaceQuality) -> FaceQuality:
    return FaceQuality(
        box=face_box_from_proto(msg.box),
        inter_eye_px=msg.inter_eye_px,
        detection_score=msg.detection_score,
        sharpness=msg.sharpness,
        yaw_deg=msg.yaw_deg,
        pitch_deg=msg.pitch_deg,
        roll_deg=msg.roll_deg,
        brightness=msg.brightness,
        clipped_fraction=msg.clipped_fraction,
        outside_fraction=msg.outside_fraction,
        other_face_ratio=msg.other_face_ratio,
        face_count=msg.face_count,
        liveness_score=msg.liveness_score if msg.HasField("liveness_score") else None,
    )


# ---------------------------------------------------------------- quality limits

_LIMIT_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(QualityLimits))


def quality_limits_to_proto(limits: QualityLimits) -> pb.QualityLimits:
    return pb.QualityLimits(**limits.items())


def quality_limits_from_proto(msg: pb.QualityLimits, field: str = "") -> QualityLimits:
    """The limits that are set. ``field`` names the request field in errors."""
    values: dict[str, float] = {}
    for name in _LIMIT_FIELDS:
        if msg.HasField(name):
            path = f"{field}.{name}" if field else name
            values[name] = _finite(getattr(msg, name), path)
    try:
        return QualityLimits(**values)
    except InvalidArgument as exc:
        name = exc.metadata.get("field", "")
        raise InvalidArgument(
            f"{field}: {exc.message}" if field else exc.message,
            metadata={"field": f"{field}.{name}" if field else name},
        ) from None


def quality_policy_to_proto(policy: QualityPolicy) -> pb.QualityLimits:
    """A whole policy: every limit set."""
    return pb.QualityLimits(**{name: getattr(policy, name) for name in _LIMIT_FIELDS})


def quality_policy_from_proto(msg: pb.QualityLimits) -> QualityPolicy:
    missing = [name for name in _LIMIT_FIELDS if not msg.HasField(name)]
    if missing:
        raise InvalidArgument(f"quality limits: missing {', '.join(missing)}")
    return QualityPolicy(**{name: getattr(msg, name) for name in _LIMIT_FIELDS})


def _optional_policy(msg: Any, name: str) -> QualityPolicy | None:
    return quality_policy_from_proto(getattr(msg, name)) if msg.HasField(name) else None


def candidate_to_proto(c: Candidate) -> pb.Candidate:
    return pb.Candidate(uid=c.uid, score=c.score)


def candidate_from_proto(msg: pb.Candidate) -> Candidate:
    return Candidate(uid=msg.uid, score=msg.score)


# ---------------------------------------------------------------- collections


def collection_spec_to_proto(spec: CollectionSpec) -> pb.CreateCollectionRequest:
    msg = pb.CreateCollectionRequest(name=spec.name, kind=_KIND_TO_PROTO[spec.kind])
    if spec.threshold is not None:
        msg.threshold = spec.threshold
    if spec.margin is not None:
        msg.margin = spec.margin
    if spec.hint_required_above is not None:
        msg.hint_required_above = spec.hint_required_above
    msg.revocable_templates = spec.revocable
    if spec.enroll_quality.items():
        msg.enroll_quality.CopyFrom(quality_limits_to_proto(spec.enroll_quality))
    if spec.identify_quality.items():
        msg.identify_quality.CopyFrom(quality_limits_to_proto(spec.identify_quality))
    if spec.require_liveness is not None:
        msg.require_liveness = spec.require_liveness
    msg.identify_returns_metadata = spec.identify_returns_metadata
    return msg


def collection_spec_from_proto(msg: pb.CreateCollectionRequest) -> CollectionSpec:
    return CollectionSpec(
        name=_required(msg.name, "name"),
        kind=kind_from_proto(msg.kind, default=CollectionKind.MEMBER),
        threshold=_finite(msg.threshold, "threshold") if msg.HasField("threshold") else None,
        margin=_finite(msg.margin, "margin") if msg.HasField("margin") else None,
        hint_required_above=(
            msg.hint_required_above if msg.HasField("hint_required_above") else None
        ),
        revocable=msg.revocable_templates,
        enroll_quality=quality_limits_from_proto(msg.enroll_quality, "enroll_quality"),
        identify_quality=quality_limits_from_proto(msg.identify_quality, "identify_quality"),
        require_liveness=msg.require_liveness if msg.HasField("require_liveness") else None,
        identify_returns_metadata=msg.identify_returns_metadata,
    )


def collection_update_to_proto(change: CollectionUpdate) -> pb.UpdateCollectionRequest:
    msg = pb.UpdateCollectionRequest(
        name=change.name, reset_require_liveness=change.reset_require_liveness
    )
    for name in _UPDATE_SCALARS:
        value = getattr(change, name)
        if value is not None:
            setattr(msg, name, value)
    if change.enroll_quality is not None:
        msg.enroll_quality.CopyFrom(quality_limits_to_proto(change.enroll_quality))
    if change.identify_quality is not None:
        msg.identify_quality.CopyFrom(quality_limits_to_proto(change.identify_quality))
    return msg


def collection_update_from_proto(msg: pb.UpdateCollectionRequest) -> CollectionUpdate:
    def limits(name: str) -> QualityLimits | None:
        return quality_limits_from_proto(getattr(msg, name), name) if msg.HasField(name) else None

    def given(name: str) -> Any:
        return getattr(msg, name) if msg.HasField(name) else None

    return CollectionUpdate(
        name=_required(msg.name, "name"),
        threshold=_finite(msg.threshold, "threshold") if msg.HasField("threshold") else None,
        margin=_finite(msg.margin, "margin") if msg.HasField("margin") else None,
        hint_required_above=given("hint_required_above"),
        enroll_quality=limits("enroll_quality"),
        identify_quality=limits("identify_quality"),
        require_liveness=given("require_liveness"),
        reset_require_liveness=msg.reset_require_liveness,
        identify_returns_metadata=given("identify_returns_metadata"),
    )


# The optional scalar fields an update request copies as they are.
_UPDATE_SCALARS = (
    "threshold",
    "margin",
    "hint_required_above",
    "require_liveness",
    "identify_returns_metadata",
)


def collection_info_to_proto(info: CollectionInfo) -> pb.Collection:
    msg = pb.Collection(
        name=info.name,
        kind=_KIND_TO_PROTO[info.kind],
        threshold=info.threshold,
        margin=info.margin,
        hint_required_above=info.hint_required_above,
        model_id=info.model_id,
        user_count=info.user_count,
        face_count=info.face_count,
        created_at=_timestamp(info.created_at),
        embedding_dim=info.embedding_dim,
        revocable_templates=info.revocable,
        transform_generation=info.transform_generation,
        enroll_quality_overrides=quality_limits_to_proto(info.enroll_quality_overrides),
        identify_quality_overrides=quality_limits_to_proto(info.identify_quality_overrides),
        liveness_active=info.liveness_active,
        identify_returns_metadata=info.identify_returns_metadata,
    )
    if info.enroll_quality is not None:
        msg.enroll_quality.CopyFrom(quality_policy_to_proto(info.enroll_quality))
    if info.identify_quality is not None:
        msg.identify_quality.CopyFrom(quality_policy_to_proto(info.identify_quality))
    if info.require_liveness is not None:
        msg.require_liveness = info.require_liveness
    return msg


def collection_info_from_proto(msg: pb.Collection) -> CollectionInfo:
    return CollectionInfo(
        name=msg.name,
        kind=kind_from_proto(msg.kind),
        threshold=msg.threshold,
        margin=msg.margin,
        hint_required_above=msg.hint_required_above,
        model_id=msg.model_id,
        user_count=msg.user_count,
        face_count=msg.face_count,
        created_at=_seconds(msg.created_at),
        embedding_dim=msg.embedding_dim,
        revocable=msg.revocable_templates,
        transform_generation=msg.transform_generation,
        enroll_quality_overrides=quality_limits_from_proto(msg.enroll_quality_overrides),
        identify_quality_overrides=quality_limits_from_proto(msg.identify_quality_overrides),
        enroll_quality=_optional_policy(msg, "enroll_quality"),
        identify_quality=_optional_policy(msg, "identify_quality"),
        require_liveness=msg.require_liveness if msg.HasField("require_liveness") else None,
        liveness_active=msg.liveness_active,
        identify_returns_metadata=msg.identify_returns_metadata,
    )


def delete_collection_request_to_proto(name: str) -> pb.DeleteCollectionRequest:
    return pb.DeleteCollectionRequest(name=name)


def delete_collection_request_from_proto(msg: pb.DeleteCollectionRequest) -> str:
    return _required(msg.name, "name")


def delete_collection_response_to_proto(_: None = None) -> pb.DeleteCollectionResponse:
    return pb.DeleteCollectionResponse()


def delete_collection_response_from_proto(_: pb.DeleteCollectionResponse) -> None:
    return None


def get_collection_request_to_proto(name: str) -> pb.GetCollectionRequest:
    return pb.GetCollectionRequest(name=name)


def get_collection_request_from_proto(msg: pb.GetCollectionRequest) -> str:
    return _required(msg.name, "name")


def list_collections_request_to_proto(_: None = None) -> pb.ListCollectionsRequest:
    return pb.ListCollectionsRequest()


def list_collections_request_from_proto(_: pb.ListCollectionsRequest) -> None:
    return None


def list_collections_response_to_proto(
    infos: tuple[CollectionInfo, ...] | list[CollectionInfo],
) -> pb.ListCollectionsResponse:
    return pb.ListCollectionsResponse(collections=[collection_info_to_proto(i) for i in infos])


def list_collections_response_from_proto(
    msg: pb.ListCollectionsResponse,
) -> tuple[CollectionInfo, ...]:
    return tuple(collection_info_from_proto(c) for c in msg.collections)


# ---------------------------------------------------------------- enroll / identify / verify


def enroll_request_to_proto(req: EnrollRequest) -> pb.EnrollRequest:
    msg = pb.EnrollRequest(
        collection=req.collection,
        uid=req.uid,
        images=list(req.images),
        metadata=dict(req.metadata),
        allow_duplicate=req.allow_duplicate,
    )
    if req.phone_number is not None:
        msg.phone_number = req.phone_number
    return msg


def enroll_request_from_proto(msg: pb.EnrollRequest) -> EnrollRequest:
    if not msg.images:
        raise InvalidArgument(
            "images: at least one image is required", metadata={"field": "images"}
        )
    return EnrollRequest(
        collection=_required(msg.collection, "collection"),
        uid=_required(msg.uid, "uid"),
        images=tuple(msg.images),
        phone_number=msg.phone_number if msg.HasField("phone_number") else None,
        metadata=dict(msg.metadata),
        allow_duplicate=msg.allow_duplicate,
    )


def enroll_result_to_proto(res: EnrollResult) -> pb.EnrollResponse:
    return pb.EnrollResponse(
        uid=res.uid,
        face_ids=list(res.face_ids),
        qualities=[face_quality_to_proto(q) for q in res.qualities],
        created=res.created,
    )


def enroll_result_from_proto(msg: pb.EnrollResponse) -> EnrollResult:
    return EnrollResult(
        uid=msg.uid,
        face_ids=tuple(msg.face_ids),
        qualities=tuple(face_quality_from_proto(q) for q in msg.qualities),
        created=msg.created,
    )


def identify_request_to_proto(req: IdentifyRequest) -> pb.IdentifyRequest:
    msg = pb.IdentifyRequest(collection=req.collection, top_k=req.top_k)
    # The oneof keeps the two probes exclusive; a request naming both is the caller's bug,
    # and sending the token wins (the server would refuse the pair anyway).
    if req.probe_token is not None:
        msg.probe_token = req.probe_token
    elif req.image is not None:
        msg.image = req.image
    if req.hint is not None:
        msg.hint = req.hint
    return msg


def identify_request_from_proto(msg: pb.IdentifyRequest) -> IdentifyRequest:
    probe = msg.WhichOneof("probe")
    if probe is None:
        raise InvalidArgument(
            "one of image or probe_token is required", metadata={"field": "probe"}
        )
    return IdentifyRequest(
        collection=_required(msg.collection, "collection"),
        image=msg.image if probe == "image" else None,
        probe_token=msg.probe_token if probe == "probe_token" else None,
        hint=msg.hint if msg.HasField("hint") else None,
        top_k=msg.top_k or DEFAULT_TOP_K,
    )


def identify_result_to_proto(res: IdentifyResult) -> pb.IdentifyResponse:
    msg = pb.IdentifyResponse(
        decision=_DECISION_TO_PROTO[res.decision],
        score=res.score,
        candidates=[candidate_to_proto(c) for c in res.candidates],
        threshold=res.threshold,
        probe_token_ttl_s=res.probe_token_ttl_s,
        metadata=dict(res.metadata),
    )
    if res.uid is not None:
        msg.uid = res.uid
    if res.face is not None:
        msg.face.CopyFrom(face_box_to_proto(res.face))
    if res.probe_token is not None:
        msg.probe_token = res.probe_token
    return msg


def identify_result_from_proto(msg: pb.IdentifyResponse) -> IdentifyResult:
    return IdentifyResult(
        decision=decision_from_proto(msg.decision),
        uid=msg.uid if msg.HasField("uid") else None,
        score=msg.score,
        candidates=tuple(candidate_from_proto(c) for c in msg.candidates),
        face=face_box_from_proto(msg.face) if msg.HasField("face") else None,
        threshold=msg.threshold,
        probe_token=msg.probe_token if msg.HasField("probe_token") else None,
        probe_token_ttl_s=msg.probe_token_ttl_s,
        metadata=dict(msg.metadata),
    )


def verify_request_to_proto(req: VerifyRequest) -> pb.VerifyRequest:
    return pb.VerifyRequest(collection=req.collection, uid=req.uid, image=req.image)


def verify_request_from_proto(msg: pb.VerifyRequest) -> VerifyRequest:
    # An empty image is passed on: the engine refuses it (INVALID_ARGUMENT) exactly as it
    # does for Identify and Enroll, since proto3 cannot tell "absent" from "empty" here.
    return VerifyRequest(
        collection=_required(msg.collection, "collection"),
        uid=_required(msg.uid, "uid"),
        image=msg.image,
    )


def verify_result_to_proto(res: VerifyResult) -> pb.VerifyResponse:
    return pb.VerifyResponse(
        match=res.match,
        score=res.score,
        threshold=res.threshold,
        face=face_box_to_proto(res.face),
    )


def verify_result_from_proto(msg: pb.VerifyResponse) -> VerifyResult:
    return VerifyResult(
        match=msg.match,
        score=msg.score,
        threshold=msg.threshold,
        face=face_box_from_proto(msg.face),
    )


# ---------------------------------------------------------------- users


def delete_user_request_to_proto(key: UserKey) -> pb.DeleteUserRequest:
    return pb.DeleteUserRequest(collection=key.collection, uid=key.uid)


def delete_user_request_from_proto(msg: pb.DeleteUserRequest) -> UserKey:
    return UserKey(_required(msg.collection, "collection"), _required(msg.uid, "uid"))


def delete_user_response_to_proto(faces_deleted: int) -> pb.DeleteUserResponse:
    return pb.DeleteUserResponse(faces_deleted=faces_deleted)


def delete_user_response_from_proto(msg: pb.DeleteUserResponse) -> int:
    return int(msg.faces_deleted)


def get_user_request_to_proto(key: UserKey) -> pb.GetUserRequest:
    return pb.GetUserRequest(collection=key.collection, uid=key.uid)


def get_user_request_from_proto(msg: pb.GetUserRequest) -> UserKey:
    return UserKey(_required(msg.collection, "collection"), _required(msg.uid, "uid"))


def user_info_to_proto(user: UserInfo) -> pb.User:
    return pb.User(
        collection=user.collection,
        uid=user.uid,
        face_count=user.face_count,
        has_phone=user.has_phone,
        metadata=dict(user.metadata),
        created_at=_timestamp(user.created_at),
        updated_at=_timestamp(user.updated_at),
    )


def user_info_from_proto(msg: pb.User) -> UserInfo:
    return UserInfo(
        collection=msg.collection,
        uid=msg.uid,
        face_count=msg.face_count,
        has_phone=msg.has_phone,
        metadata=dict(msg.metadata),
        created_at=_seconds(msg.created_at),
        updated_at=_seconds(msg.updated_at),
    )


def list_users_request_to_proto(req: UserPageRequest) -> pb.ListUsersRequest:
    return pb.ListUsersRequest(
        collection=req.collection, page_size=req.page_size, page_token=req.page_token
    )


def list_users_request_from_proto(msg: pb.ListUsersRequest) -> UserPageRequest:
    return UserPageRequest(
        collection=_required(msg.collection, "collection"),
        page_size=msg.page_size or DEFAULT_PAGE_SIZE,
        page_token=msg.page_token,
    )


def user_page_to_proto(page: UserPage) -> pb.ListUsersResponse:
    return pb.ListUsersResponse(
        users=[user_info_to_proto(u) for u in page.users], next_page_token=page.next_page_token
    )


def user_page_from_proto(msg: pb.ListUsersResponse) -> UserPage:
    return UserPage(
        users=tuple(user_info_from_proto(u) for u in msg.users),
        next_page_token=msg.next_page_token,
    )


# ---------------------------------------------------------------- template import

# Templates travel as raw little-endian float32 bytes: exact, and 4 bytes per value instead of
# protobuf's 5 for a packed float plus per-value parsing in Python.
_F32_LE = np.dtype("<f4")


@dataclass(frozen=True, slots=True)
class TemplateRow:
    """One TemplateRecord: a row of an ImportTemplatesRequest (the embedding as raw bytes)."""

    uid: str
    embedding: bytes  # little-endian float32
    phone_number: str | None
    metadata: Mapping[str, str]


def template_record_to_proto(row: TemplateRow) -> pb.TemplateRecord:
    return pb.TemplateRecord(
        uid=row.uid,
        embedding=row.embedding,
        phone_number=row.phone_number,
        metadata=dict(row.metadata),
    )


def template_record_from_proto(msg: pb.TemplateRecord) -> TemplateRow:
    return TemplateRow(
        uid=msg.uid,
        embedding=msg.embedding,
        phone_number=msg.phone_number if msg.HasField("phone_number") else None,
        metadata=dict(msg.metadata),
    )


def import_templates_request_to_proto(req: ImportTemplatesRequest) -> pb.ImportTemplatesRequest:
    vectors = np.ascontiguousarray(req.embeddings, dtype=_F32_LE)
    phones = req.phone_numbers or (None,) * len(req.uids)
    metadata = req.metadata or ({},) * len(req.uids)
    rows = zip(req.uids, vectors, phones, metadata, strict=True)
    return pb.ImportTemplatesRequest(
        collection=req.collection,
        model_id=req.model_id,
        templates=[
            template_record_to_proto(TemplateRow(uid, vector.tobytes(), phone, md))
            for uid, vector, phone, md in rows
        ],
    )


def import_templates_request_from_proto(msg: pb.ImportTemplatesRequest) -> ImportTemplatesRequest:
    collection = _required(msg.collection, "collection")
    model_id = _required(msg.model_id, "model_id")
    if not msg.templates:
        raise InvalidArgument(
            "templates: at least one is required", metadata={"field": "templates"}
        )
    sizes = {len(t.embedding) for t in msg.templates}
    if len(sizes) != 1 or next(iter(sizes)) == 0 or next(iter(sizes)) % 4:
        raise InvalidArgument(
            "templates.embedding: every template must hold the same, non-zero number of"
            " float32 values",
            metadata={"field": "templates.embedding"},
        )
    raw = b"".join(t.embedding for t in msg.templates)
    vectors = np.frombuffer(raw, dtype=_F32_LE).astype(np.float32).reshape(len(msg.templates), -1)
    return ImportTemplatesRequest(
        collection=collection,
        model_id=model_id,
        uids=tuple(t.uid for t in msg.templates),
        embeddings=vectors,
        phone_numbers=tuple(
            t.phone_number if t.HasField("phone_number") else None for t in msg.templates
        ),
        metadata=tuple(dict(t.metadata) for t in msg.templates),
    )


def import_templates_response_to_proto(face_ids: tuple[int, ...]) -> pb.ImportTemplatesResponse:
    return pb.ImportTemplatesResponse(imported=len(face_ids), face_ids=list(face_ids))


def import_templates_response_from_proto(msg: pb.ImportTemplatesResponse) -> tuple[int, ...]:
    # ``imported`` is a convenience for clients that do not want the ids; each new user has
    # exactly one face, so the two always agree and the ids carry all the information.
    return tuple(int(f) for f in msg.face_ids)


# ---------------------------------------------------------------- server info


def get_server_info_request_to_proto(_: None = None) -> pb.GetServerInfoRequest:
    return pb.GetServerInfoRequest()


def get_server_info_request_from_proto(_: pb.GetServerInfoRequest) -> None:
    return None


def liveness_info_to_proto(info: LivenessInfo) -> pb.LivenessInfo:
    return pb.LivenessInfo(
        configured=info.configured,
        model_ids=list(info.model_ids),
        threshold=info.threshold,
        required_for=[_KIND_TO_PROTO[k] for k in info.required_for],
        check_enroll=info.check_enroll,
    )


def liveness_info_from_proto(msg: pb.LivenessInfo) -> LivenessInfo:
    return LivenessInfo(
        configured=msg.configured,
        model_ids=tuple(msg.model_ids),
        threshold=msg.threshold,
        required_for=tuple(kind_from_proto(k) for k in msg.required_for),
        check_enroll=msg.check_enroll,
    )


def server_info_to_proto(info: ServerInfo) -> pb.ServerInfo:
    return pb.ServerInfo(
        version=info.version,
        model_pack=info.model_pack,
        model_id=info.model_id,
        embedding_dim=info.embedding_dim,
        default_threshold=info.default_threshold,
        liveness=liveness_info_to_proto(info.liveness),
        enroll_quality=quality_policy_to_proto(info.enroll_quality),
        identify_quality=quality_policy_to_proto(info.identify_quality),
    )


def server_info_from_proto(msg: pb.ServerInfo) -> ServerInfo:
    return ServerInfo(
        version=msg.version,
        model_pack=msg.model_pack,
        model_id=msg.model_id,
        embedding_dim=msg.embedding_dim,
        default_threshold=msg.default_threshold,
        liveness=liveness_info_from_proto(msg.liveness),
        enroll_quality=quality_policy_from_proto(msg.enroll_quality),
        identify_quality=quality_policy_from_proto(msg.identify_quality),
    )


# ---------------------------------------------------------------- registry

D = TypeVar("D")
M = TypeVar("M")


@dataclass(frozen=True, slots=True)
class Converter(Generic[D, M]):
    """Both directions for one message; ``domain`` names the domain-side type."""

    domain: type[Any] | None
    to_proto: Callable[[D], M]
    from_proto: Callable[[M], D]


CONVERTERS: Mapping[str, Converter[Any, Any]] = {
    "facegate.v1.FaceBox": Converter(FaceBox, face_box_to_proto, face_box_from_proto),
    "facegate.v1.FaceQuality": Converter(
        FaceQuality, face_quality_to_proto, face_quality_from_proto
    ),
    "facegate.v1.Candidate": Converter(Candidate, candidate_to_proto, candidate_from_proto),
    "facegate.v1.QualityLimits": Converter(
        QualityLimits, quality_limits_to_proto, quality_limits_from_proto
    ),
    "facegate.v1.CreateCollectionRequest": Converter(
        CollectionSpec, collection_spec_to_proto, collection_spec_from_proto
    ),
    "facegate.v1.UpdateCollectionRequest": Converter(
        CollectionUpdate, collection_update_to_proto, collection_update_from_proto
    ),
    "facegate.v1.Collection": Converter(
        CollectionInfo, collection_info_to_proto, collection_info_from_proto
    ),
    "facegate.v1.DeleteCollectionRequest": Converter(
        str, delete_collection_request_to_proto, delete_collection_request_from_proto
    ),
    "facegate.v1.DeleteCollectionResponse": Converter(
        None, delete_collection_response_to_proto, delete_collection_response_from_proto
    ),
    "facegate.v1.GetCollectionRequest": Converter(
        str, get_collection_request_to_proto, get_collection_request_from_proto
    ),
    "facegate.v1.ListCollectionsRequest": Converter(
        None, list_collections_request_to_proto, list_collections_request_from_proto
    ),
    "facegate.v1.ListCollectionsResponse": Converter(
        tuple, list_collections_response_to_proto, list_collections_response_from_proto
    ),
    "facegate.v1.EnrollRequest": Converter(
        EnrollRequest, enroll_request_to_proto, enroll_request_from_proto
    ),
    "facegate.v1.EnrollResponse": Converter(
        EnrollResult, enroll_result_to_proto, enroll_result_from_proto
    ),
    "facegate.v1.IdentifyRequest": Converter(
        IdentifyRequest, identify_request_to_proto, identify_request_from_proto
    ),
    "facegate.v1.IdentifyResponse": Converter(
        IdentifyResult, identify_result_to_proto, identify_result_from_proto
    ),
    "facegate.v1.VerifyRequest": Converter(
        VerifyRequest, verify_request_to_proto, verify_request_from_proto
    ),
    "facegate.v1.VerifyResponse": Converter(
        VerifyResult, verify_result_to_proto, verify_result_from_proto
    ),
    "facegate.v1.DeleteUserRequest": Converter(
        UserKey, delete_user_request_to_proto, delete_user_request_from_proto
    ),
    "facegate.v1.DeleteUserResponse": Converter(
        int, delete_user_response_to_proto, delete_user_response_from_proto
    ),
    "facegate.v1.GetUserRequest": Converter(
        UserKey, get_user_request_to_proto, get_user_request_from_proto
    ),
    "facegate.v1.User": Converter(UserInfo, user_info_to_proto, user_info_from_proto),
    "facegate.v1.ListUsersRequest": Converter(
        UserPageRequest, list_users_request_to_proto, list_users_request_from_proto
    ),
    "facegate.v1.ListUsersResponse": Converter(UserPage, user_page_to_proto, user_page_from_proto),
    "facegate.v1.TemplateRecord": Converter(
        TemplateRow, template_record_to_proto, template_record_from_proto
    ),
    "facegate.v1.ImportTemplatesRequest": Converter(
        ImportTemplatesRequest,
        import_templates_request_to_proto,
        import_templates_request_from_proto,
    ),
    "facegate.v1.ImportTemplatesResponse": Converter(
        tuple, import_templates_response_to_proto, import_templates_response_from_proto
    ),
    "facegate.v1.GetServerInfoRequest": Converter(
        None, get_server_info_request_to_proto, get_server_info_request_from_proto
    ),
    "facegate.v1.LivenessInfo": Converter(
        LivenessInfo, liveness_info_to_proto, liveness_info_from_proto
    ),
    "facegate.v1.ServerInfo": Converter(ServerInfo, server_info_to_proto, server_info_from_proto),
}
