"""The SQLite store: schema, round trips, change log, durability, concurrency."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from service.engine.phone import PhoneHasher
from service.errors import CollectionExists, UnknownCollection, UnknownUser
from service.store.rows import CollectionRow
from service.store.sqlite import (
    SCHEMA_VERSION,
    NewFace,
    SqliteStore,
    StoreVersionError,
)

ROOT = Path(__file__).resolve().parents[1]
DIM = 8


def vec(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def face(seed: int) -> NewFace:
    return NewFace(vec(seed), f"digest-{seed}", (1.0, 2.0, 30.0, 40.0), 0.9, 12.5)


@pytest.fixture
def store(tmp_path: Path):  # type: ignore[no-untyped-def]
    s = SqliteStore(tmp_path / "db.sqlite3")
    yield s
    s.close()


def make_coll(store: SqliteStore, name: str = "c") -> int:
    row = store.create_collection(
        CollectionRow(
            0,
            name,
            "PAY",
            threshold=0.8,
            margin=0.05,
            hint_required_above=10,
            model_id="m1",
            created_at=0,
        )
    )
    return row.id


def test_pragmas_and_schema_version(store: SqliteStore) -> None:
    db = sqlite3.connect(store.path)
    try:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        db.close()
    w = store._db.writer
    assert w.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert w.execute("PRAGMA foreign_keys").fetchone()[0] == 1


def test_newer_schema_and_foreign_databases_are_refused(tmp_path: Path) -> None:
    newer = tmp_path / "newer.db"
    db = sqlite3.connect(newer)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(StoreVersionError, match="schema version"):
        SqliteStore(newer)
    foreign = tmp_path / "foreign.db"
    db = sqlite3.connect(foreign)
    db.execute("CREATE TABLE t (x)")
    db.commit()
    db.close()
    with pytest.raises(StoreVersionError, match="not a facegate store"):
        SqliteStore(foreign)


def test_collections_crud(store: SqliteStore) -> None:
    cid = make_coll(store, "a")
    make_coll(store, "b")
    row = store.get_collection("a")
    assert (row.id, row.kind, row.threshold, row.margin, row.hint_required_above, row.model_id) == (
        cid,
        "PAY",
        0.8,
        0.05,
        10,
        "m1",
    )
    assert [r.name for r in store.list_collections()] == ["a", "b"]
    with pytest.raises(CollectionExists):
        make_coll(store, "a")
    store.enroll("a", "u", [face(1)], model_id="m1", metadata=None, phone=None)
    assert store.delete_collection("a") == 1
    with pytest.raises(UnknownCollection):
        store.get_collection("a")
    with pytest.raises(UnknownCollection):
        store.delete_collection("a")
    # Re-created: a fresh id (never reused), no users, no change log.
    again = store.create_collection(
        CollectionRow(
            0,
            "a",
            kind="MEMBER",
            threshold=0.7,
            margin=0.0,
            hint_required_above=0,
            model_id="m1",
            created_at=0,
        )
    )
    assert again.id > cid
    assert store.count_users("a") == 0 and store.count_faces("a") == 0
    assert store.changes_since(cid, 0).added == ()


def test_enroll_round_trip_and_change_log(store: SqliteStore) -> None:
    cid = make_coll(store)
    seq0 = store.sequence()
    out = store.enroll(
        "c",
        "alice",
        [face(1), face(2)],
        model_id="m1",
        metadata={"k": "v"},
        phone=("h" * 64, "bucket-a"),
    )
    assert out.created and len(out.new_face_ids) == 2 and out.removed_face_ids == ()
    assert [r.face_id for r in out.added] == list(out.new_face_ids)
    assert all(r.partition == "bucket-a" for r in out.added)
    faces = store.user_faces("c", "alice")
    assert [f.face_id for f in faces] == list(out.new_face_ids)
    np.testing.assert_array_equal(faces[0].template, vec(1))
    assert faces[0].template.dtype == np.float32 and faces[1].image_digest == "digest-2"
    user = store.get_user("c", "alice")
    assert user is not None
    assert (user.metadata, user.phone_bucket, user.face_count) == ({"k": "v"}, "bucket-a", 2)
    assert store.sequence() == seq0 + 2
    assert store.changes_since(cid, seq0).added == out.new_face_ids
    # Adding a face to an existing user; metadata None keeps it, phone None keeps it.
    more = store.enroll("c", "alice", [face(3)], model_id="m1", metadata=None, phone=None)
    assert not more.created and more.added[0].partition == "bucket-a"
    user = store.get_user("c", "alice")
    assert user is not None and user.metadata == {"k": "v"} and user.face_count == 3
    assert user.updated_at >= user.created_at


def test_phone_change_moves_faces_to_new_ids(store: SqliteStore) -> None:
    cid = make_coll(store)
    first = store.enroll(
        "c", "u", [face(1), face(2)], model_id="m1", metadata=None, phone=("h1", "b1")
    )
    seq = store.sequence()
    moved = store.enroll("c", "u", [], model_id="m1", metadata=None, phone=("h2", "b2"))
    assert set(moved.removed_face_ids) == set(first.new_face_ids)
    assert set(moved.renamed) == set(first.new_face_ids)
    assert all(r.partition == "b2" for r in moved.added)
    now_ids = [f.face_id for f in store.user_faces("c", "u")]
    assert sorted(now_ids) == sorted(moved.renamed.values())
    assert not set(now_ids) & set(first.new_face_ids)  # ids are never reused
    ch = store.changes_since(cid, seq)
    assert set(ch.removed) == set(first.new_face_ids) and set(ch.added) == set(now_ids)
    # The same phone again changes nothing.
    same = store.enroll("c", "u", [], model_id="m1", metadata=None, phone=("h2", "b2"))
    assert same.added == () and same.removed_face_ids == ()


def test_delete_user(store: SqliteStore) -> None:
    cid = make_coll(store)
    out = store.enroll("c", "u", [face(1), face(2)], model_id="m1", metadata=None, phone=None)
    seq = store.sequence()
    assert store.delete_user("c", "u") == list(out.new_face_ids)
    assert store.get_user("c", "u") is None and store.user_faces("c", "u") == []
    assert store.changes_since(cid, seq).removed == out.new_face_ids
    with pytest.raises(UnknownUser):
        store.delete_user("c", "u")
    with pytest.raises(UnknownCollection):
        store.delete_user("nope", "u")


def test_unknown_collection_on_enroll(store: SqliteStore) -> None:
    with pytest.raises(UnknownCollection):
        store.enroll("nope", "u", [face(1)], model_id="m1", metadata=None, phone=None)


def test_list_users_pages_in_uid_order(store: SqliteStore) -> None:
    make_coll(store)
    for uid in ["d", "a", "c", "b", "e"]:
        store.enroll("c", uid, [face(ord(uid))], model_id="m1", metadata=None, phone=None)
    page1 = store.list_users("c", after_uid="", limit=2)
    page2 = store.list_users("c", after_uid=page1[-1].uid, limit=2)
    page3 = store.list_users("c", after_uid=page2[-1].uid, limit=2)
    assert [u.uid for u in page1 + page2 + page3] == ["a", "b", "c", "d", "e"]


def test_iter_faces_faces_by_id_and_prune(store: SqliteStore) -> None:
    cid = make_coll(store)
    ids: list[int] = []
    for i in range(7):
        ids += store.enroll(
            "c", f"u{i}", [face(i)], model_id="m1", metadata=None, phone=None
        ).new_face_ids
    batches = list(store.iter_faces("c", "m1", batch=3))
    assert [len(b) for b in batches] == [3, 3, 1]
    assert [f.face_id for b in batches for f in b] == ids
    assert list(store.iter_faces("c", "other-model")) == []
    store.delete_user("c", "u0")
    got = store.faces_by_id([ids[0], ids[1], ids[1], 10**9], "m1")
    assert [f.face_id for f in got] == [ids[1]]
    seq = store.sequence()
    assert store.prune_changes(cid, seq) == 8
    assert store.changes_since(cid, 0).added == ()
    assert store.sequence() == seq  # the sequence never goes back


def test_phone_numbers_are_not_in_the_database_file(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "db.sqlite3")
    hasher = PhoneHasher(b"s" * 32)
    number = "+44 20 7946 0958"
    make_coll(s)
    s.enroll(
        "c",
        "u",
        [face(1)],
        model_id="m1",
        metadata=None,
        phone=(hasher.number_hash(number), hasher.bucket(number)),
    )
    s.close()
    blob = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
    assert b"u" in blob
    for clear in (b"442079460958", b"2079460958", b"0958"):
        assert clear not in blob


def test_acknowledged_writes_survive_reopen(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    s = SqliteStore(path)
    make_coll(s)
    out = s.enroll("c", "u", [face(1)], model_id="m1", metadata={"a": "b"}, phone=None)
    s.close()
    s2 = SqliteStore(path)
    try:
        [f] = s2.user_faces("c", "u")
        assert f.face_id == out.new_face_ids[0]
        np.testing.assert_array_equal(f.template, vec(1))
    finally:
        s2.close()


_WRITER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from service.store.rows import CollectionRow
    from service.store.sqlite import NewFace, SqliteStore
    s = SqliteStore(sys.argv[1])
    s.create_collection(CollectionRow(0, "c", kind="PAY", threshold=0.8, margin=0.05,
                        hint_required_above=0, model_id="m1", created_at=0))
    i = 0
    while True:
        v = np.ones(8, np.float32) / np.sqrt(8)
        out = s.enroll("c", f"u{i}", [NewFace(v, f"d{i}", (0, 0, 1, 1), 1.0, 1.0)],
                       model_id="m1", metadata=None, phone=None)
        print(f"u{i} {out.new_face_ids[0]}", flush=True)
        i += 1
    """
)


