"""API keys: generating them, the keys file, and recognising a presented key.

A key is ``fgk_`` + 43 URL-safe characters (32 random bytes from ``secrets``); the prefix
lets secret scanners and humans recognise one. The keys file (TOML, ``auth.keys_file``)
stores only each key's SHA-256, never the key::

    version = 1

    [[keys]]
    id = "till-7"                      # names the key in logs and the audit trail
    role = "terminal"                  # terminal | enroller | admin
    sha256 = "9f86d08...(64 hex)"
    collections = ["shop"]             # optional: the only collections the key may touch
    created = "2025-05-01T12:00:00Z"   # optional, informational

Why a plain SHA-256 and not a password KDF (bcrypt, scrypt, Argon2): a KDF's deliberate
slowness protects *low-entropy* secrets that people choose, by making each guess of a
stolen hash expensive. These keys are 256-bit random tokens, so the preimage search is
already 2^256 work and slowing each guess adds nothing; a KDF would instead cost tens of
milliseconds of CPU on *every* call (Identify's whole budget) and hand anyone who can send
garbage keys a cheap way to burn server CPU. A presented key's digest is compared with
every stored digest by ``hmac.compare_digest``, without stopping at the first match.

``KeyRing`` holds the parsed file for the server and re-reads it when it changes (checked
at most every ``reload_s`` seconds), so revoking a key needs no restart; a reload that
fails to parse keeps the previous keys and logs the error.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
import threading
import time
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from service.access.principal import Principal, Role
from service.engine.request_checks import COLLECTION_NAME
from service.errors import ApiKeyInvalid, InvalidArgument

log = logging.getLogger(__name__)

KEY_PREFIX = "fgk_"
KEY_BYTES = 32
FILE_VERSION = 1
KEY_ID = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_ENTRY_FIELDS = frozenset({"id", "role", "sha256", "collections", "created"})
_MAX_KEY_CHARS = 256  # longer metadata values are not keys: refuse before hashing them


@dataclass(frozen=True, slots=True)
class KeyEntry:
    key_id: str
    role: Role
    sha256: bytes  # the 32-byte digest of the key
    collections: frozenset[str] | None = None  # None: every collection
    created: str | None = None

    @property
    def principal(self) -> Principal:
        return Principal(self.key_id, self.role, self.collections)


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(KEY_BYTES)


def hash_key(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def new_entry(
    key_id: str, role: Role | str, collections: Iterable[str] | None = None
) -> tuple[str, KeyEntry]:
    """A fresh key and its entry (the key itself is returned once and stored nowhere)."""
    key = generate_key()
    scope = None if collections is None else tuple(collections)
    raw: dict[str, Any] = {
        "id": key_id,
        "role": role.value if isinstance(role, Role) else role,
        "sha256": hash_key(key).hex(),
        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if scope is not None:
        raw["collections"] = list(scope)
    return key, _entry(raw, "the new key")


# ---------------------------------------------------------------- parsing


def _fail(source: str, what: str, problem: str) -> InvalidArgument:
    return InvalidArgument(f"keys file {source}: {what}: {problem}", metadata={"file": source})


def _entry(raw: Any, where: str, source: str = "") -> KeyEntry:
    src = source or "(new)"
    if not isinstance(raw, Mapping):
        raise _fail(src, where, "must be a table ([[keys]])")
    unknown = set(raw) - _ENTRY_FIELDS
    if unknown:
        allowed = ", ".join(sorted(_ENTRY_FIELDS))
        raise _fail(src, where, f"unknown field(s) {sorted(unknown)}; allowed: {allowed}")
    if "id" not in raw:
        raise _fail(src, where, "missing 'id'")
    key_id = raw["id"]
    if not isinstance(key_id, str) or not KEY_ID.fullmatch(key_id):
        raise _fail(src, where, f"id {key_id!r} must be 1-64 of A-Z a-z 0-9 _ . @ -")
    where = f"{where} (id {key_id!r})"
    for name in ("role", "sha256"):
        if name not in raw:
            raise _fail(src, where, f"missing {name!r}")
    try:
        role = Role(raw["role"])
    except ValueError:
        roles = ", ".join(r.value for r in Role)
        raise _fail(src, where, f"role {raw['role']!r} is not one of {roles}") from None
    digest = raw["sha256"]
    if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
        raise _fail(
            src, where, "sha256 must be 64 lowercase hex digits (the key's hash, not the key)"
        )
    collections: frozenset[str] | None = None
    if "collections" in raw:
        names = raw["collections"]
        if not isinstance(names, list) or not names:
            raise _fail(
                src, where, "collections must be a non-empty list (omit it for every collection)"
            )
        for name in names:
            if not isinstance(name, str) or not COLLECTION_NAME.fullmatch(name):
                raise _fail(src, where, f"collection name {name!r} is not valid")
        collections = frozenset(names)
    created = raw.get("created")
    if created is not None and not isinstance(created, str):
        raise _fail(src, where, "created must be a string")
    return KeyEntry(key_id, role, bytes.fromhex(digest), collections, created)


def parse_keys(text: str, source: str) -> tuple[KeyEntry, ...]:
    """Entries from a keys file's text; every problem is an ``InvalidArgument`` naming the
    file, the entry and the field."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _fail(source, "not valid TOML", str(exc)) from exc
    unknown = set(doc) - {"version", "keys"}
    if unknown:
        raise _fail(source, "top level", f"unknown key(s) {sorted(unknown)}; expected [[keys]]")
    version = doc.get("version", FILE_VERSION)
    if version != FILE_VERSION:
        raise _fail(source, "version", f"{version!r} is not supported (expected {FILE_VERSION})")
    raw_entries = doc.get("keys", [])
    if not isinstance(raw_entries, list):
        raise _fail(source, "keys", "must be an array of tables ([[keys]])")
    entries = tuple(_entry(raw, f"entry {n}", source) for n, raw in enumerate(raw_entries, start=1))
    seen_ids: set[str] = set()
    seen_hashes: dict[bytes, str] = {}
    for entry in entries:
        if entry.key_id in seen_ids:
            raise _fail(source, f"id {entry.key_id!r}", "appears more than once")
        seen_ids.add(entry.key_id)
        other = seen_hashes.get(entry.sha256)
        if other is not None:
            raise _fail(source, f"id {entry.key_id!r}", f"has the same sha256 as {other!r}")
        seen_hashes[entry.sha256] = entry.key_id
    return entries


