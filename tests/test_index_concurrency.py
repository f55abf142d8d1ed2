"""Many readers + one writer against a reference model of what must be visible.

The writer enrols and removes *groups* of 4 near-identical faces. A group is
either 4 distinct UIDs (added and removed by face id) or 1 UID with 4 faces of
decreasing quality (removed with remove_uid). Readers query a group's centre
and check, against the writer's log:

* nothing of a group whose removal had *returned* before the search started;
* nothing of a group whose add had not *started* by the end of the search;
* all or nothing: 0 or 4 UIDs of a 4-UID group (no half-applied add/remove),
  and for a 1-UID group its best face (face 0, removed first) or nothing;
* (exact index) everything of a group added before the search started whose
  removal had not started by the end of the search;
* gallery counts always equal background + 4 x live groups.
"""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import pytest

from index import Gallery, IndexConfig, IndexKind, SearchResult

DIM = 64
BACKGROUND = 3000
GROUP = 4
HIT = 0.9  # group faces score > 0.99 with their centre; background < 0.6


@dataclass
class Log:
    lock: threading.Lock = field(default_factory=threading.Lock)
    add_started: set[int] = field(default_factory=set)
    add_done: set[int] = field(default_factory=set)
    remove_started: set[int] = field(default_factory=set)
    remove_done: set[int] = field(default_factory=set)
    groups: int = 0

    def view(self) -> tuple[set[int], set[int], set[int], set[int]]:
        with self.lock:
            return (
                set(self.add_started),
                set(self.add_done),
                set(self.remove_started),
                set(self.remove_done),
            )


def unit(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    out = x / np.linalg.norm(x, axis=-1, keepdims=True)
    return np.ascontiguousarray(out, dtype=np.float32)


def group_data(
    centres: npt.NDArray[np.float32], b: int
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64], list[str]]:
    rng = np.random.default_rng(10_000 + b)
    noise = rng.standard_normal((GROUP, DIM)).astype(np.float32)
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    # Face j is (j+1)*0.02 away from the centre, so face 0 is always the best match.
    steps = (0.02 * np.arange(1, GROUP + 1, dtype=np.float32))[:, None]
    x = unit(centres[b] + steps * noise)
    ids = np.arange(b * GROUP, (b + 1) * GROUP, dtype=np.int64) + 10**6
    uids = [f"g{b}-{j}" for j in range(GROUP)] if b % 2 == 0 else [f"g{b}"] * GROUP
    return x, ids, uids


