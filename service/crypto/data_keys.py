"""Data-encryption keys for templates and snapshots at rest, and where they come from.

A key is 32 random bytes (AES-256). Sources, from ``[crypto]`` settings:

* ``key`` (env ``FACEGATE_CRYPTO_KEY``): the key itself, base64 or hex text, for secret
  managers that inject environment variables;
* ``key_file``: a file holding the key (32 raw bytes, or base64/hex text);
* neither: ``<data_dir>/template.key``, created with mode 0600 on first start.

Keys never enter the database; rows and snapshots carry only a *key id*, a keyed
fingerprint of the key (HMAC, so it reveals nothing about the key), which lets rotation be
incremental (each row says which key sealed it) and lets start-up tell "wrong or missing
key" apart from "altered row".

During a rotation two keys are readable: the primary (new writes) plus
``previous_key_file`` (decrypt only), and in the default layout a pending
``template.key.next`` that ``facegate crypto rotate-key`` is moving the data to.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from service.config import Settings
from service.crypto.secrets_file import create_random_file
from service.errors import DataKeyError

log = logging.getLogger(__name__)

KEY_BYTES = 32
DEFAULT_KEY_NAME = "template.key"
NEXT_SUFFIX = ".next"  # a rotation in progress in the default layout
DEFAULT_TRANSFORM_KEY_NAME = "transform.key"


@dataclass(frozen=True)
class DataKey:
    material: bytes = field(repr=False)
    source: str  # where it came from, for messages (a path or an environment variable)

    @property
    def key_id(self) -> str:
        return key_id_of(self.material)


def key_id_of(material: bytes) -> str:
    """A 64-bit keyed fingerprint: names the key in rows and snapshots, reveals nothing."""
    return hmac.new(material, b"facegate/data-key-id", hashlib.sha256).hexdigest()[:16]


def parse_key(raw: bytes, source: str) -> bytes:
    """32 raw bytes, or base64 / hex text of 32 bytes (surrounding whitespace ignored)."""
    if len(raw) == KEY_BYTES:
        return bytes(raw)
    text = raw.strip()
    for decode in (_from_hex, _from_base64):
        material = decode(text)
        if material is not None and len(material) == KEY_BYTES:
            return material
    raise DataKeyError(
        f"{source} does not hold a {KEY_BYTES}-byte key ({len(raw)} bytes found; expected"
        f" {KEY_BYTES} raw bytes or their base64/hex text)",
        metadata={"source": source, "bytes": str(len(raw))},
    )


def _from_hex(text: bytes) -> bytes | None:
    try:
        return bytes.fromhex(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return None


def _from_base64(text: bytes) -> bytes | None:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


def read_key_file(path: Path) -> DataKey:
    try:
        raw = path.read_bytes()
        mode = path.stat().st_mode
    except OSError as exc:
        raise DataKeyError(
            f"cannot read the key file {path}: {exc.strerror or exc}",
            metadata={"source": str(path)},
        ) from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("key file %s is readable by group/others (mode %o)", path, mode & 0o777)
    return DataKey(parse_key(raw, str(path)), str(path))


def create_key_file(path: Path, *, what: str = "template encryption key") -> bool:
    """Write 32 fresh random bytes to ``path`` (mode 0600) unless it exists; True if created.

    Written under a temporary name and hard-linked into place: ``os.link`` fails when the
    target exists, so two processes starting at once never overwrite each other's key.
    """
    created = create_random_file(path, KEY_BYTES)
    if created:
        log.warning(
            "created a new %s at %s: back it up and keep it apart from the data; without it"
            " the stored templates cannot be read",
            what,
            path,
        )
    return created


class Keyring:
    """The primary key (seals everything new) and the keys still accepted for reading."""

    def __init__(self, primary: DataKey, readable: Iterable[DataKey] = ()) -> None:
        self.primary = primary
        self._keys: dict[str, DataKey] = {primary.key_id: primary}
        for key in readable:
            self._keys.setdefault(key.key_id, key)

    def get(self, key_id: str) -> DataKey | None:
        return self._keys.get(key_id)

    def all_keys(self) -> list[DataKey]:
        return list(self._keys.values())

    @property
    def key_ids(self) -> frozenset[str]:
        return frozenset(self._keys)

    def describe(self) -> str:
        others = [f"{k.key_id} ({k.source})" for k in self._keys.values() if k is not self.primary]
        text = f"primary {self.primary.key_id} ({self.primary.source})"
        return text + (f"; also readable: {', '.join(others)}" if others else "")


def default_key_path(data_dir: Path) -> Path:
    return data_dir / DEFAULT_KEY_NAME


def pending_key_path(data_dir: Path) -> Path:
    return data_dir / (DEFAULT_KEY_NAME + NEXT_SUFFIX)


def directory_keyring(data_dir: Path, *, create: bool = True) -> Keyring:
    """The default layout: ``template.key`` (created if missing) plus a pending ``.next``."""
    path = default_key_path(data_dir)
    if create and not path.exists():
        create_key_file(path)
    readable = []
    pending = pending_key_path(data_dir)
    if pending.exists():
        readable.append(read_key_file(pending))
        log.warning(
            "a key rotation to %s is unfinished; both keys are readable until"
            " `facegate crypto rotate-key` completes it",
            pending,
        )
    return Keyring(read_key_file(path), readable)


def uses_default_layout(settings: Settings) -> bool:
    return settings.crypto.key is None and settings.crypto.key_file is None


def load_keyring(settings: Settings, *, extra: Iterable[DataKey] = ()) -> Keyring:
    """The keyring the settings describe (creating the default key on first start)."""
    crypto = settings.crypto
    if crypto.key is not None and crypto.key_file is not None:
        raise DataKeyError(
            "set either crypto.key (FACEGATE_CRYPTO_KEY) or crypto.key_file, not both",
            metadata={"setting": "crypto.key"},
        )
    readable = list(extra)
    if crypto.previous_key_file is not None:
        readable.append(read_key_file(crypto.previous_key_file))
    if crypto.key is not None:
        source = "crypto.key (FACEGATE_CRYPTO_KEY)"
        primary = DataKey(parse_key(crypto.key.encode("utf-8"), source), source)
        return Keyring(primary, readable)
    if crypto.key_file is not None:
        return Keyring(read_key_file(crypto.key_file), readable)
    ring = directory_keyring(settings.data_dir)
    return Keyring(ring.primary, [*ring.all_keys(), *readable])


def transform_master_key(settings: Settings) -> bytes:
    """The master secret of revocable collections' transforms (never rotated by facegate:
    revocation rotates a collection's own derived key instead)."""
    path = settings.crypto.transform_key_file
    if path is None:
        path = settings.data_dir / DEFAULT_TRANSFORM_KEY_NAME
        if not path.exists():
            create_key_file(path, what="template transform (revocation) master key")
    return read_key_file(path).material