def load_keys(path: Path) -> tuple[KeyEntry, ...]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise _fail(str(path), "cannot be read", str(exc)) from exc
    return parse_keys(text, str(path))


# ---------------------------------------------------------------- writing


def _toml_string(value: str) -> str:
    # Only validated ids, roles, hex, collection names and timestamps reach here.
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_keys(entries: Sequence[KeyEntry]) -> str:
    lines = [
        "# facegate API keys: SHA-256 hashes only (the keys were shown once, when created).",
        "# Manage with `facegate keys create|list|revoke`; the server re-reads this file.",
        f"version = {FILE_VERSION}",
    ]
    for e in entries:
        lines += ["", "[[keys]]", f"id = {_toml_string(e.key_id)}"]
        lines.append(f"role = {_toml_string(e.role.value)}")
        lines.append(f"sha256 = {_toml_string(e.sha256.hex())}")
        if e.collections is not None:
            names = ", ".join(_toml_string(c) for c in sorted(e.collections))
            lines.append(f"collections = [{names}]")
        if e.created is not None:
            lines.append(f"created = {_toml_string(e.created)}")
    return "\n".join(lines) + "\n"


def write_keys(path: Path, entries: Sequence[KeyEntry]) -> None:
    """Replace the file atomically (readers see the old or the new file, never half), 0600."""
    text = render_keys(entries)
    parse_keys(text, str(path))  # never write a file the server would refuse
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, text.encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def add_key(
    path: Path, key_id: str, role: Role | str, collections: Iterable[str] | None = None
) -> tuple[str, KeyEntry]:
    """Create a key, append its hash entry to ``path`` (created if absent); the key."""
    entries = load_keys(path) if path.exists() else ()
    if any(e.key_id == key_id for e in entries):
        raise InvalidArgument(
            f"keys file {path}: a key with id {key_id!r} exists (revoke it first)",
            metadata={"file": str(path), "id": key_id},
        )
    key, entry = new_entry(key_id, role, collections)
    write_keys(path, (*entries, entry))
    return key, entry


def revoke_key(path: Path, key_id: str) -> KeyEntry:
    entries = load_keys(path)
    kept = tuple(e for e in entries if e.key_id != key_id)
    if len(kept) == len(entries):
        raise InvalidArgument(
            f"keys file {path}: no key with id {key_id!r}",
            metadata={"file": str(path), "id": key_id},
        )
    write_keys(path, kept)
    return next(e for e in entries if e.key_id == key_id)


# ---------------------------------------------------------------- the server's view


class KeyRing:
    """The server's keys: loaded at start (an empty or broken file refuses to start) and
    re-read when the file changes."""

    def __init__(self, path: Path, *, reload_s: float = 2.0) -> None:
        self.path = path
        self._reload_s = reload_s
        self._lock = threading.Lock()
        self._stamp = self._file_stamp()
        self._entries = load_keys(path)
        if not self._entries:
            raise _fail(str(path), "holds no keys", "create one with `facegate keys create` first")
        self._checked = time.monotonic()

    @property
    def entries(self) -> tuple[KeyEntry, ...]:
        self._maybe_reload()
        return self._entries

    def authenticate(self, key: str) -> Principal:
        """The principal of a presented key; ``ApiKeyInvalid`` if it matches none."""
        entries = self.entries
        if len(key) > _MAX_KEY_CHARS:
            raise ApiKeyInvalid("the API key is not valid")
        digest = hash_key(key)
        found: KeyEntry | None = None
        for entry in entries:  # no early exit: the time taken does not depend on which
            if hmac.compare_digest(digest, entry.sha256):
                found = entry
        if found is None:
            raise ApiKeyInvalid("the API key is not valid")
        return found.principal

    def _file_stamp(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _maybe_reload(self) -> None:
        now = time.monotonic()
        if now - self._checked < self._reload_s:
            return
        with self._lock:
            if now - self._checked < self._reload_s:
                return
            self._checked = now
            stamp = self._file_stamp()
            if stamp == self._stamp:
                return
            self._stamp = stamp  # a broken file is reported once, retried when it changes
            try:
                entries = load_keys(self.path)
            except InvalidArgument as exc:
                log.error("keeping the previous API keys: %s", exc.message)
                return
            self._entries = entries
            log.info("reloaded %d API key(s) from %s", len(entries), self.path)
