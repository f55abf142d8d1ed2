"""Gallery snapshots sealed with AES-256-GCM, streamed in 1 MiB chunks.

The index's snapshot format (with its own checksum) is the plaintext; this codec wraps it::

    b"FGSNAPE1" | key id (16 ascii) | nonce prefix (8 random bytes)
    chunk 0 | chunk 1 | ... | final chunk       each = AES-GCM(plaintext) + 16-byte tag

Chunk ``i`` uses nonce ``prefix || i`` and associated data ``header | context | i | final``:
reordering, dropping or truncating chunks fails authentication (the last chunk is marked
final), and ``context`` (the collection id and its transform generation) keeps one
collection's snapshot from being loaded as another's. Chunking keeps memory flat while a
large gallery is written. Any failure to open is a ``SnapshotCorrupt``: the gallery is a
cache, so the caller rebuilds it from the store.
"""

from __future__ import annotations

import os
import struct
from typing import IO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from index import SnapshotCorrupt
from index.snapshot import MAGIC as PLAINTEXT_MAGIC
from index.snapshot import SealedWriter
from service.crypto.data_keys import Keyring

MAGIC = b"FGSNAPE1"
KEY_ID_BYTES = 16
PREFIX_BYTES = 8
HEADER_BYTES = len(MAGIC) + KEY_ID_BYTES + PREFIX_BYTES
CHUNK = 1 << 20
TAG = 16


class PlaintextSnapshot(SnapshotCorrupt):
    """An unencrypted snapshot written by a facegate from before encryption at rest."""


class SnapshotUnknownKey(SnapshotCorrupt):
    """Sealed under a key that is not configured (e.g. retired by a rotation)."""


def _nonce(prefix: bytes, index: int) -> bytes:
    return prefix + struct.pack(">I", index)


def _aad(header: bytes, context: bytes, index: int, final: bool) -> bytes:
    return header + struct.pack("<I", len(context)) + context + struct.pack("<Q?", index, final)


class _Writer:
    def __init__(self, out: IO[bytes], aead: AESGCM, header: bytes, context: bytes) -> None:
        self._out = out
        self._aead = aead
        self._header = header
        self._context = context
        self._prefix = header[-PREFIX_BYTES:]
        self._buf = bytearray()
        self._index = 0
        out.write(header)

    def write(self, data: bytes | memoryview, /) -> None:
        view = memoryview(data).cast("B")
        pos = 0
        while pos < len(view):
            # A full chunk is sealed only once more data follows: the last chunk, sealed
            # by finish(), is then never empty-by-accident nor confused with a middle one.
            if len(self._buf) == CHUNK:
                self._emit(final=False)
            take = min(CHUNK - len(self._buf), len(view) - pos)
            self._buf += view[pos : pos + take]
            pos += take

    def finish(self) -> None:
        self._emit(final=True)

    def _emit(self, *, final: bool) -> None:
        aad = _aad(self._header, self._context, self._index, final)
        self._out.write(self._aead.encrypt(_nonce(self._prefix, self._index), self._buf, aad))
        self._buf = bytearray()
        self._index += 1


class SnapshotCipher:
    """A ``index.SnapshotCodec``: writes under the keyring's primary key, reads under any."""

    def __init__(self, keyring: Keyring, context: str) -> None:
        self.keyring = keyring
        self.context = context.encode("utf-8")

    def writer(self, out: IO[bytes]) -> SealedWriter:
        key = self.keyring.primary
        header = MAGIC + key.key_id.encode("ascii") + os.urandom(PREFIX_BYTES)
        return _Writer(out, AESGCM(key.material), header, self.context)

    def read(self, f: IO[bytes], size: int, where: str) -> bytearray:
        header = f.read(HEADER_BYTES)
        if header[: len(PLAINTEXT_MAGIC)] == PLAINTEXT_MAGIC:
            raise PlaintextSnapshot(f"{where}: an unencrypted snapshot (older facegate)")
        if len(header) < HEADER_BYTES or header[: len(MAGIC)] != MAGIC:
            raise SnapshotCorrupt(f"{where}: not an encrypted gallery snapshot")
        key_id = header[len(MAGIC) : len(MAGIC) + KEY_ID_BYTES].decode("ascii", "replace")
        key = self.keyring.get(key_id)
        if key is None:
            raise SnapshotUnknownKey(f"{where}: sealed under key {key_id!r}, not configured")
        aead = AESGCM(key.material)
        prefix = header[-PREFIX_BYTES:]
        remaining = size - HEADER_BYTES
        if remaining < TAG:
            raise SnapshotCorrupt(f"{where}: truncated ({size} bytes)")
        out = bytearray()
        index = 0
        while True:
            take = min(remaining, CHUNK + TAG)
            final = take == remaining
            chunk = f.read(take)
            if len(chunk) != take:
                raise SnapshotCorrupt(f"{where}: short read")
            try:
                out += aead.decrypt(
                    _nonce(prefix, index), chunk, _aad(header, self.context, index, final)
                )
            except InvalidTag:
                raise SnapshotCorrupt(
                    f"{where}: authentication failed at chunk {index} (altered or truncated"
                    " file, or another collection's snapshot)"
                ) from None
            remaining -= take
            index += 1
            if final:
                return out
