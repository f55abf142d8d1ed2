"""FAISS threading policy.

Two process-wide FAISS behaviours matter on a server:

* OpenMP team size. A single query split across 2 threads is ~2x *slower* than
  one thread here (the scan is memory-bound and the threads fight over the
  heap merge). ``omp_set_num_threads`` sets libgomp's per-thread ICV (OpenMP's
  ``nthreads-var`` is per data environment), so we set it on the calling thread
  right before every FAISS call: single queries and small batches run with one
  thread, and parallelism comes from serving many requests at once. Only large
  batches get ``batch_threads``, and only one such batch at a time (a
  non-blocking slot), which caps the total at server threads + cores - 1 and
  avoids oversubscription.
* ``distance_compute_blas_threshold``. In faiss 1.8+ the BLAS path is taken when
  ``n_queries * dim >= threshold`` and the default (128000) keeps batches of
  up to ~1000 queries at 128-d on the slow per-query path. The crossover on
  this machine is ~4-8 queries, so we set 1024 once: BLAS from 8 queries at
  128-d and from 2 queries at 512-d, never for a single query up to 1023-d.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import faiss

BLAS_THRESHOLD = 1024

_config_lock = threading.Lock()
_state = {"configured": False}
_parallel_slot = threading.Lock()


def configure_faiss() -> None:
    """Apply the process-wide FAISS settings once (idempotent)."""
    with _config_lock:
        if not _state["configured"]:
            faiss.cvar.distance_compute_blas_threshold = BLAS_THRESHOLD
            _state["configured"] = True


@contextmanager
def omp_threads(n_queries: int, parallel_batch_min: int, batch_threads: int) -> Iterator[int]:
    """Set the calling thread's OpenMP team size for one FAISS call; yield it."""
    if n_queries >= parallel_batch_min and batch_threads > 1 and _parallel_slot.acquire(
        blocking=False
    ):
        try:
            faiss.omp_set_num_threads(batch_threads)
            yield batch_threads
        finally:
            faiss.omp_set_num_threads(1)
            _parallel_slot.release()
    else:
        faiss.omp_set_num_threads(1)
        yield 1
