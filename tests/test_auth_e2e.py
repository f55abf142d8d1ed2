"""Keys, roles, scopes and mutual TLS in front of the real engine: the default model pack,
real photos (matplotlib's grace_hopper.jpg, scikit-image's astronaut), a real client."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image
from tls_certs import CertificateAuthority

from service import errors
from service.access.api_keys import add_key
from service.config import AuthSettings, TlsSettings, load_settings
from service.domain import CollectionSpec, Decision, EnrollRequest, IdentifyRequest
from service.transport.client import FaceGateClient
from service.transport.server import create_server
from service.transport.status import RemoteError
from service.transport.tls import ClientTls

pytest.importorskip("service.app", reason="service.app.build_service is not there yet")

READY_TIMEOUT_S = 300.0


def _another_photo(jpeg: bytes) -> bytes:
    """The same face re-framed, shrunk and re-encoded."""
    im = Image.open(io.BytesIO(jpeg)).convert("RGB")
    im = im.crop((im.width // 20, im.height // 20, im.width, im.height))
    im = im.resize((im.width * 4 // 5, im.height * 4 // 5), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def test_roles_and_scopes_over_mtls_with_the_real_engine(
    tmp_path: Path, packs_dir: Path, grace_hopper_jpeg: bytes, astronaut_jpeg: bytes
) -> None:
    ca = CertificateAuthority(tmp_path / "pki", "shop-ca")
    server_cert = ca.issue("facegate.shop.lan", server=True)
    till_cert = ca.issue("till-7", server=False)
    keys = tmp_path / "keys.toml"
    admin, _ = add_key(keys, "root", "admin")
    desk, _ = add_key(keys, "desk", "enroller", ["shop"])
    till, _ = add_key(keys, "till-7", "terminal", ["shop"])
    settings = load_settings(
        environ={},
        data_dir=tmp_path / "data",
        model_dir=packs_dir,
        listen="127.0.0.1:0",
        auth=AuthSettings(keys_file=keys),
        tls=TlsSettings(
            cert_file=server_cert.cert,
            key_file=server_cert.key,
            client_ca_file=ca.cert_file,
            require_client_cert=True,
        ),
    )
    server, port = create_server(settings, port=0)  # the real loader: build_service
    server.start()
    try:
        if not server.wait_ready(READY_TIMEOUT_S):
            pytest.fail(f"the real engine did not load: {server.load_error!r}")
        target = f"127.0.0.1:{port}"
        tls = ClientTls.from_files(ca.cert_file, till_cert.cert, till_cert.key)

        def client(key: str | None) -> FaceGateClient:
            return FaceGateClient(target, tls=tls, api_key=key, timeout=120)

        with client(admin) as root:
            root.create_collection(CollectionSpec(name="shop"))
            root.create_collection(CollectionSpec(name="cafe"))
        with client(desk) as enroller:
            enroller.enroll(
                EnrollRequest(collection="shop", uid="grace", images=(grace_hopper_jpeg,))
            )
            with pytest.raises(errors.CollectionDenied):
                enroller.enroll(
                    EnrollRequest(collection="cafe", uid="grace", images=(grace_hopper_jpeg,))
                )
        with client(till) as terminal:
            hit = terminal.identify(
                IdentifyRequest(collection="shop", image=_another_photo(grace_hopper_jpeg))
            )
            assert (hit.decision, hit.uid) == (Decision.MATCH, "grace")
            stranger = terminal.identify(IdentifyRequest(collection="shop", image=astronaut_jpeg))
            assert stranger.decision is Decision.NO_MATCH
            with pytest.raises(errors.RoleDenied):
                terminal.enroll(
                    EnrollRequest(collection="shop", uid="eileen", images=(astronaut_jpeg,))
                )
            with pytest.raises(errors.CollectionDenied):
                terminal.identify(IdentifyRequest(collection="cafe", image=grace_hopper_jpeg))
        with client(None) as anonymous, pytest.raises(errors.ApiKeyMissing):
            anonymous.identify(IdentifyRequest(collection="shop", image=grace_hopper_jpeg))
        # A plaintext terminal never reaches the engine.
        with FaceGateClient(target, api_key=till, timeout=20) as plain:
            with pytest.raises(RemoteError) as refused:
                plain.identify(IdentifyRequest(collection="shop", image=grace_hopper_jpeg))
            assert refused.value.reason == "UNAVAILABLE"
        with client(admin) as root:
            assert root.get_collection("shop").user_count == 1  # the refused enrol left nothing
            assert root.get_collection("cafe").user_count == 0
    finally:
        assert server.stop(10).wait(60)
