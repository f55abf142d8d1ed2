"""Approximate search paths: removed faces filtered inside FAISS, the efSearch rule,
exact scores and exact fallbacks, the live-slot bitmap, and snapshots of all that."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from index import Gallery, IndexConfig, IndexKind
from index.accelerator import set_bits
from index.config import EF_MAX, EF_MIN, EF_PER_CANDIDATE

F32 = npt.NDArray[np.float32]
D = 48


def unit(x: npt.NDArray[np.floating]) -> F32:
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x, dtype=np.float32)


def face_data(rng: np.random.Generator, n_ids: int, per_id: int) -> tuple[F32, list[str]]:
    centres = unit(rng.standard_normal((n_ids, D)))
    x = unit(np.repeat(centres, per_id, axis=0)
             + 0.4 / np.sqrt(D) * rng.standard_normal((n_ids * per_id, D)))
    return x, [f"u{i // per_id}" for i in range(n_ids * per_id)]


def near(rng: np.random.Generator, x: F32, rows: npt.NDArray[np.int64]) -> F32:
    """Face-ID queries: a new noisy copy of enrolled faces."""
    return unit(x[rows] + 0.3 / np.sqrt(D) * rng.standard_normal((rows.shape[0], D)))


def exact_top(x: F32, uids: list[str], live: npt.NDArray[np.bool_], q: F32,
              k: int) -> list[tuple[str, ...]]:
    """Brute-force top-k UIDs (best face per UID) over the live faces only."""
    out = []
    for qi in q:
        s = x @ qi
        best: dict[str, float] = {}
        for i in np.argsort(-s).tolist():
            if live[i] and uids[i] not in best:
                best[uids[i]] = float(s[i])
                if len(best) == k:
                    break
        out.append(tuple(best))
    return out


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(7)


@pytest.mark.parametrize("kind", [IndexKind.HNSW, IndexKind.IVF, IndexKind.SQ8])
def test_removed_faces_are_never_proposed(kind: IndexKind, rng: np.random.Generator) -> None:
    x, uids = face_data(rng, 1200, 2)
    n = x.shape[0]
    ids = np.arange(n, dtype=np.int64)
    g = Gallery(D, IndexConfig(kind=kind, min_accel_size=500, rebuild_dead_fraction=0.5))
    g.add(x, ids, uids)
    assert g._accel is not None
    # Remove the best face of many queries' UIDs, and a scattering of others: stays
    # below the rebuild threshold, so the graph keeps all those stale entries.
    picks = rng.choice(n, 300, replace=False)
    q = near(rng, x, picks)
    gone = np.unique(np.concatenate([picks[::2], rng.choice(n, 400, replace=False)]))
    assert g.remove_faces(gone) == gone.shape[0]
    assert g._accel.dead_slots == gone.shape[0]  # no rebuild happened
    live = np.ones(n, dtype=bool)
    live[gone] = False
    gone_set = set(gone.tolist())
    results = g.search(q, 5)
    for res in results:
        assert not gone_set & set(res.face_ids.tolist())
        assert len(res) == 5 and len(set(res.uids)) == 5
        for f, s in zip(res.face_ids.tolist(), res.scores.tolist(), strict=True):
            assert uids[f] in res.uids
            assert s == pytest.approx(float(x[f] @ q[results.index(res)]), abs=1e-5)
    want = exact_top(x, uids, live, q, 5)
    top1 = np.mean([r.uids[0] == w[0] for r, w in zip(results, want, strict=True)])
    assert top1 >= 0.97, f"{kind}: top-1 agreement with exact {top1}"
    if kind is not IndexKind.IVF:  # IVF's deeper ranks come from unprobed lists
        top5 = np.mean([r.uids == w for r, w in zip(results, want, strict=True)])
        assert top5 >= 0.9, f"{kind}: top-5 agreement with exact {top5}"
    # A single query goes through the per-thread buffer path: same answer as in a batch.
    for i in range(0, 300, 37):
        assert g.search(q[i : i + 1], 5)[0] == results[i]


def test_hnsw_heavily_filtered_falls_back_to_exact(rng: np.random.Generator) -> None:
    x, uids = face_data(rng, 600, 1)
    ids = np.arange(600, dtype=np.int64)
    g = Gallery(D, IndexConfig(kind=IndexKind.HNSW, min_accel_size=40,
                               rebuild_dead_fraction=10.0, hnsw_ef_search=8))
    g.add(x, ids, uids)
    # Leave 60 faces: a tiny efSearch walk through a graph of dead nodes finds
    # fewer live faces than asked; the gallery must still answer exactly.
    keep = rng.choice(600, 60, replace=False)
    g.remove_faces(np.setdiff1d(ids, keep))
    assert g._accel is not None and g._accel.dead_slots == 540
    live = np.zeros(600, dtype=bool)
    live[keep] = True
    q = near(rng, x, keep)
    # Asking for more UIDs than remain: whether the walk finds every live face or
    # the gallery falls back to a scan, the answer is all of them, exactly ranked.
    assert [r.uids for r in g.search(q, 80)] == exact_top(x, uids, live, q, 80)
    assert [r.uids[0] for r in g.search(q, 3)] == [uids[i] for i in keep]


def test_ef_search_rule() -> None:
    cfg = IndexConfig(kind=IndexKind.HNSW)
    assert cfg.hnsw_ef_search == 0  # automatic by default
    sizes = [1_000, 10_000, 100_000, 1_000_000, 10_000_000, 10**9]
    efs = [cfg.hnsw_ef_for(n, 10) for n in sizes]
    assert efs == sorted(efs) and efs[-1] == EF_MAX
    assert efs[0] == max(EF_MIN, EF_PER_CANDIDATE * 10)
    assert efs[3] >= 2 * efs[2]  # grows with sqrt(n): ~3x per 10x faces mid-range
    assert cfg.hnsw_ef_for(1_000_000, 10) >= 256  # 128 gave recall@1 0.9585 at 1M
    # Deeper candidate lists get a proportionally larger efSearch.
    assert cfg.hnsw_ef_for(10_000, 200) == EF_PER_CANDIDATE * 200
    # A fixed value is honoured, but never below the number of candidates.
    fixed = IndexConfig(kind=IndexKind.HNSW, hnsw_ef_search=40)
    assert fixed.hnsw_ef_for(10**7, 10) == 40
    assert fixed.hnsw_ef_for(10**7, 100) == 100
    with pytest.raises(ValueError):
        IndexConfig(hnsw_ef_search=-1)


def test_gallery_uses_the_rule(rng: np.random.Generator) -> None:
    x, uids = face_data(rng, 500, 3)  # 3 faces per UID: kf = 3k
    g = Gallery(D, IndexConfig(kind=IndexKind.HNSW, min_accel_size=100))
    assert g.hnsw_ef_search(5) is None  # no graph yet
    g.add(x, np.arange(1500, dtype=np.int64), uids)
    assert g.hnsw_ef_search(5) == g.config.hnsw_ef_for(1500, 15)
    g.search(x[:1].copy(), 5)
    # The FAISS parameters the search used carry that efSearch.
    assert g._accel is not None
    used = [p.efSearch for p in g._accel._params.values()]
    assert used == [g.hnsw_ef_search(5)]
    # Growing the graph re-derives it.
    more, more_uids = face_data(rng, 4000, 1)
    g.add(more, np.arange(1500, 5500, dtype=np.int64), [f"v{u}" for u in more_uids])
    assert g.hnsw_ef_search(5) == g.config.hnsw_ef_for(5500, 15)


def test_set_bits_matches_packbits(rng: np.random.Generator) -> None:
    for _ in range(200):
        size = int(rng.integers(1, 200))
        start = int(rng.integers(0, size))
        end = int(rng.integers(start, size + 1))
        bits = np.zeros((size + 7) // 8, dtype=np.uint8)
        set_bits(bits, start, end)
        want = np.zeros(bits.shape[0] * 8, dtype=bool)
        want[start:end] = True
        assert np.array_equal(bits, np.packbits(want, bitorder="little")), (size, start, end)


@pytest.mark.parametrize("kind", [IndexKind.HNSW, IndexKind.SQ8])
def test_snapshot_keeps_removed_faces_out(kind: IndexKind, rng: np.random.Generator,
                                          tmp_path: Path) -> None:
    x, uids = face_data(rng, 800, 1)
    ids = np.arange(800, dtype=np.int64)
    g = Gallery(D, IndexConfig(kind=kind, min_accel_size=200, rebuild_dead_fraction=0.5))
    g.add(x, ids, uids)
    gone = ids[:300:2]
    g.remove_faces(gone)
    g.snapshot(tmp_path / "g.snap", 9)
    h, seq = Gallery.load(tmp_path / "g.snap")
    assert seq == 9 and h._accel is not None
    assert h._accel.dead_slots == gone.shape[0]
    # Query exactly the removed faces: their own vectors must not come back.
    q = x[gone].copy()
    gone_set = set(gone.tolist())
    for a, b in zip(g.search(q, 3), h.search(q, 3), strict=True):
        assert a == b
        assert not gone_set & set(b.face_ids.tolist())
    # New faces added after the load are found (bitmap grown, slots appended).
    new = unit(rng.standard_normal((5, D)))
    h.add(new, np.arange(1000, 1005, dtype=np.int64), [f"n{i}" for i in range(5)])
    assert [r.uids[0] for r in h.search(new, 1)] == [f"n{i}" for i in range(5)]
