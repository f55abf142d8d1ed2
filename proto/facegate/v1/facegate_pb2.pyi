import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CollectionKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    COLLECTION_KIND_UNSPECIFIED: _ClassVar[CollectionKind]
    COLLECTION_KIND_PAY: _ClassVar[CollectionKind]
    COLLECTION_KIND_MEMBER: _ClassVar[CollectionKind]

class Decision(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DECISION_UNSPECIFIED: _ClassVar[Decision]
    DECISION_MATCH: _ClassVar[Decision]
    DECISION_NO_MATCH: _ClassVar[Decision]
    DECISION_AMBIGUOUS: _ClassVar[Decision]
    DECISION_NEED_HINT: _ClassVar[Decision]
COLLECTION_KIND_UNSPECIFIED: CollectionKind
COLLECTION_KIND_PAY: CollectionKind
COLLECTION_KIND_MEMBER: CollectionKind
DECISION_UNSPECIFIED: Decision
DECISION_MATCH: Decision
DECISION_NO_MATCH: Decision
DECISION_AMBIGUOUS: Decision
DECISION_NEED_HINT: Decision

class FaceBox(_message.Message):
    __slots__ = ("left", "top", "right", "bottom", "score")
    LEFT_FIELD_NUMBER: _ClassVar[int]
    TOP_FIELD_NUMBER: _ClassVar[int]
    RIGHT_FIELD_NUMBER: _ClassVar[int]
    BOTTOM_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    left: float
    top: float
    right: float
    bottom: float
    score: float
    def __init__(self, left: _Optional[float] = ..., top: _Optional[float] = ..., right: _Optional[float] = ..., bottom: _Optional[float] = ..., score: _Optional[float] = ...) -> None: ...

class FaceQuality(_message.Message):
    __slots__ = ("box", "inter_eye_px", "detection_score", "sharpness", "yaw_deg", "pitch_deg", "roll_deg", "brightness", "clipped_fraction", "outside_fraction", "other_face_ratio", "face_count", "liveness_score")
    BOX_FIELD_NUMBER: _ClassVar[int]
    INTER_EYE_PX_FIELD_NUMBER: _ClassVar[int]
    DETECTION_SCORE_FIELD_NUMBER: _ClassVar[int]
    SHARPNESS_FIELD_NUMBER: _ClassVar[int]
    YAW_DEG_FIELD_NUMBER: _ClassVar[int]
    PITCH_DEG_FIELD_NUMBER: _ClassVar[int]
    ROLL_DEG_FIELD_NUMBER: _ClassVar[int]
    BRIGHTNESS_FIELD_NUMBER: _ClassVar[int]
    CLIPPED_FRACTION_FIELD_NUMBER: _ClassVar[int]
    OUTSIDE_FRACTION_FIELD_NUMBER: _ClassVar[int]
    OTHER_FACE_RATIO_FIELD_NUMBER: _ClassVar[int]
    FACE_COUNT_FIELD_NUMBER: _ClassVar[int]
    LIVENESS_SCORE_FIELD_NUMBER: _ClassVar[int]
    box: FaceBox
    inter_eye_px: float
    detection_score: float
    sharpness: float
    yaw_deg: float
    pitch_deg: float
    roll_deg: float
    brightness: float
    clipped_fraction: float
    outside_fraction: float
    other_face_ratio: float
    face_count: int
    liveness_score: float
    def __init__(self, box: _Optional[_Union[FaceBox, _Mapping]] = ..., inter_eye_px: _Optional[float] = ..., detection_score: _Optional[float] = ..., sharpness: _Optional[float] = ..., yaw_deg: _Optional[float] = ..., pitch_deg: _Optional[float] = ..., roll_deg: _Optional[float] = ..., brightness: _Optional[float] = ..., clipped_fraction: _Optional[float] = ..., outside_fraction: _Optional[float] = ..., other_face_ratio: _Optional[float] = ..., face_count: _Optional[int] = ..., liveness_score: _Optional[float] = ...) -> None: ...

class QualityLimits(_message.Message):
    __slots__ = ("min_inter_eye_px", "min_sharpness", "max_yaw_deg", "max_pitch_deg", "max_roll_deg", "min_brightness", "max_brightness", "max_clipped_fraction", "max_outside_fraction", "comparable_face_ratio")
    MIN_INTER_EYE_PX_FIELD_NUMBER: _ClassVar[int]
    MIN_SHARPNESS_FIELD_NUMBER: _ClassVar[int]
    MAX_YAW_DEG_FIELD_NUMBER: _ClassVar[int]
    MAX_PITCH_DEG_FIELD_NUMBER: _ClassVar[int]
    MAX_ROLL_DEG_FIELD_NUMBER: _ClassVar[int]
    MIN_BRIGHTNESS_FIELD_NUMBER: _ClassVar[int]
    MAX_BRIGHTNESS_FIELD_NUMBER: _ClassVar[int]
    MAX_CLIPPED_FRACTION_FIELD_NUMBER: _ClassVar[int]
    MAX_OUTSIDE_FRACTION_FIELD_NUMBER: _ClassVar[int]
    COMPARABLE_FACE_RATIO_FIELD_NUMBER: _ClassVar[int]
    min_inter_eye_px: float
    min_sharpness: float
    max_yaw_deg: float
    max_pitch_deg: float
    max_roll_deg: float
    min_brightness: float
    max_brightness: float
    max_clipped_fraction: float
    max_outside_fraction: float
    comparable_face_ratio: float
    def __init__(self, min_inter_eye_px: _Optional[float] = ..., min_sharpness: _Optional[float] = ..., max_yaw_deg: _Optional[float] = ..., max_pitch_deg: _Optional[float] = ..., max_roll_deg: _Optional[float] = ..., min_brightness: _Optional[float] = ..., max_brightness: _Optional[float] = ..., max_clipped_fraction: _Optional[float] = ..., max_outside_fraction: _Optional[float] = ..., comparable_face_ratio: _Optional[float] = ...) -> None: ...

class CreateCollectionRequest(_message.Message):
    __slots__ = ("name", "kind", "threshold", "margin", "hint_required_above", "revocable_templates", "enroll_quality", "identify_quality", "require_liveness", "identify_returns_metadata")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    MARGIN_FIELD_NUMBER: _ClassVar[int]
    HINT_REQUIRED_ABOVE_FIELD_NUMBER: _ClassVar[int]
    REVOCABLE_TEMPLATES_FIELD_NUMBER: _ClassVar[int]
    ENROLL_QUALITY_FIELD_NUMBER: _ClassVar[int]
    IDENTIFY_QUALITY_FIELD_NUMBER: _ClassVar[int]
    REQUIRE_LIVENESS_FIELD_NUMBER: _ClassVar[int]
    IDENTIFY_RETURNS_METADATA_FIELD_NUMBER: _ClassVar[int]
    name: str
    kind: CollectionKind
    threshold: float
    margin: float
    hint_required_above: int
    revocable_templates: bool
    enroll_quality: QualityLimits
    identify_quality: QualityLimits
    require_liveness: bool
    identify_returns_metadata: bool
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[_Union[CollectionKind, str]] = ..., threshold: _Optional[float] = ..., margin: _Optional[float] = ..., hint_required_above: _Optional[int] = ..., revocable_templates: _Optional[bool] = ..., enroll_quality: _Optional[_Union[QualityLimits, _Mapping]] = ..., identify_quality: _Optional[_Union[QualityLimits, _Mapping]] = ..., require_liveness: _Optional[bool] = ..., identify_returns_metadata: _Optional[bool] = ...) -> None: ...

