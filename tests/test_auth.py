"""API keys and roles through a real server on a free port (fake engine): every status,
role and scope case, the bound principal, and the start-up checks."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from facegate.v1 import facegate_pb2 as pb
from google.protobuf.message import Message
from grpc_fakes import FakeFaceService, fake_settings, running_server
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from service import errors
from service.access.api_keys import add_key, revoke_key
from service.access.principal import Principal, current_principal
from service.config import AuthSettings, load_settings
from service.domain import EnrollRequest, IdentifyRequest
from service.transport import server as grpc_server
from service.transport.auth import is_loopback
from service.transport.client import FaceGateClient
from service.transport.server import SERVICE_NAME, create_server
from service.transport.status import error_info, reason_of


class RecordingFake(FakeFaceService):
    """Remembers who the engine thought was calling."""

    def __init__(self) -> None:
        super().__init__()
        self.principals: list[Principal] = []

    def identify(self, req: Any, *, deadline: float | None = None) -> Any:
        self.principals.append(current_principal())
        return super().identify(req, deadline=deadline)

    def enroll(self, req: Any, *, deadline: float | None = None) -> Any:
        self.principals.append(current_principal())
        return super().enroll(req, deadline=deadline)


class Keys:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.terminal, _ = add_key(path, "till-7", "terminal")
        self.enroller, _ = add_key(path, "enrol-1", "enroller")
        self.admin, _ = add_key(path, "root", "admin")
        self.shop_terminal, _ = add_key(path, "shop-till", "terminal", ["shop"])
        self.shop_admin, _ = add_key(path, "shop-admin", "admin", ["shop", "spare"])


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return Keys(tmp_path / "keys.toml")


@pytest.fixture
def served(keys: Keys) -> Iterator[tuple[grpc.Channel, RecordingFake]]:
    fake = RecordingFake()
    auth = AuthSettings(keys_file=keys.path, reload_s=0)
    with (
        running_server(fake, auth=auth) as (_, port, _),
        grpc.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        _call(channel, "CreateCollection", pb.CreateCollectionRequest(name="shop"), keys.admin)
        _call(channel, "CreateCollection", pb.CreateCollectionRequest(name="cafe"), keys.admin)
        yield channel, fake


def _call(
    channel: grpc.Channel,
    method: str,
    request: Message | bytes,
    key: str | None = None,
    *,
    metadata: tuple[tuple[str, str], ...] | None = None,
) -> Any:
    call = channel.unary_unary(
        f"/{SERVICE_NAME}/{method}",
        request_serializer=lambda m: m if isinstance(m, bytes) else m.SerializeToString(),
        response_deserializer=lambda b: b,
    )
    if metadata is None:
        metadata = () if key is None else (("authorization", f"Bearer {key}"),)
    return call(request, timeout=10, metadata=metadata)


def _refused(channel: grpc.Channel, *args: Any, **kwargs: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        _call(channel, *args, **kwargs)
    return info.value


def _code(err: grpc.RpcError) -> grpc.StatusCode:
    assert isinstance(err, grpc.Call)
    return err.code()


# ---------------------------------------------------------------- authentication


def test_missing_key_is_unauthenticated(served: tuple[grpc.Channel, RecordingFake]) -> None:
    channel, fake = served
    err = _refused(channel, "Identify", pb.IdentifyRequest(collection="shop", image=b"a"))
    assert (_code(err), reason_of(err)) == (grpc.StatusCode.UNAUTHENTICATED, "API_KEY_MISSING")
    assert fake.principals == []  # the engine never ran


@pytest.mark.parametrize(
    "metadata",
    [
        (("authorization", "Bearer fgk_not-a-key"),),
        (("x-api-key", "fgk_not-a-key"),),
        (("authorization", "Basic dXNlcjpwYXNz"),),
        (("authorization", "Bearer"),),
    ],
    ids=["wrong-bearer", "wrong-x-api-key", "basic-scheme", "empty-bearer"],
)
def test_wrong_key_is_unauthenticated(
    served: tuple[grpc.Channel, RecordingFake], metadata: tuple[tuple[str, str], ...]
) -> None:
    channel, _ = served
    request = pb.IdentifyRequest(collection="shop", image=b"a")
    err = _refused(channel, "Identify", request, metadata=metadata)
    assert (_code(err), reason_of(err)) == (grpc.StatusCode.UNAUTHENTICATED, "API_KEY_INVALID")
    assert isinstance(err, grpc.Call) and "fgk_not-a-key" not in (err.details() or "")


def test_x_api_key_header_works_and_two_different_keys_do_not(
    served: tuple[grpc.Channel, RecordingFake], keys: Keys
) -> None:
    channel, fake = served
    request = pb.IdentifyRequest(collection="shop", image=b"a")
    _call(channel, "Identify", request, metadata=(("x-api-key", keys.terminal),))
    same = (("x-api-key", keys.terminal), ("authorization", f"bearer {keys.terminal}"))
    _call(channel, "Identify", request, metadata=same)
    assert [p.key_id for p in fake.principals] == ["till-7", "till-7"]
    both = (("x-api-key", keys.terminal), ("authorization", f"Bearer {keys.admin}"))
    err = _refused(channel, "Identify", request, metadata=both)
    assert reason_of(err) == "API_KEY_INVALID"


def test_malformed_request_without_a_key_is_unauthenticated_before_parsing(
    served: tuple[grpc.Channel, RecordingFake], keys: Keys
) -> None:
    channel, _ = served
    err = _refused(channel, "Identify", b"\xff\xff\xff")
    assert _code(err) == grpc.StatusCode.UNAUTHENTICATED
    for key in (keys.terminal, keys.shop_terminal):  # parsed by the servicer / the interceptor
        err = _refused(channel, "Identify", b"\xff\xff\xff", key)
        assert (_code(err), reason_of(err)) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_ARGUMENT",
        )


def test_health_and_reflection_need_no_key(served: tuple[grpc.Channel, RecordingFake]) -> None:
    channel, _ = served
    reply = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=5
    )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert SERVICE_NAME in set(ProtoReflectionDescriptorDatabase(channel).get_services())


# ---------------------------------------------------------------- roles

# The table, written out here rather than read from service.transport.auth.RULES.
ALLOWED = {
    "terminal": {"Identify", "Verify", "GetServerInfo"},
    "enroller": {
        "Identify",
        "Verify",
        "GetServerInfo",
        "Enroll",
        "DeleteUser",
        "GetUser",
        "ListUsers",
    },
    "admin": set(pb.DESCRIPTOR.services_by_name["FaceGate"].methods_by_name),
}
REQUESTS: dict[str, Message] = {
    "CreateCollection": pb.CreateCollectionRequest(name="extra"),
    "DeleteCollection": pb.DeleteCollectionRequest(name="cafe"),
    "UpdateCollection": pb.UpdateCollectionRequest(name="shop", threshold=0.5),
    "GetCollection": pb.GetCollectionRequest(name="shop"),
    "ListCollections": pb.ListCollectionsRequest(),
    "Enroll": pb.EnrollRequest(collection="shop", uid="u", images=[b"alice"]),
    "Identify": pb.IdentifyRequest(collection="shop", image=b"alice"),
    "Verify": pb.VerifyRequest(collection="shop", uid="u", image=b"alice"),
    "DeleteUser": pb.DeleteUserRequest(collection="shop", uid="ghost"),
    "GetUser": pb.GetUserRequest(collection="shop", uid="ghost"),
    "ListUsers": pb.ListUsersRequest(collection="shop"),
    "ImportTemplates": pb.ImportTemplatesRequest(collection="shop", model_id="fake/1"),
    "GetServerInfo": pb.GetServerInfoRequest(),
}


def test_every_method_has_a_request_here() -> None:
    assert set(REQUESTS) == ALLOWED["admin"]


@pytest.mark.parametrize("role", ["terminal", "enroller", "admin"])
@pytest.mark.parametrize("method", sorted(REQUESTS))
def test_role_matrix(
    served: tuple[grpc.Channel, RecordingFake], keys: Keys, role: str, method: str
) -> None:
    channel, _ = served
    key = {"terminal": keys.terminal, "enroller": keys.enroller, "admin": keys.admin}[role]
    try:
        _call(channel, method, REQUESTS[method], key)
    except grpc.RpcError as err:
        code = _code(err)
        if method in ALLOWED[role]:  # the engine's own answer (e.g. NOT_FOUND) is fine
            assert code not in (
                grpc.StatusCode.UNAUTHENTICATED,
                grpc.StatusCode.PERMISSION_DENIED,
            )
            return
        assert (code, reason_of(err)) == (grpc.StatusCode.PERMISSION_DENIED, "ROLE_DENIED")
        info = error_info(err)
        assert info is not None
        assert dict(info.metadata)["role"] == role
        assert dict(info.metadata)["method"] == method
        assert dict(info.metadata)["key_id"] in ("till-7", "enrol-1")
        return
    assert method in ALLOWED[role], f"{role} was allowed to call {method}"


# ---------------------------------------------------------------- collection scope


def test_scoped_key_may_use_only_its_collections(
    served: tuple[grpc.Channel, RecordingFake], keys: Keys
) -> None:
    channel, fake = served
    _call(
        channel, "Identify", pb.IdentifyRequest(collection="shop", image=b"a"), keys.shop_terminal
    )
    err = _refused(
        channel, "Identify", pb.IdentifyRequest(collection="cafe", image=b"a"), keys.shop_terminal
    )
    assert (_code(err), reason_of(err)) == (grpc.StatusCode.PERMISSION_DENIED, "COLLECTION_DENIED")
    info = error_info(err)
    assert info is not None
    assert dict(info.metadata) == {
        "key_id": "shop-till",
        "collection": "cafe",
        "method": "Identify",
    }
    # The role is checked too: a scoped terminal key still cannot enroll in its collection.
    err = _refused(
        channel, "Enroll", pb.EnrollRequest(collection="shop", uid="u", images=[b"a"]),
        keys.shop_terminal,
    )  # fmt: skip
    assert reason_of(err) == "ROLE_DENIED"
    assert [p.key_id for p in fake.principals] == ["shop-till"]


def test_scoped_admin_manages_only_its_collections(
    served: tuple[grpc.Channel, RecordingFake], keys: Keys
) -> None:
    channel, _ = served
    key = keys.shop_admin
    _call(channel, "CreateCollection", pb.CreateCollectionRequest(name="spare"), key)
    for method, request in [
        ("CreateCollection", pb.CreateCollectionRequest(name="other")),
        ("GetCollection", pb.GetCollectionRequest(name="cafe")),
        ("DeleteCollection", pb.DeleteCollectionRequest(name="cafe")),
        ("ImportTemplates", pb.ImportTemplatesRequest(collection="cafe", model_id="fake/1")),
        ("ListUsers", pb.ListUsersRequest(collection="cafe")),
    ]:
        assert reason_of(_refused(channel, method, request, key)) == "COLLECTION_DENIED", method
    listed = pb.ListCollectionsResponse.FromString(
        _call(channel, "ListCollections", pb.ListCollectionsRequest(), key)
    )
    assert sorted(c.name for c in listed.collections) == ["shop", "spare"]
    everything = pb.ListCollectionsResponse.FromString(
        _call(channel, "ListCollections", pb.ListCollectionsRequest(), keys.admin)
    )
    assert sorted(c.name for c in everything.collections) == ["cafe", "shop", "spare"]


def test_scope_check_parses_the_request_once(keys: Keys, monkeypatch: pytest.MonkeyPatch) -> None:
    parsed: list[str] = []
    real = grpc_server._parse

    def counting(request_type: Any, raw: bytes) -> Any:
        parsed.append(request_type.DESCRIPTOR.name)
        return real(request_type, raw)

    monkeypatch.setattr(grpc_server, "_parse", counting)
    fake = RecordingFake()
    with (
        running_server(fake, auth=AuthSettings(keys_file=keys.path)) as (_, port, _),
        grpc.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        _call(channel, "CreateCollection", pb.CreateCollectionRequest(name="shop"), keys.admin)
        parsed.clear()
        _call(
            channel,
            "Identify",
            pb.IdentifyRequest(collection="shop", image=b"a"),
            keys.shop_terminal,
        )
        _call(channel, "Identify", pb.IdentifyRequest(collection="shop", image=b"a"), keys.terminal)
    assert parsed == ["IdentifyRequest", "IdentifyRequest"]  # once per call, scoped or not


def test_principal_is_bound_only_during_the_call(
    served: tuple[grpc.Channel, RecordingFake], keys: Keys
) -> None:
    channel, fake = served
    _call(
        channel,
        "Enroll",
        pb.EnrollRequest(collection="shop", uid="a", images=[b"a"]),
        keys.enroller,
    )
    _call(
        channel, "Identify", pb.IdentifyRequest(collection="shop", image=b"a"), keys.shop_terminal
    )
    enroller, till = fake.principals
    assert (enroller.key_id, enroller.role.value, enroller.collections) == (
        "enrol-1",
        "enroller",
        None,
    )
    assert (till.key_id, till.collections) == ("shop-till", frozenset({"shop"}))
    assert current_principal().key_id == "local-unauthenticated"


def test_a_revoked_key_stops_working_without_a_restart(
    served: tuple[grpc.Channel, RecordingFake], keys: Keys
) -> None:
    channel, _ = served
    request = pb.IdentifyRequest(collection="shop", image=b"a")
    _call(channel, "Identify", request, keys.terminal)
    revoke_key(keys.path, "till-7")
    assert reason_of(_refused(channel, "Identify", request, keys.terminal)) == "API_KEY_INVALID"
    new_key, _ = add_key(keys.path, "till-8", "terminal")
    _call(channel, "Identify", request, new_key)


def test_client_raises_the_exact_error_classes(
    served: tuple[grpc.Channel, RecordingFake], keys: Keys
) -> None:
    channel, _ = served
    enroll = EnrollRequest(collection="shop", uid="bob", images=(b"bob",))
    with FaceGateClient(channel=channel) as anonymous, pytest.raises(errors.ApiKeyMissing):
        anonymous.identify(IdentifyRequest(collection="shop", image=b"bob"))
    with FaceGateClient(channel=channel, api_key=keys.terminal) as till:
        with pytest.raises(errors.RoleDenied) as denied:
            till.enroll(enroll)
        assert denied.value.metadata["required_role"] == "enroller"
    with FaceGateClient(channel=channel, api_key=keys.enroller) as desk:
        assert desk.enroll(enroll).created
    with FaceGateClient(channel=channel, api_key=keys.shop_terminal) as till:
        with pytest.raises(errors.CollectionDenied):
            till.identify(IdentifyRequest(collection="cafe", image=b"bob"))
        assert till.identify(IdentifyRequest(collection="shop", image=b"bob")).uid == "bob"
    with (
        FaceGateClient(channel=channel, api_key="fgk_wrong") as bad,
        pytest.raises(errors.ApiKeyInvalid),
    ):
        bad.list_collections()
    with FaceGateClient(channel=channel, api_key=keys.admin) as root:
        ids = root.import_templates("shop", "fake/1", ["t1"], np.eye(1, 4, dtype=np.float32))
        assert len(ids) == 1


# ---------------------------------------------------------------- start-up checks


@pytest.mark.parametrize(
    ("address", "local"),
    [
        ("127.0.0.1:50051", True),
        ("127.8.9.1:1", True),
        ("localhost:50051", True),
        ("[::1]:50051", True),
        ("unix:/run/facegate.sock", True),
        ("0.0.0.0:50051", False),
        ("[::]:50051", False),
        (":50051", False),
        ("10.1.2.3:50051", False),
        ("facegate.shop.lan:50051", False),
    ],
)
def test_is_loopback(address: str, local: bool) -> None:
    assert is_loopback(address) is local


def test_loopback_without_keys_warns_loudly(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="service.transport.auth"):
        server, _ = create_server(fake_settings(), service=FakeFaceService(), port=0)
    server.stop(None).wait(10)
    assert "AUTHENTICATION IS OFF" in caplog.text and "acts as admin" in caplog.text


def test_non_loopback_without_keys_refuses_to_start() -> None:
    with pytest.raises(errors.InvalidArgument) as info:
        create_server(fake_settings(listen="0.0.0.0:0"), service=FakeFaceService(), port=0)
    message = info.value.message
    assert message.startswith("refusing to listen on 0.0.0.0:0 without API keys")
    assert "auth.keys_file" in message and "auth.allow_unauthenticated = true" in message


def test_non_loopback_waiver_starts_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    settings = fake_settings(listen="0.0.0.0:0", auth=AuthSettings(allow_unauthenticated=True))
    with caplog.at_level(logging.WARNING, logger="service.transport.auth"):
        server, port = create_server(settings, service=FakeFaceService(), port=0)
    try:
        assert port > 0
        assert "AUTHENTICATION IS OFF on 0.0.0.0" in caplog.text
        assert "waived by auth.allow_unauthenticated" in caplog.text
    finally:
        server.stop(None).wait(10)


def test_non_loopback_with_keys_but_no_tls_warns_about_plaintext(
    keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    settings = fake_settings(listen="0.0.0.0:0", auth=AuthSettings(keys_file=keys.path))
    with caplog.at_level(logging.WARNING, logger="service.transport.auth"):
        server, _ = create_server(settings, service=FakeFaceService(), port=0)
    server.stop(None).wait(10)
    assert "API keys travel in plaintext" in caplog.text


def test_a_broken_keys_file_stops_the_server_with_a_clear_message(tmp_path: Path) -> None:
    path = tmp_path / "keys.toml"
    path.write_text('[[keys]]\nid = "a"\nrole = "terminal"\nsha256 = "short"\n')
    settings = fake_settings(auth=AuthSettings(keys_file=path))
    with pytest.raises(errors.InvalidArgument, match=r"entry 1 \(id 'a'\): sha256 must be 64"):
        create_server(settings, service=FakeFaceService(), port=0)


def test_auth_settings_from_toml_and_environment(tmp_path: Path, keys: Keys) -> None:
    config = tmp_path / "facegate.toml"
    config.write_text(f'[auth]\nkeys_file = "{keys.path}"\nreload_s = 5\n')
    settings = load_settings(config_file=config, environ={})
    assert settings.auth == AuthSettings(keys_file=keys.path, reload_s=5.0)
    env = {"FACEGATE_AUTH_ALLOW_UNAUTHENTICATED": "1"}
    assert load_settings(environ=env).auth.allow_unauthenticated is True
