"""The service secret: keys the phone-number hashes and the image digests.

Either the operator names a file (``settings.secret_file``) or facegate creates
``<data_dir>/secret.key`` with 32 random bytes on first start. Losing it makes every stored
phone hash useless (hints stop matching), so it is created atomically and never rewritten.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import stat
from pathlib import Path

from service.config import Settings
from service.errors import InvalidArgument

log = logging.getLogger(__name__)

SECRET_BYTES = 32
MIN_SECRET_BYTES = 16
DEFAULT_NAME = "secret.key"


def secret_path(settings: Settings) -> Path:
    if settings.secret_file is not None:
        return settings.secret_file
    return settings.data_dir / DEFAULT_NAME


def load_or_create_secret(settings: Settings) -> bytes:
    """Read the configured secret, or create the default one on first start."""
    if settings.secret_file is not None:
        return _read(settings.secret_file)
    path = settings.data_dir / DEFAULT_NAME
    if not path.exists():
        _create(path)
    return _read(path)


def _read(path: Path) -> bytes:
    try:
        data = path.read_bytes()
        mode = path.stat().st_mode
    except OSError as exc:
        raise InvalidArgument(f"cannot read the service secret {path}: {exc}") from exc
    if len(data) < MIN_SECRET_BYTES:
        raise InvalidArgument(
            f"the service secret {path} holds {len(data)} bytes; at least {MIN_SECRET_BYTES} needed"
        )
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("service secret %s is readable by group/others (mode %o)", path, mode & 0o777)
    return data


def _create(path: Path) -> None:
    if create_random_file(path, SECRET_BYTES):
        log.info("created a new service secret at %s", path)


def create_random_file(path: Path, size: int) -> bool:
    """Write ``size`` fresh random bytes to ``path`` (mode 0600) unless it exists; True if
    this call created it. Shared by the service secret and the data keys.

    Written under a temporary name and hard-linked into place: ``os.link`` fails if the
    target exists, so two processes starting at once cannot overwrite each other's file:
    the loser simply reads the winner's.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, secrets.token_bytes(size))
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)
        created = True
    except FileExistsError:
        created = False
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
    return created


def fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be fsynced
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
