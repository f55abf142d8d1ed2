"""service.transport.convert: every API message has a converter, and domain values survive the trip
domain -> protobuf -> wire bytes -> protobuf -> domain unchanged."""

from __future__ import annotations

import dataclasses
import struct
from typing import Any, cast

import numpy as np
import pytest
from facegate.v1 import facegate_pb2 as pb

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
from service.transport import convert

BOX = FaceBox(left=10.5, top=20.25, right=110.0, bottom=130.75, score=0.987)
QUALITY = FaceQuality(box=BOX, inter_eye_px=41.5, detection_score=0.987)
FULL_QUALITY = FaceQuality(
    box=BOX,
    inter_eye_px=52.25,
    detection_score=1.5,
    sharpness=312.5,
    yaw_deg=-3.25,
    pitch_deg=4.5,
    roll_deg=0.75,
    brightness=121.5,
    clipped_fraction=0.0125,
    outside_fraction=0.0,
    other_face_ratio=0.25,
    face_count=2,
    liveness_score=0.0,  # set, and zero: must not read back as "not run"
)
LIMITS = QualityLimits(min_sharpness=20.0, max_yaw_deg=0.0, comparable_face_ratio=0.75)
LIVENESS = LivenessInfo(
    configured=True,
    model_ids=("MiniFASNetV2.onnx@sha256:ab", "MiniFASNetV1SE.onnx@sha256:cd"),
    threshold=0.5,
    required_for=(CollectionKind.PAY,),
    check_enroll=True,
)
SERVER = ServerInfo(
    version="1.2.3",
    model_pack="dlib-default",
    model_id="dlib-default/resnet128",
    embedding_dim=128,
    default_threshold=0.93,
    liveness=LIVENESS,
    enroll_quality=QualityPolicy.enroll(),
    identify_quality=LIMITS.apply(QualityPolicy.identify()),
)
INFO = CollectionInfo(
    name="shop-1",
    kind=CollectionKind.PAY,
    threshold=0.62,
    margin=0.05,
    hint_required_above=5000,
    model_id="dlib-default/resnet128",
    user_count=3,
    face_count=7,
    created_at=1_700_000_000.5,
)
INFO_WITH_POLICIES = CollectionInfo(
    name="pay-1",
    kind=CollectionKind.PAY,
    threshold=0.62,
    margin=0.05,
    hint_required_above=0,
    model_id="dlib-default/resnet128",
    user_count=0,
    face_count=0,
    created_at=1_700_000_000.0,
    embedding_dim=128,
    enroll_quality_overrides=LIMITS,
    enroll_quality=LIMITS.apply(QualityPolicy.enroll()),
    identify_quality=QualityPolicy.identify(),
    require_liveness=False,
    liveness_active=False,
)
USER = UserInfo(
    collection="shop-1",
    uid="u-42",
    face_count=2,
    has_phone=True,
    metadata={"tier": "gold", "name": "Ada"},
    created_at=1_700_000_000.25,
    updated_at=1_700_000_100.75,
)

