"""``facegate keys ...`` and the client commands' API-key and TLS flags, run in-process
against a real server (fake engine) with keys and mutual TLS."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from grpc_fakes import running_server
from tls_certs import CertificateAuthority

from service.access.api_keys import add_key, hash_key, load_keys
from service.access.principal import Role
from service.cli.main import EXIT_OK, EXIT_REMOTE, EXIT_USAGE, main
from service.config import AuthSettings, TlsSettings


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_keys_create_prints_the_key_once_and_stores_its_hash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "keys.toml"
    code, out, err = run(
        capsys, "keys", "create", "--keys-file", str(path), "--id", "till-7", "--role",
        "terminal", "--collection", "shop", "--collection", "cafe",
    )  # fmt: skip
    assert code == EXIT_OK
    key = out.strip()
    assert out == key + "\n" and key.startswith("fgk_")  # stdout: the key alone
    assert "created key 'till-7' (role terminal, cafe,shop)" in err and "shown only now" in err
    assert key not in path.read_text()
    (entry,) = load_keys(path)
    assert (entry.key_id, entry.role, entry.collections) == (
        "till-7",
        Role.TERMINAL,
        frozenset({"shop", "cafe"}),
    )
    assert entry.sha256 == hash_key(key)

    code, out, _ = run(
        capsys, "keys", "create", "--keys-file", str(path), "--id", "root", "--role", "admin",
        "--json",
    )  # fmt: skip
    created = json.loads(out)
    assert code == EXIT_OK and created["id"] == "root" and created["collections"] is None
    assert load_keys(path)[1].sha256 == hash_key(created["key"])


def test_keys_list_and_revoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(tmp_path / "keys.toml")
    for key_id, role in [("a", "admin"), ("b", "enroller")]:
        argv = ("keys", "create", "--keys-file", path, "--id", key_id, "--role", role)
        assert run(capsys, *argv)[0] == EXIT_OK
    code, out, _ = run(capsys, "keys", "list", "--keys-file", path)
    lines = out.splitlines()
    assert code == EXIT_OK and [line.split()[:3] for line in lines] == [
        ["a", "role=admin", "all"],
        ["b", "role=enroller", "all"],
    ]
    assert "sha256" not in out and "fgk_" not in out
    code, out, _ = run(capsys, "keys", "revoke", "--keys-file", path, "--id", "a")
    assert code == EXIT_OK and out.startswith("revoked key 'a' (admin)")
    code, out, _ = run(capsys, "keys", "list", "--keys-file", path, "--json")
    assert [k["id"] for k in json.loads(out)["keys"]] == ["b"]
    code, _, err = run(capsys, "keys", "revoke", "--keys-file", path, "--id", "a")
    assert code == EXIT_REMOTE and "no key with id 'a'" in err


def test_keys_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "keys", "list", "--config", str(tmp_path / "absent.toml"))
    assert code == EXIT_REMOTE and "config file" in err
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    code, _, err = run(capsys, "keys", "list", "--config", str(empty))
    assert code == EXIT_USAGE and "no keys file: pass --keys-file or set auth.keys_file" in err
    broken = tmp_path / "broken.toml"
    broken.write_text('[[keys]]\nid = "x"\nrole = "boss"\nsha256 = "00"\n')
    code, _, err = run(capsys, "keys", "list", "--keys-file", str(broken))
    assert code == EXIT_REMOTE and "role 'boss' is not one of" in err
    code, _, err = run(
        capsys, "keys", "create", "--keys-file", str(broken), "--id", "y", "--role", "admin"
    )
    assert code == EXIT_REMOTE and "role 'boss'" in err
    code, _, _ = run(capsys, "keys", "create", "--id", "y", "--role", "boss")
    assert code == EXIT_USAGE


def test_keys_file_from_the_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keys = tmp_path / "keys.toml"
    config = tmp_path / "facegate.toml"
    config.write_text(f'[auth]\nkeys_file = "{keys}"\n')
    code, out, _ = run(
        capsys, "keys", "create", "--config", str(config), "--id", "a", "--role", "admin"
    )
    assert code == EXIT_OK and load_keys(keys)[0].sha256 == hash_key(out.strip())


# ---------------------------------------------------------------- client flags


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[tuple[str, Path, CertificateAuthority]]:
    """A server with keys and mTLS: (target, keys file, CA)."""
    ca = CertificateAuthority(tmp_path / "pki", "shop-ca")
    server = ca.issue("facegate.shop.lan", server=True)
    keys = tmp_path / "keys.toml"
    tls = TlsSettings(
        cert_file=server.cert,
        key_file=server.key,
        client_ca_file=ca.cert_file,
        require_client_cert=True,
    )
    with running_server(tls=tls, auth=AuthSettings(keys_file=_seed(keys), reload_s=0)) as (
        _,
        port,
        _,
    ):
        yield f"127.0.0.1:{port}", keys, ca


def _seed(path: Path) -> Path:
    add_key(path, "seed", "terminal")
    return path


def test_client_commands_with_keys_and_mtls(
    secured: tuple[str, Path, CertificateAuthority],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    target, keys, ca = secured
    client = ca.issue("desk-1", server=False)
    mtls = ("--target", target, "--ca-file", str(ca.cert_file))
    mtls += ("--cert-file", str(client.cert), "--key-file", str(client.key))
    admin = run(
        capsys, "keys", "create", "--keys-file", str(keys), "--id", "root", "--role", "admin"
    )
    till = run(
        capsys, "keys", "create", "--keys-file", str(keys), "--id", "t", "--role", "terminal"
    )
    key_file = tmp_path / "admin.key"
    key_file.write_text(admin[1])

    code, out, _ = run(
        capsys, "collections", "create", "shop", "--api-key-file", str(key_file), *mtls
    )
    assert code == EXIT_OK and out.startswith("created shop")
    code, _, err = run(capsys, "collections", "list", *mtls)
    assert code == EXIT_REMOTE and err.startswith("error: API_KEY_MISSING: ")
    photo = tmp_path / "alice.jpg"
    photo.write_bytes(b"alice")
    code, _, err = run(
        capsys, "enroll", "--collection", "shop", "--uid", "alice", str(photo),
        "--api-key", till[1].strip(), *mtls,
    )  # fmt: skip
    assert code == EXIT_REMOTE and err.startswith("error: ROLE_DENIED: key 't' (role terminal)")
    monkeypatch.setenv("FACEGATE_API_KEY", till[1].strip())
    code, out, _ = run(capsys, "identify", "--collection", "shop", str(photo), *mtls)
    assert code == EXIT_OK and out.startswith("NO_MATCH")
    # Without the client certificate the handshake fails.
    code, _, err = run(
        capsys, "collections", "list", "--target", target, "--ca-file", str(ca.cert_file)
    )
    assert code == EXIT_REMOTE and err.startswith("error: UNAVAILABLE")


def test_client_flag_errors_are_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = ("--target", "127.0.0.1:1")
    code, _, err = run(
        capsys, "collections", "list", "--ca-file", str(tmp_path / "no.pem"), *target
    )
    assert code == EXIT_USAGE and "cannot read the CA" in err
    code, _, err = run(
        capsys, "collections", "list", "--api-key-file", str(tmp_path / "no"), *target
    )
    assert code == EXIT_USAGE and "cannot read the API key file" in err
    empty = tmp_path / "empty.key"
    empty.write_text("\n")
    code, _, err = run(capsys, "collections", "list", "--api-key-file", str(empty), *target)
    assert code == EXIT_USAGE and "is empty" in err
