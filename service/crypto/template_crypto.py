"""AES-256-GCM for stored templates: each row sealed under the keyring's primary key.

A sealed template is ``b"\\x01" || nonce (12 random bytes) || ciphertext || tag``; the key
id that sealed it is stored beside it. The associated data binds the row's identity::

    "facegate/template/v1" | face id | collection | uid | model id | transform generation | key id

so a ciphertext copied or swapped onto another row (another face id, user, collection or
model) fails authentication exactly like a flipped byte does. Random 96-bit nonces are safe
for far more rows than a gallery holds (the GCM limit is ~2^32 messages per key).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from service.crypto.data_keys import Keyring
from service.errors import TemplateUnreadable
from service.pipeline.types import FloatArray

VERSION = b"\x01"
NONCE_BYTES = 12
_AAD_TAG = b"facegate/template/v1"


@dataclass(frozen=True, slots=True)
class TemplateLabel:
    """What a stored template is bound to (its associated data)."""

    face_id: int
    collection: str
    uid: str
    model_id: str
    transform_gen: int = 0  # the revocable-template transform generation (0 = none)


def _aad(label: TemplateLabel, key_id: str) -> bytes:
    parts = [
        _AAD_TAG,
        struct.pack("<q", label.face_id),
        label.collection.encode("utf-8"),
        label.uid.encode("utf-8"),
        label.model_id.encode("utf-8"),
        struct.pack("<q", label.transform_gen),
        key_id.encode("ascii"),
    ]
    # Length-prefixed so that no two different labels encode to the same bytes.
    return b"".join(struct.pack("<I", len(p)) + p for p in parts)


class TemplateCipher:
    """Seals templates under the primary key; opens them under any key of the keyring."""

    def __init__(self, keyring: Keyring) -> None:
        self.keyring = keyring
        self._aead: dict[str, AESGCM] = {}

    @property
    def primary_key_id(self) -> str:
        return self.keyring.primary.key_id

    def _cipher(self, key_id: str) -> AESGCM | None:
        aead = self._aead.get(key_id)
        if aead is None:
            key = self.keyring.get(key_id)
            if key is None:
                return None
            aead = self._aead.setdefault(key_id, AESGCM(key.material))
        return aead

    def seal(self, template: FloatArray, label: TemplateLabel) -> tuple[str, bytes]:
        """(key id, blob) for the row ``label`` names."""
        key_id = self.primary_key_id
        aead = self._cipher(key_id)
        assert aead is not None  # the primary is always in the keyring
        plain = np.ascontiguousarray(template, dtype="<f4").tobytes()
        nonce = os.urandom(NONCE_BYTES)
        return key_id, VERSION + nonce + aead.encrypt(nonce, plain, _aad(label, key_id))

    def open(self, key_id: str | None, blob: bytes, label: TemplateLabel) -> FloatArray:
        """The template, or TemplateUnreadable saying why it cannot be trusted."""
        where = {
            "face_id": str(label.face_id),
            "collection": label.collection,
            "uid": label.uid,
        }
        if key_id is None:
            raise TemplateUnreadable(
                f"face {label.face_id}: stored without encryption (not written by this"
                " facegate's store)",
                metadata={**where, "cause": "plaintext"},
            )
        aead = self._cipher(key_id)
        if aead is None:
            raise TemplateUnreadable(
                f"face {label.face_id}: sealed under key {key_id!r}, which is not configured",
                metadata={**where, "cause": "unknown_key", "key_id": key_id},
            )
        blob = bytes(blob)
        if len(blob) < 1 + NONCE_BYTES + 16 or blob[:1] != VERSION:
            raise TemplateUnreadable(
                f"face {label.face_id}: not a sealed template ({len(blob)} bytes)",
                metadata={**where, "cause": "format"},
            )
        nonce = blob[1 : 1 + NONCE_BYTES]
        try:
            plain = aead.decrypt(nonce, blob[1 + NONCE_BYTES :], _aad(label, key_id))
        except InvalidTag:
            raise TemplateUnreadable(
                f"face {label.face_id}: authentication failed (the row was altered, or its"
                " ciphertext belongs to another face, user, collection or model)",
                metadata={**where, "cause": "authentication", "key_id": key_id},
            ) from None
        if len(plain) % 4:
            raise TemplateUnreadable(
                f"face {label.face_id}: {len(plain)} bytes is not a float32 vector",
                metadata={**where, "cause": "format"},
            )
        return np.frombuffer(plain, dtype="<f4").astype(np.float32)