class UpdateCollectionRequest(_message.Message):
    __slots__ = ("name", "threshold", "margin", "hint_required_above", "enroll_quality", "identify_quality", "require_liveness", "reset_require_liveness", "identify_returns_metadata")
    NAME_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    MARGIN_FIELD_NUMBER: _ClassVar[int]
    HINT_REQUIRED_ABOVE_FIELD_NUMBER: _ClassVar[int]
    ENROLL_QUALITY_FIELD_NUMBER: _ClassVar[int]
    IDENTIFY_QUALITY_FIELD_NUMBER: _ClassVar[int]
    REQUIRE_LIVENESS_FIELD_NUMBER: _ClassVar[int]
    RESET_REQUIRE_LIVENESS_FIELD_NUMBER: _ClassVar[int]
    IDENTIFY_RETURNS_METADATA_FIELD_NUMBER: _ClassVar[int]
    name: str
    threshold: float
    margin: float
    hint_required_above: int
    enroll_quality: QualityLimits
    identify_quality: QualityLimits
    require_liveness: bool
    reset_require_liveness: bool
    identify_returns_metadata: bool
    def __init__(self, name: _Optional[str] = ..., threshold: _Optional[float] = ..., margin: _Optional[float] = ..., hint_required_above: _Optional[int] = ..., enroll_quality: _Optional[_Union[QualityLimits, _Mapping]] = ..., identify_quality: _Optional[_Union[QualityLimits, _Mapping]] = ..., require_liveness: _Optional[bool] = ..., reset_require_liveness: _Optional[bool] = ..., identify_returns_metadata: _Optional[bool] = ...) -> None: ...