@pytest.mark.slow
def test_every_acknowledged_enrolment_survives_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    acked: list[tuple[str, int]] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        while len(acked) < 40 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            name, number = line.split()
            acked.append((name, int(number)))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.stdout is not None and proc.stderr is not None
        # Lines printed between our last read and the kill were acknowledged too.
        for line in proc.stdout.read().splitlines():
            name, number = line.split()
            acked.append((name, int(number)))
        err = proc.stderr.read()
        proc.stdout.close()
        proc.stderr.close()
    assert len(acked) >= 40, err
    s = SqliteStore(path)
    try:
        for uid, face_id in acked:
            faces = s.user_faces("c", uid)
            assert [f.face_id for f in faces] == [face_id], uid
        assert s.count_users("c") in (len(acked), len(acked) + 1)  # +1: committed, not printed
    finally:
        s.close()


def test_concurrent_writers_and_readers(store: SqliteStore) -> None:
    make_coll(store)
    errors: list[BaseException] = []
    ids: list[int] = []
    lock = threading.Lock()

    def writer(t: int) -> None:
        try:
            for i in range(25):
                out = store.enroll(
                    "c", f"t{t}-{i}", [face(t * 100 + i)], model_id="m1", metadata=None, phone=None
                )
                with lock:
                    ids.extend(out.new_face_ids)
                if i % 5 == 4:
                    store.delete_user("c", f"t{t}-{i}")
        except BaseException as exc:
            errors.append(exc)

    def reader() -> None:
        try:
            for _ in range(100):
                store.list_users("c", after_uid="", limit=50)
                store.count_faces("c")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(4)]
    threads += [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(set(ids)) == len(ids) == 100
    assert store.count_users("c") == 80 and store.count_faces("c") == 80
