"""Approximate FAISS structures behind the non-flat index kinds.

An accelerator only proposes candidates: its labels are *slots* (insertion
order, 0..ntotal-1) which the gallery maps to live rows, and the gallery
re-scores every candidate exactly against its fp32 row store. So an
accelerator may hold stale entries for removed faces (HNSW cannot delete in
place) and may be lossy (sq8/fp16) without the gallery ever returning a removed
face or an approximate score.

Kinds that store the vectors in fp32 (HNSW-flat, IVF-flat) already return exact
inner products, so their candidates need no re-scoring and no over-fetching
(``exact_scores``); only the quantised kinds (sq8, fp16) do.
"""

from __future__ import annotations

import math
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
        self._params: dict[tuple[int, int], Any] = {}

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

    def add(self, x: F32Array) -> None:
        if x.shape[0]:
            self.index.add(x)
            self._ntotal = int(self.index.ntotal)

    def search(self, q: F32Array, kf: int, config: IndexConfig) -> tuple[F32Array, I64Array]:
        """Approximate top-kf slots per query (-1 where fewer were found)."""
        kf = max(1, min(kf, self._ntotal))
        dist, slots = self.index.search(q, kf, params=self._search_params(kf, config))
        return dist, slots

    def _search_params(self, kf: int, config: IndexConfig) -> Any:
        if self.kind is IndexKind.HNSW:
            ef = max(config.hnsw_ef_search, kf)
            key = (0, ef)
        elif self.kind is IndexKind.IVF:
            key = (1, config.ivf_nprobe)
        else:
            return None
        params = self._params.get(key)
        if params is None:
            if self.kind is IndexKind.HNSW:
                params = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]
                params.efSearch = key[1]
            else:
                params = faiss.SearchParametersIVF()
                params.nprobe = key[1]
            if len(self._params) > 64:  # ef follows kf, which follows the data
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
        return per_vector * self.ntotal

    def serialize(self) -> npt.NDArray[np.uint8]:
        blob: npt.NDArray[np.uint8] = faiss.serialize_index(self.index)
        return blob

    @classmethod
    def deserialize(
        cls, kind: IndexKind, blob: npt.NDArray[np.uint8], trained_size: int
    ) -> Accelerator:
        return cls(faiss.deserialize_index(blob), kind, trained_size)
