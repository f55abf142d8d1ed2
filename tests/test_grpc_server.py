"""Transport behaviour of the gRPC server over a fake engine: a real server on a free port,
real stubs, and assertions on status codes and ErrorInfo reasons."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import grpc
import pytest
from facegate.v1 import facegate_pb2 as pb
from facegate.v1 import facegate_pb2_grpc as pb_grpc
from grpc_fakes import FakeFaceService, fake_settings, running_server
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from service import errors
from service.errors import DeadlineExceeded, ServiceNotReady
from service.transport.server import SERVICE_NAME, FaceGateServer, create_server
from service.transport.status import (
    RemoteError,
    error_from_rpc,
    error_info,
    reason_of,
)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture
def server() -> Iterator[tuple[FaceGateServer, int, FakeFaceService]]:
    with running_server() as running:
        yield running


@pytest.fixture
def channel(server: tuple[FaceGateServer, int, FakeFaceService]) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{server[1]}") as ch:
        yield ch


@pytest.fixture
def stub(channel: grpc.Channel) -> pb_grpc.FaceGateStub:
    return pb_grpc.FaceGateStub(channel)


@pytest.fixture
def fake(server: tuple[FaceGateServer, int, FakeFaceService]) -> FakeFaceService:
    return server[2]


def _fails(call: Any, *args: Any, **kwargs: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(*args, **kwargs)
    return info.value


def _code(err: grpc.RpcError) -> grpc.StatusCode:
    assert isinstance(err, grpc.Call)
    return err.code()


def _with_collection(stub: pb_grpc.FaceGateStub, name: str = "shop") -> None:
    stub.CreateCollection(pb.CreateCollectionRequest(name=name), timeout=5)


# ---------------------------------------------------------------- happy path


def test_binds_a_free_port_and_round_trips_every_rpc(
    server: tuple[FaceGateServer, int, FakeFaceService], stub: pb_grpc.FaceGateStub
) -> None:
    assert server[1] > 0
    created = stub.CreateCollection(
        pb.CreateCollectionRequest(name="shop", kind=pb.COLLECTION_KIND_PAY, threshold=0.7),
        timeout=5,
    )
    assert (created.name, created.kind, created.threshold) == ("shop", pb.COLLECTION_KIND_PAY, 0.7)
    assert created.created_at.seconds == 1_700_000_000
    assert [c.name for c in stub.ListCollections(pb.ListCollectionsRequest()).collections] == [
        "shop"
    ]
    enrolled = stub.Enroll(
        pb.EnrollRequest(
            collection="shop", uid="alice", images=[b"alice", b"alice2"], phone_number="555"
        ),
        timeout=5,
    )
    assert enrolled.created and len(enrolled.face_ids) == 2 and len(enrolled.qualities) == 2
    match = stub.Identify(pb.IdentifyRequest(collection="shop", image=b"alice"), timeout=5)
    assert match.decision == pb.DECISION_MATCH and match.uid == "alice"
    assert match.HasField("face") and match.face.score == pytest.approx(0.99)
    stranger = stub.Identify(pb.IdentifyRequest(collection="shop", image=b"bob"), timeout=5)
    assert stranger.decision == pb.DECISION_NO_MATCH and not stranger.HasField("uid")
    token = stub.Identify(pb.IdentifyRequest(collection="shop", probe_token="valid-token"))
    assert token.uid == "alice"
    verified = stub.Verify(pb.VerifyRequest(collection="shop", uid="alice", image=b"alice"))
    assert verified.match
    user = stub.GetUser(pb.GetUserRequest(collection="shop", uid="alice"))
    assert (user.face_count, user.has_phone) == (2, True)
    page = stub.ListUsers(pb.ListUsersRequest(collection="shop", page_size=1))
    assert [u.uid for u in page.users] == ["alice"] and page.next_page_token == ""
    assert stub.GetCollection(pb.GetCollectionRequest(name="shop")).user_count == 1
    deleted = stub.DeleteUser(pb.DeleteUserRequest(collection="shop", uid="alice"))
    assert deleted.faces_deleted == 2
    after = stub.Identify(pb.IdentifyRequest(collection="shop", image=b"alice"))
    assert after.decision == pb.DECISION_NO_MATCH
    stub.DeleteCollection(pb.DeleteCollectionRequest(name="shop"))
    assert not stub.ListCollections(pb.ListCollectionsRequest()).collections


def test_health_and_reflection(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for name in ("", SERVICE_NAME):
        reply = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
        assert reply.status == SERVING
    services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
    assert {SERVICE_NAME, "grpc.health.v1.Health"} <= services
    db = ProtoReflectionDescriptorDatabase(channel)
    assert db.FindFileContainingSymbol(SERVICE_NAME).package == "facegate.v1"


# ---------------------------------------------------------------- errors


ERROR_CASES: list[tuple[errors.FacegateError, grpc.StatusCode]] = [
    (errors.InvalidArgument("bad"), grpc.StatusCode.INVALID_ARGUMENT),
    (errors.ImageUndecodable("bad"), grpc.StatusCode.INVALID_ARGUMENT),
    (errors.ImageTooLarge("bad"), grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NoFace("bad"), grpc.StatusCode.FAILED_PRECONDITION),
    (errors.MultipleFaces("bad"), grpc.StatusCode.FAILED_PRECONDITION),
    (errors.LowQuality("bad"), grpc.StatusCode.FAILED_PRECONDITION),
    (errors.LivenessFailed("bad"), grpc.StatusCode.FAILED_PRECONDITION),
    (errors.UnknownCollection("bad"), grpc.StatusCode.NOT_FOUND),
    (errors.UnknownUser("bad"), grpc.StatusCode.NOT_FOUND),
    (errors.CollectionExists("bad"), grpc.StatusCode.ALREADY_EXISTS),
    (errors.DuplicateFace("bad"), grpc.StatusCode.ALREADY_EXISTS),
    (errors.UserExists("bad"), grpc.StatusCode.ALREADY_EXISTS),
    (errors.ModelMismatch("bad"), grpc.StatusCode.FAILED_PRECONDITION),
    (errors.ProbeTokenInvalid("bad"), grpc.StatusCode.FAILED_PRECONDITION),
    (errors.Overloaded("bad"), grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.CallCancelled("bad"), grpc.StatusCode.CANCELLED),
    (errors.ModelPackError("bad"), grpc.StatusCode.FAILED_PRECONDITION),
    (errors.ApiKeyMissing("bad"), grpc.StatusCode.UNAUTHENTICATED),
    (errors.ApiKeyInvalid("bad"), grpc.StatusCode.UNAUTHENTICATED),
    (errors.RoleDenied("bad"), grpc.StatusCode.PERMISSION_DENIED),
    (errors.CollectionDenied("bad"), grpc.StatusCode.PERMISSION_DENIED),
    (errors.DataKeyError("bad"), grpc.StatusCode.FAILED_PRECONDITION),
    (errors.TemplateUnreadable("bad"), grpc.StatusCode.DATA_LOSS),
    (DeadlineExceeded("bad"), grpc.StatusCode.DEADLINE_EXCEEDED),
    (ServiceNotReady("bad"), grpc.StatusCode.UNAVAILABLE),
]


def _all_error_classes() -> set[type[errors.FacegateError]]:
    found: set[type[errors.FacegateError]] = set()
    pending = [errors.FacegateError]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if cls.__module__ == "service.errors" and not cls.__subclasses__():
            found.add(cls)
    return found


def test_error_cases_cover_every_leaf_error_class() -> None:
    assert _all_error_classes() <= {type(exc) for exc, _ in ERROR_CASES}


@pytest.mark.parametrize(("exc", "code"), ERROR_CASES, ids=lambda v: getattr(v, "reason", ""))
def test_each_error_class_maps_to_its_status_and_reason(
    stub: pb_grpc.FaceGateStub,
    fake: FakeFaceService,
    exc: errors.FacegateError,
    code: grpc.StatusCode,
) -> None:
    _with_collection(stub)
    fake.fail_with = type(exc)("the message", metadata={"detail": "42"})
    err = _fails(stub.Identify, pb.IdentifyRequest(collection="shop", image=b"x"), timeout=5)
    assert _code(err) == code
    info = error_info(err)
    assert info is not None
    assert (info.reason, info.domain, dict(info.metadata)) == (
        exc.reason,
        "facegate",
        {"detail": "42"},
    )
    assert isinstance(err, grpc.Call) and err.details() == "the message"
    rebuilt = error_from_rpc(err)
    assert type(rebuilt) is type(exc)
    assert rebuilt.metadata == {"detail": "42"} and rebuilt.message == "the message"


def test_builtin_timeout_is_deadline_exceeded(
    stub: pb_grpc.FaceGateStub, fake: FakeFaceService
) -> None:
    fake.fail_with = TimeoutError("engine gave up")
    err = _fails(stub.ListCollections, pb.ListCollectionsRequest(), timeout=5)
    assert _code(err) == grpc.StatusCode.DEADLINE_EXCEEDED
    assert reason_of(err) == "DEADLINE_EXCEEDED"


def test_unexpected_exception_is_internal_without_leaking(
    stub: pb_grpc.FaceGateStub, caplog: pytest.LogCaptureFixture
) -> None:
    _with_collection(stub)
    with caplog.at_level(logging.ERROR, logger="service.transport.server"):
        err = _fails(stub.Identify, pb.IdentifyRequest(collection="shop", image=b"boom"))
    assert _code(err) == grpc.StatusCode.INTERNAL
    assert reason_of(err) == "INTERNAL"
    assert isinstance(err, grpc.Call)
    assert "secret" not in (err.details() or "") and "passwd" not in (err.details() or "")
    assert "RuntimeError: secret internal detail" in caplog.text  # the traceback is logged
    rebuilt = error_from_rpc(err)
    assert isinstance(rebuilt, RemoteError) and rebuilt.code == grpc.StatusCode.INTERNAL


def test_engine_errors_from_real_calls(stub: pb_grpc.FaceGateStub) -> None:
    err = _fails(stub.Identify, pb.IdentifyRequest(collection="nope", image=b"x"))
    assert (_code(err), reason_of(err)) == (grpc.StatusCode.NOT_FOUND, "UNKNOWN_COLLECTION")
    info = error_info(err)
    assert info is not None and dict(info.metadata) == {"collection": "nope"}
    _with_collection(stub)
    err = _fails(stub.CreateCollection, pb.CreateCollectionRequest(name="shop"))
    assert (_code(err), reason_of(err)) == (grpc.StatusCode.ALREADY_EXISTS, "COLLECTION_EXISTS")
    err = _fails(stub.GetUser, pb.GetUserRequest(collection="shop", uid="ghost"))
    assert (_code(err), reason_of(err)) == (grpc.StatusCode.NOT_FOUND, "UNKNOWN_USER")
    for image, code, reason in [
        (b"", grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT"),
        (b"garbage", grpc.StatusCode.INVALID_ARGUMENT, "IMAGE_UNDECODABLE"),
        (b"noface", grpc.StatusCode.FAILED_PRECONDITION, "NO_FACE"),
        (b"two", grpc.StatusCode.FAILED_PRECONDITION, "MULTIPLE_FACES"),
    ]:
        err = _fails(stub.Identify, pb.IdentifyRequest(collection="shop", image=image))
        assert (_code(err), reason_of(err)) == (code, reason)
    err = _fails(stub.Identify, pb.IdentifyRequest(collection="shop", probe_token="stale"))
    assert (_code(err), reason_of(err)) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "PROBE_TOKEN_INVALID",
    )


MISSING_FIELDS: list[tuple[str, Any, str]] = [
    ("CreateCollection", pb.CreateCollectionRequest(), "name"),
    ("CreateCollection", pb.CreateCollectionRequest(name="c", threshold=float("nan")), "threshold"),
    ("CreateCollection", pb.CreateCollectionRequest(name="c", kind=cast(Any, 7)), "kind"),
    ("DeleteCollection", pb.DeleteCollectionRequest(), "name"),
    ("GetCollection", pb.GetCollectionRequest(), "name"),
    ("Enroll", pb.EnrollRequest(collection="shop", uid="u"), "images"),
    ("Enroll", pb.EnrollRequest(collection="shop", images=[b"x"]), "uid"),
    ("Identify", pb.IdentifyRequest(collection="shop"), "probe"),
    ("Identify", pb.IdentifyRequest(image=b"x"), "collection"),
    ("Verify", pb.VerifyRequest(collection="shop", image=b"x"), "uid"),
    ("DeleteUser", pb.DeleteUserRequest(uid="u"), "collection"),
    ("GetUser", pb.GetUserRequest(collection="shop"), "uid"),
    ("ListUsers", pb.ListUsersRequest(), "collection"),
]


@pytest.mark.parametrize(("method", "request_msg", "field"), MISSING_FIELDS)
def test_missing_fields_are_invalid_argument(
    stub: pb_grpc.FaceGateStub, method: str, request_msg: Any, field: str
) -> None:
    err = _fails(getattr(stub, method), request_msg, timeout=5)
    assert _code(err) == grpc.StatusCode.INVALID_ARGUMENT
    info = error_info(err)
    assert info is not None and info.reason == "INVALID_ARGUMENT"
    assert info.metadata["field"] == field


def _raw_call(channel: grpc.Channel, method: str, payload: bytes) -> bytes:
    call = channel.unary_unary(
        f"/{SERVICE_NAME}/{method}",
        request_serializer=None,
        response_deserializer=None,
    )
    return call(payload, timeout=5)  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("payload", "what"),
    [
        (b"\x0a\x02\xff\xfe", "string field with bad UTF-8"),
        (b"\x0a\x05ab", "truncated message"),
        (b"\x12\xff\xff\xff\xff\x0f", "length past the end"),
        (b"\x08\x01", "collection sent as a varint (wrong wire type)"),
        (b"\x0a\x04shop\x28\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80", "overlong varint"),
    ],
)
def test_malformed_or_mistyped_messages_are_invalid_argument(
    stub: pb_grpc.FaceGateStub, channel: grpc.Channel, payload: bytes, what: str
) -> None:
    _with_collection(stub)
    err = _fails(_raw_call, channel, "Identify", payload)
    assert _code(err) == grpc.StatusCode.INVALID_ARGUMENT, what
    assert reason_of(err) == "INVALID_ARGUMENT", what


def test_unknown_method_is_unimplemented(channel: grpc.Channel) -> None:
    err = _fails(_raw_call, channel, "Teleport", b"")
    assert _code(err) == grpc.StatusCode.UNIMPLEMENTED


# ---------------------------------------------------------------- limits


def test_oversized_message_is_resource_exhausted() -> None:
    with (
        running_server(max_message_bytes=64 * 1024) as (_, port, _fake),
        grpc.insecure_channel(f"127.0.0.1:{port}") as ch,
    ):
        stub = pb_grpc.FaceGateStub(ch)
        _with_collection(stub)
        ok = stub.Identify(pb.IdentifyRequest(collection="shop", image=b"x" * 30_000))
        assert ok.decision == pb.DECISION_NO_MATCH
        big = pb.IdentifyRequest(collection="shop", image=b"x" * 100_000)
        err = _fails(stub.Identify, big, timeout=5)
        assert _code(err) == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_concurrency_limit_is_resource_exhausted() -> None:
    fake = FakeFaceService()
    fake.gate = threading.Event()
    with (
        running_server(fake, max_concurrent_rpcs=2) as (_, port, _fake),
        grpc.insecure_channel(f"127.0.0.1:{port}") as ch,
        ThreadPoolExecutor(2) as pool,
    ):
        stub = pb_grpc.FaceGateStub(ch)
        _with_collection(stub)
        request = pb.IdentifyRequest(collection="shop", image=b"x")
        busy = [pool.submit(stub.Identify, request, timeout=20) for _ in range(2)]
        for _ in busy:
            assert fake.entered.acquire(timeout=10)
        err = _fails(stub.Identify, request, timeout=5)
        assert _code(err) == grpc.StatusCode.RESOURCE_EXHAUSTED
        fake.gate.set()
        assert all(f.result(timeout=10).decision == pb.DECISION_NO_MATCH for f in busy)
        # capacity is back once they finished
        assert stub.Identify(request, timeout=5).decision == pb.DECISION_NO_MATCH


def test_deadline_reaches_the_engine(stub: pb_grpc.FaceGateStub, fake: FakeFaceService) -> None:
    _with_collection(stub)
    before = time.monotonic()
    stub.Identify(pb.IdentifyRequest(collection="shop", image=b"x"), timeout=7)
    deadline = fake.deadlines[-1]
    assert deadline is not None
    assert before + 5 < deadline < before + 7.5
    stub.Identify(pb.IdentifyRequest(collection="shop", image=b"x"))  # no deadline
    assert fake.deadlines[-1] is None


def test_slow_engine_gives_deadline_exceeded(
    stub: pb_grpc.FaceGateStub, fake: FakeFaceService
) -> None:
    _with_collection(stub)
    fake.sleep_s = 1.0
    err = _fails(stub.Identify, pb.IdentifyRequest(collection="shop", image=b"x"), timeout=0.3)
    assert _code(err) == grpc.StatusCode.DEADLINE_EXCEEDED


# ---------------------------------------------------------------- lifecycle


def test_not_serving_until_the_engine_is_loaded() -> None:
    release = threading.Event()
    fake = FakeFaceService()

    def loader() -> FakeFaceService:
        release.wait(30)
        return fake

    server, port = create_server(fake_settings(), loader=loader, port=0)
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            health = health_pb2_grpc.HealthStub(ch)
            stub = pb_grpc.FaceGateStub(ch)
            assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == NOT_SERVING
            check = health_pb2.HealthCheckRequest(service=SERVICE_NAME)
            assert health.Check(check, timeout=5).status == NOT_SERVING
            err = _fails(stub.ListCollections, pb.ListCollectionsRequest(), timeout=5)
            assert (_code(err), reason_of(err)) == (grpc.StatusCode.UNAVAILABLE, "NOT_READY")
            assert not server.wait_ready(0.1)
            release.set()
            assert server.wait_ready(10)
            assert health.Check(check, timeout=5).status == SERVING
            assert not stub.ListCollections(pb.ListCollectionsRequest(), timeout=5).collections
    finally:
        release.set()
        server.stop(None).wait(10)
    assert fake.closed


def test_failed_load_stays_not_serving_and_says_why() -> None:
    def loader() -> FakeFaceService:
        raise errors.ModelPackError("pack checksum mismatch")

    server, port = create_server(fake_settings(), loader=loader, port=0)
    server.start()
    try:
        assert not server.wait_ready(10)
        assert isinstance(server.load_error, errors.ModelPackError)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            health = health_pb2_grpc.HealthStub(ch)
            assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == NOT_SERVING
            err = _fails(pb_grpc.FaceGateStub(ch).ListCollections, pb.ListCollectionsRequest())
            assert (_code(err), reason_of(err)) == (grpc.StatusCode.UNAVAILABLE, "NOT_READY")
            assert isinstance(err, grpc.Call) and "checksum mismatch" in (err.details() or "")
    finally:
        server.stop(None).wait(10)


def test_graceful_stop_finishes_in_flight_calls_then_closes_the_engine() -> None:
    fake = FakeFaceService()
    server, port = create_server(fake_settings(), service=fake, port=0)
    server.start()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch, ThreadPoolExecutor(1) as pool:
        stub = pb_grpc.FaceGateStub(ch)
        _with_collection(stub)
        fake.gate = threading.Event()
        in_flight = pool.submit(
            stub.Identify, pb.IdentifyRequest(collection="shop", image=b"x"), timeout=20
        )
        assert fake.entered.acquire(timeout=10)
        stopped = server.stop(10)
        time.sleep(0.2)
        assert not stopped.is_set() and not fake.closed  # waiting for the in-flight call
        err = _fails(stub.ListCollections, pb.ListCollectionsRequest(), timeout=5)
        assert _code(err) == grpc.StatusCode.UNAVAILABLE  # no new work once stopping
        fake.gate.set()
        assert in_flight.result(timeout=10).decision == pb.DECISION_NO_MATCH
        assert stopped.wait(10)
    assert fake.closed
    assert not server.wait_for_termination(1)
    assert server.stop(None) is stopped  # idempotent


def test_grace_expiry_cancels_in_flight_calls() -> None:
    fake = FakeFaceService()
    server, port = create_server(fake_settings(), service=fake, port=0)
    server.start()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch, ThreadPoolExecutor(1) as pool:
        stub = pb_grpc.FaceGateStub(ch)
        _with_collection(stub)
        fake.gate = threading.Event()
        in_flight = pool.submit(
            stub.Identify, pb.IdentifyRequest(collection="shop", image=b"x"), timeout=20
        )
        assert fake.entered.acquire(timeout=10)
        stopped = server.stop(0.2)
        with pytest.raises(grpc.RpcError) as info:
            in_flight.result(timeout=10)
        assert _code(info.value) in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
        fake.gate.set()
        assert stopped.wait(10)
    assert fake.closed


def test_port_in_use_is_an_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        taken = sock.getsockname()[1]
        with pytest.raises(OSError, match="cannot listen"):
            create_server(fake_settings(), service=FakeFaceService(), port=taken)


def test_service_and_loader_are_exclusive() -> None:
    with pytest.raises(ValueError, match="either"):
        create_server(fake_settings(), service=FakeFaceService(), loader=FakeFaceService, port=0)
