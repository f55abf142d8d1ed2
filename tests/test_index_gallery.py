"""Gallery semantics: boundary checks, top-k by UID, removal, partitions, index kinds."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from index import (
    DimensionMismatch,
    DuplicateId,
    Gallery,
    GalleryError,
    IndexConfig,
    IndexKind,
    InvalidVectors,
    SearchResult,
    UnknownId,
    recommended_kind,
)

F32 = npt.NDArray[np.float32]
DIM = 32


def unit(rng: np.random.Generator, n: int, d: int = DIM) -> F32:
    x = rng.standard_normal((n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def clustered(
    rng: np.random.Generator, n_ids: int, per_id: int, d: int = DIM, noise: float = 0.25
) -> tuple[F32, list[str]]:
    """Face-like data: each UID's faces are noisy copies of one centre."""
    centres = unit(rng, n_ids, d)
    x = np.repeat(centres, per_id, axis=0) + noise / np.sqrt(d) * rng.standard_normal(
        (n_ids * per_id, d)
    ).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x, dtype=np.float32), [f"u{i // per_id}" for i in range(len(x))]


def brute_force(
    x: F32, ids: npt.NDArray[np.int64], uids: list[str], q: F32, k: int
) -> list[tuple[str, ...]]:
    """Reference top-k-by-UID: best score per UID, then the k best UIDs."""
    out = []
    for qi in q:
        s = x @ qi
        best: dict[str, float] = {}
        for score, u in zip(s.tolist(), uids, strict=True):
            if score > best.get(u, -np.inf):
                best[u] = score
        ranked = sorted(best.items(), key=lambda kv: -kv[1])[:k]
        out.append(tuple(u for u, _ in ranked))
    return out


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(42)


# ---------------------------------------------------------------- validation


def test_rejects_bad_inputs(rng: np.random.Generator) -> None:
    g = Gallery(DIM)
    x = unit(rng, 4)
    ids = np.arange(4, dtype=np.int64)
    uids = ["a", "b", "c", "d"]
    with pytest.raises(InvalidVectors, match="float32"):
        g.add(x.astype(np.float64), ids, uids)
    with pytest.raises(DimensionMismatch):
        g.add(unit(rng, 4, DIM + 1), ids, uids)
    with pytest.raises(InvalidVectors, match="contiguous"):
        g.add(np.asfortranarray(x), ids, uids)
    with pytest.raises(InvalidVectors, match="2-D"):
        g.add(x[0], ids[:1], uids[:1])
    bad = x.copy()
    bad[2, 3] = np.nan
    with pytest.raises(InvalidVectors, match="row 2"):
        g.add(bad, ids, uids)
    bad[2, 3] = np.inf
    with pytest.raises(InvalidVectors, match="NaN or inf"):
        g.add(bad, ids, uids)
    with pytest.raises(InvalidVectors, match="normalised"):
        g.add(x * 2, ids, uids)
    with pytest.raises(InvalidVectors, match="int64"):
        g.add(x, ids.astype(np.int32), uids)
    with pytest.raises(InvalidVectors, match=">= 0"):
        g.add(x, ids - 1, uids)
    with pytest.raises(InvalidVectors, match="entries"):
        g.add(x, ids[:3], uids)
    with pytest.raises(InvalidVectors, match="uids"):
        g.add(x, ids, ["a", "b", "", "d"])
    with pytest.raises(InvalidVectors, match="partitions"):
        g.add(x, ids, uids, ["p", None, 3, "q"])  # type: ignore[list-item]
    with pytest.raises(DuplicateId):
        g.add(x, np.array([1, 2, 2, 3], dtype=np.int64), uids)
    assert g.count() == 0  # nothing was half-applied
    g.add(x, ids, uids)
    with pytest.raises(DuplicateId, match="already enrolled"):
        g.add(unit(rng, 2), np.array([10, 3], dtype=np.int64), ["e", "f"])
    assert g.count() == 4 and 10 not in g
    with pytest.raises(InvalidVectors, match="k must"):
        g.search(x, 0)
    with pytest.raises(DimensionMismatch):
        g.search(unit(rng, 1, 8), 1)
    with pytest.raises(InvalidVectors, match="entries"):
        g.search_partitions(x, 1, ["a"])
    with pytest.raises(InvalidVectors):
        Gallery(0)
    assert issubclass(DimensionMismatch, GalleryError)
    assert issubclass(UnknownId, KeyError)