def run_stress(kind: IndexKind, ops: int, readers: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_groups = ops
    centres = unit(rng.standard_normal((n_groups, DIM)).astype(np.float32))
    g = Gallery(DIM, IndexConfig(kind=kind, min_accel_size=1000, rebuild_dead_fraction=0.05))
    bg = unit(rng.standard_normal((BACKGROUND, DIM)).astype(np.float32))
    g.add(bg, np.arange(BACKGROUND, dtype=np.int64), [f"bg{i}" for i in range(BACKGROUND)])
    log = Log()
    stop = threading.Event()
    errors: list[str] = []
    checks = [0]

    def writer() -> None:
        wr = np.random.default_rng(seed + 1)
        live: list[int] = []
        try:
            for _ in range(ops):
                if live and (wr.random() < 0.45 or log.groups >= n_groups):
                    b = live.pop(int(wr.integers(len(live))))
                    with log.lock:
                        log.remove_started.add(b)
                    _, ids, uids = group_data(centres, b)
                    removed = g.remove_faces(ids) if b % 2 == 0 else g.remove_uid(uids[0])
                    assert removed == GROUP
                    with log.lock:
                        log.remove_done.add(b)
                else:
                    b = log.groups
                    x, ids, uids = group_data(centres, b)
                    with log.lock:
                        log.add_started.add(b)
                        log.groups += 1
                    g.add(x, ids, uids, [f"g{b}"] * GROUP)
                    with log.lock:
                        log.add_done.add(b)
                    live.append(b)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(f"writer: {exc!r}")
        finally:
            stop.set()

    def check(
        b: int, res: SearchResult, before: tuple[set[int], ...], after: tuple[set[int], ...]
    ) -> None:
        hits = [
            (u, int(f))
            for u, f, s in zip(res.uids, res.face_ids, res.scores, strict=True)
            if s > HIT
        ]
        ids = group_data(centres, b)[1]
        _, added_before, _, removed_before = before
        started_after, _, removing_after, _ = after
        checks[0] += 1
        if hits and b in removed_before:
            errors.append(f"group {b}: returned after its removal returned: {hits}")
        if hits and b not in started_after:
            errors.append(f"group {b}: returned before its add started")
        if any(f not in ids for _, f in hits):
            errors.append(f"group {b}: foreign face above threshold {hits}")
        if b % 2 == 0:
            if len(hits) not in (0, GROUP):
                errors.append(f"group {b}: half-applied batch visible: {hits}")
        elif hits and hits != [(f"g{b}", int(ids[0]))]:
            errors.append(f"group {b}: half-applied remove_uid visible: {hits}")
        must_see = b in added_before and b not in removing_after
        if kind is IndexKind.FLAT and must_see and len(hits) != (GROUP if b % 2 == 0 else 1):
            errors.append(f"group {b}: enrolled group missing: {hits}")

    def reader(r: int) -> None:
        rr = np.random.default_rng(seed + 100 + r)
        try:
            while not stop.is_set():
                if not log.groups:
                    continue
                before = log.view()
                bs = rr.integers(0, log.groups, size=int(rr.integers(1, 5))).tolist()
                q = centres[bs]
                mode = int(rr.integers(3))
                if mode == 0:
                    res = g.search(q, GROUP)
                elif mode == 1:
                    res = g.search_partitions(q, GROUP, [f"g{b}" for b in bs])
                else:
                    res = g.search_partitions(
                        q, GROUP, [None if i % 2 else f"g{b}" for i, b in enumerate(bs)]
                    )
                count = g.count()
                after = log.view()
                for b, rs in zip(bs, res, strict=True):
                    check(b, rs, before, after)
                # The count is read between the two views: bound it by them.
                lo = len(before[1]) - len(after[2])  # adds done - removals started
                hi = len(after[0]) - len(before[3])  # adds started - removals done
                groups_live, rem = divmod(count - BACKGROUND, GROUP)
                if rem or not lo <= groups_live <= hi:
                    errors.append(f"count {count} inconsistent with log [{lo}, {hi}]")
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(f"reader {r}: {exc!r}")

    threads = [threading.Thread(target=reader, args=(r,)) for r in range(readers)]
    threads.append(threading.Thread(target=writer))
    # Switch threads every few microseconds instead of every 5 ms, so the
    # interleavings a missing lock would allow actually happen in the test.
    interval = sys.getswitchinterval()
    sys.setswitchinterval(2e-6)
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    finally:
        sys.setswitchinterval(interval)
    assert not any(t.is_alive() for t in threads)
    assert not errors, errors[:10]
    assert checks[0] > 500, checks[0]
    print(f"{kind.value}: {checks[0]} checked results")
    # Final state equals the model exactly.
    _, added, _, removed = log.view()
    live = sorted(added - removed)
    assert g.count() == BACKGROUND + GROUP * len(live)
    for b in live:
        uids = group_data(centres, b)[2]
        res = g.search(centres[b : b + 1].copy(), GROUP)[0]
        assert {u for u, s in zip(res.uids, res.scores, strict=True) if s > HIT} == set(uids)


@pytest.mark.slow
@pytest.mark.parametrize("kind", [IndexKind.FLAT, IndexKind.HNSW])
def test_readers_and_writer_against_model(kind: IndexKind) -> None:
    run_stress(kind, ops=1500, readers=3, seed=3)