# Several domain values per message, covering unset optionals and empty repeated fields.
SAMPLES: dict[str, list[Any]] = {
    "facegate.v1.FaceBox": [BOX, FaceBox(0.0, 0.0, 0.0, 0.0, 0.0)],
    "facegate.v1.FaceQuality": [QUALITY, FULL_QUALITY],
    "facegate.v1.QualityLimits": [QualityLimits(), LIMITS],
    "facegate.v1.GetServerInfoRequest": [None],
    "facegate.v1.LivenessInfo": [LivenessInfo(configured=False), LIVENESS],
    "facegate.v1.ServerInfo": [SERVER],
    "facegate.v1.Candidate": [Candidate("u-1", 0.91), Candidate("u-2", -0.25)],
    "facegate.v1.CreateCollectionRequest": [
        CollectionSpec(name="c"),
        CollectionSpec(name="c", kind=CollectionKind.PAY, threshold=0.7, margin=0.0),
        CollectionSpec(name="c", threshold=0.0, hint_required_above=0),
        CollectionSpec(name="c", kind=CollectionKind.MEMBER, hint_required_above=1000),
        CollectionSpec(
            name="c",
            kind=CollectionKind.MEMBER,
            enroll_quality=LIMITS,
            identify_quality=QualityLimits(max_outside_fraction=0.5),
            require_liveness=True,
        ),
        CollectionSpec(name="c", kind=CollectionKind.PAY, require_liveness=False),
        CollectionSpec(name="c", identify_returns_metadata=True),
    ],
    "facegate.v1.UpdateCollectionRequest": [
        CollectionUpdate(name="c"),
        CollectionUpdate(name="c", threshold=0.0, margin=0.0, hint_required_above=0),
        CollectionUpdate(
            name="c",
            threshold=0.71,
            enroll_quality=LIMITS,
            identify_quality=QualityLimits(),  # set but empty: clears the own limits
            require_liveness=False,
            identify_returns_metadata=False,
        ),
        CollectionUpdate(name="c", reset_require_liveness=True, identify_returns_metadata=True),
    ],
    "facegate.v1.Collection": [
        INFO,
        INFO_WITH_POLICIES,
        dataclasses.replace(INFO, identify_returns_metadata=True),
    ],
    "facegate.v1.DeleteCollectionRequest": ["shop-1"],
    "facegate.v1.DeleteCollectionResponse": [None],
    "facegate.v1.GetCollectionRequest": ["shop-1"],
    "facegate.v1.ListCollectionsRequest": [None],
    "facegate.v1.ListCollectionsResponse": [(), (INFO, INFO)],
    "facegate.v1.EnrollRequest": [
        EnrollRequest(collection="c", uid="u", images=(b"\xff\xd8jpeg", b"\x89PNG")),
        EnrollRequest(
            collection="c",
            uid="u",
            images=(b"x",),
            phone_number="+15551234567",
            metadata={"k": "v"},
            allow_duplicate=True,
        ),
        EnrollRequest(collection="c", uid="u", images=(b"x",), phone_number=""),
    ],
    "facegate.v1.EnrollResponse": [
        EnrollResult(uid="u", face_ids=(1, 2**40), qualities=(QUALITY, QUALITY), created=True),
        EnrollResult(uid="u", face_ids=(), qualities=(), created=False),
    ],
    "facegate.v1.IdentifyRequest": [
        IdentifyRequest(collection="c", image=b"img"),
        IdentifyRequest(collection="c", image=b""),
        IdentifyRequest(collection="c", probe_token="tok", hint="1234", top_k=3),
        IdentifyRequest(collection="c", image=b"img", hint=""),
    ],
    "facegate.v1.IdentifyResponse": [
        IdentifyResult(
            decision=Decision.MATCH,
            uid="u-1",
            score=0.93,
            candidates=(Candidate("u-1", 0.93), Candidate("u-2", 0.41)),
            face=BOX,
            threshold=0.6,
        ),
        IdentifyResult(
            Decision.MATCH, "u-1", 0.9, (), BOX, 0.6, metadata={"tier": "gold", "name": "Ann"}
        ),
        IdentifyResult(
            decision=Decision.NEED_HINT,
            uid=None,
            score=0.0,
            candidates=(),
            face=BOX,
            threshold=0.6,
            probe_token="opaque",
            probe_token_ttl_s=60.0,
        ),
        IdentifyResult(Decision.NO_MATCH, None, 0.2, (), None, 0.6),
        IdentifyResult(Decision.AMBIGUOUS, None, 0.7, (Candidate("a", 0.7),), BOX, 0.6),
    ],
    "facegate.v1.VerifyRequest": [VerifyRequest(collection="c", uid="u", image=b"img")],
    "facegate.v1.VerifyResponse": [
        VerifyResult(match=True, score=0.8, threshold=0.6, face=BOX),
        VerifyResult(match=False, score=-0.1, threshold=0.6, face=BOX),
    ],
    "facegate.v1.DeleteUserRequest": [convert.UserKey("c", "u")],
    "facegate.v1.DeleteUserResponse": [0, 3],
    "facegate.v1.GetUserRequest": [convert.UserKey("c", "u")],
    "facegate.v1.User": [USER, UserInfo("c", "u", 0, False, {}, 0.0, 0.0)],
    "facegate.v1.ListUsersRequest": [
        convert.UserPageRequest("c"),
        convert.UserPageRequest("c", page_size=7, page_token="next"),
    ],
    "facegate.v1.ListUsersResponse": [
        UserPage(users=(USER,), next_page_token="abc"),
        UserPage(users=(), next_page_token=""),
    ],
    "facegate.v1.TemplateRecord": [
        convert.TemplateRow("u-1", np.arange(4, dtype="<f4").tobytes(), None, {}),
        convert.TemplateRow("u-2", b"\x00\x00\x80\x3f", "13800001234", {"tier": "gold"}),
    ],
    "facegate.v1.ImportTemplatesRequest": [
        ImportTemplatesRequest(
            collection="c",
            model_id="dlib-resnet-v1",
            uids=("a", "b"),
            embeddings=np.array([[0.6, 0.8], [1.0, 0.0]], dtype=np.float32),
            phone_numbers=(None, "13800001234"),
            metadata=({}, {"k": "v"}),
        )
    ],
    "facegate.v1.ImportTemplatesResponse": [(), (1, 2, 3)],
}


def _message_class(full_name: str) -> type[Any]:
    return getattr(pb, full_name.rsplit(".", 1)[1])  # type: ignore[no-any-return]


def test_every_message_in_the_proto_has_a_converter() -> None:
    in_proto = {m.full_name for m in pb.DESCRIPTOR.message_types_by_name.values()}
    assert in_proto == set(convert.CONVERTERS)
    assert in_proto == set(SAMPLES), "each message needs round-trip samples in this test"


@pytest.mark.parametrize("full_name", sorted(SAMPLES))
def test_round_trip_through_the_wire(full_name: str) -> None:
    conv = convert.CONVERTERS[full_name]
    cls = _message_class(full_name)
    for value in SAMPLES[full_name]:
        msg = conv.to_proto(value)
        assert type(msg) is cls
        parsed = cls.FromString(msg.SerializeToString())
        back = conv.from_proto(parsed)
        assert back == value
        if conv.domain is not None:
            assert isinstance(back, conv.domain)


