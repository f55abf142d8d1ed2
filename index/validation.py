"""Boundary checks: everything entering the gallery is verified here, once.

Errors name the offending argument and row so a bad enrolment is easy to find.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from index.errors import DimensionMismatch, DuplicateId, InvalidVectors

NORM_TOLERANCE = 1e-3

F32Array = npt.NDArray[np.float32]
I64Array = npt.NDArray[np.int64]


def check_matrix(x: object, dim: int, name: str) -> F32Array:
    """A (n, dim) float32 C-contiguous finite matrix; returned as-is (no copy)."""
    if not isinstance(x, np.ndarray):
        raise InvalidVectors(f"{name} must be a numpy array, got {type(x).__name__}")
    if x.dtype != np.float32:
        raise InvalidVectors(f"{name} must be float32, got {x.dtype}")
    if x.ndim != 2:
        raise InvalidVectors(f"{name} must be 2-D (n, {dim}), got shape {x.shape}")
    if x.shape[1] != dim:
        raise DimensionMismatch(f"{name} has dimension {x.shape[1]}, gallery has {dim}")
    if not x.flags.c_contiguous:
        raise InvalidVectors(f"{name} must be C-contiguous (use np.ascontiguousarray)")
    if x.size and not np.isfinite(x).all():
        bad = int(np.flatnonzero(~np.isfinite(x).all(axis=1))[0])
        raise InvalidVectors(f"{name} row {bad} contains NaN or inf")
    return x


def check_normalised(x: F32Array, name: str) -> None:
    """Cosine similarity is computed as an inner product, so norms must be 1."""
    if x.shape[0] == 0:
        return
    norms = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64))
    off = np.abs(norms - 1.0) > NORM_TOLERANCE
    if off.any():
        bad = int(np.flatnonzero(off)[0])
        raise InvalidVectors(
            f"{name} row {bad} has L2 norm {norms[bad]:.6f}; vectors must be L2-normalised"
        )


def check_ids(
    ids: object, n: int | None, name: str = "face_ids", unique: bool = True
) -> I64Array:
    """A 1-D int64 array of non-negative ids (-1 is FAISS's 'none'), unique if asked."""
    if not isinstance(ids, np.ndarray):
        raise InvalidVectors(f"{name} must be a numpy array, got {type(ids).__name__}")
    if ids.dtype != np.int64:
        raise InvalidVectors(f"{name} must be int64, got {ids.dtype}")
    if ids.ndim != 1:
        raise InvalidVectors(f"{name} must be 1-D, got shape {ids.shape}")
    if n is not None and ids.shape[0] != n:
        raise InvalidVectors(f"{name} has {ids.shape[0]} entries, expected {n}")
    if ids.size and int(ids.min()) < 0:
        raise InvalidVectors(f"{name} must be >= 0 (-1 means 'no face' in results)")
    if unique and ids.size > 1:
        uniq, counts = np.unique(ids, return_counts=True)
        if uniq.shape[0] != ids.shape[0]:
            raise DuplicateId(f"{name} contains duplicates: {uniq[counts > 1][:5].tolist()}")
    return ids


def check_labels(values: object, n: int, name: str, allow_none: bool) -> list[str | None]:
    """UIDs / partition keys: a sequence of n non-empty str (or None if allowed)."""
    if isinstance(values, str | bytes) or not isinstance(values, Sequence | np.ndarray):
        raise InvalidVectors(f"{name} must be a sequence of str")
    out: list[str | None] = list(values)
    if len(out) != n:
        raise InvalidVectors(f"{name} has {len(out)} entries, expected {n}")
    for i, v in enumerate(out):
        if v is None and allow_none:
            continue
        if not isinstance(v, str) or not v:
            raise InvalidVectors(f"{name}[{i}] must be a non-empty str, got {v!r}")
    return out


_INTS = (int, np.integer)
# Builtin dtypes are singletons, so an identity test settles the common case.
_F32 = np.dtype(np.float32)


def check_k(k: object) -> int:
    if type(k) is int and k >= 1:  # the hot path: a plain positive int
        return k
    if isinstance(k, bool) or not isinstance(k, _INTS) or int(k) < 1:
        raise InvalidVectors(f"k must be a positive int, got {k!r}")
    return int(k)


# Bounds on the squared norm equivalent to |norm - 1| <= NORM_TOLERANCE, pulled in
# by a hair so that whatever the fast check accepts the float64 check accepts too.
_SQ_LO = (1.0 - NORM_TOLERANCE) ** 2 + 1e-6
_SQ_HI = (1.0 + NORM_TOLERANCE) ** 2 - 1e-6


def check_queries(x: object, dim: int, name: str = "queries") -> F32Array:
    """check_matrix + check_normalised in one pass for the search hot path.

    A single float32 sum of squares per row rejects NaN / inf (their squares are
    NaN or inf, which fail both bounds) and unnormalised rows; only a row that
    fails it goes through the full checks, which produce the precise message
    (and are the authority if the fast bounds were too strict at the margin).
    """
    if not (
        isinstance(x, np.ndarray)
        and (x.dtype is _F32 or x.dtype == np.float32)
        and x.ndim == 2
        and x.shape[1] == dim
        and x.flags.c_contiguous
    ):
        return _check_queries_slow(x, dim, name)
    if x.shape[0] == 1:
        # vdot on the (1, dim) array itself: no row view, the cheapest dot numpy has.
        sq = float(np.vdot(x, x))
        if _SQ_LO <= sq <= _SQ_HI:
            return x
    elif x.shape[0]:
        sqs = np.einsum("ij,ij->i", x, x)
        if ((sqs >= _SQ_LO) & (sqs <= _SQ_HI)).all():
            return x
    else:
        return x
    return _check_queries_slow(x, dim, name)


def _check_queries_slow(x: object, dim: int, name: str) -> F32Array:
    q = check_matrix(x, dim, name)
    check_normalised(q, name)
    return q