class Collection(_message.Message):
    __slots__ = ("name", "kind", "threshold", "margin", "hint_required_above", "model_id", "user_count", "face_count", "created_at", "embedding_dim", "revocable_templates", "transform_generation", "enroll_quality", "identify_quality", "enroll_quality_overrides", "identify_quality_overrides", "require_liveness", "liveness_active", "identify_returns_metadata")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    MARGIN_FIELD_NUMBER: _ClassVar[int]
    HINT_REQUIRED_ABOVE_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    USER_COUNT_FIELD_NUMBER: _ClassVar[int]
    FACE_COUNT_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_DIM_FIELD_NUMBER: _ClassVar[int]
    REVOCABLE_TEMPLATES_FIELD_NUMBER: _ClassVar[int]
    TRANSFORM_GENERATION_FIELD_NUMBER: _ClassVar[int]
    ENROLL_QUALITY_FIELD_NUMBER: _ClassVar[int]
    IDENTIFY_QUALITY_FIELD_NUMBER: _ClassVar[int]
    ENROLL_QUALITY_OVERRIDES_FIELD_NUMBER: _ClassVar[int]
    IDENTIFY_QUALITY_OVERRIDES_FIELD_NUMBER: _ClassVar[int]
    REQUIRE_LIVENESS_FIELD_NUMBER: _ClassVar[int]
    LIVENESS_ACTIVE_FIELD_NUMBER: _ClassVar[int]
    IDENTIFY_RETURNS_METADATA_FIELD_NUMBER: _ClassVar[int]
    name: str
    kind: CollectionKind
    threshold: float
    margin: float
    hint_required_above: int
    model_id: str
    user_count: int
    face_count: int
    created_at: _timestamp_pb2.Timestamp
    embedding_dim: int
    revocable_templates: bool
    transform_generation: int
    enroll_quality: QualityLimits
    identify_quality: QualityLimits
    enroll_quality_overrides: QualityLimits
    identify_quality_overrides: QualityLimits
    require_liveness: bool
    liveness_active: bool
    identify_returns_metadata: bool
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[_Union[CollectionKind, str]] = ..., threshold: _Optional[float] = ..., margin: _Optional[float] = ..., hint_required_above: _Optional[int] = ..., model_id: _Optional[str] = ..., user_count: _Optional[int] = ..., face_count: _Optional[int] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., embedding_dim: _Optional[int] = ..., revocable_templates: _Optional[bool] = ..., transform_generation: _Optional[int] = ..., enroll_quality: _Optional[_Union[QualityLimits, _Mapping]] = ..., identify_quality: _Optional[_Union[QualityLimits, _Mapping]] = ..., enroll_quality_overrides: _Optional[_Union[QualityLimits, _Mapping]] = ..., identify_quality_overrides: _Optional[_Union[QualityLimits, _Mapping]] = ..., require_liveness: _Optional[bool] = ..., liveness_active: _Optional[bool] = ..., identify_returns_metadata: _Optional[bool] = ...) -> None: ...

class DeleteCollectionRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteCollectionResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetCollectionRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListCollectionsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListCollectionsResponse(_message.Message):
    __slots__ = ("collections",)
    COLLECTIONS_FIELD_NUMBER: _ClassVar[int]
    collections: _containers.RepeatedCompositeFieldContainer[Collection]
    def __init__(self, collections: _Optional[_Iterable[_Union[Collection, _Mapping]]] = ...) -> None: ...

