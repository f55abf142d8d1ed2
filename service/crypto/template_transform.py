"""Revocable templates (ISO/IEC 24745 renewability): a secret rotation of embedding space.

A revocable collection stores ``R x`` instead of the model's embedding ``x``, where ``R`` is
a random orthogonal matrix drawn from a per-collection secret. Probes are rotated the same
way before matching, so every cosine similarity is exactly preserved
(``(R x)·(R q) = x·q``): accuracy does not change. A template set that leaks is useless
elsewhere: under another collection's (or generation's) ``R'`` the same face scores like a
stranger, ``(R' x)·(R y)`` being the cosine of two unrelated directions (~N(0, 1/D)).

Revocation re-issues every template without the faces: rotating a collection to
generation g+1 maps each stored ``R_g x`` to ``R_{g+1} R_g^T (R_g x) = R_{g+1} x``; the old
generation's salt is then deleted, so even the master key no longer yields ``R_g``.

The matrix: Gaussian entries from SHAKE-256 of the collection secret (Box-Muller; NumPy's
generators are not promised to give the same stream across versions, this is), then QR
with the sign of R's diagonal folded into Q, which makes Q Haar-distributed (Mezzadri 2007).
Secret = HMAC-SHA256(master key, collection id | generation | random salt kept in the store).
"""

from __future__ import annotations

import hashlib
import hmac
import struct

import numpy as np
import numpy.typing as npt

from service.pipeline.types import FloatArray

SALT_BYTES = 16

F64 = npt.NDArray[np.float64]


def collection_secret(master: bytes, collection_id: int, generation: int, salt: bytes) -> bytes:
    message = b"facegate/transform/v1" + struct.pack("<qq", collection_id, generation) + salt
    return hmac.new(master, message, hashlib.sha256).digest()


def gaussian(seed: bytes, count: int) -> F64:
    """``count`` standard normal values, a pure function of ``seed`` on every platform."""
    pairs = (count + 1) // 2
    words = np.frombuffer(hashlib.shake_256(seed).digest(16 * pairs), dtype="<u8")
    # 53 random bits -> uniform in (0, 1), never 0 (log) nor 1.
    u = ((words >> np.uint64(11)).astype(np.float64) + 0.5) / float(1 << 53)
    u1, u2 = u[0::2], u[1::2]
    radius = np.sqrt(-2.0 * np.log(u1))
    z = np.empty(2 * pairs, dtype=np.float64)
    z[0::2] = radius * np.cos(2.0 * np.pi * u2)
    z[1::2] = radius * np.sin(2.0 * np.pi * u2)
    return z[:count]


def orthogonal_matrix(seed: bytes, dim: int) -> F64:
    """A Haar-random orthogonal ``dim`` x ``dim`` matrix determined by ``seed``."""
    if dim < 1:
        raise ValueError(f"dimension must be positive, got {dim}")
    q, r = np.linalg.qr(gaussian(seed, dim * dim).reshape(dim, dim))
    signs = np.sign(np.diag(r))
    signs[signs == 0] = 1.0
    return np.ascontiguousarray(q * signs)


class OrthogonalTransform:
    """``R`` of one collection generation; applies to (D,) or (N, D) float32 embeddings."""

    def __init__(self, matrix: F64, generation: int) -> None:
        self.matrix = matrix
        self.generation = generation

    @classmethod
    def derive(
        cls, master: bytes, collection_id: int, generation: int, salt: bytes, dim: int
    ) -> OrthogonalTransform:
        secret = collection_secret(master, collection_id, generation, salt)
        return cls(orthogonal_matrix(secret, dim), generation)

    @property
    def dim(self) -> int:
        return int(self.matrix.shape[0])

    def apply(self, vectors: FloatArray) -> FloatArray:
        return _unit_float32(np.asarray(vectors, dtype=np.float64) @ self.matrix.T)

    def reissue_from(self, old: OrthogonalTransform, vectors: FloatArray) -> FloatArray:
        """Templates made under ``old`` re-issued under this transform: R_new R_old^T v."""
        combined = self.matrix @ old.matrix.T
        return _unit_float32(np.asarray(vectors, dtype=np.float64) @ combined.T)


def _unit_float32(v: F64) -> FloatArray:
    # Rotations keep norms; renormalising absorbs float rounding so stored templates stay
    # exact unit vectors, as the gallery expects.
    norms = np.linalg.norm(v, axis=-1, keepdims=True)
    out: FloatArray = (v / np.where(norms > 0, norms, 1.0)).astype(np.float32)
    return out
