"""Templates sealed at rest in the store, and the snapshot cipher, below the service.

The real-path proofs (real server, real pack, real photos) are in test_crypto_e2e.py; these
pin the store's and the codecs' own contracts with exact vectors.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from index import Gallery, SnapshotCorrupt
from service.crypto import snapshot_cipher
from service.crypto.data_keys import (
    DataKey,
    Keyring,
    create_key_file,
    key_id_of,
    parse_key,
    read_key_file,
)
from service.crypto.snapshot_cipher import PlaintextSnapshot, SnapshotCipher
from service.crypto.template_crypto import TemplateCipher
from service.errors import DataKeyError, TemplateUnreadable
from service.store.rows import CollectionRow
from service.store.sqlite import SCHEMA_VERSION, NewFace, SqliteStore
from service.store.sqlite_db import StoreInUse

DIM = 16


def vec(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    out: np.ndarray = v / np.linalg.norm(v)
    return out


def face(seed: int) -> NewFace:
    return NewFace(vec(seed), f"digest-{seed}", (0.0, 0.0, 10.0, 10.0), 0.99, 40.0)


def key(byte: int) -> DataKey:
    return DataKey(bytes([byte]) * 32, f"test key {byte}")


def open_store(path: Path, *keys: DataKey) -> SqliteStore:
    return SqliteStore(path, cipher=TemplateCipher(Keyring(keys[0], keys[1:])))


def enrol_three(store: SqliteStore) -> list[int]:
    store.create_collection(
        CollectionRow(
            0,
            "c",
            kind="PAY",
            threshold=0.8,
            margin=0.05,
            hint_required_above=0,
            model_id="m1",
            created_at=0,
        )
    )
    ids = []
    for i, uid in enumerate(("alice", "bob", "carol")):
        out = store.enroll("c", uid, [face(i)], model_id="m1", metadata=None, phone=None)
        ids.extend(out.new_face_ids)
    return ids


def raw_files(directory: Path) -> bytes:
    return b"".join(p.read_bytes() for p in directory.rglob("*") if p.is_file())


def contains_template(blob: bytes, template: np.ndarray) -> bool:
    raw = np.ascontiguousarray(template, dtype="<f4").tobytes()
    # Any 4 consecutive floats of it would give it away.
    return any(raw[i : i + 16] in blob for i in range(0, len(raw) - 15, 4))


def test_rows_on_disk_hold_no_template_and_read_back_exactly(tmp_path: Path) -> None:
    s = open_store(tmp_path / "db.sqlite3", key(1))
    enrol_three(s)
    s.close()
    blob = raw_files(tmp_path)
    for i in range(3):
        assert not contains_template(blob, vec(i))
    s = open_store(tmp_path / "db.sqlite3", key(1))
    try:
        [row] = s.user_faces("c", "bob")
        np.testing.assert_array_equal(row.template, vec(1))
        assert s.unreadable_templates() == {}
    finally:
        s.close()


def test_default_store_key_is_created_beside_the_database_with_mode_0600(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "db.sqlite3")
    s.close()
    path = tmp_path / "template.key"
    assert path.stat().st_mode & 0o777 == 0o600
    assert len(path.read_bytes()) == 32


def _swap_ciphertexts(db_path: Path, a: int, b: int) -> None:
    conn = sqlite3.connect(db_path)
    with conn:
        ta = conn.execute("SELECT template FROM faces WHERE face_id = ?", (a,)).fetchone()[0]
        tb = conn.execute("SELECT template FROM faces WHERE face_id = ?", (b,)).fetchone()[0]
        conn.execute("UPDATE faces SET template = ? WHERE face_id = ?", (tb, a))
        conn.execute("UPDATE faces SET template = ? WHERE face_id = ?", (ta, b))
    conn.close()


def _flip_byte(db_path: Path, face_id: int, at: int = -5) -> None:
    conn = sqlite3.connect(db_path)
    with conn:
        t = bytearray(
            conn.execute("SELECT template FROM faces WHERE face_id = ?", (face_id,)).fetchone()[0]
        )
        t[at] ^= 0x01
        conn.execute("UPDATE faces SET template = ? WHERE face_id = ?", (bytes(t), face_id))
    conn.close()


def test_swapped_and_altered_rows_are_reported_and_left_out(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    s = open_store(path, key(1))
    alice, bob, carol = enrol_three(s)
    s.close()
    _swap_ciphertexts(path, alice, bob)
    _flip_byte(path, carol)
    s = open_store(path, key(1))  # opens: altered rows are per-row failures, not start-up ones
    try:
        assert [f for batch in s.iter_faces("c", "m1") for f in batch] == []
        bad = s.unreadable_templates()
        assert sorted(bad) == [alice, bob, carol]
        assert all(isinstance(e, TemplateUnreadable) for e in bad.values())
        assert bad[alice].metadata["cause"] == "authentication"
        assert bad[alice].metadata["uid"] == "alice"
        assert s.user_faces("c", "bob") == []
        # A phone change would re-seal the row under a new id: refused, not laundered.
        with pytest.raises(TemplateUnreadable):
            s.enroll("c", "bob", [], model_id="m1", metadata=None, phone=("h", "b"))
    finally:
        s.close()


def test_a_row_relabelled_to_another_user_fails(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    s = open_store(path, key(1))
    alice, _, _ = enrol_three(s)
    s.close()
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("PRAGMA foreign_keys = OFF")
        conn.execute("UPDATE faces SET uid = 'bob' WHERE face_id = ?", (alice,))
    conn.close()
    s = open_store(path, key(1))
    try:
        assert [f.face_id for f in s.user_faces("c", "bob")] != [alice]
        assert alice in s.unreadable_templates()
    finally:
        s.close()


def test_wrong_or_missing_key_refuses_to_open_with_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    s = open_store(path, key(1))
    enrol_three(s)
    s.close()
    with pytest.raises(DataKeyError) as err:
        open_store(path, key(2))
    assert key_id_of(key(1).material) in err.value.message
    assert "wrong or missing key" in err.value.message.lower()
    # With the old key readable too, it opens (a rotation in progress).
    open_store(path, key(2), key(1)).close()


def test_key_files_parse_raw_base64_and_hex(tmp_path: Path) -> None:
    material = bytes(range(32))
    assert parse_key(material, "x") == material
    assert parse_key(material.hex().encode() + b"\n", "x") == material
    import base64

    assert parse_key(base64.b64encode(material), "x") == material
    with pytest.raises(DataKeyError):
        parse_key(b"too short", "x")
    path = tmp_path / "k"
    assert create_key_file(path)
    assert not create_key_file(path)  # never overwritten
    assert read_key_file(path).material == path.read_bytes()
    with pytest.raises(DataKeyError, match="cannot read"):
        read_key_file(tmp_path / "absent")


def test_exclusive_open_refuses_while_the_store_is_open_elsewhere(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    s = open_store(path, key(1))
    try:
        with pytest.raises(StoreInUse):
            SqliteStore(path, cipher=s.cipher, exclusive=True)
    finally:
        s.close()
    SqliteStore(path, cipher=TemplateCipher(Keyring(key(1))), exclusive=True).close()


# ----------------------------------------------------------------- schema 1 migration

_V1_SCHEMA = """
CREATE TABLE collections (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL UNIQUE,
  kind TEXT NOT NULL, threshold REAL NOT NULL, margin REAL NOT NULL,
  hint_required_above INTEGER NOT NULL, model_id TEXT NOT NULL, created_at REAL NOT NULL);
