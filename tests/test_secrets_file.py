"""The service secret: created once (0600, atomically), then read back unchanged."""

from __future__ import annotations

import stat
import threading
from pathlib import Path

import pytest

from service.config import Settings
from service.crypto.secrets_file import SECRET_BYTES, load_or_create_secret, secret_path
from service.errors import InvalidArgument


def test_created_once_with_private_mode(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    first = load_or_create_secret(settings)
    path = secret_path(settings)
    assert path == tmp_path / "data" / "secret.key"
    assert len(first) == SECRET_BYTES
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_secret(settings) == first
    assert [p.name for p in path.parent.iterdir()] == ["secret.key"]  # no temp files left


def test_concurrent_first_starts_agree(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    got: list[bytes] = []
    threads = [
        threading.Thread(target=lambda: got.append(load_or_create_secret(settings)))
        for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(got)) == 1 and len(got) == 8


def test_configured_secret_file(tmp_path: Path) -> None:
    path = tmp_path / "my.key"
    path.write_bytes(b"x" * 20)
    path.chmod(0o600)
    assert load_or_create_secret(Settings(data_dir=tmp_path, secret_file=path)) == b"x" * 20
    with pytest.raises(InvalidArgument, match="cannot read"):
        load_or_create_secret(Settings(data_dir=tmp_path, secret_file=tmp_path / "missing"))
    path.write_bytes(b"short")
    with pytest.raises(InvalidArgument, match="at least"):
        load_or_create_secret(Settings(data_dir=tmp_path, secret_file=path))
