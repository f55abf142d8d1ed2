"""facegate matching core: 1:N face search over numpy arrays (no gRPC, images or SQL).

See :class:`index.gallery.Gallery` for the API and :mod:`index.config` for the
rule on which index kind to use at which size.
"""

from index.config import IndexConfig, IndexKind, recommended_kind
from index.errors import (
    DimensionMismatch,
    DuplicateId,
    GalleryError,
    InvalidVectors,
    SnapshotCorrupt,
    UnknownId,
)
from index.gallery import Gallery
from index.results import SearchResult
from index.snapshot import SnapshotCodec, SnapshotData

__all__ = [
    "DimensionMismatch",
    "DuplicateId",
    "Gallery",
    "GalleryError",
    "IndexConfig",
    "IndexKind",
    "InvalidVectors",
    "SearchResult",
    "SnapshotCodec",
    "SnapshotCorrupt",
    "SnapshotData",
    "UnknownId",
    "recommended_kind",
]
