"""TLS and mutual TLS through a real server on a free port, with certificates generated
here: a valid client gets in; without a client certificate, with one from a rogue CA, or in
plaintext it does not. Bad certificate settings stop the server with a clear message."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from grpc_fakes import FakeFaceService, fake_settings, running_server
from tls_certs import CertificateAuthority, Issued

from service.access.api_keys import add_key
from service.config import AuthSettings, TlsSettings, load_settings
from service.domain import CollectionSpec
from service.errors import ApiKeyMissing, InvalidArgument
from service.transport.client import FaceGateClient
from service.transport.server import create_server
from service.transport.status import RemoteError
from service.transport.tls import ClientTls, server_credentials

CALL_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Pki:
    ca: CertificateAuthority
    server: Issued
    client: Issued
    rogue_ca: CertificateAuthority
    rogue_client: Issued


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority(directory, "shop-ca")
    rogue = CertificateAuthority(directory, "rogue-ca")
    return Pki(
        ca=ca,
        server=ca.issue("facegate.shop.lan", server=True),
        client=ca.issue("till-7", server=False),
        rogue_ca=rogue,
        rogue_client=rogue.issue("till-7", server=False),
    )


def _tls(pki: Pki, *, mtls: bool) -> TlsSettings:
    return TlsSettings(
        cert_file=pki.server.cert,
        key_file=pki.server.key,
        client_ca_file=pki.ca.cert_file if mtls else None,
        require_client_cert=mtls,
    )


@pytest.fixture
def tls_target(pki: Pki) -> Iterator[str]:
    with running_server(tls=_tls(pki, mtls=False)) as (_, port, _):
        yield f"127.0.0.1:{port}"


@pytest.fixture
def mtls_target(pki: Pki) -> Iterator[str]:
    with running_server(tls=_tls(pki, mtls=True)) as (_, port, _):
        yield f"127.0.0.1:{port}"


def _works(target: str, tls: ClientTls | None) -> None:
    with FaceGateClient(target, tls=tls, timeout=CALL_TIMEOUT_S) as client:
        assert client.health() == "SERVING"
        name = f"c{len(client.list_collections())}"
        client.create_collection(CollectionSpec(name=name))
        assert name in [c.name for c in client.list_collections()]


def _refused(target: str, tls: ClientTls | None) -> RemoteError:
    with (
        FaceGateClient(target, tls=tls, timeout=CALL_TIMEOUT_S) as client,
        pytest.raises(RemoteError) as info,
    ):
        client.list_collections()
    return info.value


# ---------------------------------------------------------------- TLS


def test_tls_client_trusting_the_ca_gets_in(pki: Pki, tls_target: str) -> None:
    _works(tls_target, ClientTls.from_files(pki.ca.cert_file))


def test_tls_checks_the_server_name(pki: Pki, tls_target: str) -> None:
    port = tls_target.rpartition(":")[2]
    # Dialled by a name the certificate carries, or by IP with that name to verify.
    _works(f"localhost:{port}", ClientTls.from_files(pki.ca.cert_file))
    _works(tls_target, ClientTls.from_files(pki.ca.cert_file, server_name="facegate.shop.lan"))
    err = _refused(tls_target, ClientTls.from_files(pki.ca.cert_file, server_name="evil.example"))
    assert err.reason == "UNAVAILABLE"


def test_tls_client_trusting_another_ca_is_refused(pki: Pki, tls_target: str) -> None:
    assert _refused(tls_target, ClientTls.from_files(pki.rogue_ca.cert_file)).reason == (
        "UNAVAILABLE"
    )


def test_plaintext_client_is_refused_by_a_tls_server(tls_target: str) -> None:
    assert _refused(tls_target, None).reason == "UNAVAILABLE"


def test_tls_client_is_refused_by_a_plaintext_server(pki: Pki) -> None:
    with running_server() as (_, port, _):
        err = _refused(f"127.0.0.1:{port}", ClientTls.from_files(pki.ca.cert_file))
    assert err.reason == "UNAVAILABLE"


# ---------------------------------------------------------------- mTLS


def test_mtls_client_with_a_certificate_from_the_ca_gets_in(pki: Pki, mtls_target: str) -> None:
    _works(mtls_target, ClientTls.from_files(pki.ca.cert_file, pki.client.cert, pki.client.key))


def test_mtls_refuses_a_client_without_a_certificate(pki: Pki, mtls_target: str) -> None:
    assert _refused(mtls_target, ClientTls.from_files(pki.ca.cert_file)).reason == "UNAVAILABLE"


def test_mtls_refuses_a_client_certificate_from_a_rogue_ca(pki: Pki, mtls_target: str) -> None:
    rogue = ClientTls.from_files(pki.ca.cert_file, pki.rogue_client.cert, pki.rogue_client.key)
    assert _refused(mtls_target, rogue).reason == "UNAVAILABLE"


def test_mtls_refuses_a_plaintext_client(mtls_target: str) -> None:
    assert _refused(mtls_target, None).reason == "UNAVAILABLE"


def test_mtls_and_api_keys_together(pki: Pki, tmp_path: Path) -> None:
    keys = tmp_path / "keys.toml"
    admin, _ = add_key(keys, "root", "admin")
    tls = ClientTls.from_files(pki.ca.cert_file, pki.client.cert, pki.client.key)
    with running_server(tls=_tls(pki, mtls=True), auth=AuthSettings(keys_file=keys)) as (
        _,
        port,
        _,
    ):
        target = f"127.0.0.1:{port}"
        with (
            FaceGateClient(target, tls=tls, timeout=CALL_TIMEOUT_S) as anonymous,
            pytest.raises(ApiKeyMissing),
        ):
            anonymous.list_collections()
        with FaceGateClient(target, tls=tls, api_key=admin, timeout=CALL_TIMEOUT_S) as client:
            assert client.list_collections() == []


def test_non_loopback_tls_with_keys_starts_without_the_plaintext_warning(
    pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    keys = tmp_path / "keys.toml"
    add_key(keys, "root", "admin")
    settings = fake_settings(
        listen="0.0.0.0:0", tls=_tls(pki, mtls=True), auth=AuthSettings(keys_file=keys)
    )
    caplog.set_level(logging.INFO, logger="service.transport.auth")
    server, port = create_server(settings, service=FakeFaceService(), port=0)
    server.stop(None).wait(10)
    assert port > 0 and "API keys required: 1 key(s)" in caplog.text
    assert "plaintext" not in caplog.text


# ---------------------------------------------------------------- bad settings


def test_tls_settings_from_toml(pki: Pki, tmp_path: Path) -> None:
    config = tmp_path / "facegate.toml"
    config.write_text(
        f'[tls]\ncert_file = "{pki.server.cert}"\nkey_file = "{pki.server.key}"\n'
        f'client_ca_file = "{pki.ca.cert_file}"\nrequire_client_cert = true\n'
    )
    assert load_settings(config_file=config, environ={}).tls == _tls(pki, mtls=True)


def _bad(tls: TlsSettings, expected: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        server_credentials(tls)
    assert expected in info.value.message
    with pytest.raises(InvalidArgument) as refused:  # the server refuses to start alike
        create_server(fake_settings(tls=tls), service=FakeFaceService(), port=0)
    assert refused.value.message == info.value.message


def test_bad_tls_settings_are_clear_errors(pki: Pki, tmp_path: Path) -> None:
    not_pem = tmp_path / "junk.pem"
    not_pem.write_text("hello")
    s, c = pki.server, pki.client
    _bad(TlsSettings(cert_file=s.cert), "tls.key_file is not set")
    _bad(TlsSettings(key_file=s.key), "tls.cert_file is not set")
    _bad(TlsSettings(cert_file=tmp_path / "nope.crt", key_file=s.key), "cannot read the server")
    _bad(TlsSettings(cert_file=not_pem, key_file=s.key), "is not a PEM certificate")
    _bad(TlsSettings(cert_file=s.cert, key_file=not_pem), "is not a PEM private key")
    _bad(TlsSettings(cert_file=s.cert, key_file=c.key), "does not belong to the certificate")
    _bad(
        TlsSettings(cert_file=s.cert, key_file=s.key, require_client_cert=True),
        "tls.require_client_cert needs tls.client_ca_file",
    )
    _bad(TlsSettings(client_ca_file=pki.ca.cert_file), "need tls.cert_file and tls.key_file")
    _bad(
        TlsSettings(cert_file=s.cert, key_file=s.key, client_ca_file=not_pem),
        "the client CA",
    )


def test_client_ca_without_require_warns(pki: Pki, caplog: pytest.LogCaptureFixture) -> None:
    tls = TlsSettings(
        cert_file=pki.server.cert, key_file=pki.server.key, client_ca_file=pki.ca.cert_file
    )
    assert server_credentials(tls) is not None
    assert "tls.require_client_cert is false" in caplog.text


def test_bad_client_tls_files_are_clear_errors(pki: Pki, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="needs both its certificate and key"):
        ClientTls.from_files(pki.ca.cert_file, cert_file=pki.client.cert)
    with pytest.raises(InvalidArgument, match="cannot read the CA"):
        ClientTls.from_files(tmp_path / "missing.pem")
    with pytest.raises(InvalidArgument, match="does not belong"):
        ClientTls.from_files(pki.ca.cert_file, pki.client.cert, pki.server.key)
