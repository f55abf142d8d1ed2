"""Snapshot durability: round trip, corruption detection, SIGKILL during writes."""

from __future__ import annotations

import io
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from index import Gallery, IndexConfig, IndexKind, SnapshotCorrupt
from index.snapshot import decode, encode

ROOT = Path(__file__).resolve().parents[1]
DIM = 48


def unit(rng: np.random.Generator, n: int, d: int = DIM) -> npt.NDArray[np.float32]:
    x = rng.standard_normal((n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def filled(kind: IndexKind = IndexKind.FLAT, n: int = 1200) -> Gallery:
    rng = np.random.default_rng(7)
    g = Gallery(DIM, IndexConfig(kind=kind, min_accel_size=600))
    g.add(
        unit(rng, n),
        np.arange(n, dtype=np.int64) * 3,
        [f"uid-{i % 400}" for i in range(n)],
        [None if i % 5 == 0 else f"{i % 37:04d}" for i in range(n)],
    )
    g.remove_faces(np.arange(0, 300, 3, dtype=np.int64))  # leaves stale accelerator slots
    g.remove_uid("uid-399")
    return g


@pytest.mark.parametrize("kind", list(IndexKind))
def test_round_trip(tmp_path: Path, kind: IndexKind) -> None:
    g = filled(kind)
    path = tmp_path / "gallery.snap"
    g.snapshot(path, sequence=1234)
    g2, seq = Gallery.load(path)
    assert seq == 1234
    assert g2.config == g.config and g2.dim == DIM
    assert g2.count() == g.count() and g2.count_uids() == g.count_uids()
    np.testing.assert_array_equal(np.sort(g2.face_ids()), np.sort(g.face_ids()))
    assert (g2._accel is None) == (g._accel is None)
    q = unit(np.random.default_rng(1), 20)
    assert g2.search(q, 5) == g.search(q, 5)
    hints = [f"{i:04d}" for i in range(20)]
    assert g2.search_partitions(q, 3, hints) == g.search_partitions(q, 3, hints)
    f = int(g.face_ids()[17])
    assert g2.uid_of(f) == g.uid_of(f) and g2.partition_of(f) == g.partition_of(f)
    np.testing.assert_array_equal(g2.vectors_of(np.array([f])), g.vectors_of(np.array([f])))
    # A loaded gallery keeps working as a writer.
    g2.add(q[:1].copy(), np.array([10**9], dtype=np.int64), ["new"], ["0001"])
    assert g2.search(q[:1], 1, partition="0001")[0].uids == ("new",)


def test_empty_gallery_round_trip_and_functions(tmp_path: Path) -> None:
    path = tmp_path / "empty.snap"
    Gallery(8).snapshot(path, 0)
    g, seq = Gallery.load(path)
    assert seq == 0 and g.count() == 0 and g.dim == 8
    with pytest.raises(ValueError):
        Gallery(8).snapshot(path, -1)
    with pytest.raises(FileNotFoundError):
        Gallery.load(tmp_path / "missing.snap")


def test_overwrite_is_atomic_and_leaves_no_temp_files(tmp_path: Path) -> None:
    path = tmp_path / "g.snap"
    g = filled()
    for seq in range(3):
        g.snapshot(path, seq)
    assert Gallery.load(path)[1] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.snap"]


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("snap") / "g.snap"
    filled(IndexKind.HNSW).snapshot(path, 99)
    return path.read_bytes()


def test_every_truncation_point_is_detected(tmp_path: Path, image: bytes) -> None:
    size = len(image)
    cuts = sorted(
        {0, 1, 7, 8, 15, 16, 100, size // 3, size // 2, size - 41, size - 40, size - 8, size - 1}
        | {random.Random(5).randrange(size) for _ in range(20)}
    )
    path = tmp_path / "t.snap"
    for cut in cuts:
        path.write_bytes(image[:cut])
        with pytest.raises(SnapshotCorrupt):
            Gallery.load(path)
    path.write_bytes(image + b"\0")  # trailing garbage too
    with pytest.raises(SnapshotCorrupt):
        Gallery.load(path)


def test_every_flipped_byte_region_is_detected(tmp_path: Path, image: bytes) -> None:
    size = len(image)
    rnd = random.Random(11)
    spots = [0, 5, 9, 20, 200, size // 2, size - 40, size - 20, size - 3] + [
        rnd.randrange(size) for _ in range(30)
    ]
    path = tmp_path / "f.snap"
    for pos in spots:
        corrupt = bytearray(image)
        corrupt[pos] ^= 0x5A
        path.write_bytes(bytes(corrupt))
        with pytest.raises(SnapshotCorrupt):
            Gallery.load(path)


def test_inconsistent_content_with_valid_checksum_is_rejected() -> None:
    data = filled().export(5)
    data.uid_codes[0] = len(data.uids) + 3
    buf = io.BytesIO()
    encode(data, buf)
    with pytest.raises(SnapshotCorrupt, match="uid codes"):
        decode(buf.getvalue())
    data = filled().export(5)
    data.face_ids[1] = data.face_ids[0]
    buf = io.BytesIO()
    encode(data, buf)
    with pytest.raises(SnapshotCorrupt, match="face ids"):
        decode(buf.getvalue())


# ------------------------------------------------------------------ SIGKILL

# The writer adds batch `seq` and drops batch `seq - 3` before snapshotting
# `seq`, so the content of any sequence is known exactly (see expected_ids).
WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import numpy as np
    from index import Gallery

    path, dim, batch = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])

    def vectors(seq):
        x = np.random.default_rng(seq).standard_normal((batch, dim)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    if path.exists():
        g, seq = Gallery.load(path)
    else:
        g, seq = Gallery(dim), 0
    print("loaded", seq, flush=True)
    while True:
        seq += 1
        ids = np.arange(seq * batch, (seq + 1) * batch, dtype=np.int64)
        g.add(vectors(seq), ids, [f"u{seq}-{i % 7}" for i in range(batch)],
              [f"{i % 13:04d}" for i in range(batch)])
        if seq > 3:
            g.remove_faces(np.arange((seq - 3) * batch, (seq - 2) * batch, dtype=np.int64))
        g.snapshot(path, seq)
        print("wrote", seq, flush=True)
    """
)


def expected_ids(seq: int, batch: int) -> npt.NDArray[np.int64]:
    first = max(1, seq - 2)
    return np.arange(first * batch, (seq + 1) * batch, dtype=np.int64)


@pytest.mark.slow
def test_sigkill_during_snapshot_writes_never_loses_last_good(tmp_path: Path) -> None:
    path = tmp_path / "g.snap"
    dim, batch = 256, 3000  # ~9 MB snapshots: kills land mid-write often
    rnd = random.Random(2024)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    last_seq = 0
    rounds = 25
    torn = 0  # rounds whose kill left a half-written temp file behind
    started = time.monotonic()
    for rnd_no in range(rounds):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), str(dim), str(batch)],
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )
        assert proc.stdout is not None
        assert proc.stdout.readline().split() == ["loaded", str(last_seq)]
        if rnd_no == 0:
            assert proc.stdout.readline().split()[0] == "wrote"
        time.sleep(rnd.uniform(0.0, 0.35))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        proc.stdout.close()
        torn += any(p.name != "g.snap" for p in tmp_path.iterdir())
        g, seq = Gallery.load(path)  # must never raise
        assert seq >= last_seq
        np.testing.assert_array_equal(np.sort(g.face_ids()), expected_ids(seq, batch))
        ref = np.random.default_rng(seq).standard_normal((batch, dim)).astype(np.float32)
        ref /= np.linalg.norm(ref, axis=1, keepdims=True)
        probe = np.array([seq * batch + 5], dtype=np.int64)
        np.testing.assert_array_equal(g.vectors_of(probe), ref[5:6])
        assert g.search(ref[5:6].copy(), 1)[0].uids == (f"u{seq}-5",)
        last_seq = seq
    # Progress depends on machine speed, so it is reported, not asserted: the
    # first round always writes at least one snapshot before its kill.
    assert last_seq >= 1
    print(f"{torn} of {rounds} kills interrupted a snapshot write; last sequence {last_seq}")
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "g.snap"]
    assert len(leftovers) <= 1, leftovers  # dead writers' temp files are swept
    print(f"SIGKILL test took {time.monotonic() - started:.1f} s")
