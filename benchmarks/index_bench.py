#!/usr/bin/env python
"""Matching-core benchmark: facegate's Gallery vs raw FAISS, numpy, hnswlib, usearch.

All engines run in one process on the same clustered synthetic face data
(identities inside demographic-like clusters, 2 enrolled faces per identity;
genuine queries are a new noisy "photo" of an enrolled identity, impostor
queries are unenrolled identities). Reports per (size, dim, engine): build
time, memory, single-query p50/p99, batch-64/256 throughput, recall@1 against
exact search on genuine queries, and (facegate) hinted-search latency with
10,000 phone-number buckets. Ends with the issue-3 target ratios.

    python benchmarks/index_bench.py --sizes 10000,100000,1000000 --dims 128,512 --json
    python benchmarks/index_bench.py --quick
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from index import Gallery, IndexConfig, IndexKind
from index.threads import BLAS_THRESHOLD, configure_faiss

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]
K = 5
BUCKETS = 10_000
HNSW_M, HNSW_EFC, HNSW_EFS = 32, 64, 128


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = {"python": platform.python_version(), "numpy": np.__version__,
                "faiss": faiss.__version__}
    for mod in ("hnswlib", "usearch"):
        try:
            m = __import__(mod)
            versions[mod] = str(getattr(m, "__version__", "?"))
        except ImportError:
            versions[mod] = "absent"
    return {"cpu": cpu, "cores": os.cpu_count(), "versions": versions,
            "mem_gib": round(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30)}


def read_bandwidth() -> float:
    """Single-core sequential read bandwidth (bytes/s): best of numpy reductions."""
    a = np.ones(64 * 2**20, dtype=np.float32)  # 256 MiB, far beyond cache
    best = 0.0
    for fn in (np.sum, np.max, np.sum, np.max, np.sum, np.max):
        t = time.perf_counter()
        fn(a)
        best = max(best, a.nbytes / (time.perf_counter() - t))
    return best


def unit(x: F32) -> F32:
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x, dtype=np.float32)


def make_data(n: int, d: int, n_queries: int, seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    n_ids = n // 2
    n_clusters = max(16, n_ids // 500)
    clusters = unit(rng.standard_normal((n_clusters, d), dtype=np.float32))

    def identities(m: int) -> F32:
        c = clusters[rng.integers(0, n_clusters, m)]
        return unit(c + unit(rng.standard_normal((m, d), dtype=np.float32)))

    def photo(ident: F32) -> F32:
        # cos(photo, identity) ~ 0.9, two photos of one person ~ 0.8
        return unit(ident + 0.5 * unit(rng.standard_normal(ident.shape, dtype=np.float32)))

    ids_vec = identities(n_ids)
    faces = photo(np.repeat(ids_vec, 2, axis=0))
    uids = [f"u{i // 2}" for i in range(n)]
    genuine_of = rng.integers(0, n_ids, n_queries)
    genuine = photo(ids_vec[genuine_of])
    impostor = photo(identities(max(1, n_queries // 5)))
    phone = rng.integers(0, BUCKETS, n_ids)
    parts = [f"{int(phone[i // 2]):04d}" for i in range(n)]
    return {"faces": faces, "uids": uids, "genuine": genuine, "impostor": impostor,
            "genuine_bucket": [f"{int(phone[i]):04d}" for i in genuine_of], "parts": parts}


def timed_single(fn: Callable[[F32], object], queries: F32, budget_s: float) -> dict[str, float]:
    fn(queries[:1])  # warm-up
    lat: list[float] = []
    start = time.perf_counter()
    for i in range(queries.shape[0]):
        q = queries[i : i + 1]
        t = time.perf_counter()
        fn(q)
        lat.append(time.perf_counter() - t)
        if len(lat) >= 20 and time.perf_counter() - start > budget_s:
            break
    arr = np.array(lat) * 1e3
    return {"p50_ms": float(np.percentile(arr, 50)), "p99_ms": float(np.percentile(arr, 99)),
            "single_qps": float(1e3 / arr.mean()), "n_single": len(lat)}


def timed_batch(fn: Callable[[F32], object], queries: F32, b: int, budget_s: float) -> float:
    batches = [np.ascontiguousarray(queries[i : i + b]) for i in range(0, len(queries) - b + 1, b)]
    fn(batches[0])
    done, start = 0, time.perf_counter()
    for q in batches:
        fn(q)
        done += q.shape[0]
        if time.perf_counter() - start > budget_s:
            break
    return done / (time.perf_counter() - start)


class Engine:
    name = "?"
    face_level = True  # result ids are face rows (else facegate UIDs)

    def build(self, data: dict[str, Any]) -> None:
        raise NotImplementedError

    def search(self, q: F32) -> I64:
        """Top-1 face id per query."""
        raise NotImplementedError

    def memory(self) -> int | None:
        return None


class NumpyBrute(Engine):
    name = "numpy-bruteforce"

    def build(self, data: dict[str, Any]) -> None:
        self.x = data["faces"]

    def search(self, q: F32) -> I64:
        # In chunks: a 2048-query block against 1M faces would be an 8 GB score matrix
        # (and its negated copy), which the OOM killer ended in an earlier run.
        out = [self._search_chunk(q[i : i + 64]) for i in range(0, q.shape[0], 64)]
        return np.concatenate(out) if out else np.zeros(0, np.int64)

    def _search_chunk(self, q: F32) -> I64:
        s = q @ self.x.T
        top = np.argpartition(-s, K - 1, axis=1)[:, :K]
        order = np.argsort(-np.take_along_axis(s, top, 1), axis=1)
        return np.take_along_axis(top, order, 1)[:, 0].astype(np.int64)

    def memory(self) -> int:
        return int(self.x.nbytes)


class FaissFlat(Engine):
    name = "faiss-flat"

    def build(self, data: dict[str, Any]) -> None:
        self.index = faiss.IndexFlatIP(data["faces"].shape[1])
        self.index.add(data["faces"])

    def search(self, q: F32) -> I64:
        # Same threading policy as facegate: 1 thread below 64 queries.
        faiss.omp_set_num_threads(1 if q.shape[0] < 64 else os.cpu_count() or 1)
        _, i = self.index.search(q, K)
        faiss.omp_set_num_threads(1)
        return np.asarray(i[:, 0], dtype=np.int64)

    def memory(self) -> int:
        return int(self.index.ntotal * self.index.d * 4)


class FacegateGallery(Engine):
    def __init__(self, kind: IndexKind) -> None:
        self.kind = kind
        self.name = f"facegate-{kind.value}"

    def build(self, data: dict[str, Any]) -> None:
        faces = data["faces"]
        cfg = IndexConfig(kind=self.kind, hnsw_m=HNSW_M, hnsw_ef_construction=HNSW_EFC,
                          hnsw_ef_search=HNSW_EFS, min_accel_size=1000)
        self.g = Gallery(faces.shape[1], cfg)
        self.g.add(faces, np.arange(faces.shape[0], dtype=np.int64), data["uids"], data["parts"])

    def search(self, q: F32) -> I64:
        return np.array([r.face_ids[0] for r in self.g.search(q, K)], dtype=np.int64)

    def hinted(self, q: F32, bucket: str) -> object:
        return self.g.search(q, K, partition=bucket)

    def memory(self) -> int:
        return self.g.memory_bytes()


class FaissOfGallery(Engine):
    """Raw FAISS search on the very structure a facegate gallery built (wrapper cost)."""

    def __init__(self, gallery: FacegateGallery) -> None:
        self.name = f"faiss-{gallery.kind.value}"
        self.index: Any = gallery.g._accel.index if gallery.g._accel is not None else None

    def search(self, q: F32) -> I64:
        faiss.omp_set_num_threads(1 if q.shape[0] < 64 else os.cpu_count() or 1)
        params = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]
        params.efSearch = HNSW_EFS
        _, i = self.index.search(q, K * 2, params=params)
        faiss.omp_set_num_threads(1)
        return np.asarray(i[:, 0], dtype=np.int64)


class Hnswlib(Engine):
    name = "hnswlib"

    def build(self, data: dict[str, Any]) -> None:
        import hnswlib

        x = data["faces"]
        self.index = hnswlib.Index(space="ip", dim=x.shape[1])
        self.index.init_index(max_elements=x.shape[0], M=HNSW_M, ef_construction=HNSW_EFC)
        self.index.add_items(x, np.arange(x.shape[0]), num_threads=os.cpu_count() or 1)
        self.index.set_ef(HNSW_EFS)

    def search(self, q: F32) -> I64:
        labels, _ = self.index.knn_query(q, k=K, num_threads=1 if q.shape[0] < 64 else -1)
        return np.asarray(labels[:, 0], dtype=np.int64)


class Usearch(Engine):
    name = "usearch"

    def build(self, data: dict[str, Any]) -> None:
        from usearch.index import Index

        x = data["faces"]
        self.index = Index(ndim=x.shape[1], metric="ip", dtype="f32", connectivity=HNSW_M,
                           expansion_add=HNSW_EFC, expansion_search=HNSW_EFS)
        self.index.add(np.arange(x.shape[0]), x, threads=os.cpu_count() or 1)

    def search(self, q: F32) -> I64:
        m = self.index.search(q, K, threads=1 if q.shape[0] < 64 else 0)
        keys = m.keys if q.shape[0] > 1 else np.asarray(m.keys)[None, :]
        return np.asarray(keys, dtype=np.int64).reshape(q.shape[0], -1)[:, 0]


def run_engine(engine: Engine, data: dict[str, Any], exact_top1: I64 | None,
               budget: float, build: bool = True) -> dict[str, Any]:
    gc.collect()
    rss0 = rss_bytes()
    t = time.perf_counter()
    if build:
        engine.build(data)
    build_s = time.perf_counter() - t
    queries = data["genuine"]
    row: dict[str, Any] = {"engine": engine.name, "build_s": round(build_s, 3)}
    mem = engine.memory()
    row["memory_mb"] = round((mem if mem is not None else rss_bytes() - rss0) / 2**20, 1)
    row.update(timed_single(engine.search, queries, budget))
    row["batch64_qps"] = timed_batch(engine.search, queries, 64, budget)
    row["batch256_qps"] = timed_batch(engine.search, queries, 256, budget)
    top1 = engine.search(queries)
    if exact_top1 is not None:
        row["recall_at_1"] = float(np.mean(top1 == exact_top1))
    imp = engine.search(data["impostor"])
    row["impostor_queries"] = int(imp.shape[0])
    if isinstance(engine, FacegateGallery):
        buckets = data["genuine_bucket"]
        lat = []
        for i in range(min(2000, queries.shape[0])):
            q = queries[i : i + 1]
            t0 = time.perf_counter()
            engine.hinted(q, buckets[i])
            lat.append(time.perf_counter() - t0)
        arr = np.array(lat[10:]) * 1e3  # first few warm caches
        row["hinted_p50_ms"] = float(np.percentile(arr, 50))
        row["hinted_p99_ms"] = float(np.percentile(arr, 99))
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--dims", default="128,512")
    ap.add_argument("--queries", type=int, default=2048)
    ap.add_argument("--budget", type=float, default=3.0, help="seconds per timing phase")
    ap.add_argument("--ann-max", type=int, default=100_000,
                    help="largest size for hnswlib/usearch (their 1M builds take minutes)")
    ap.add_argument("--hnsw-max-512", type=int, default=100_000,
                    help="largest size for HNSW engines at dim >= 512 (build time)")
    ap.add_argument("--quick", action="store_true", help="10k and 100k at 128-d, short timings")
    ap.add_argument("--json", action="store_true", help="one JSON object per line on stdout")
    args = ap.parse_args()
    if args.quick:
        args.sizes, args.dims, args.budget = "10000,100000", "128", 1.0
    configure_faiss()
    faiss.omp_set_num_threads(1)
    info = machine()
    info["read_bandwidth_gbs"] = round(read_bandwidth() / 1e9, 2)
    info["blas_threshold"] = BLAS_THRESHOLD
    emit: Callable[[dict[str, Any]], None] = (
        (lambda r: print(json.dumps(r), flush=True)) if args.json
        else (lambda r: print("  ".join(f"{k}={v}" for k, v in r.items()), flush=True)))
    emit({"machine": info})
    bw = info["read_bandwidth_gbs"] * 1e9
    rows: list[dict[str, Any]] = []
    for d in (int(v) for v in args.dims.split(",")):
        for n in (int(v) for v in args.sizes.split(",")):
            log(f"== n={n} d={d}")
            data = make_data(n, d, args.queries)
            exact = FaissFlat()
            exact.build(data)
            faiss.omp_set_num_threads(os.cpu_count() or 1)
            exact_top1 = np.asarray(exact.index.search(data["genuine"], 1)[1][:, 0], np.int64)
            faiss.omp_set_num_threads(1)
            engines: list[Engine] = [exact, NumpyBrute(), FacegateGallery(IndexKind.FLAT),
                                     FacegateGallery(IndexKind.SQ8),
                                     FacegateGallery(IndexKind.FP16)]
            hnsw_ok = d < 512 or n <= args.hnsw_max_512
            if hnsw_ok:
                engines.append(FacegateGallery(IndexKind.HNSW))
            if hnsw_ok and n <= args.ann_max:
                engines += [Hnswlib(), Usearch()]
            for e in engines:
                log(f"   {e.name}")
                row = {"n": n, "dim": d, **run_engine(e, data, exact_top1, args.budget,
                                                      build=e is not exact)}
                if e is exact:
                    row["build_s"] = None
                emit(row)
                rows.append(row)
                if isinstance(e, FacegateGallery) and e.kind is IndexKind.HNSW:
                    raw = FaissOfGallery(e)
                    row = {"n": n, "dim": d, **run_engine(raw, data, exact_top1, args.budget,
                                                          build=False)}
                    row["build_s"], row["memory_mb"] = None, None
                    emit(row)
                    rows.append(row)
                if e is not exact:
                    del e
                gc.collect()
            del engines, exact, data
            gc.collect()
    emit({"summary": summarise(rows, bw)})


def summarise(rows: list[dict[str, Any]], bw: float) -> dict[str, Any]:
    def get(n: int, d: int, engine: str) -> dict[str, Any] | None:
        return next((r for r in rows if (r["n"], r["dim"], r["engine"]) == (n, d, engine)), None)

    n = max(r["n"] for r in rows)
    d = min(r["dim"] for r in rows)
    out: dict[str, Any] = {"at": {"n": n, "dim": d}}
    flat, raw = get(n, d, "facegate-flat"), get(n, d, "faiss-flat")
    hnsw, raw_hnsw = get(n, d, "facegate-hnsw"), get(n, d, "faiss-hnsw")
    if flat and raw:
        floor_ms = n * d * 4 / bw * 1e3
        out["bandwidth_floor_ms"] = round(floor_ms, 3)
        out["exact_single_vs_floor"] = round(flat["p50_ms"] / floor_ms, 3)
        out["wrapper_overhead_flat"] = round(flat["p50_ms"] / raw["p50_ms"], 3)
        out["batch64_vs_single"] = round(flat["batch64_qps"] / flat["single_qps"], 2)
    if hnsw and raw_hnsw:
        out["wrapper_overhead_hnsw"] = round(hnsw["p50_ms"] / raw_hnsw["p50_ms"], 3)
    if hnsw and flat:
        out["hnsw_recall_at_1"] = hnsw.get("recall_at_1")
        out["hnsw_speedup_vs_exact_single"] = round(hnsw["single_qps"] / flat["single_qps"], 1)
    if flat:
        out["hinted_p99_ms"] = flat.get("hinted_p99_ms")
    out["targets_met"] = {
        "exact_single_within_1.25x_floor": out.get("exact_single_vs_floor", 9) <= 1.25,
        "wrapper_overhead_le_10pct": out.get("wrapper_overhead_flat", 9) <= 1.10,
        "batch64_ge_4x_single": out.get("batch64_vs_single", 0) >= 4,
        "approx_recall_ge_0.99": (out.get("hnsw_recall_at_1") or 0) >= 0.99,
        "approx_ge_10x_exact": out.get("hnsw_speedup_vs_exact_single", 0) >= 10,
        "hinted_p99_lt_1ms": (out.get("hinted_p99_ms") or 9) < 1.0,
    }
    return out


if __name__ == "__main__":
    main()
