"""FaceGateClient against a real server (fake engine): domain objects in and out, errors
rebuilt as the server's exception classes."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import grpc
import pytest
from grpc_fakes import BOX, FakeFaceService, fake_settings, running_server

from service import errors
from service.domain import (
    CollectionKind,
    CollectionSpec,
    Decision,
    EnrollRequest,
    IdentifyRequest,
    VerifyRequest,
)
from service.errors import DeadlineExceeded, ServiceNotReady
from service.transport.client import FaceGateClient
from service.transport.server import create_server
from service.transport.status import RemoteError


@pytest.fixture
def served() -> Iterator[tuple[FaceGateClient, FakeFaceService]]:
    with running_server() as (_, port, fake), FaceGateClient(f"127.0.0.1:{port}") as client:
        yield client, fake


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_every_method_round_trips_domain_objects(
    served: tuple[FaceGateClient, FakeFaceService],
) -> None:
    client, _ = served
    client.wait_ready(5)
    assert client.health() == "SERVING"
    info = client.create_collection(
        CollectionSpec(name="shop", kind=CollectionKind.PAY, threshold=0.7, hint_required_above=9)
    )
    assert (info.name, info.kind, info.threshold, info.hint_required_above) == (
        "shop",
        CollectionKind.PAY,
        0.7,
        9,
    )
    assert info.created_at == 1_700_000_000.5
    assert client.get_collection("shop") == info
    assert client.list_collections() == [info]

    enrolled = client.enroll(
        EnrollRequest(
            collection="shop",
            uid="alice",
            images=(b"alice",),
            phone_number="+15551234567",
            metadata={"tier": "gold"},
        )
    )
    assert enrolled.uid == "alice" and enrolled.created and len(enrolled.face_ids) == 1
    assert enrolled.qualities[0].box == BOX
    client.enroll(EnrollRequest(collection="shop", uid="bob", images=(b"bob", b"bob2")))

    hit = client.identify(IdentifyRequest(collection="shop", image=b"alice"))
    assert (hit.decision, hit.uid, hit.face) == (Decision.MATCH, "alice", BOX)
    miss = client.identify(IdentifyRequest(collection="shop", image=b"carol", top_k=3))
    assert (miss.decision, miss.uid, miss.candidates) == (Decision.NO_MATCH, None, ())
    by_token = client.identify(
        IdentifyRequest(collection="shop", probe_token="valid-token", hint="4567")
    )
    assert by_token.uid == "alice"

    assert client.verify(VerifyRequest(collection="shop", uid="bob", image=b"bob2")).match
    assert not client.verify(VerifyRequest(collection="shop", uid="bob", image=b"alice")).match

    alice = client.get_user("shop", "alice")
    assert (alice.has_phone, dict(alice.metadata), alice.face_count) == (True, {"tier": "gold"}, 1)
    first = client.list_users("shop", page_size=1)
    assert [u.uid for u in first.users] == ["alice"] and first.next_page_token
    assert [u.uid for u in client.iter_users("shop", page_size=1)] == ["alice", "bob"]

    assert client.delete_user("shop", "bob") == 2
    assert [u.uid for u in client.iter_users("shop")] == ["alice"]
    client.delete_collection("shop")
    assert client.list_collections() == []


def test_errors_come_back_as_the_server_raised_them(
    served: tuple[FaceGateClient, FakeFaceService],
) -> None:
    client, fake = served
    with pytest.raises(errors.UnknownCollection) as unknown:
        client.identify(IdentifyRequest(collection="nope", image=b"x"))
    assert unknown.value.metadata == {"collection": "nope"}
    assert isinstance(unknown.value.__cause__, grpc.RpcError)
    client.create_collection(CollectionSpec(name="shop"))
    with pytest.raises(errors.CollectionExists):
        client.create_collection(CollectionSpec(name="shop"))
    with pytest.raises(errors.UnknownUser):
        client.get_user("shop", "ghost")
    with pytest.raises(errors.NoFace):
        client.enroll(EnrollRequest(collection="shop", uid="u", images=(b"noface",)))
    with pytest.raises(errors.MultipleFaces) as two:
        client.identify(IdentifyRequest(collection="shop", image=b"two"))
    assert two.value.metadata == {"faces": "2"}
    client.enroll(EnrollRequest(collection="shop", uid="u", images=(b"u",)))
    with pytest.raises(errors.ImageUndecodable):
        client.verify(VerifyRequest(collection="shop", uid="u", image=b"garbage"))
    with pytest.raises(errors.InvalidArgument) as missing:
        client.identify(IdentifyRequest(collection="shop"))
    assert missing.value.metadata == {"field": "probe"}
    with pytest.raises(errors.ProbeTokenInvalid):
        client.identify(IdentifyRequest(collection="shop", probe_token="old"))
    fake.fail_with = errors.Overloaded("queue full", metadata={"queue": "64"})
    with pytest.raises(errors.Overloaded) as busy:
        client.list_collections()
    assert busy.value.metadata == {"queue": "64"}
    fake.fail_with = None
    with pytest.raises(RemoteError) as internal:
        client.identify(IdentifyRequest(collection="shop", image=b"boom"))
    assert internal.value.code == grpc.StatusCode.INTERNAL
    assert internal.value.reason == "INTERNAL"


def test_client_timeout_is_deadline_exceeded(
    served: tuple[FaceGateClient, FakeFaceService],
) -> None:
    client, fake = served
    client.create_collection(CollectionSpec(name="shop"))
    fake.sleep_s = 1.0
    with pytest.raises(DeadlineExceeded):
        client.identify(IdentifyRequest(collection="shop", image=b"x"), timeout=0.2)


def test_no_server_is_a_remote_unavailable_error() -> None:
    with FaceGateClient(f"127.0.0.1:{_free_port()}", timeout=2) as client:
        with pytest.raises(RemoteError) as info:
            client.list_collections()
        assert info.value.code == grpc.StatusCode.UNAVAILABLE
        assert info.value.reason == "UNAVAILABLE"
        with pytest.raises(ServiceNotReady, match="not serving"):
            client.wait_ready(0.5)


def test_wait_ready_waits_for_start_and_model_loading() -> None:
    release = threading.Event()
    fake = FakeFaceService()

    def loader() -> FakeFaceService:
        release.wait(30)
        return fake

    server, port = create_server(fake_settings(), loader=loader, port=0)
    starter = threading.Timer(0.3, server.start)  # the server comes up after we start waiting
    starter.start()
    try:
        with FaceGateClient(f"127.0.0.1:{port}", timeout=5) as client:
            with pytest.raises(ServiceNotReady, match=r"last: NOT_SERVING"):
                client.wait_ready(1.0)
            with pytest.raises(ServiceNotReady) as not_ready:
                client.list_collections()
            assert not_ready.value.reason == "NOT_READY"
            assert client.health() == "NOT_SERVING"
            threading.Timer(0.3, release.set).start()
            client.wait_ready(10)
            assert client.list_collections() == []
    finally:
        starter.join()
        release.set()
        server.stop(None).wait(10)