CREATE TABLE users (collection TEXT NOT NULL REFERENCES collections(name) ON DELETE CASCADE,
  uid TEXT NOT NULL, metadata TEXT NOT NULL DEFAULT '{}', phone_hash TEXT, phone_bucket TEXT,
  created_at REAL NOT NULL, updated_at REAL NOT NULL, PRIMARY KEY (collection, uid))
  WITHOUT ROWID;
CREATE TABLE faces (face_id INTEGER PRIMARY KEY AUTOINCREMENT, collection TEXT NOT NULL,
  uid TEXT NOT NULL, model_id TEXT NOT NULL, template BLOB NOT NULL,
  image_digest TEXT NOT NULL, box_left REAL NOT NULL, box_top REAL NOT NULL,
  box_right REAL NOT NULL, box_bottom REAL NOT NULL, det_score REAL NOT NULL,
  inter_eye_px REAL NOT NULL, created_at REAL NOT NULL,
  FOREIGN KEY (collection, uid) REFERENCES users(collection, uid) ON DELETE CASCADE);
CREATE INDEX faces_by_user ON faces(collection, uid);
CREATE TABLE changes (seq INTEGER PRIMARY KEY AUTOINCREMENT, collection_id INTEGER NOT NULL,
  op TEXT NOT NULL CHECK (op IN ('add', 'remove')), face_id INTEGER NOT NULL);
