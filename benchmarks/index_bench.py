#!/usr/bin/env python
"""Matching-core benchmark: facegate's Gallery vs raw FAISS, numpy, hnswlib, usearch.

All engines run in one process on the same clustered synthetic face data
(identities inside demographic-like clusters, 2 enrolled faces per identity;
genuine queries are a new noisy "photo" of an enrolled identity, impostor
queries are unenrolled identities). Reports per (size, dim, engine): build
time, memory, single-query p50/p99, batch-64/256 throughput, recall@1 (face and
UID) against exact search on genuine queries, and (facegate) hinted-search
latency with 10,000 phone-number buckets; an efSearch sweep of the HNSW graph;
and per size the issue-3 ratios. Every engine searches single queries on one
thread (numpy's BLAS included) and batches on all cores.

    python benchmarks/index_bench.py --sizes 10000,100000,1000000 --dims 128 --json
    python benchmarks/index_bench.py --sizes 10000000 --dims 128 --json   # sq8/fp16 only
    python benchmarks/index_bench.py --plan ...   # print the run plan and time estimate only
    python benchmarks/index_bench.py --quick
"""

from __future__ import annotations

import argparse
import gc
import json
import math
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
KF = 2 * K  # faces the gallery fetches for top-5 UIDs with 2 faces each; raw peers too
BUCKETS = 10_000
CORES = os.cpu_count() or 1
DEFAULTS = IndexConfig()
HNSW_M, HNSW_EFC = DEFAULTS.hnsw_m, DEFAULTS.hnsw_ef_construction
EF_SWEEP = (64, 128, 256, 512, 1024)
# Rough per-face build costs on the reference machine (2 cores), for the plan and
# the skip rule: FAISS HNSW took 212 s per 1M x 128 faces at efConstruction 64.
HNSW_BUILD_S_PER_FACE = 4.2e-4 * HNSW_EFC / 128


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def mem_available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def huge_page_fraction(a: np.ndarray) -> float:
    """Fraction of `a`'s bytes backed by transparent huge pages (from /proc/self/smaps)."""
    lo = a.__array_interface__["data"][0]
    hi = lo + a.nbytes
    huge = 0
    cur: tuple[int, int] | None = None
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split(" ", 1)[0]
            if "-" in head and ":" not in head:
                start, end = (int(v, 16) for v in head.split("-"))
                cur = (start, end) if start < hi and end > lo else None
            elif cur is not None and line.startswith("AnonHugePages:"):
                huge += int(line.split()[1]) * 1024
    return min(1.0, huge / a.nbytes) if a.nbytes else 0.0


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = {"python": platform.python_version(), "numpy": np.__version__,
                "faiss": faiss.__version__}
    for mod in ("hnswlib", "usearch", "threadpoolctl"):
        try:
            m = __import__(mod)
            versions[mod] = str(getattr(m, "__version__", "?"))
        except ImportError:
            versions[mod] = "absent"
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    return {"cpu": cpu, "cores": CORES, "versions": versions,
            "mem_gib": round(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30),
            "thp": thp.read_text().strip() if thp.exists() else "?"}


def read_bandwidth() -> float:
    """Single-core sequential read bandwidth (bytes/s): best of numpy reductions."""
    a = np.ones(64 * 2**20, dtype=np.float32)  # 256 MiB, far beyond cache
    best = 0.0
    for fn in (np.sum, np.max, np.sum, np.max, np.sum, np.max):
        t = time.perf_counter()
        fn(a)
        best = max(best, a.nbytes / (time.perf_counter() - t))
    return best


class NumpyBlasThreads:
    """Sets numpy's own OpenBLAS thread count (threadpoolctl), leaving FAISS's BLAS
    alone, so numpy's single queries run on one core like every other engine's.
    Changed only when it differs: threadpoolctl's library scan costs milliseconds."""

    def __init__(self) -> None:
        self.current = 0
        self.libs: Any = None
        try:
            from threadpoolctl import ThreadpoolController  # type: ignore[import-untyped]
        except ImportError:
            log("threadpoolctl absent: numpy's BLAS keeps its own thread count")
            return
        ctl = ThreadpoolController()
        mine = [c.prefix for c in ctl.lib_controllers if "numpy" in c.filepath]
        self.libs = ctl.select(prefix=mine) if mine else None

    def set(self, n: int) -> None:
        if self.libs is not None and n != self.current:
            self.libs.limit(limits=n)
            self.current = n


