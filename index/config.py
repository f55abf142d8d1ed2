"""Index kinds and their tuning knobs, plus the rule for picking one by size.

Which kind to use (measured on 2 EPYC cores, see benchmarks/README.md):

* up to ~200k faces: ``flat`` (exact). A single query scans the gallery at memory
  bandwidth (~36 ms for 1M x 128 fp32 at 14 GB/s, ~7 ms at 200k), recall is 1 by
  definition.
* 200k - 1M+ faces: ``flat`` while single-query latency is acceptable, otherwise
  ``hnsw`` (10-100x faster per query, ~2.5x the memory of flat, a slow one-off
  build that the snapshot keeps).
* memory-tight or 10M-scale exhaustive search: ``sq8`` / ``fp16`` quarter or
  halve the bytes scanned while keeping near-exact recall (results are always
  re-scored in fp32).
* ``ivf`` is for huge galleries with batch traffic; it needs training data
  (>= ``min_accel_size`` faces) and is retrained when the gallery outgrows it.

A hinted (partition) search is always exact over the bucket, whatever the kind.

HNSW parameters. ``hnsw_ef_construction`` is 128: at 64 (with M = 32) the graph
leaves some faces nearly unreachable, so recall@1 plateaus below 1 whatever the
efSearch (0.9985 at 100k even at efSearch 256-384, 0.9585 at 1M with 128); at
96-128 it reaches 1.0 at 100k from efSearch 96 / 64, for 1.3x / 1.7x the build
CPU (1M x 128 at 64 took 212 s on 2 cores, so ~6 min at 128).
``hnsw_ef_search`` 0 (the default) selects the automatic rule
``efSearch = max(64, 8 * kf, 0.5 * sqrt(n))`` (capped at 4096), where n is the
graph size and kf = k x (most faces of one UID) the candidates fetched:
80 at 10k, 158 at 100k, 500 at 1M, 1581 at 10M for a top-5 over 2 faces per
UID. Recall at a fixed efSearch falls as the graph grows, while the exact scan
it replaces grows with n, so a sqrt(n) efSearch keeps recall up and the
speed-up over exact still growing (~sqrt(n) / log n).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from enum import Enum

# The automatic efSearch rule (IndexConfig.hnsw_ef_for): max(EF_MIN,
# EF_PER_CANDIDATE * kf, EF_SQRT_SCALE * sqrt(n)), capped at EF_MAX.
EF_MIN = 64
EF_PER_CANDIDATE = 8
EF_SQRT_SCALE = 0.5
EF_MAX = 4096


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
    hnsw_ef_construction: int = 128
    # 0 = automatic: hnsw_ef_for(n, kf) below. A positive value fixes efSearch
    # (still raised to the number of candidates fetched, as FAISS requires).
    hnsw_ef_search: int = 0
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
        if self.hnsw_m < 2 or self.hnsw_ef_construction < 1 or self.hnsw_ef_search < 0:
            raise ValueError("HNSW parameters must be positive (hnsw_ef_search 0 = automatic)")
        if self.ivf_nlist < 0 or self.ivf_nprobe < 1:
            raise ValueError("IVF parameters must be positive")
        if self.rerank_factor < 1 or self.parallel_batch_min < 1 or self.batch_threads < 1:
            raise ValueError("rerank_factor, parallel_batch_min and batch_threads must be >= 1")
        if not 0.0 < self.rebuild_dead_fraction <= 10.0:
            raise ValueError("rebuild_dead_fraction must be in (0, 10]")

    def hnsw_ef_for(self, n: int, kf: int) -> int:
        """efSearch for a graph of `n` faces when `kf` candidates are fetched.

        The automatic rule (see the module docstring) grows with sqrt(n): recall
        of a fixed efSearch falls as the graph grows (0.999 at 100k but 0.9585 at
        1M with efSearch 128 on face-ID queries), while an exact scan grows with n,
        so the speed-up over exact still grows with sqrt(n). At least
        EF_PER_CANDIDATE * kf: a deeper top-k (more faces per UID, larger k)
        needs a proportionally larger candidate list.
        """
        if self.hnsw_ef_search:
            return max(self.hnsw_ef_search, kf)
        auto = round(EF_SQRT_SCALE * math.sqrt(max(n, 1)))
        return max(EF_MIN, EF_PER_CANDIDATE * kf, min(auto, EF_MAX))

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
