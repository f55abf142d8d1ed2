"""Approximate FAISS structures behind the non-flat index kinds.

An accelerator only proposes candidates: its labels are *slots* (insertion
order, 0..ntotal-1) which the gallery maps to faces. It may hold stale entries
for removed faces (HNSW cannot delete in place): those slots are cleared in a
bitmap that FAISS checks during the search (``IDSelectorBitmap`` in the search
parameters), so a removed face is never proposed and nothing is over-fetched
to make room for stale entries. A quantised accelerator (sq8/fp16) is lossy, so
the gallery re-scores its candidates exactly against the fp32 row store.

Kinds that store the vectors in fp32 (HNSW-flat, IVF-flat) already return exact
inner products, so their candidates need no re-scoring and no over-fetching
(``exact_scores``); only the quantised kinds (sq8, fp16) do.
"""

from __future__ import annotations

import math
import threading
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt

from index.config import IndexConfig, IndexKind
from index.validation import F32Array, I64Array

TRAIN_SAMPLE_PER_LIST = 50
MAX_SQ_TRAIN = 100_000


def _ivf_nlist(config: IndexConfig, n: int) -> int:
    if config.ivf_nlist:
        return config.ivf_nlist
    # ~2 sqrt(n) lists of ~sqrt(n)/2 vectors; FAISS wants >= 39 training points per
    # list and k-means cost grows with lists x samples, so both stay modest.
    return max(1, min(int(2 * math.sqrt(n)), n // TRAIN_SAMPLE_PER_LIST))


def _sample(x: F32Array, m: int, seed: int = 1234) -> F32Array:
    if x.shape[0] <= m:
        return x
    rows = np.sort(np.random.default_rng(seed).choice(x.shape[0], size=m, replace=False))
    return np.ascontiguousarray(x[rows])


def set_bits(bits: npt.NDArray[np.uint8], start: int, end: int) -> None:
    """Set bits start..end-1 of a little-endian bitmap (FAISS's IDSelectorBitmap layout)."""
    if start >= end:
        return
    first, last = start >> 3, (end - 1) >> 3
    low = (0xFF << (start & 7)) & 0xFF
    high = (1 << (((end - 1) & 7) + 1)) - 1
    if first == last:
        bits[first] |= np.uint8(low & high)
        return
    bits[first] |= np.uint8(low)
    bits[first + 1 : last] = 0xFF
    bits[last] |= np.uint8(high)


class _Buffers(threading.local):
    """Per-thread output arrays for single-query searches (readers run in parallel)."""

    def __init__(self) -> None:
        self.cap = 0
        self.dist: F32Array = np.empty(0, dtype=np.float32)
        self.slots: I64Array = np.empty(0, dtype=np.int64)
        self.dist_ptr: Any = None
        self.slots_ptr: Any = None

    def ensure(self, k: int) -> None:
        if k > self.cap:
            self.cap = max(k, 64)
            self.dist = np.empty(self.cap, dtype=np.float32)
            self.slots = np.empty(self.cap, dtype=np.int64)
            self.dist_ptr = faiss.swig_ptr(self.dist)
            self.slots_ptr = faiss.swig_ptr(self.slots)


class Accelerator:
    """One trained/built FAISS index of a given kind; not thread-safe for writes."""

    # faiss ships partial type stubs; the SWIG objects are handled as Any here.
    def __init__(self, index: Any, kind: IndexKind, trained_size: int) -> None:
        self.index = index
        self.kind = kind
        # Size of the gallery when this structure was trained: IVF is retrained
        # once the gallery outgrows it by a large factor.
        self.trained_size = trained_size
        self.exact_scores = kind in (IndexKind.HNSW, IndexKind.IVF)
        # ntotal through SWIG and a fresh SearchParameters object cost several
        # microseconds per query; both are cached (params are read-only in search).
        self._ntotal = int(index.ntotal)
        self._params: dict[int, Any] = {}
        # Live-slot bitmap (bit s of byte s // 8, little-endian: FAISS's layout).
        self._live: npt.NDArray[np.uint8] = np.zeros(0, dtype=np.uint8)
        self._selector: Any = None
        self._dead = 0
        self._marked = 0  # slots below this have had their live bit set
        self._buffers = _Buffers()
        self._grow_live(self._ntotal)

    @classmethod
    def build(cls, kind: IndexKind, dim: int, config: IndexConfig, data: F32Array) -> Accelerator:
        """Create, train and fill an index from `data` (slots 0..len-1)."""
        ip = faiss.METRIC_INNER_PRODUCT
        index: Any
        if kind is IndexKind.HNSW:
            index = faiss.IndexHNSWFlat(dim, config.hnsw_m, ip)
            index.hnsw.efConstruction = config.hnsw_ef_construction
        elif kind is IndexKind.IVF:
            nlist = _ivf_nlist(config, data.shape[0])
            quantizer = faiss.IndexFlatIP(dim)
            ivf = faiss.IndexIVFFlat(quantizer, dim, nlist, ip)
            ivf.cp.spherical = True  # centroids of unit vectors, renormalised
            ivf.train(_sample(data, TRAIN_SAMPLE_PER_LIST * nlist))
            index = ivf  # faiss's wrapper keeps a reference to the quantizer
        elif kind in (IndexKind.SQ8, IndexKind.FP16):
            qtype = (
                faiss.ScalarQuantizer.QT_8bit
                if kind is IndexKind.SQ8
                else faiss.ScalarQuantizer.QT_fp16
            )
            index = faiss.IndexScalarQuantizer(dim, qtype, ip)
            index.train(_sample(data, MAX_SQ_TRAIN))
        else:
            raise ValueError(f"no accelerator for kind {kind}")
        acc = cls(index, kind, data.shape[0])
        acc.add(data)
        return acc

    @property
    def ntotal(self) -> int:
        return self._ntotal

    @property
    def dead_slots(self) -> int:
        """Slots of removed faces still inside the FAISS structure."""
        return self._dead

    def add(self, x: F32Array) -> None:
        if x.shape[0]:
            self.index.add(x)
            self._ntotal = int(self.index.ntotal)
            self._grow_live(self._ntotal)

    def kill(self, slot: int) -> None:
        """Mark a slot dead: FAISS will never propose it again (writers only)."""
        byte, bit = slot >> 3, 1 << (slot & 7)
        if self._live[byte] & bit:
            self._live[byte] &= ~np.uint8(bit)
            self._dead += 1

    def set_live(self, live_slots: I64Array) -> None:
        """Mark exactly `live_slots` live (restoring a snapshot)."""
        flags = np.zeros(self._live.shape[0] * 8, dtype=bool)
        flags[live_slots] = True
        self._live[:] = np.packbits(flags, bitorder="little")
        self._dead = self._ntotal - int(np.unique(live_slots).shape[0])

    def search(self, q: F32Array, kf: int, param: int) -> tuple[F32Array, I64Array]:
        """Approximate top-kf live slots per query (-1 where fewer were found).

        `param` is efSearch (HNSW) or nprobe (IVF); ignored by the scalar quantisers.
        """
        kf = max(1, min(kf, self._ntotal))
        dist, slots = self.index.search(q, kf, params=self._search_params(param))
        return dist, slots

    def search_one(self, q: F32Array, kf: int, param: int) -> tuple[F32Array, I64Array]:
        """search() for one (1, dim) query, into this thread's reusable buffers.

        Calls FAISS's C entry point directly: the Python wrapper's argument
        handling and two fresh output arrays cost ~5 us, which is a visible
        share of a 0.2 ms HNSW search. The returned arrays are views that the
        next search_one() on the same thread overwrites.
        """
        kf = max(1, min(kf, self._ntotal))
        buf = self._buffers
        buf.ensure(kf)
        self.index.search_c(1, faiss.swig_ptr(q), kf, buf.dist_ptr, buf.slots_ptr,
                            self._search_params(param))
        return buf.dist[:kf], buf.slots[:kf]

    def _grow_live(self, total: int) -> None:
        """Make room for `total` slots and mark the ones added since last time live."""
        need = (total + 7) >> 3
        old = self._live
        if need > old.shape[0]:
            # Amortised growth; the selector points at the array, so it is
            # replaced (and the cached parameters with it) whenever the array is.
            live = np.zeros(max(need, old.shape[0] * 3 // 2, 128), dtype=np.uint8)
            live[: old.shape[0]] = old
            self._live = live
            self._selector = faiss.IDSelectorBitmap(live.shape[0], faiss.swig_ptr(live))
            self._params.clear()
        set_bits(self._live, self._marked, total)
        self._marked = total

    def _search_params(self, param: int) -> Any:
        """Cached FAISS search parameters; the live-slot selector only once needed."""
        key = param if self._dead else -param - 1
        params = self._params.get(key)
        if params is None:
            if self.kind is IndexKind.HNSW:
                params = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]
                params.efSearch = param
            elif self.kind is IndexKind.IVF:
                params = faiss.SearchParametersIVF()
                params.nprobe = param
            else:
                params = faiss.SearchParameters()
            if self._dead:
                params.sel = self._selector
            if len(self._params) > 64:  # ef follows kf and n, which follow the data
                self._params.clear()
            self._params[key] = params
        return params

    def memory_bytes(self) -> int:
        """Estimated bytes held by the FAISS structure (vectors + links / codes)."""
        d = int(self.index.d)
        if self.kind is IndexKind.HNSW:
            # level-0 links are int32, 2*M per vector; upper levels add ~1/M of that.
            links = int(self.index.hnsw.nb_neighbors(0))
            per_vector = 4 * d + 4 * links + 8
        elif self.kind is IndexKind.IVF:
            per_vector = 4 * d + 8
        elif self.kind is IndexKind.SQ8:
            per_vector = d
        else:
            per_vector = 2 * d
        return per_vector * self.ntotal + self._live.nbytes

    def serialize(self) -> npt.NDArray[np.uint8]:
        blob: npt.NDArray[np.uint8] = faiss.serialize_index(self.index)
        return blob

    @classmethod
    def deserialize(
        cls, kind: IndexKind, blob: npt.NDArray[np.uint8], trained_size: int
    ) -> Accelerator:
        return cls(faiss.deserialize_index(blob), kind, trained_size)