def test_enums_cover_every_domain_value() -> None:
    for kind in CollectionKind:
        spec = CollectionSpec(name="c", kind=kind)
        assert convert.collection_spec_from_proto(convert.collection_spec_to_proto(spec)) == spec
    proto_kinds = set(pb.CollectionKind.values()) - {pb.COLLECTION_KIND_UNSPECIFIED}
    assert {convert.kind_from_proto(v) for v in proto_kinds} == set(CollectionKind)
    proto_decisions = set(pb.Decision.values()) - {pb.DECISION_UNSPECIFIED}
    assert {convert.decision_from_proto(v) for v in proto_decisions} == set(Decision)


def test_optional_fields_keep_presence() -> None:
    unset = convert.collection_spec_to_proto(CollectionSpec(name="c"))
    assert not unset.HasField("threshold")
    assert not unset.HasField("hint_required_above")
    zero = convert.collection_spec_to_proto(CollectionSpec(name="c", threshold=0.0))
    assert zero.HasField("threshold")
    req = convert.identify_request_to_proto(IdentifyRequest(collection="c", image=b""))
    assert req.WhichOneof("probe") == "image"


def test_request_defaults() -> None:
    spec = convert.collection_spec_from_proto(pb.CreateCollectionRequest(name="c"))
    assert spec.kind is CollectionKind.MEMBER
    ident = convert.identify_request_from_proto(pb.IdentifyRequest(collection="c", image=b"x"))
    assert ident.top_k == convert.DEFAULT_TOP_K
    page = convert.list_users_request_from_proto(pb.ListUsersRequest(collection="c"))
    assert page.page_size == convert.DEFAULT_PAGE_SIZE


def test_import_response_counts_and_request_bytes_are_little_endian_float32() -> None:
    msg = convert.import_templates_response_to_proto((7, 8, 9))
    assert (msg.imported, list(msg.face_ids)) == (3, [7, 8, 9])
    vectors = np.array([[0.6, 0.8]], dtype=np.float32)
    req = convert.import_templates_request_to_proto(
        ImportTemplatesRequest("c", "m", ("a",), vectors)
    )
    assert req.templates[0].embedding == struct.pack("<2f", 0.6, 0.8)
    assert not req.templates[0].HasField("phone_number")


_TEMPLATE = pb.TemplateRecord(uid="a", embedding=np.ones(4, dtype="<f4").tobytes())


@pytest.mark.parametrize(
    ("message", "field"),
    [
        (pb.CreateCollectionRequest(), "name"),
        (pb.CreateCollectionRequest(name="c", threshold=float("nan")), "threshold"),
        (pb.CreateCollectionRequest(name="c", margin=float("inf")), "margin"),
        (pb.CreateCollectionRequest(name="c", kind=cast(Any, 99)), "kind"),
        (pb.DeleteCollectionRequest(), "name"),
        (pb.GetCollectionRequest(), "name"),
        (pb.EnrollRequest(uid="u", images=[b"x"]), "collection"),
        (pb.EnrollRequest(collection="c", images=[b"x"]), "uid"),
        (pb.EnrollRequest(collection="c", uid="u"), "images"),
        (pb.IdentifyRequest(collection="c"), "probe"),
        (pb.IdentifyRequest(image=b"x"), "collection"),
        (pb.VerifyRequest(uid="u", image=b"x"), "collection"),
        (pb.VerifyRequest(collection="c", image=b"x"), "uid"),
        (pb.DeleteUserRequest(collection="c"), "uid"),
        (pb.GetUserRequest(uid="u"), "collection"),
        (pb.ListUsersRequest(), "collection"),
        (pb.ImportTemplatesRequest(model_id="m", templates=[_TEMPLATE]), "collection"),
        (pb.ImportTemplatesRequest(collection="c", templates=[_TEMPLATE]), "model_id"),
        (pb.ImportTemplatesRequest(collection="c", model_id="m"), "templates"),
        (
            pb.ImportTemplatesRequest(
                collection="c",
                model_id="m",
                templates=[_TEMPLATE, pb.TemplateRecord(uid="b", embedding=b"\x00" * 12)],
            ),
            "templates.embedding",
        ),
        (
            pb.ImportTemplatesRequest(
                collection="c",
                model_id="m",
                templates=[pb.TemplateRecord(uid="a", embedding=b"12345")],
            ),
            "templates.embedding",
        ),
    ],
)
def test_missing_or_bad_request_fields_are_refused(message: Any, field: str) -> None:
    conv = convert.CONVERTERS[message.DESCRIPTOR.full_name]
    with pytest.raises(InvalidArgument) as info:
        conv.from_proto(message)
    assert info.value.metadata["field"] == field
    assert field in info.value.message


def test_unknown_decision_from_a_newer_server_is_an_error() -> None:
    with pytest.raises(InvalidArgument):
        convert.identify_result_from_proto(pb.IdentifyResponse())
