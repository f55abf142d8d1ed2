"""Index kinds and their tuning knobs, plus the rule for picking one by size.

Which kind to use (measured on 2 EPYC cores, see benchmarks/README.md):

* up to ~200k faces: ``flat`` (exact). A single query scans the gallery at memory
  bandwidth (~30 ms for 1M x 128 fp32, ~6 ms at 200k), recall is 1 by definition.
* 200k - 1M faces: ``flat`` while single-query latency is acceptable, otherwise
  ``hnsw`` (recall@1 ~0.99+ on face-ID queries, 10-100x faster per query, but
  ~1.5x the memory and a slow build).
* above ~1M faces or when memory is tight: ``hnsw``; ``sq8`` / ``fp16`` halve or
  quarter the bytes scanned by exhaustive search while keeping near-exact recall
  (results are always re-scored in fp32).
* ``ivf`` is for huge galleries with batch traffic; it needs training data
  (>= ``min_accel_size`` faces) and is retrained when the gallery outgrows it.

A hinted (partition) search is always exact over the bucket, whatever the kind.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from enum import Enum


class IndexKind(str, Enum):  # noqa: UP042 - the brief asks for a str Enum
    """Which FAISS structure accelerates the unhinted 1:N search."""

    FLAT = "flat"
    HNSW = "hnsw"
    IVF = "ivf"
    SQ8 = "sq8"
    FP16 = "fp16"


def _cpu_count() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)


@dataclass(frozen=True)
class IndexConfig:
    """Configuration of one gallery. Frozen: a gallery never changes kind in place."""

    kind: IndexKind = IndexKind.FLAT
    # Approximate kinds only build their FAISS structure once the gallery holds
    # this many faces; below it the exact scan is both faster and exact.
    min_accel_size: int = 10_000
    hnsw_m: int = 32
    hnsw_ef_construction: int = 64
    hnsw_ef_search: int = 128
    # 0 = choose from the size at training time (~4*sqrt(n)).
    ivf_nlist: int = 0
    ivf_nprobe: int = 16
    # Approximate candidates are re-scored exactly; fetch this many times k*faces.
    rerank_factor: int = 4
    # Rebuild the approximate structure when removed-but-still-indexed faces
    # exceed this fraction of live faces (HNSW cannot delete in place).
    rebuild_dead_fraction: float = 0.3
    # Batches of at least this many queries may use several OpenMP threads.
    parallel_batch_min: int = 64
    batch_threads: int = field(default_factory=_cpu_count)

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", IndexKind(self.kind))
        if self.min_accel_size < 1:
            raise ValueError("min_accel_size must be >= 1")
        if self.hnsw_m < 2 or self.hnsw_ef_construction < 1 or self.hnsw_ef_search < 1:
            raise ValueError("HNSW parameters must be positive")
        if self.ivf_nlist < 0 or self.ivf_nprobe < 1:
            raise ValueError("IVF parameters must be positive")
        if self.rerank_factor < 1 or self.parallel_batch_min < 1 or self.batch_threads < 1:
            raise ValueError("rerank_factor, parallel_batch_min and batch_threads must be >= 1")
        if not 0.0 < self.rebuild_dead_fraction <= 10.0:
            raise ValueError("rebuild_dead_fraction must be in (0, 10]")

    def to_dict(self) -> dict[str, object]:
        return {
            "kind": self.kind.value,
            "min_accel_size": self.min_accel_size,
            "hnsw_m": self.hnsw_m,
            "hnsw_ef_construction": self.hnsw_ef_construction,
            "hnsw_ef_search": self.hnsw_ef_search,
            "ivf_nlist": self.ivf_nlist,
            "ivf_nprobe": self.ivf_nprobe,
            "rerank_factor": self.rerank_factor,
            "rebuild_dead_fraction": self.rebuild_dead_fraction,
            "parallel_batch_min": self.parallel_batch_min,
            "batch_threads": self.batch_threads,
        }

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> IndexConfig:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)  # type: ignore[arg-type]


def recommended_kind(n_faces: int, memory_tight: bool = False) -> IndexKind:
    """The documented size rule (see module docstring)."""
    if n_faces <= 200_000:
        return IndexKind.FLAT
    if memory_tight:
        return IndexKind.SQ8
    return IndexKind.HNSW
