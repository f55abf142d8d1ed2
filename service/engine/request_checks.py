"""Argument checks of the engine's requests: every bad value becomes ``InvalidArgument``
naming the field, before any work is done."""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections.abc import Mapping, Sequence

import numpy as np

from service.domain import CollectionKind, CollectionSpec, CollectionUpdate
from service.errors import InvalidArgument
from service.pipeline.quality import QualityLimits

COLLECTION_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
MAX_UID_CHARS = 128
MAX_TOP_K = 100
MAX_ENROLL_IMAGES = 10
MAX_METADATA_KEYS = 32
MAX_METADATA_KEY_CHARS = 64
MAX_METADATA_VALUE_CHARS = 1024
MAX_PAGE_SIZE = 1000


def _bad(field: str, message: str) -> InvalidArgument:
    return InvalidArgument(f"{field}: {message}", metadata={"field": field})


def collection_name(name: object, field: str = "collection") -> str:
    if not isinstance(name, str) or not COLLECTION_NAME.fullmatch(name):
        raise _bad(field, f"must be 1-64 characters of A-Z a-z 0-9 _ . -, got {name!r}")
    return name


def uid(value: object) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_UID_CHARS:
        raise _bad("uid", f"must be 1-{MAX_UID_CHARS} characters")
    if not value.isprintable():
        raise _bad("uid", "must contain printable characters only")
    return value