def test_empty_gallery_and_empty_bucket_results(rng: np.random.Generator) -> None:
    g = Gallery(DIM)
    q = unit(rng, 3)
    for res in g.search(q, 5) + g.search(q, 5, partition="1234"):
        assert res.uids == ()
        assert res.scores.dtype == np.float32 and res.scores.shape == (0,)
        assert res.face_ids.dtype == np.int64 and res.face_ids.shape == (0,)
    assert g.search(np.empty((0, DIM), np.float32), 3) == []
    g.add(q, np.arange(3, dtype=np.int64), ["a", "b", "c"], ["p1", "p1", None])
    assert g.search(q[:1], 2, partition="nope")[0] == SearchResult()


# ---------------------------------------------------------------- semantics


def test_top_k_by_uid_counts_each_uid_once(rng: np.random.Generator) -> None:
    x, uids = clustered(rng, 50, 6)
    ids = np.arange(len(x), dtype=np.int64) * 10
    g = Gallery(DIM)
    g.add(x, ids, uids)
    q = x[::37].copy()
    res = g.search(q, 5)
    assert len(res) == q.shape[0]
    assert [r.uids for r in res] == brute_force(x, ids, uids, q, 5)
    for r, qi in zip(res, q, strict=True):
        assert len(set(r.uids)) == len(r.uids) == 5
        assert np.all(np.diff(r.scores) <= 0)
        # The reported face is that UID's best face, with its exact score.
        for u, s, f in zip(r.uids, r.scores, r.face_ids, strict=True):
            assert g.uid_of(int(f)) == u
            assert s == pytest.approx(float(x[f // 10] @ qi), abs=1e-5)
            own = g.faces_of(u) // 10
            assert s == pytest.approx(float((x[own] @ qi).max()), abs=1e-5)


def test_k_larger_than_uid_count_returns_all_uids(rng: np.random.Generator) -> None:
    x, uids = clustered(rng, 3, 4)
    g = Gallery(DIM)
    g.add(x, np.arange(12, dtype=np.int64), uids)
    res = g.search(x[:1], 10)[0]
    assert sorted(res.uids) == ["u0", "u1", "u2"]
    assert res.uids[0] == "u0" and res.face_ids[0] == 0


def test_skewed_faces_per_uid_still_gives_k_distinct(rng: np.random.Generator) -> None:
    # One UID with many faces right next to the query must not crowd out the rest.
    centre = unit(rng, 1)
    crowd = centre + 0.01 * unit(rng, 40)
    crowd /= np.linalg.norm(crowd, axis=1, keepdims=True)
    others = unit(rng, 20)
    x = np.ascontiguousarray(np.vstack([crowd, others]), dtype=np.float32)
    uids = ["crowd"] * 40 + [f"o{i}" for i in range(20)]
    g = Gallery(DIM)
    g.add(x, np.arange(60, dtype=np.int64), uids)
    res = g.search(centre, 4)[0]
    assert res.uids[0] == "crowd" and len(res.uids) == 4
    assert list(res.uids) == list(brute_force(x, np.arange(60), uids, centre, 4)[0])


def test_remove_faces_and_uid(rng: np.random.Generator) -> None:
    x, uids = clustered(rng, 20, 3)
    ids = np.arange(100, 160, dtype=np.int64)
    g = Gallery(DIM)
    g.add(x, ids, uids, [f"p{i % 4}" for i in range(60)])
    assert g.count() == 60 and g.count_uids() == 20
    assert g.remove_faces(np.array([100, 101, 999], dtype=np.int64)) == 2
    assert 100 not in g and 102 in g and g.count() == 58
    assert g.search(x[:1], 1)[0].face_ids[0] == 102  # last face of u0
    assert g.remove_uid("u0") == 1 and g.count_uids() == 19
    assert "u0" not in g.search(x[:1], 20)[0].uids
    assert g.remove_uid("u0") == 0
    with pytest.raises(UnknownId):
        g.faces_of("u0")
    with pytest.raises(UnknownId):
        g.uid_of(100)
    assert g.uids_of(np.array([103, 100], dtype=np.int64)) == ["u1", None]
    np.testing.assert_array_equal(g.vectors_of(np.array([159], dtype=np.int64)), x[59:60])
    # Removal of the remaining faces leaves a working, empty gallery.
    assert g.remove_faces(g.face_ids()) == 57
    assert g.count() == 0 and g.count_uids() == 0
    assert g.search(x[:2], 3) == [SearchResult(), SearchResult()]
    g.add(x[:1].copy(), np.array([100], dtype=np.int64), ["again"], ["p0"])
    assert g.search(x[:1], 1, partition="p0")[0].uids == ("again",)


def test_remove_keeps_rows_consistent(rng: np.random.Generator) -> None:
    """Random interleaved adds/removes against a dict model, exact results each step."""
    g = Gallery(DIM)
    model: dict[int, tuple[F32, str, str | None]] = {}
    next_id = 0
    for step in range(60):
        if step % 3 != 2 or len(model) < 10:
            n = int(rng.integers(1, 20))
            x = unit(rng, n)
            ids = np.arange(next_id, next_id + n, dtype=np.int64)
            us = [f"u{int(v)}" for v in rng.integers(0, 15, n)]
            ps = [None if v == 0 else f"p{int(v)}" for v in rng.integers(0, 4, n)]
            g.add(x, ids, us, ps)
            for i in range(n):
                model[next_id + i] = (x[i], us[i], ps[i])
            next_id += n
        else:
            victims = rng.choice(sorted(model), size=min(len(model), 7), replace=False)
            assert g.remove_faces(victims.astype(np.int64)) == len(victims)
            for v in victims.tolist():
                del model[v]
        ids = np.array(sorted(model), dtype=np.int64)
        xs = np.stack([model[i][0] for i in ids.tolist()]).astype(np.float32)
        us = [model[i][1] for i in ids.tolist()]
        q = unit(rng, 3)
        assert [r.uids for r in g.search(q, 4)] == brute_force(xs, ids, us, q, 4)
        np.testing.assert_array_equal(np.sort(g.face_ids()), ids)
        for p in ("p1", "p2", "p3"):
            sel = [i for i, f in enumerate(ids.tolist()) if model[f][2] == p]
            want = brute_force(xs[sel], ids[sel], [us[i] for i in sel], q, 4)
            assert [r.uids for r in g.search(q, 4, partition=p)] == want


def test_partition_search_equals_filtered_brute_force(rng: np.random.Generator) -> None:
    x, uids = clustered(rng, 400, 3)
    n = len(x)
    ids = np.arange(n, dtype=np.int64) + 5000
    parts: list[str | None] = [f"{int(v):04d}" for v in rng.integers(0, 30, n)]
    parts[::11] = [None] * len(parts[::11])
    g = Gallery(DIM)
    g.add(x, ids, uids, parts)
    q = unit(rng, 25)
    hints: list[str | None] = [f"{i % 30:04d}" for i in range(24)] + [None]
    res = g.search_partitions(q, 3, hints)
    for i, hint in enumerate(hints):
        sel = [j for j in range(n) if hint is None or parts[j] == hint]
        want = brute_force(x[sel], ids[sel], [uids[j] for j in sel], q[i : i + 1], 3)[0]
        assert res[i].uids == want
        for f in res[i].face_ids.tolist():
            assert hint is None or g.partition_of(f) == hint
    assert g.search(q[1:2], 3, partition="0001") == [res[1]]
    assert g.search_partitions(q[:2], 3, [None, "0001"]) == [g.search(q[:1], 3)[0], res[1]]


# ---------------------------------------------------------------- index kinds


@pytest.mark.parametrize("kind", [k for k in IndexKind if k is not IndexKind.FLAT])
def test_approximate_kinds_high_recall(kind: IndexKind, rng: np.random.Generator) -> None:
    d = 64
    x, uids = clustered(rng, 1500, 2, d=d, noise=0.5)
    ids = np.arange(len(x), dtype=np.int64)
    parts = [f"p{i % 97}" for i in range(len(x))]
    cfg = IndexConfig(kind=kind, min_accel_size=1000, ivf_nprobe=16)
    g = Gallery(d, cfg)
    g.add(x[:500], ids[:500], uids[:500], parts[:500])  # below min_accel_size: exact
    g.add(x[500:], ids[500:], uids[500:], parts[500:])  # crosses it: builds the index
    assert g._accel is not None
    # Face-ID queries: noisy copies of enrolled faces.
    picks = rng.choice(len(x), 200, replace=False)
    q = x[picks] + 0.3 / np.sqrt(d) * rng.standard_normal((200, d)).astype(np.float32)
    q = np.ascontiguousarray(q / np.linalg.norm(q, axis=1, keepdims=True), dtype=np.float32)
    exact = Gallery(d)
    exact.add(x, ids, uids)
    want = [r.uids[0] for r in exact.search(q, 1)]
    got = g.search(q, 1)
    recall = np.mean([r.uids[0] == w for r, w in zip(got, want, strict=True)])
    assert recall >= 0.97, f"{kind}: recall@1 {recall}"
    # Scores are exact (re-scored in fp32) whatever the kind.
    for r in got[:20]:
        f = int(r.face_ids[0])
        assert r.scores[0] == pytest.approx(float(x[f] @ q[got.index(r)]), abs=1e-5)
    # Removal is honoured even though HNSW keeps stale entries.
    victim = want[0]
    g.remove_uid(victim)
    assert victim not in g.search(q[:1], 5)[0].uids
    # Many removals trigger a rebuild and results stay right.
    before = g.count()
    removed = g.remove_faces(ids[: len(ids) // 2])
    assert removed > 0 and g.count() == before - removed
    assert g._accel is not None
    assert g._accel.dead_slots <= cfg.rebuild_dead_fraction * g.count()
    res = g.search(x[-5:].copy(), 1)
    assert [r.uids[0] for r in res] == uids[-5:]
    assert g.search(x[-1:].copy(), 1, partition=parts[-1])[0].uids == (uids[-1],)


def test_ivf_retrains_when_outgrown(rng: np.random.Generator) -> None:
    g = Gallery(DIM, IndexConfig(kind=IndexKind.IVF, min_accel_size=400))
    x = unit(rng, 2000)
    g.add(x[:400], np.arange(400, dtype=np.int64), [f"u{i}" for i in range(400)])
    assert g._accel is not None and g._accel.trained_size == 400
    g.add(x[400:], np.arange(400, 2000, dtype=np.int64), [f"u{i}" for i in range(400, 2000)])
    assert g._accel.trained_size == 2000
    assert g.search(x[1999:], 1)[0].uids == ("u1999",)


def test_config_and_rule() -> None:
    assert IndexConfig().kind is IndexKind.FLAT
    assert IndexConfig(kind="hnsw").kind is IndexKind.HNSW  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        IndexConfig(kind="annoy")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        IndexConfig(rerank_factor=0)
    assert IndexConfig.from_dict(IndexConfig(kind=IndexKind.SQ8).to_dict()).kind is IndexKind.SQ8
    assert recommended_kind(10_000) is IndexKind.FLAT
    assert recommended_kind(5_000_000) is IndexKind.HNSW
    assert recommended_kind(5_000_000, memory_tight=True) is IndexKind.SQ8
