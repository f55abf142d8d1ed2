"""The gallery: every enrolled face of one (collection, model), searchable 1:N.

Storage is a compact fp32 row store (rows 0..n-1 are live; removal moves the
last row into the hole) plus per-row face id, UID code and accelerator slot.
The exact search scans the row store with FAISS's brute-force kernel; the
approximate kinds propose candidates from an :class:`Accelerator` which are
then re-scored exactly here. Partition (hint) buckets keep their face ids so
a hinted search touches only the bucket's rows.

Concurrency: many readers, one writer, through :class:`RWLock`. All input
checks happen before the write lock is taken and before any state changes, so
a failed call leaves the gallery untouched and a search never sees half of a
batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import faiss
import numpy as np

from index.accelerator import Accelerator
from index.config import IndexConfig, IndexKind
from index.errors import DuplicateId, InvalidVectors, SnapshotCorrupt, UnknownId
from index.results import SMALL_CANDIDATES, SearchResult, best_per_uid, best_per_uid_small
from index.rwlock import RWLock
from index.slots import SlotTable
from index.snapshot import SnapshotCodec, SnapshotData, read_data, write_data
from index.threads import configure_faiss, omp_threads
from index.validation import (
    F32Array,
    I64Array,
    check_ids,
    check_k,
    check_labels,
    check_matrix,
    check_normalised,
    check_queries,
)

_EMPTY_ROWS = np.empty(0, dtype=np.int64)


class Gallery:
    """L2-normalised float32 face vectors with face ids, UIDs and partition keys."""

    def __init__(self, dim: int, config: IndexConfig | None = None) -> None:
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise InvalidVectors(f"dim must be a positive int, got {dim!r}")
        configure_faiss()
        self.dim = dim
        self.config = config if config is not None else IndexConfig()
        self._lock = RWLock()
        self._n = 0
        self._vecs: F32Array = np.empty((0, dim), dtype=np.float32)
        self._row_face: I64Array = _EMPTY_ROWS.copy()
        self._row_uid: I64Array = _EMPTY_ROWS.copy()
        self._row_slot: I64Array = _EMPTY_ROWS.copy()
        self._face_row: dict[int, int] = {}
        self._face_part: dict[int, str] = {}
        self._part_faces: dict[str, dict[int, None]] = {}
        self._uid_code: dict[str, int] = {}
        self._uid_name: list[str] = []
        self._uid_faces: dict[int, set[int]] = {}
        # Histogram of faces-per-UID gives the exact max, which bounds how many
        # faces must be fetched to be sure of k distinct UIDs.
        self._size_hist: dict[int, int] = {}
        self._max_faces = 0
        self._accel: Accelerator | None = None
        self._slots = SlotTable()
        # efSearch / nprobe per number of candidates; cleared by every write.
        self._accel_param: dict[int, int] = {}

    # ------------------------------------------------------------------ writes

    def add(
        self,
        vectors: np.ndarray,
        face_ids: np.ndarray,
        uids: Sequence[str],
        partitions: Sequence[str | None] | None = None,
    ) -> None:
        """Enrol a batch atomically: all faces become visible together, or none."""
        x = check_matrix(vectors, self.dim, "vectors")
        check_normalised(x, "vectors")
        m = x.shape[0]
        ids = check_ids(face_ids, m)
        uid_list = [str(u) for u in check_labels(uids, m, "uids", allow_none=False)]
        parts = (
            [None] * m
            if partitions is None
            else check_labels(partitions, m, "partitions", allow_none=True)
        )
        if m == 0:
            return
        with self._lock.write():
            present = [int(f) for f in ids if int(f) in self._face_row]
            if present:
                raise DuplicateId(f"face ids already enrolled: {present[:5]}")
            self._ensure_capacity(self._n + m)
            start, end = self._n, self._n + m
            self._vecs[start:end] = x
            self._row_face[start:end] = ids
            codes = np.fromiter(
                (self._intern_uid(u) for u in uid_list), dtype=np.int64, count=m
            )
            self._row_uid[start:end] = codes
            self._row_slot[start:end] = -1
            for i, (f, code, p) in enumerate(zip(ids.tolist(), codes.tolist(), parts, strict=True)):
                self._place(f, start + i, code, p)
            self._n = end
            if self._accel is not None:
                self._accel_append(start, end)
            self._maybe_rebuild()

    def remove_faces(self, face_ids: np.ndarray) -> int:
        """Remove faces by id; unknown ids are ignored. Returns how many were present."""
        ids = check_ids(face_ids, None, unique=False)
        with self._lock.write():
            removed = 0
            for f in np.unique(ids).tolist():
                if f in self._face_row:
                    self._remove_face(f)
                    removed += 1
            if removed:
                self._maybe_rebuild()
            return removed

    def remove_uid(self, uid: str) -> int:
        """Remove every face of `uid`. Returns the number removed (0 if unknown)."""
        if not isinstance(uid, str):
            raise InvalidVectors(f"uid must be a str, got {type(uid).__name__}")
        with self._lock.write():
            code = self._uid_code.get(uid)
            if code is None:
                return 0
            faces = sorted(self._uid_faces[code])
            for f in faces:
                self._remove_face(f)
            self._maybe_rebuild()
            return len(faces)

    def rebuild(self) -> None:
        """Rebuild the approximate structure from the row store (drops stale entries)."""
        with self._lock.write():
            self._build_accel()

    # ------------------------------------------------------------------ reads

    def search(
        self, queries: np.ndarray, k: int, partition: str | None = None
    ) -> list[SearchResult]:
        """Top-k distinct UIDs per query by best cosine score, descending."""
        q = check_queries(queries, self.dim)
        if partition is not None:
            return self.search_partitions(q, k, [partition] * q.shape[0])
        k = check_k(k)
        # acquire/release rather than `with lock.read()`: this is the hot path.
        lock = self._lock
        lock.acquire_read()
        try:
            return self._search_all(q, k)
        finally:
            lock.release_read()

    def search_partitions(
        self, queries: np.ndarray, k: int, partitions: Sequence[str | None]
    ) -> list[SearchResult]:
        """Like search(), with one partition key (or None = whole gallery) per query."""
        q = check_queries(queries, self.dim)
        k = check_k(k)
        parts = check_labels(partitions, q.shape[0], "partitions", allow_none=True)
        out: list[SearchResult] = [SearchResult()] * q.shape[0]
        with self._lock.read():
            unhinted = [i for i, p in enumerate(parts) if p is None]
            if unhinted:
                sub = np.ascontiguousarray(q[unhinted]) if len(unhinted) < q.shape[0] else q
                for i, res in zip(unhinted, self._search_all(sub, k), strict=True):
                    out[i] = res
            for i, p in enumerate(parts):
                if p is not None:
                    out[i] = self._search_bucket(q[i], k, p)
        return out

    def count(self) -> int:
        # Under the read lock: a removal updates the count face by face.
        with self._lock.read():
            return self._n

    def count_uids(self) -> int:
        with self._lock.read():
            return len(self._uid_code)

    def count_partitions(self) -> int:
        """Partition (hint) buckets holding at least one face."""
        with self._lock.read():
            return len(self._part_faces)

    def __len__(self) -> int:
        return self._n

    def __contains__(self, face_id: object) -> bool:
        if isinstance(face_id, bool) or not isinstance(face_id, int | np.integer):
            return False
        with self._lock.read():
            return int(face_id) in self._face_row

    def face_ids(self) -> I64Array:
        with self._lock.read():
            return self._row_face[: self._n].copy()

    def uids(self) -> list[str]:
        with self._lock.read():
            return sorted(self._uid_code)

    def uid_of(self, face_id: int) -> str:
        with self._lock.read():
            row = self._face_row.get(int(face_id))
            if row is None:
                raise UnknownId(f"face id {face_id} is not enrolled")
            return self._uid_name[int(self._row_uid[row])]

    def uids_of(self, face_ids: np.ndarray) -> list[str | None]:
        """UID of each face id (None where the face is not enrolled)."""
        ids = check_ids(face_ids, None, unique=False)
        with self._lock.read():
            rows = [self._face_row.get(f) for f in ids.tolist()]
            return [None if r is None else self._uid_name[int(self._row_uid[r])] for r in rows]

    def faces_of(self, uid: str) -> I64Array:
        """Face ids of `uid`, ascending. Raises UnknownId."""
        with self._lock.read():
            code = self._uid_code.get(uid)
            if code is None:
                raise UnknownId(f"uid {uid!r} is not enrolled")
            return np.array(sorted(self._uid_faces[code]), dtype=np.int64)

    def partition_of(self, face_id: int) -> str | None:
        with self._lock.read():
            if int(face_id) not in self._face_row:
                raise UnknownId(f"face id {face_id} is not enrolled")
            return self._face_part.get(int(face_id))

    def vectors_of(self, face_ids: np.ndarray) -> F32Array:
        """Copies of the stored vectors, in the order given. Raises UnknownId."""
        ids = check_ids(face_ids, None, unique=False)
        with self._lock.read():
            try:
                rows = [self._face_row[f] for f in ids.tolist()]
            except KeyError as exc:
                raise UnknownId(f"face id {exc.args[0]} is not enrolled") from None
            return self._vecs[rows].copy()

    def memory_bytes(self) -> int:
        """Approximate resident bytes of the numeric state (not Python dicts)."""
        with self._lock.read():
            total = self._vecs.nbytes + 3 * self._row_face.nbytes + self._slots.nbytes()
            if self._accel is not None:
                total += self._accel.memory_bytes()
            return total

    # ------------------------------------------------------------ persistence

    def snapshot(
        self, path: Path | str, sequence: int, *, codec: SnapshotCodec | None = None
    ) -> None:
        """Write an atomic, checksummed snapshot that includes store `sequence`
        (its bytes wrapped by `codec`, e.g. encrypted, when given)."""
        if isinstance(sequence, bool) or not isinstance(sequence, int) or sequence < 0:
            raise InvalidVectors(f"sequence must be a non-negative int, got {sequence!r}")
        write_data(Path(path), self.export(sequence), codec)

    @classmethod
    def load(
        cls, path: Path | str, *, codec: SnapshotCodec | None = None
    ) -> tuple[Gallery, int]:
        """Load a snapshot; returns (gallery, sequence). Raises SnapshotCorrupt."""
        data = read_data(Path(path), codec)
        try:
            gallery = cls.from_data(data)
        except SnapshotCorrupt:
            raise
        except Exception as exc:
            raise SnapshotCorrupt(f"{path}: cannot rebuild gallery: {exc}") from exc
        return gallery, data.sequence

    def export(self, sequence: int) -> SnapshotData:
        """A consistent copy of the state for a snapshot, recording store `sequence` (taken
        under the read lock, so writers wait only for the copy, not for the disk)."""
        with self._lock.read():
            n = self._n
            live_codes, uid_codes = np.unique(self._row_uid[:n], return_inverse=True)
            part_names = sorted(self._part_faces)
            part_index = {p: i for i, p in enumerate(part_names)}
            face_part = self._face_part
            part_codes = np.fromiter(
                (part_index[face_part[f]] if f in face_part else -1
                 for f in self._row_face[:n].tolist()),
                dtype=np.int64, count=n,
            )
            accel = self._accel
            return SnapshotData(
                dim=self.dim,
                sequence=sequence,
                config=self.config,
                vectors=self._vecs[:n].copy(),
                face_ids=self._row_face[:n].copy(),
                uid_codes=uid_codes.astype(np.int64).reshape(n),
                uids=[self._uid_name[c] for c in live_codes.tolist()],
                part_codes=part_codes,
                partitions=part_names,
                row_slot=self._row_slot[:n].copy(),
                accel_blob=None if accel is None else accel.serialize(),
                accel_trained_size=0 if accel is None else accel.trained_size,
            )

    @classmethod
    def from_data(cls, data: SnapshotData) -> Gallery:
        """A gallery rebuilt from verified snapshot arrays (``index.snapshot.read_data``)."""
        g = cls(data.dim, data.config)
        n = data.face_ids.shape[0]
        if n == 0:
            return g
        parts: list[str | None] = [
            None if c < 0 else data.partitions[c] for c in data.part_codes.tolist()
        ]
        uids = [data.uids[c] for c in data.uid_codes.tolist()]
        g._ensure_capacity(n)
        g._vecs[:n] = data.vectors
        g._row_face[:n] = data.face_ids
        g._row_slot[:n] = -1
        codes = np.fromiter((g._intern_uid(u) for u in uids), dtype=np.int64, count=n)
        g._row_uid[:n] = codes
        for row, (f, code, p) in enumerate(
            zip(data.face_ids.tolist(), codes.tolist(), parts, strict=True)
        ):
            g._place(f, row, code, p)
        g._n = n
        if data.accel_blob is not None and g.config.kind is not IndexKind.FLAT:
            accel = Accelerator.deserialize(g.config.kind, data.accel_blob,
                                            data.accel_trained_size)
            slots = data.row_slot
            total = accel.ntotal
            live = slots >= 0
            if slots.max() >= total or np.unique(slots[live]).shape[0] != int(live.sum()):
                raise SnapshotCorrupt("accelerator slots out of range or duplicated")
            accel.set_live(slots[live])
            g._accel = accel
            g._row_slot[:n] = slots
            g._slots.restore(total, slots, g._row_uid[:n], g._row_face[:n])
        g._maybe_rebuild()
        return g

    # --------------------------------------------------------------- internals

    def _search_all(self, q: F32Array, k: int) -> list[SearchResult]:
        n_q = q.shape[0]
        if self._n == 0 or n_q == 0:
            return [SearchResult() for _ in range(n_q)]
        kf = min(self._n, k * self._max_faces)
        cfg = self.config
        if n_q < cfg.parallel_batch_min or cfg.batch_threads == 1:
            # Same policy as omp_threads() without its context-manager cost.
            faiss.omp_set_num_threads(1)
            return self._search_all_threaded(q, k, kf)
        with omp_threads(n_q, cfg.parallel_batch_min, cfg.batch_threads):
            return self._search_all_threaded(q, k, kf)

    def _search_all_threaded(self, q: F32Array, k: int, kf: int) -> list[SearchResult]:
        accel = self._accel
        if accel is None:
            dist, rows = faiss.knn(q, self._vecs[: self._n], kf, faiss.METRIC_INNER_PRODUCT)
            return [self._collapse(dist[i], rows[i], k) for i in range(q.shape[0])]
        param = self._accel_param.get(kf)
        if param is None:
            param = self._accel_param_for(accel, kf)
        if not accel.exact_scores:
            # Quantised scores: over-fetch, then re-score exactly in fp32.
            dist, slots = accel.search(q, kf * self.config.rerank_factor, param)
            return [self._from_quantised(q[i], slots[i], k, kf) for i in range(q.shape[0])]
        # fp32-storage kinds return exact scores, and their top-kf is the same
        # whether or not more is fetched; removed faces are filtered inside FAISS.
        if q.shape[0] == 1:
            dist1, slots1 = accel.search_one(q, kf, param)
            return [self._from_exact(q, dist1, slots1, k, kf)]
        dist, slots = accel.search(q, kf, param)
        return [self._from_exact(q[i : i + 1], dist[i], slots[i], k, kf)
                for i in range(q.shape[0])]

    def _accel_param_for(self, accel: Accelerator, kf: int) -> int:
        cfg = self.config
        if accel.kind is IndexKind.HNSW:
            param = cfg.hnsw_ef_for(accel.ntotal, kf)
        elif accel.kind is IndexKind.IVF:
            param = cfg.ivf_nprobe
        else:
            param = 0
        self._accel_param[kf] = param
        return param

    def hnsw_ef_search(self, k: int) -> int | None:
        """The efSearch a top-k search uses now (None unless an HNSW graph is built)."""
        with self._lock.read():
            accel = self._accel
            if accel is None or accel.kind is not IndexKind.HNSW:
                return None
            return self.config.hnsw_ef_for(accel.ntotal, min(self._n, k * self._max_faces))

    def _from_exact(self, query: F32Array, dist: F32Array, slots: I64Array,
                    k: int, kf: int) -> SearchResult:
        """One query's exact-scored candidates (live slots, best first) -> top-k UIDs.

        `dist` and `slots` may be views of a reused buffer: nothing here keeps them.
        """
        slot_list = slots.tolist()
        found = len(slot_list)
        if slot_list and slot_list[-1] < 0:
            # FAISS pads a short result with -1 at the end.
            while found and slot_list[found - 1] < 0:
                found -= 1
            slots, dist = slots[:found], dist[:found]
        table = self._slots
        codes = table.uid[slots].tolist()
        if self._max_faces == 1:
            # One face per UID: the first k candidates are k distinct UIDs.
            picked: list[int] | range = range(min(k, found))
        else:
            seen: set[int] = set()
            picked = []
            for i, c in enumerate(codes):
                if c not in seen:
                    seen.add(c)
                    picked.append(i)
                    if len(picked) == k:
                        break
        # Python lists, then one small array each: cheaper than numpy fancy
        # indexing with a list (this runs once per query).
        names = self._uid_name
        scores = dist.tolist()
        res = SearchResult(
            uids=tuple([names[codes[i]] for i in picked]),
            scores=np.array([scores[i] for i in picked], dtype=np.float32),
            face_ids=table.face.take([slot_list[i] for i in picked]),
        )
        if len(res) < k and found < kf and len(res) < len(self._uid_code):
            # FAISS found fewer live candidates than asked for (a small or heavily
            # filtered graph): answer with an exact scan instead.
            return self._exact_one(query, k, kf)
        return res

    def _from_quantised(self, query: F32Array, slots: I64Array, k: int, kf: int) -> SearchResult:
        """One query's approximate candidates -> re-scored exactly -> top-k UIDs."""
        slots = slots[slots >= 0]
        rows = self._slots.row[slots]
        rows = rows[rows >= 0]  # dead slots are filtered by FAISS; this is belt and braces
        res = self._rescore(query, rows, k)
        if len(res) < k and rows.shape[0] < self._n and len(res) < len(self._uid_code):
            return self._exact_one(query[None, :], k, kf)
        return res

    def _exact_one(self, query: F32Array, k: int, kf: int) -> SearchResult:
        exact_d, exact_rows = faiss.knn(query, self._vecs[: self._n], kf,
                                        faiss.METRIC_INNER_PRODUCT)
        return self._collapse(exact_d[0], exact_rows[0], k)

    def _search_bucket(self, query: F32Array, k: int, partition: str) -> SearchResult:
        faces = self._part_faces.get(partition)
        if not faces:
            return SearchResult()
        face_row = self._face_row
        rows = np.fromiter((face_row[f] for f in faces), dtype=np.int64, count=len(faces))
        return self._rescore(query, rows, k)

    def _rescore(self, query: F32Array, rows: I64Array, k: int) -> SearchResult:
        """Exact scores of the given rows, collapsed to the top-k UIDs."""
        if rows.shape[0] == 0:
            return SearchResult()
        scores = self._vecs[rows] @ query
        order = np.argsort(-scores, kind="stable")
        return self._collapse(scores[order], rows[order], k)

    def _collapse_lists(self, scores: list[float], rows: list[int], k: int) -> SearchResult:
        """_collapse for a short candidate list given as Python lists (rows < 0 skipped)."""
        if not rows:
            return SearchResult()
        row_uid = self._row_uid
        codes = row_uid[rows].tolist()  # rows of -1 read a garbage code, skipped below
        best_codes, best_scores, best_rows = best_per_uid_small(scores, rows, codes, k)
        names = self._uid_name
        return SearchResult(
            uids=tuple([names[c] for c in best_codes]),
            scores=np.array(best_scores, dtype=np.float32),
            face_ids=self._row_face[best_rows] if best_rows else np.empty(0, dtype=np.int64),
        )

    def _collapse(self, scores: F32Array, rows: I64Array, k: int) -> SearchResult:
        if rows.shape[0] <= SMALL_CANDIDATES:
            return self._collapse_lists(scores.tolist(), rows.tolist(), k)
        codes, best, best_rows = best_per_uid(
            scores, rows, self._row_uid, k, one_face_per_uid=self._max_faces == 1
        )
        names = self._uid_name
        return SearchResult(
            uids=tuple([names[c] for c in codes.tolist()]),
            scores=best,
            face_ids=self._row_face[best_rows],
        )

    def _intern_uid(self, uid: str) -> int:
        code = self._uid_code.get(uid)
        if code is None:
            code = len(self._uid_name)
            self._uid_name.append(uid)
            self._uid_code[uid] = code
            self._uid_faces[code] = set()
        return code

    def _place(self, face: int, row: int, code: int, partition: str | None) -> None:
        """Book face `face` at `row` under uid code `code` (its vector is already there)."""
        self._face_row[face] = row
        self._track_uid_size(code, +1)
        self._uid_faces[code].add(face)
        if partition is not None:
            self._face_part[face] = partition
            self._part_faces.setdefault(partition, {})[face] = None

    def _track_uid_size(self, code: int, delta: int) -> None:
        old = len(self._uid_faces[code])
        new = old + delta
        hist = self._size_hist
        if old:
            hist[old] -= 1
            if not hist[old]:
                del hist[old]
        if new:
            hist[new] = hist.get(new, 0) + 1
        if new > self._max_faces:
            self._max_faces = new
        elif old == self._max_faces and old not in hist:
            self._max_faces = max(hist, default=0)

    def _remove_face(self, face: int) -> None:
        row = self._face_row.pop(face)
        code = int(self._row_uid[row])
        self._track_uid_size(code, -1)
        faces = self._uid_faces[code]
        faces.discard(face)
        if not faces:
            del self._uid_faces[code]
            del self._uid_code[self._uid_name[code]]
        part = self._face_part.pop(face, None)
        if part is not None:
            bucket = self._part_faces[part]
            del bucket[face]
            if not bucket:
                del self._part_faces[part]
        slot = int(self._row_slot[row])
        if slot >= 0 and self._accel is not None:
            self._slots.row[slot] = -1
            self._accel.kill(slot)
        last = self._n - 1
        if row != last:
            # Keep rows compact: move the last row into the hole.
            self._vecs[row] = self._vecs[last]
            moved = int(self._row_face[last])
            self._row_face[row] = moved
            self._row_uid[row] = self._row_uid[last]
            moved_slot = int(self._row_slot[last])
            self._row_slot[row] = moved_slot
            if moved_slot >= 0:
                self._slots.row[moved_slot] = row
            self._face_row[moved] = row
        self._n = last

    def _ensure_capacity(self, needed: int) -> None:
        cap = self._vecs.shape[0]
        if needed <= cap:
            return
        new_cap = max(needed, cap + cap // 2, 1024)
        vecs = np.empty((new_cap, self.dim), dtype=np.float32)
        vecs[: self._n] = self._vecs[: self._n]
        self._vecs = vecs
        for name in ("_row_face", "_row_uid", "_row_slot"):
            old = getattr(self, name)
            new = np.full(new_cap, -1, dtype=np.int64)
            new[: self._n] = old[: self._n]
            setattr(self, name, new)

    def _accel_append(self, start: int, end: int) -> None:
        assert self._accel is not None
        first = self._accel.ntotal
        with omp_threads(1, 1, self.config.batch_threads):
            self._accel.add(self._vecs[start:end])
        self._row_slot[start:end] = np.arange(first, first + end - start, dtype=np.int64)
        self._slots.append(first, start, self._row_uid[start:end], self._row_face[start:end])
        self._accel_param.clear()

    def _maybe_rebuild(self) -> None:
        cfg = self.config
        if cfg.kind is IndexKind.FLAT:
            return
        if self._accel is None:
            if self._n >= cfg.min_accel_size:
                self._build_accel()
            return
        if self._n < cfg.min_accel_size // 2:
            self._drop_accel()
        else:
            too_many_dead = self._accel.dead_slots > cfg.rebuild_dead_fraction * max(self._n, 1)
            # IVF lists trained on a much smaller gallery become unbalanced.
            outgrown = cfg.kind is IndexKind.IVF and self._n > 4 * self._accel.trained_size
            if too_many_dead or outgrown:
                self._build_accel()

    def _build_accel(self) -> None:
        if self.config.kind is IndexKind.FLAT or self._n < self.config.min_accel_size:
            self._drop_accel()
            return
        with omp_threads(1, 1, self.config.batch_threads):
            self._accel = Accelerator.build(
                self.config.kind, self.dim, self.config, self._vecs[: self._n]
            )
        self._row_slot[: self._n] = np.arange(self._n, dtype=np.int64)
        self._slots.reset(self._row_uid[: self._n], self._row_face[: self._n])
        self._accel_param.clear()

    def _drop_accel(self) -> None:
        self._accel = None
        self._row_slot[: self._n] = -1
        self._slots.clear()
        self._accel_param.clear()