def top_k(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_TOP_K:
        raise _bad("top_k", f"must be an integer in 1..{MAX_TOP_K}, got {value!r}")
    return value


def image(value: object, field: str = "image") -> bytes:
    if not isinstance(value, bytes | bytearray | memoryview) or len(value) == 0:
        raise _bad(field, "must be non-empty image bytes (JPEG, PNG or WebP)")
    return bytes(value)


def images(values: object) -> list[bytes]:
    if isinstance(values, bytes | str) or not isinstance(values, Sequence):
        raise _bad("images", "must be a list of images")
    if not 1 <= len(values) <= MAX_ENROLL_IMAGES:
        raise _bad("images", f"must hold 1-{MAX_ENROLL_IMAGES} images, got {len(values)}")
    return [image(v, f"images[{i}]") for i, v in enumerate(values)]


def metadata(values: object) -> dict[str, str]:
    if not isinstance(values, Mapping):
        raise _bad("metadata", "must be a map of strings")
    if len(values) > MAX_METADATA_KEYS:
        raise _bad("metadata", f"at most {MAX_METADATA_KEYS} entries")
    out: dict[str, str] = {}
    for k, v in values.items():
        if not isinstance(k, str) or not 1 <= len(k) <= MAX_METADATA_KEY_CHARS:
            raise _bad("metadata", f"keys must be 1-{MAX_METADATA_KEY_CHARS} characters")
        if not isinstance(v, str) or len(v) > MAX_METADATA_VALUE_CHARS:
            raise _bad(
                "metadata",
                f"value of {k!r} must be a string of at most {MAX_METADATA_VALUE_CHARS} characters",
            )
        out[k] = v
    return out


def collection_spec(spec: object) -> CollectionSpec:
    if not isinstance(spec, CollectionSpec):
        raise InvalidArgument("expected a CollectionSpec")
    collection_name(spec.name, "name")
    if not isinstance(spec.kind, CollectionKind):
        raise _bad("kind", f"must be PAY or MEMBER, got {spec.kind!r}")
    _tunables(spec.threshold, spec.margin, spec.hint_required_above)
    _flag(spec.identify_returns_metadata, "identify_returns_metadata")
    return spec


def collection_update(change: object) -> CollectionUpdate:
    """The same checks as ``collection_spec`` for the fields an update sets."""
    if not isinstance(change, CollectionUpdate):
        raise InvalidArgument("expected a CollectionUpdate")
    collection_name(change.name, "name")
    _tunables(change.threshold, change.margin, change.hint_required_above)
    for name in ("enroll_quality", "identify_quality"):
        limits = getattr(change, name)
        if limits is not None and not isinstance(limits, QualityLimits):
            raise _bad(name, "must be QualityLimits")
    if change.require_liveness is not None:
        _flag(change.require_liveness, "require_liveness")
        if change.reset_require_liveness:
            raise _bad(
                "require_liveness", "set require_liveness or reset_require_liveness, not both"
            )
    _flag(change.reset_require_liveness, "reset_require_liveness")
    if change.identify_returns_metadata is not None:
        _flag(change.identify_returns_metadata, "identify_returns_metadata")
    return change


def _tunables(threshold: object, margin: object, hint_required_above: object) -> None:
    if threshold is not None and not _finite_in(threshold, -1.0, 1.0):
        raise _bad("threshold", f"must be a cosine similarity in [-1, 1], got {threshold!r}")
    if margin is not None and not _finite_in(margin, 0.0, 1.0):
        raise _bad("margin", f"must be in [0, 1], got {margin!r}")
    h = hint_required_above
    if h is not None and (isinstance(h, bool) or not isinstance(h, int) or h < 0):
        raise _bad("hint_required_above", f"must be an integer >= 0, got {h!r}")


def _flag(value: object, name: str) -> None:
    if not isinstance(value, bool):
        raise _bad(name, f"must be true or false, got {value!r}")


def _finite_in(x: object, lo: float, hi: float) -> bool:
    return (
        isinstance(x, int | float)
        and not isinstance(x, bool)
        and math.isfinite(x)
        and lo <= x <= hi
    )


def page_size(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_PAGE_SIZE:
        raise _bad("page_size", f"must be an integer in 1..{MAX_PAGE_SIZE}, got {value!r}")
    return value


def encode_page_token(last_uid: str) -> str:
    return base64.urlsafe_b64encode(last_uid.encode()).decode().rstrip("=")


def decode_page_token(token: object) -> str:
    """The last uid of the previous page ("" = from the start)."""
    if not isinstance(token, str):
        raise _bad("page_token", "must be a string")
    if not token:
        return ""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        return uid(raw.decode())
    except (binascii.Error, UnicodeDecodeError, ValueError, InvalidArgument):
        raise _bad("page_token", "is not a token this service issued") from None


MAX_IMPORT_TEMPLATES = 10_000
# Same tolerance as the index's own check: templates are stored and searched as unit vectors.
NORM_TOLERANCE = 1e-3


def templates(vectors: object, count: int, dim: int) -> np.ndarray:
    """An (count, dim) float32 C-contiguous matrix of finite rows, renormalised to unit length
    (a row whose norm is off by more than ``NORM_TOLERANCE`` is refused, not fixed)."""
    if not isinstance(vectors, np.ndarray) or vectors.ndim != 2:
        raise _bad("embeddings", "must be a 2-D array of float32 templates")
    if vectors.shape != (count, dim):
        raise InvalidArgument(
            f"embeddings: expected {count} templates of {dim} values, got shape"
            f" {tuple(vectors.shape)}",
            metadata={"field": "embeddings", "expected_dim": str(dim)},
        )
    out = np.array(vectors, dtype=np.float32, order="C", copy=True)  # never the caller's array
    if not np.isfinite(out).all():
        raise _bad("embeddings", "must be finite (no NaN or infinity)")
    norms = np.linalg.norm(out, axis=1)
    worst = int(np.argmax(np.abs(norms - 1.0)))
    if abs(float(norms[worst]) - 1.0) > NORM_TOLERANCE:
        raise InvalidArgument(
            f"embeddings[{worst}]: must be L2-normalised, norm is {float(norms[worst]):.4f}",
            metadata={"field": "embeddings", "index": str(worst)},
        )
    # Within tolerance is accepted, but the gallery holds exact unit vectors (like the
    # embedder's own output), so a slightly-off norm never shifts a cosine score.
    out /= norms[:, None]
    return out


def import_uids(values: Sequence[object]) -> list[str]:
    if not 1 <= len(values) <= MAX_IMPORT_TEMPLATES:
        raise _bad("templates", f"must hold 1-{MAX_IMPORT_TEMPLATES} templates, got {len(values)}")
    out = [uid(v) for v in values]
    seen: set[str] = set()
    for u in out:
        if u in seen:
            raise InvalidArgument(
                f"templates: uid {u!r} appears more than once", metadata={"field": "uid", "uid": u}
            )
        seen.add(u)
    return out
