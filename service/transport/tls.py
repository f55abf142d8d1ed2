"""TLS and mutual TLS for the server (``[tls]`` settings) and for clients.

Server: ``cert_file`` + ``key_file`` turn TLS on. ``client_ca_file`` with
``require_client_cert = true`` is mTLS: a client must present a certificate that chains to
that CA, or the handshake fails (no client certificate, a certificate from another CA, or a
plaintext client never reach a handler). The files are checked at start with the
``cryptography`` package, so a wrong path, a non-PEM file, an encrypted key or a key that
belongs to another certificate is a clear error instead of gRPC's opaque handshake failures.

Client: ``ClientTls`` carries the CA to trust (None: the system's roots), an optional client
certificate and key, and an optional server name to verify instead of the target's host
(e.g. dialling 10.0.0.5 whose certificate names ``facegate.shop.lan``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from service.config import TlsSettings
from service.errors import InvalidArgument

log = logging.getLogger(__name__)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InvalidArgument(
            f"cannot read the {what} {path}: {exc.strerror or exc}", metadata={"file": str(path)}
        ) from exc


def _certificates(data: bytes, path: Path, what: str) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise InvalidArgument(
            f"the {what} {path} is not a PEM certificate: {exc}", metadata={"file": str(path)}
        ) from exc
    now = datetime.now(UTC)
    for cert in certs:
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            log.warning(
                "the %s %s holds a certificate valid only from %s to %s (%s)",
                what,
                path,
                cert.not_valid_before_utc,
                cert.not_valid_after_utc,
                cert.subject.rfc4514_string(),
            )
    return certs


def _check_key(key_pem: bytes, key_path: Path, leaf: x509.Certificate, cert_path: Path) -> None:
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError as exc:  # the key is encrypted
        raise InvalidArgument(
            f"the private key {key_path} is encrypted; facegate needs an unencrypted PEM key"
            " (protect it with file permissions)",
            metadata={"file": str(key_path)},
        ) from exc
    except ValueError as exc:
        raise InvalidArgument(
            f"the private key {key_path} is not a PEM private key: {exc}",
            metadata={"file": str(key_path)},
        ) from exc
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*spki) != leaf.public_key().public_bytes(*spki):
        raise InvalidArgument(
            f"the private key {key_path} does not belong to the certificate {cert_path}",
            metadata={"file": str(key_path)},
        )


def load_pair(cert_file: Path, key_file: Path, what: str) -> tuple[bytes, bytes]:
    """(certificate chain PEM, private key PEM), checked to belong together."""
    chain = _read(cert_file, f"{what} certificate")
    key = _read(key_file, f"{what} private key")
    leaf = _certificates(chain, cert_file, f"{what} certificate")[0]
    _check_key(key, key_file, leaf, cert_file)
    return chain, key


def server_credentials(tls: TlsSettings) -> grpc.ServerCredentials | None:
    """Credentials for ``[tls]``, or None when TLS is off (no certificate configured)."""
    if tls.cert_file is None and tls.key_file is None:
        if tls.client_ca_file is not None or tls.require_client_cert:
            raise InvalidArgument(
                "tls.client_ca_file / tls.require_client_cert need tls.cert_file and"
                " tls.key_file (the server's own certificate)",
                metadata={"setting": "tls.cert_file"},
            )
        return None
    if tls.cert_file is None or tls.key_file is None:
        missing = "tls.key_file" if tls.cert_file is not None else "tls.cert_file"
        raise InvalidArgument(
            f"TLS needs both tls.cert_file and tls.key_file; {missing} is not set",
            metadata={"setting": missing},
        )
    chain, key = load_pair(tls.cert_file, tls.key_file, "server")
    client_ca: bytes | None = None
    if tls.client_ca_file is not None:
        client_ca = _read(tls.client_ca_file, "client CA")
        _certificates(client_ca, tls.client_ca_file, "client CA")
        if not tls.require_client_cert:
            log.warning(
                "tls.client_ca_file is set but tls.require_client_cert is false: clients"
                " without a certificate are let in; set it to true for mutual TLS"
            )
    elif tls.require_client_cert:
        raise InvalidArgument(
            "tls.require_client_cert needs tls.client_ca_file (the CA client certificates"
            " must chain to)",
            metadata={"setting": "tls.client_ca_file"},
        )
    return grpc.ssl_server_credentials(
        [(key, chain)], root_certificates=client_ca, require_client_auth=tls.require_client_cert
    )


@dataclass(frozen=True, slots=True)
class ClientTls:
    root_ca: bytes | None = None  # PEM CAs to trust; None: the system's roots
    cert_chain: bytes | None = None  # PEM client certificate (mTLS)
    private_key: bytes | None = None  # PEM key of the client certificate
    server_name: str | None = None  # the name to verify instead of the target's host

    @classmethod
    def from_files(
        cls,
        ca_file: Path | None = None,
        cert_file: Path | None = None,
        key_file: Path | None = None,
        server_name: str | None = None,
    ) -> ClientTls:
        if (cert_file is None) != (key_file is None):
            raise InvalidArgument("a client certificate needs both its certificate and key files")
        root_ca = None
        if ca_file is not None:
            root_ca = _read(ca_file, "CA")
            _certificates(root_ca, ca_file, "CA")
        chain = key = None
        if cert_file is not None and key_file is not None:
            chain, key = load_pair(cert_file, key_file, "client")
        return cls(root_ca, chain, key, server_name)

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.root_ca,
            private_key=self.private_key,
            certificate_chain=self.cert_chain,
        )

    def channel_options(self) -> list[tuple[str, str]]:
        if self.server_name is None:
            return []
        return [("grpc.ssl_target_name_override", self.server_name)]
