"""Exceptions raised by the matching core.

Every error derives from :class:`GalleryError` so the service can map the whole
family to one gRPC status, and the validation errors also derive from
``ValueError`` / ``KeyError`` so generic callers keep working.
"""

from __future__ import annotations


class GalleryError(Exception):
    """Base class of every error raised by ``index``."""


class InvalidVectors(GalleryError, ValueError):
    """Vectors, ids or arguments fail the boundary checks (dtype, shape, NaN, norm...)."""


class DimensionMismatch(InvalidVectors):
    """Vectors have a different dimension than the gallery."""


class DuplicateId(GalleryError, ValueError):
    """A face id occurs twice in a batch or is already enrolled."""


class UnknownId(GalleryError, KeyError):
    """A face id or UID that the gallery does not hold."""


class SnapshotCorrupt(GalleryError):
    """A snapshot file is truncated, fails its checksum or cannot be parsed."""
