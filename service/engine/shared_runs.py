"""Model runs and index searches shared by concurrent requests (micro-batched).

One :class:`MicroBatcher` stacks the chips of concurrent requests into one embedder run;
another groups concurrent searches by gallery into one ``search_partitions`` call (each
query with its own hint bucket, or none).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from index import SearchResult
from service.engine.batching import MicroBatcher
from service.pipeline.analyzer import FaceAnalyzer
from service.pipeline.timing import EMBED, NO_TIMING, SEARCH, StageTimer
from service.pipeline.types import FloatArray, UInt8Array
from service.ports import VectorIndex


@dataclass(frozen=True, slots=True)
class _SearchJob:
    gallery: VectorIndex
    query: FloatArray  # (D,)
    k: int
    partition: str | None


class SharedRuns:
    def __init__(
        self,
        analyzer: FaceAnalyzer,
        *,
        window_ms: float,
        max_batch: int,
        timer: StageTimer = NO_TIMING,
    ) -> None:
        self._analyzer = analyzer
        self._timer = timer
        self._dim = analyzer.embedding_dim
        self._embedder: MicroBatcher[UInt8Array, FloatArray] = MicroBatcher(
            self._embed_batch, window_ms=window_ms, max_batch=max_batch, name="embed"
        )
        self._searcher: MicroBatcher[_SearchJob, SearchResult] = MicroBatcher(
            self._search_batch, window_ms=window_ms, max_batch=max_batch, name="search"
        )

    def embed(self, chips: Sequence[UInt8Array], timeout: float | None) -> list[FloatArray]:
        """One (D,) L2-normalised embedding per (S, S, 3) chip."""
        return self._embedder.submit_many(chips, timeout)

    def search(
        self,
        gallery: VectorIndex,
        query: FloatArray,
        k: int,
        partition: str | None,
        timeout: float | None,
    ) -> SearchResult:
        return self._searcher.submit(_SearchJob(gallery, query, k, partition), timeout)

    def counters(self) -> dict[str, int]:
        return {
            "embed_batches": self._embedder.batches_run,
            "embed_items": self._embedder.items_run,
            "search_batches": self._searcher.batches_run,
            "search_items": self._searcher.items_run,
        }

    def close(self) -> None:
        self._embedder.close()
        self._searcher.close()

    def _embed_batch(self, chips: list[UInt8Array]) -> list[FloatArray]:
        self._timer.batch(EMBED, len(chips))
        with self._timer.stage(EMBED):
            out = np.asarray(self._analyzer.embed_chips(np.stack(chips)), dtype=np.float32)
        if out.shape != (len(chips), self._dim) or not np.isfinite(out).all():
            raise RuntimeError(f"embedder returned shape {out.shape} or non-finite values")
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        if (norms < 1e-6).any():
            raise RuntimeError("embedder returned a zero vector")
        # Re-normalise: the index checks norms to 1e-3, and a drifting model must not crash it.
        return list(np.ascontiguousarray(out / norms, dtype=np.float32))

    def _search_batch(self, jobs: list[_SearchJob]) -> list[SearchResult]:
        self._timer.batch(SEARCH, len(jobs))
        with self._timer.stage(SEARCH):
            return self._search_groups(jobs)

    @staticmethod
    def _search_groups(jobs: list[_SearchJob]) -> list[SearchResult]:
        out: list[SearchResult] = [SearchResult()] * len(jobs)
        groups: dict[int, list[int]] = {}
        for i, job in enumerate(jobs):
            groups.setdefault(id(job.gallery), []).append(i)
        for idx in groups.values():
            gallery = jobs[idx[0]].gallery
            queries = np.ascontiguousarray(np.stack([jobs[i].query for i in idx]), np.float32)
            k = max(jobs[i].k for i in idx)
            results = gallery.search_partitions(queries, k, [jobs[i].partition for i in idx])
            for i, res in zip(idx, results, strict=True):
                kk = jobs[i].k
                short = len(res) <= kk
                out[i] = (
                    res
                    if short
                    else SearchResult(res.uids[:kk], res.scores[:kk], res.face_ids[:kk])
                )
        return out