CREATE INDEX changes_by_collection ON changes(collection_id, seq);
PRAGMA user_version = 1;
"""


def make_v1_store(path: Path, n: int) -> None:
    """A database as the schema-1 facegate (plaintext float32 templates) left it."""
    conn = sqlite3.connect(path)
    conn.executescript(_V1_SCHEMA)
    with conn:
        conn.execute("INSERT INTO collections VALUES (1, 'c', 'PAY', 0.8, 0.05, 0, 'm1', 0)")
        for i in range(n):
            conn.execute("INSERT INTO users VALUES ('c', ?, '{}', NULL, NULL, 0, 0)", (f"u{i}",))
            conn.execute(
                "INSERT INTO faces (collection, uid, model_id, template, image_digest, box_left,"
                " box_top, box_right, box_bottom, det_score, inter_eye_px, created_at)"
                " VALUES ('c', ?, 'm1', ?, 'd', 0, 0, 1, 1, 1, 1, 0)",
                (f"u{i}", vec(i).astype("<f4").tobytes()),
            )
    conn.close()


def test_a_schema_1_plaintext_store_is_sealed_on_first_open(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    make_v1_store(path, 30)
    assert contains_template(raw_files(tmp_path), vec(7))
    s = open_store(path, key(1))
    try:
        rows = [f for batch in s.iter_faces("c", "m1") for f in batch]
        assert len(rows) == 30
        for r in rows:
            np.testing.assert_array_equal(r.template, vec(int(r.uid[1:])))
    finally:
        s.close()
    blob = raw_files(tmp_path)
    assert not any(contains_template(blob, vec(i)) for i in range(30))
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("SELECT count(*) FROM faces WHERE key_id IS NULL").fetchone()[0] == 0
    conn.close()
    # Later plaintext rows are not migrated silently: they are tampering.
    conn = sqlite3.connect(path)
    with conn:
        conn.execute(
            "UPDATE faces SET template = ?, key_id = NULL WHERE uid = 'u3'",
            (vec(3).astype("<f4").tobytes(),),
        )
    conn.close()
    s = open_store(path, key(1))
    try:
        assert s.user_faces("c", "u3") == []
        [bad] = s.unreadable_templates().values()
        assert bad.metadata["cause"] == "plaintext"
    finally:
        s.close()


# ----------------------------------------------------------------------- snapshots


def _gallery(n: int) -> Gallery:
    g = Gallery(DIM)
    g.add(
        np.stack([vec(i) for i in range(n)]),
        np.arange(1, n + 1, dtype=np.int64),
        [f"u{i}" for i in range(n)],
        [None] * n,
    )
    return g


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(snapshot_cipher, "CHUNK", 256)  # many chunks from a small gallery


def test_sealed_snapshot_round_trips_and_holds_no_vector(
    tmp_path: Path, small_chunks: None
) -> None:
    path = tmp_path / "g.snap"
    codec = SnapshotCipher(Keyring(key(1)), "collection=1;transform=0")
    _gallery(20).snapshot(path, 7, codec=codec)
    raw = path.read_bytes()
    assert raw.startswith(snapshot_cipher.MAGIC)
    assert not any(contains_template(raw, vec(i)) for i in range(20))
    loaded, seq = Gallery.load(path, codec=codec)
    assert seq == 7 and loaded.count() == 20
    np.testing.assert_array_equal(loaded.vectors_of(np.array([5])), vec(4)[None, :])


@pytest.mark.parametrize("damage", ["flip", "truncate_chunk", "drop_tail", "other_collection"])
def test_damaged_or_misplaced_sealed_snapshots_are_corrupt(
    tmp_path: Path, small_chunks: None, damage: str
) -> None:
    path = tmp_path / "g.snap"
    codec = SnapshotCipher(Keyring(key(1)), "collection=1;transform=0")
    _gallery(20).snapshot(path, 7, codec=codec)
    raw = bytearray(path.read_bytes())
    stride = snapshot_cipher.CHUNK + snapshot_cipher.TAG
    if damage == "flip":
        raw[len(raw) // 2] ^= 0x40
    elif damage == "truncate_chunk":  # cut exactly at a chunk boundary
        raw = raw[: snapshot_cipher.HEADER_BYTES + 3 * stride]
    elif damage == "drop_tail":
        raw = raw[:-1]
    path.write_bytes(bytes(raw))
    if damage == "other_collection":
        codec = SnapshotCipher(Keyring(key(1)), "collection=2;transform=0")
    with pytest.raises(SnapshotCorrupt):
        Gallery.load(path, codec=codec)


def test_plaintext_and_unknown_key_snapshots_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "g.snap"
    _gallery(3).snapshot(path, 1)  # no codec: the older, unencrypted format
    codec = SnapshotCipher(Keyring(key(1)), "collection=1;transform=0")
    with pytest.raises(PlaintextSnapshot):
        Gallery.load(path, codec=codec)
    _gallery(3).snapshot(path, 1, codec=codec)
    with pytest.raises(SnapshotCorrupt, match="not configured"):
        Gallery.load(path, codec=SnapshotCipher(Keyring(key(2)), "collection=1;transform=0"))