class EnrollRequest(_message.Message):
    __slots__ = ("collection", "uid", "images", "phone_number", "metadata", "allow_duplicate")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    PHONE_NUMBER_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    ALLOW_DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    collection: str
    uid: str
    images: _containers.RepeatedScalarFieldContainer[bytes]
    phone_number: str
    metadata: _containers.ScalarMap[str, str]
    allow_duplicate: bool
    def __init__(self, collection: _Optional[str] = ..., uid: _Optional[str] = ..., images: _Optional[_Iterable[bytes]] = ..., phone_number: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ..., allow_duplicate: _Optional[bool] = ...) -> None: ...

class EnrollResponse(_message.Message):
    __slots__ = ("uid", "face_ids", "qualities", "created")
    UID_FIELD_NUMBER: _ClassVar[int]
    FACE_IDS_FIELD_NUMBER: _ClassVar[int]
    QUALITIES_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    uid: str
    face_ids: _containers.RepeatedScalarFieldContainer[int]
    qualities: _containers.RepeatedCompositeFieldContainer[FaceQuality]
    created: bool
    def __init__(self, uid: _Optional[str] = ..., face_ids: _Optional[_Iterable[int]] = ..., qualities: _Optional[_Iterable[_Union[FaceQuality, _Mapping]]] = ..., created: _Optional[bool] = ...) -> None: ...

class Candidate(_message.Message):
    __slots__ = ("uid", "score")
    UID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    uid: str
    score: float
    def __init__(self, uid: _Optional[str] = ..., score: _Optional[float] = ...) -> None: ...

class IdentifyRequest(_message.Message):
    __slots__ = ("collection", "image", "probe_token", "hint", "top_k")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    PROBE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    HINT_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    collection: str
    image: bytes
    probe_token: str
    hint: str
    top_k: int
    def __init__(self, collection: _Optional[str] = ..., image: _Optional[bytes] = ..., probe_token: _Optional[str] = ..., hint: _Optional[str] = ..., top_k: _Optional[int] = ...) -> None: ...