# ----------------------------------------------------------------------- data


def unit(x: F32) -> F32:
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x, dtype=np.float32)


def make_data(n: int, d: int, n_queries: int, seed: int = 0) -> dict[str, Any]:
    """Clustered identities, 2 photos each; built in chunks so 10M x 128 fits in RAM."""
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

    chunk = 262_144
    ids_vec = np.empty((n_ids, d), dtype=np.float32)
    faces = np.empty((2 * n_ids, d), dtype=np.float32)
    for s in range(0, n_ids, chunk):
        e = min(n_ids, s + chunk)
        ids_vec[s:e] = identities(e - s)
        faces[2 * s : 2 * e] = photo(np.repeat(ids_vec[s:e], 2, axis=0))
    names = [f"u{i}" for i in range(n_ids)]
    uids = [u for u in names for _ in range(2)]
    genuine_of = rng.integers(0, n_ids, n_queries)
    genuine = photo(ids_vec[genuine_of])
    del ids_vec
    impostor = photo(identities(max(1, n_queries // 5)))
    phone = rng.integers(0, BUCKETS, n_ids)
    keys = [f"{b:04d}" for b in range(BUCKETS)]
    parts = [keys[int(phone[i // 2])] for i in range(2 * n_ids)]
    return {"faces": faces, "uids": uids, "genuine": genuine, "impostor": impostor,
            "genuine_bucket": [keys[int(phone[i])] for i in genuine_of], "parts": parts}


# -------------------------------------------------------------------- timing


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


def paired_single(mine: Callable[[F32], object], theirs: Callable[[F32], object],
                  queries: F32, budget_s: float) -> dict[str, float]:
    """Wrapper cost measured in pairs: each query runs through both searches back to back
    (order alternating), so drift in the machine's speed between two timing phases (a
    neighbour VM, the CPU clock) cancels out of the ratio. The ratio is of the medians."""
    mine(queries[:1])
    theirs(queries[:1])
    a: list[float] = []
    b: list[float] = []
    start = time.perf_counter()
    for i in range(queries.shape[0]):
        q = queries[i : i + 1]
        first, second, into = (mine, theirs, (a, b)) if i % 2 == 0 else (theirs, mine, (b, a))
        t = time.perf_counter()
        first(q)
        t2 = time.perf_counter()
        second(q)
        t3 = time.perf_counter()
        into[0].append(t2 - t)
        into[1].append(t3 - t2)
        if len(a) >= 20 and time.perf_counter() - start > budget_s:
            break
    p50a, p50b = float(np.median(a)) * 1e3, float(np.median(b)) * 1e3
    return {"facegate_p50_ms": round(p50a, 4), "faiss_p50_ms": round(p50b, 4),
            "ratio": round(p50a / p50b, 3), "pairs": len(a)}


def timed_batch(fn: Callable[[F32], object], queries: F32, b: int, budget_s: float) -> float:
    batches = [np.ascontiguousarray(queries[i : i + b]) for i in range(0, len(queries) - b + 1, b)]
    if not batches:
        return float("nan")
    fn(batches[0])
    done, start = 0, time.perf_counter()
    for q in batches[1:] or batches:
        fn(q)
        done += q.shape[0]
        if time.perf_counter() - start > budget_s:
            break
    return done / (time.perf_counter() - start)


def omp_for(q: F32) -> int:
    """The threading policy of every engine: 1 thread below 64 queries, else all cores."""
    return 1 if q.shape[0] < 64 else CORES


# ------------------------------------------------------------------- engines


class Engine:
    name = "?"

    def build(self, data: dict[str, Any]) -> None:
        pass

    def search(self, q: F32) -> I64:
        """Top-1 face id per query."""
        raise NotImplementedError

    def memory(self) -> int | None:
        return None


class NumpyBrute(Engine):
    name = "numpy-bruteforce"

    def build(self, data: dict[str, Any]) -> None:
        self.x: F32 = data["faces"]
        self.threads = NumpyBlasThreads()

    def search(self, q: F32) -> I64:
        self.threads.set(omp_for(q))
        # In chunks of <= 2^28 scores (1 GiB, plus argpartition's int64 copy): 2048
        # queries x 1M faces at once would be an 8 GB score matrix.
        step = max(1, min(64, 2**28 // self.x.shape[0]))
        out = [self._chunk(q[i : i + step]) for i in range(0, q.shape[0], step)]
        return np.concatenate(out) if out else np.zeros(0, np.int64)

    def _chunk(self, q: F32) -> I64:
        s = q @ self.x.T
        top = np.argpartition(s, -KF, axis=1)[:, -KF:]
        best = np.argmax(np.take_along_axis(s, top, 1), axis=1)
        return np.asarray(top[np.arange(q.shape[0]), best], dtype=np.int64)

    def memory(self) -> int:
        return int(self.x.nbytes)


class FaissFlat(Engine):
    """FAISS's brute-force kernel (faiss.knn, what IndexFlatIP.search runs) on the
    shared numpy matrix: no second copy of the data, same memory pages as numpy."""

    name = "faiss-flat"

    def build(self, data: dict[str, Any]) -> None:
        self.x: F32 = data["faces"]

    def search(self, q: F32) -> I64:
        faiss.omp_set_num_threads(omp_for(q))
        _, i = faiss.knn(q, self.x, KF, faiss.METRIC_INNER_PRODUCT)
        faiss.omp_set_num_threads(1)
        return np.asarray(i[:, 0], dtype=np.int64)

    def memory(self) -> int:
        return int(self.x.nbytes)


class FacegateGallery(Engine):
    def __init__(self, kind: IndexKind) -> None:
        self.kind = kind
        self.name = f"facegate-{kind.value}"

    def build(self, data: dict[str, Any]) -> None:
        faces = data["faces"]
        cfg = IndexConfig(kind=self.kind, min_accel_size=1000)
        self.g = Gallery(faces.shape[1], cfg)
        self.g.add(faces, np.arange(faces.shape[0], dtype=np.int64), data["uids"], data["parts"])

    def search(self, q: F32) -> I64:
        return np.array([r.face_ids[0] for r in self.g.search(q, K)], dtype=np.int64)

    def hinted(self, q: F32, bucket: str) -> object:
        return self.g.search(q, K, partition=bucket)

    def memory(self) -> int:
        return self.g.memory_bytes()


class FaissOfGallery(Engine):
    """Raw FAISS search on the very structure a facegate gallery built (wrapper cost):
    same number of candidates, same efSearch. A quantised gallery (sq8/fp16) fetches
    rerank_factor x the candidates and re-scores them in fp32; the raw peer fetches as many,
    so the wrapper's cost is the Python around FAISS plus that exact re-scoring."""

    def __init__(self, gallery: FacegateGallery, ef: int | None = None) -> None:
        self.name = f"faiss-{gallery.kind.value}"
        accel = gallery.g._accel
        assert accel is not None
        self.index: Any = accel.index
        self.k = KF if accel.exact_scores else KF * gallery.g.config.rerank_factor
        self.params: Any = None
        if gallery.kind is IndexKind.HNSW:
            self.params = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]
            self.params.efSearch = ef if ef is not None else gallery.g.hnsw_ef_search(K)

    def search(self, q: F32) -> I64:
        faiss.omp_set_num_threads(omp_for(q))
        _, i = self.index.search(q, self.k, params=self.params)
        faiss.omp_set_num_threads(1)
        return np.asarray(i[:, 0], dtype=np.int64)


class Hnswlib(Engine):
    name = "hnswlib"

    def __init__(self, ef: int) -> None:
        self.ef = ef

    def build(self, data: dict[str, Any]) -> None:
        import hnswlib

        x = data["faces"]
        self.index = hnswlib.Index(space="ip", dim=x.shape[1])
        self.index.init_index(max_elements=x.shape[0], M=HNSW_M, ef_construction=HNSW_EFC)
        self.index.add_items(x, np.arange(x.shape[0]), num_threads=CORES)
        self.index.set_ef(self.ef)

    def search(self, q: F32) -> I64:
        labels, _ = self.index.knn_query(q, k=KF, num_threads=omp_for(q))
        return np.asarray(labels[:, 0], dtype=np.int64)


class Usearch(Engine):
    name = "usearch"

    def __init__(self, ef: int) -> None:
        self.ef = ef

    def build(self, data: dict[str, Any]) -> None:
        from usearch.index import Index

        x = data["faces"]
        self.index = Index(ndim=x.shape[1], metric="ip", dtype="f32", connectivity=HNSW_M,
                           expansion_add=HNSW_EFC, expansion_search=self.ef)
        self.index.add(np.arange(x.shape[0]), x, threads=CORES)

    def search(self, q: F32) -> I64:
        m = self.index.search(q, KF, threads=1 if q.shape[0] < 64 else 0)
        keys = m.keys if q.shape[0] > 1 else np.asarray(m.keys)[None, :]
        return np.asarray(keys, dtype=np.int64).reshape(q.shape[0], -1)[:, 0]


def recall_queries(n: int, wanted: int) -> int:
    """Queries for recall: fewer at 10M, where one exhaustive pass per query costs 0.5 s."""
    return max(256, min(wanted, 4_000_000_000 // max(n, 1)))


def run_engine(engine: Engine, data: dict[str, Any], exact_top1: I64, budget: float,
               n_recall: int) -> dict[str, Any]:
    gc.collect()
    rss0 = rss_bytes()
    t = time.perf_counter()
    engine.build(data)
    build_s = time.perf_counter() - t
    queries = data["genuine"]
    row: dict[str, Any] = {"engine": engine.name, "build_s": round(build_s, 3)}
    mem = engine.memory()
    row["memory_mb"] = round((mem if mem is not None else rss_bytes() - rss0) / 2**20, 1)
    row.update(timed_single(engine.search, queries, budget))
    row["batch64_qps"] = timed_batch(engine.search, queries, 64, budget)
    row["batch256_qps"] = timed_batch(engine.search, queries, 256, budget)
    top1 = engine.search(queries[:n_recall])
    row["recall_at_1"] = float(np.mean(top1 == exact_top1[:n_recall]))
    row["uid_recall_at_1"] = float(np.mean(top1 // 2 == exact_top1[:n_recall] // 2))
    row["recall_queries"] = n_recall
    imp = engine.search(data["impostor"][: max(1, n_recall // 5)])
    row["impostor_queries"] = int(imp.shape[0])
    if isinstance(engine, FacegateGallery):
        g = engine.g
        ef = g.hnsw_ef_search(K)
        if ef is not None:
            row["ef_search"] = ef
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
        if engine.kind is IndexKind.FLAT:
            row.update(store_read_pass(g._vecs[: g._n]))
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}


def store_read_pass(x: F32) -> dict[str, float]:
    """A plain read of the gallery's own row store: its huge-page coverage and the
    time one np.max pass takes now (the floor on this memory, this minute)."""
    lat = []
    for _ in range(7):
        t = time.perf_counter()
        np.max(x)
        lat.append(time.perf_counter() - t)
    return {"store_huge_pages": round(huge_page_fraction(x), 3),
            "store_read_pass_ms": float(np.median(lat) * 1e3)}


def ef_sweep(gallery: FacegateGallery, data: dict[str, Any], exact_top1: I64,
             n_recall: int) -> list[dict[str, Any]]:
    """Recall@1 and single-query latency of the gallery's HNSW graph at several efSearch."""
    out = []
    queries = data["genuine"][:n_recall]
    for ef in sorted({*EF_SWEEP, gallery.g.hnsw_ef_search(K) or 0} - {0}):
        raw = FaissOfGallery(gallery, ef)
        top1 = raw.search(queries)
        lat = timed_single(raw.search, queries, 1.0)
        want = exact_top1[:n_recall]
        out.append({"ef_search": ef, "recall_at_1": round(float(np.mean(top1 == want)), 4),
                    "uid_recall_at_1": round(float(np.mean(top1 // 2 == want // 2)), 4),
                    "p50_ms": round(lat["p50_ms"], 4)})
    return out


# ---------------------------------------------------------------------- plan


ENGINES = ("faiss-flat", "numpy-bruteforce", "facegate-flat", "facegate-sq8",
           "facegate-fp16", "facegate-hnsw", "hnswlib", "usearch")


def plan_engines(n: int, d: int, max_build_s: float,
                 mem_budget: float) -> tuple[list[str], dict[str, str]]:
    """Engines to run at (n, d), and the reason for each one skipped."""
    names = list(ENGINES)
    skipped: dict[str, str] = {}
    for name in ("facegate-hnsw", "hnswlib", "usearch"):
        est = build_estimate(name, n, d)
        if est > max_build_s:
            skipped[name] = (f"estimated build {est / 60:.0f} min > --max-build-s "
                             f"{max_build_s / 60:.0f} min")
    for name in names:
        need = memory_estimate(name, n, d)
        if name not in skipped and need > mem_budget:
            skipped[name] = (f"needs ~{need / 2**30:.1f} GiB beside the data, "
                             f"{mem_budget / 2**30:.1f} GiB available")
    return [e for e in names if e not in skipped], skipped


def memory_estimate(name: str, n: int, d: int) -> int:
    fp32 = n * d * 4
    if name.startswith("facegate"):
        # row store + ~450 bytes of Python bookkeeping per face (id/UID/bucket maps)
        extra = {"facegate-sq8": n * d, "facegate-fp16": n * d * 2,
                 "facegate-hnsw": fp32 + n * 4 * 2 * HNSW_M}.get(name, 0)
        return fp32 + 450 * n + extra
    if name in ("hnswlib", "usearch"):
        return fp32 + n * 4 * 2 * HNSW_M
    return 0


def build_estimate(name: str, n: int, d: int) -> float:
    scale = float((d / 128) ** 0.8) * max(1.0, math.log10(max(n, 10)) / 6)
    if name in ("facegate-hnsw", "hnswlib", "usearch"):
        return HNSW_BUILD_S_PER_FACE * n * scale
    if name.startswith("facegate"):
        return 5e-6 * n  # Python bookkeeping + a scalar quantiser pass
    return 0.0


def time_estimate(n: int, d: int, engines: list[str], *, budget: float, bw: float,
                  n_recall: int) -> float:
    """Seconds for one (n, d) block: builds + timing phases + recall passes."""
    scan = n * d * 4 / bw  # one exhaustive single query
    gemm = n * d * 2 / 40e9  # per query inside a BLAS batch on this class of machine
    total = 3.0 + n * d * 4 / 0.4e9  # data generation
    for e in engines:
        total += build_estimate(e, n, d)
        exhaustive = e in ("faiss-flat", "numpy-bruteforce", "facegate-flat",
                           "facegate-sq8", "facegate-fp16")
        per_q = scan if exhaustive else 2e-3
        per_batched = gemm if e in ("faiss-flat", "numpy-bruteforce", "facegate-flat") \
            else per_q / CORES
        total += max(budget, 21 * per_q) + max(budget, 128 * per_batched) \
            + max(budget, 512 * per_batched) + 1.2 * n_recall * per_batched
        if e.startswith("facegate"):
            total += 2000 * 5e-4
    if "facegate-hnsw" in engines:
        total += len(EF_SWEEP) * (n_recall * 2e-3 + 1.0) + 10 * budget
    return total


# ---------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--dims", default="128,512")
    ap.add_argument("--queries", type=int, default=2048)
    ap.add_argument("--budget", type=float, default=3.0, help="seconds per timing phase")
    ap.add_argument("--max-build-s", type=float, default=1800.0,
                    help="skip an HNSW engine whose estimated build exceeds this (printed)")
    ap.add_argument("--mem-budget-gib", type=float, default=0.0,
                    help="skip an engine needing more than this beside the data "
                         "(default: MemAvailable minus the data, at start)")
    ap.add_argument("--engines", default="",
                    help="comma-separated subset of the engines (default: all)")
    ap.add_argument("--plan", action="store_true", help="print the plan and estimate only")
    ap.add_argument("--quick", action="store_true", help="10k and 100k at 128-d, short timings")
    ap.add_argument("--json", action="store_true", help="one JSON object per line on stdout")
    args = ap.parse_args()
    if args.quick:
        args.sizes, args.dims, args.budget = "10000,100000", "128", 1.0
    configure_faiss()
    faiss.omp_set_num_threads(1)
    emit: Callable[[dict[str, Any]], None] = (
        (lambda r: print(json.dumps(r), flush=True)) if args.json
        else (lambda r: print("  ".join(f"{k}={v}" for k, v in r.items()), flush=True)))
    info = machine()
    bw = read_bandwidth()
    info["read_bandwidth_gbs"] = round(bw / 1e9, 2)
    info["blas_threshold"] = BLAS_THRESHOLD
    info["hnsw"] = {"M": HNSW_M, "efConstruction": HNSW_EFC, "efSearch": "automatic"}
    sizes = [int(v) for v in args.sizes.split(",")]
    dims = [int(v) for v in args.dims.split(",")]
    blocks = []
    total_est = 0.0
    for d in dims:
        for n in sizes:
            # The data (vectors + ~100 bytes of labels per face) stays for the whole block.
            mem_budget = (args.mem_budget_gib * 2**30 if args.mem_budget_gib
                          else mem_available() - (n * d * 4 + 100 * n))
            engines, skipped = plan_engines(n, d, args.max_build_s, mem_budget)
            if args.engines:
                wanted = set(args.engines.split(","))
                unknown = wanted - set(ENGINES)
                if unknown:
                    ap.error(f"unknown engines {sorted(unknown)}; choose from {ENGINES}")
                engines = [e for e in engines if e in wanted]
            est = time_estimate(n, d, engines, budget=args.budget, bw=bw,
                                n_recall=recall_queries(n, args.queries))
            total_est += est
            blocks.append((n, d, engines, skipped, est))
    info["plan"] = [{"n": n, "dim": d, "engines": e, "skipped": s, "estimate_min": round(t / 60, 1)}
                    for n, d, e, s, t in blocks]
    info["estimate_total_min"] = round(total_est / 60, 1)
    emit({"machine": info})
    if args.plan:
        return
    rows: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    done_est = 0.0
    for n, d, names, skipped, est in blocks:
        log(f"== n={n} d={d}: {len(names)} engines, estimate {est / 60:.1f} min "
            f"(run so far {(time.perf_counter() - t_start) / 60:.1f} min of ~{total_est / 60:.1f})")
        for name, why in skipped.items():
            log(f"   skip {name}: {why}")
            emit({"n": n, "dim": d, "engine": name, "skipped": why})
        rows += run_block(n, d, names, args, emit)
        done_est += est
        left = (total_est - done_est) / 60
        log(f"   block done; elapsed {(time.perf_counter() - t_start) / 60:.1f} min, "
            f"~{left:.1f} min left by the estimate")
    emit({"summary": summarise(rows, bw)})


def run_block(n: int, d: int, names: list[str], args: argparse.Namespace,
              emit: Callable[[dict[str, Any]], None]) -> list[dict[str, Any]]:
    data = make_data(n, d, args.queries)
    n_recall = recall_queries(n, args.queries)
    faiss.omp_set_num_threads(CORES)
    _, top = faiss.knn(data["genuine"][:n_recall], data["faces"], 1, faiss.METRIC_INNER_PRODUCT)
    exact_top1 = np.asarray(top[:, 0], dtype=np.int64)
    faiss.omp_set_num_threads(1)
    rows: list[dict[str, Any]] = []
    ef_auto = DEFAULTS.hnsw_ef_for(n, KF)

    def record(row: dict[str, Any]) -> None:
        row = {"n": n, "dim": d, **row}
        emit(row)
        rows.append(row)

    for name in names:
        t0 = time.perf_counter()
        log(f"   {name}")
        engine: Engine
        if name == "faiss-flat":
            engine = FaissFlat()
        elif name == "numpy-bruteforce":
            engine = NumpyBrute()
        elif name == "hnswlib":
            engine = Hnswlib(ef_auto)
        elif name == "usearch":
            engine = Usearch(ef_auto)
        else:
            engine = FacegateGallery(IndexKind(name.split("-", 1)[1]))
        row = run_engine(engine, data, exact_top1, args.budget, n_recall)
        if name in ("faiss-flat", "numpy-bruteforce"):
            row["build_s"] = None
        record(row)
        if isinstance(engine, FacegateGallery):
            raw: Engine
            if engine.kind is IndexKind.FLAT:
                raw = FaissFlat()  # FAISS's exhaustive kernel on the benchmark's matrix
                raw.build(data)
            else:
                raw = FaissOfGallery(engine)
                raw_row = run_engine(raw, data, exact_top1, args.budget, n_recall)
                raw_row["build_s"], raw_row["memory_mb"] = None, None
                if engine.kind is IndexKind.HNSW:
                    raw_row["ef_search"] = raw.params.efSearch
                record(raw_row)
            paired = paired_single(engine.search, raw.search, data["genuine"], args.budget)
            record({"engine": f"wrapper-{engine.kind.value}", **paired})
            if engine.kind is IndexKind.HNSW:
                record({"engine": "faiss-hnsw", "ef_sweep": ef_sweep(engine, data, exact_top1,
                                                                    n_recall)})
        log(f"      {time.perf_counter() - t0:.0f} s")
        del engine
        gc.collect()
    return rows


def summarise(rows: list[dict[str, Any]], bw: float) -> dict[str, Any]:
    """Issue-3 ratios per (n, dim); targets judged at 1M x 128 (else the largest n at 128-d)."""
    def get(n: int, d: int, engine: str) -> dict[str, Any] | None:
        return next((r for r in rows if (r["n"], r["dim"], r["engine"]) == (n, d, engine)
                     and "p50_ms" in r), None)

    per: dict[str, Any] = {}
    for n, d in sorted({(r["n"], r["dim"]) for r in rows}):
        out: dict[str, Any] = {}
        flat = get(n, d, "facegate-flat")
        if flat:
            floor_ms = n * d * 4 / bw * 1e3
            out["bandwidth_floor_ms"] = round(floor_ms, 3)
            out["exact_single_vs_floor"] = round(flat["p50_ms"] / floor_ms, 3)
            if "store_read_pass_ms" in flat:
                out["exact_single_vs_store_read_pass"] = round(
                    flat["p50_ms"] / flat["store_read_pass_ms"], 3)
                out["store_huge_pages"] = flat.get("store_huge_pages")
            out["batch64_vs_single"] = round(flat["batch64_qps"] / flat["single_qps"], 2)
            out["hinted_p99_ms"] = flat.get("hinted_p99_ms")
        for kind in ("flat", "hnsw", "sq8", "fp16"):
            paired = next((r for r in rows if (r["n"], r["dim"], r["engine"])
                           == (n, d, f"wrapper-{kind}")), None)
            mine, theirs = get(n, d, f"facegate-{kind}"), get(n, d, f"faiss-{kind}")
            if paired:  # measured query by query: the figure the target is judged on
                out[f"wrapper_overhead_{kind}"] = paired["ratio"]
            if mine and theirs:  # separate timing phases: drift between them included
                out[f"wrapper_overhead_{kind}_sequential"] = round(
                    mine["p50_ms"] / theirs["p50_ms"], 3)
        hnsw = get(n, d, "facegate-hnsw")
        if hnsw and flat:
            out["hnsw_ef_search"] = hnsw.get("ef_search")
            out["hnsw_recall_at_1"] = hnsw.get("recall_at_1")
            out["hnsw_speedup_vs_exact_single"] = round(hnsw["single_qps"] / flat["single_qps"], 1)
        per[f"{n}x{d}"] = out
    key = "1000000x128" if "1000000x128" in per else max(
        (k for k in per if k.endswith("x128")), key=lambda k: int(k.split("x")[0]), default=None)
    at = per.get(key, {}) if key else {}
    targets = {
        "at": key,
        "exact_single_within_1.25x_floor": at.get("exact_single_vs_floor", 9) <= 1.25,
        **{f"wrapper_overhead_le_10pct_{kind}": at.get(f"wrapper_overhead_{kind}", 9) <= 1.10
           for kind in ("flat", "hnsw", "sq8", "fp16")},
        "batch64_ge_4x_single": at.get("batch64_vs_single", 0) >= 4,
        "approx_recall_ge_0.99": (at.get("hnsw_recall_at_1") or 0) >= 0.99,
        "approx_ge_10x_exact": at.get("hnsw_speedup_vs_exact_single", 0) >= 10,
        "hinted_p99_lt_1ms": (at.get("hinted_p99_ms") or 9) < 1.0,
    }
    return {"per_size": per, "targets_met": targets}


if __name__ == "__main__":
    main()