class IdentifyResponse(_message.Message):
    __slots__ = ("decision", "uid", "score", "candidates", "face", "threshold", "probe_token", "probe_token_ttl_s", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    DECISION_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    FACE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    PROBE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    PROBE_TOKEN_TTL_S_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    decision: Decision
    uid: str
    score: float
    candidates: _containers.RepeatedCompositeFieldContainer[Candidate]
    face: FaceBox
    threshold: float
    probe_token: str
    probe_token_ttl_s: float
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, decision: _Optional[_Union[Decision, str]] = ..., uid: _Optional[str] = ..., score: _Optional[float] = ..., candidates: _Optional[_Iterable[_Union[Candidate, _Mapping]]] = ..., face: _Optional[_Union[FaceBox, _Mapping]] = ..., threshold: _Optional[float] = ..., probe_token: _Optional[str] = ..., probe_token_ttl_s: _Optional[float] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class VerifyRequest(_message.Message):
    __slots__ = ("collection", "uid", "image")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    collection: str
    uid: str
    image: bytes
    def __init__(self, collection: _Optional[str] = ..., uid: _Optional[str] = ..., image: _Optional[bytes] = ...) -> None: ...

class VerifyResponse(_message.Message):
    __slots__ = ("match", "score", "threshold", "face")
    MATCH_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    FACE_FIELD_NUMBER: _ClassVar[int]
    match: bool
    score: float
    threshold: float
    face: FaceBox
    def __init__(self, match: _Optional[bool] = ..., score: _Optional[float] = ..., threshold: _Optional[float] = ..., face: _Optional[_Union[FaceBox, _Mapping]] = ...) -> None: ...

class DeleteUserRequest(_message.Message):
    __slots__ = ("collection", "uid")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    collection: str
    uid: str
    def __init__(self, collection: _Optional[str] = ..., uid: _Optional[str] = ...) -> None: ...

class DeleteUserResponse(_message.Message):
    __slots__ = ("faces_deleted",)
    FACES_DELETED_FIELD_NUMBER: _ClassVar[int]
    faces_deleted: int
    def __init__(self, faces_deleted: _Optional[int] = ...) -> None: ...

class GetUserRequest(_message.Message):
    __slots__ = ("collection", "uid")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    collection: str
    uid: str
    def __init__(self, collection: _Optional[str] = ..., uid: _Optional[str] = ...) -> None: ...

class User(_message.Message):
    __slots__ = ("collection", "uid", "face_count", "has_phone", "metadata", "created_at", "updated_at")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    FACE_COUNT_FIELD_NUMBER: _ClassVar[int]
    HAS_PHONE_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    collection: str
    uid: str
    face_count: int
    has_phone: bool
    metadata: _containers.ScalarMap[str, str]
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    def __init__(self, collection: _Optional[str] = ..., uid: _Optional[str] = ..., face_count: _Optional[int] = ..., has_phone: _Optional[bool] = ..., metadata: _Optional[_Mapping[str, str]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListUsersRequest(_message.Message):
    __slots__ = ("collection", "page_size", "page_token")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    collection: str
    page_size: int
    page_token: str
    def __init__(self, collection: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListUsersResponse(_message.Message):
    __slots__ = ("users", "next_page_token")
    USERS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    users: _containers.RepeatedCompositeFieldContainer[User]
    next_page_token: str
    def __init__(self, users: _Optional[_Iterable[_Union[User, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class TemplateRecord(_message.Message):
    __slots__ = ("uid", "embedding", "phone_number", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    UID_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    PHONE_NUMBER_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    uid: str
    embedding: bytes
    phone_number: str
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, uid: _Optional[str] = ..., embedding: _Optional[bytes] = ..., phone_number: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ImportTemplatesRequest(_message.Message):
    __slots__ = ("collection", "model_id", "templates")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    TEMPLATES_FIELD_NUMBER: _ClassVar[int]
    collection: str
    model_id: str
    templates: _containers.RepeatedCompositeFieldContainer[TemplateRecord]
    def __init__(self, collection: _Optional[str] = ..., model_id: _Optional[str] = ..., templates: _Optional[_Iterable[_Union[TemplateRecord, _Mapping]]] = ...) -> None: ...

class ImportTemplatesResponse(_message.Message):
    __slots__ = ("imported", "face_ids")
    IMPORTED_FIELD_NUMBER: _ClassVar[int]
    FACE_IDS_FIELD_NUMBER: _ClassVar[int]
    imported: int
    face_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, imported: _Optional[int] = ..., face_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class GetServerInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class LivenessInfo(_message.Message):
    __slots__ = ("configured", "model_ids", "threshold", "required_for", "check_enroll")
    CONFIGURED_FIELD_NUMBER: _ClassVar[int]
    MODEL_IDS_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    REQUIRED_FOR_FIELD_NUMBER: _ClassVar[int]
    CHECK_ENROLL_FIELD_NUMBER: _ClassVar[int]
    configured: bool
    model_ids: _containers.RepeatedScalarFieldContainer[str]
    threshold: float
    required_for: _containers.RepeatedScalarFieldContainer[CollectionKind]
    check_enroll: bool
    def __init__(self, configured: _Optional[bool] = ..., model_ids: _Optional[_Iterable[str]] = ..., threshold: _Optional[float] = ..., required_for: _Optional[_Iterable[_Union[CollectionKind, str]]] = ..., check_enroll: _Optional[bool] = ...) -> None: ...

class ServerInfo(_message.Message):
    __slots__ = ("version", "model_pack", "model_id", "embedding_dim", "default_threshold", "liveness", "enroll_quality", "identify_quality")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_PACK_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_DIM_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    LIVENESS_FIELD_NUMBER: _ClassVar[int]
    ENROLL_QUALITY_FIELD_NUMBER: _ClassVar[int]
    IDENTIFY_QUALITY_FIELD_NUMBER: _ClassVar[int]
    version: str
    model_pack: str
    model_id: str
    embedding_dim: int
    default_threshold: float
    liveness: LivenessInfo
    enroll_quality: QualityLimits
    identify_quality: QualityLimits
    def __init__(self, version: _Optional[str] = ..., model_pack: _Optional[str] = ..., model_id: _Optional[str] = ..., embedding_dim: _Optional[int] = ..., default_threshold: _Optional[float] = ..., liveness: _Optional[_Union[LivenessInfo, _Mapping]] = ..., enroll_quality: _Optional[_Union[QualityLimits, _Mapping]] = ..., identify_quality: _Optional[_Union[QualityLimits, _Mapping]] = ...) -> None: ...
