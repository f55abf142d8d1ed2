"""The durable source of truth: collections, users, faces and their templates, in SQLite.

* WAL journal with ``synchronous=FULL`` (see ``service.store.sqlite_db``): a commit is on disk
  before the call returns, so an acknowledged enrolment or deletion survives a crash or
  power loss. One serialised writer; one reader connection per thread.
* ``changes`` is an append-only log (seq, collection id, add/remove, face id). An index
  snapshot records the sequence it includes; on start the log after it is replayed.
* Face ids come from ``AUTOINCREMENT`` and are never reused, so a face id always means the
  same face and replaying the log can be a plain set reconciliation.

The SQLite schema and the queries of the use cases live here; connection handling and
PRAGMAs in ``sqlite_db``; the whole-table passes of encryption maintenance in
``sqlite_crypto`` (``SqliteStore.crypto``). Template bytes are made and read only by
``service.store.sealed_templates`` (AES-GCM, the row's identity bound as associated data,
the key id in ``faces.key_id``); a row that fails to open is reported and left out, never
matched against.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from service.crypto.data_keys import directory_keyring
from service.crypto.template_crypto import TemplateCipher, TemplateLabel
from service.crypto.template_transform import SALT_BYTES
from service.errors import (
    CollectionExists,
    TemplateUnreadable,
    UnknownCollection,
    UnknownUser,
    UserExists,
)
from service.store.rows import (
    ChangesSince,
    CollectionRow,
    EnrollOutcome,
    FaceRow,
    ImportedUser,
    NewFace,
    UserRow,
)
from service.store.sealed_templates import SealedTemplates
from service.store.sqlite_crypto import CryptoPasses
from service.store.sqlite_db import SqliteDb, StoreLock, StoreVersionError

log = logging.getLogger(__name__)

__all__ = [
    "SCHEMA_VERSION",
    "ChangesSince",
    "CollectionRow",
    "EnrollOutcome",
    "FaceRow",
    "NewFace",
    "SqliteStore",
    "StoreVersionError",
    "UserRow",
]

SCHEMA_VERSION = 4

_SCHEMA = """
CREATE TABLE collections (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,
    name                TEXT NOT NULL UNIQUE,
    kind                TEXT NOT NULL,
    threshold           REAL NOT NULL,
    margin              REAL NOT NULL,
    hint_required_above INTEGER NOT NULL,
    model_id            TEXT NOT NULL,
    created_at          REAL NOT NULL,
    transform_gen       INTEGER NOT NULL DEFAULT 0,  -- revocable templates: 0 = off
    enroll_quality      TEXT NOT NULL DEFAULT '{}',  -- JSON {limit name: value}, the
    identify_quality    TEXT NOT NULL DEFAULT '{}',  -- collection's own quality limits
    require_liveness    INTEGER,  -- NULL: the server's rule for the kind, 0/1: own choice
    identify_returns_metadata INTEGER NOT NULL DEFAULT 0  -- MATCH answers carry metadata
);
CREATE TABLE users (
    collection   TEXT NOT NULL REFERENCES collections(name) ON DELETE CASCADE,
    uid          TEXT NOT NULL,
    metadata     TEXT NOT NULL DEFAULT '{}',
    phone_hash   TEXT,
    phone_bucket TEXT,
    created_at   REAL NOT NULL,
    updated_at   REAL NOT NULL,
    PRIMARY KEY (collection, uid)
) WITHOUT ROWID;
CREATE TABLE faces (
    face_id       INTEGER PRIMARY KEY AUTOINCREMENT,
    collection    TEXT NOT NULL,
    uid           TEXT NOT NULL,
    model_id      TEXT NOT NULL,
    template      BLOB NOT NULL,
    image_digest  TEXT NOT NULL,
    box_left      REAL NOT NULL,
    box_top       REAL NOT NULL,
    box_right     REAL NOT NULL,
    box_bottom    REAL NOT NULL,
    det_score     REAL NOT NULL,
    inter_eye_px  REAL NOT NULL,
    created_at    REAL NOT NULL,
    key_id        TEXT,  -- the data key that sealed template (NULL: a v1 plaintext row)
    transform_gen INTEGER NOT NULL DEFAULT 0,
    FOREIGN KEY (collection, uid) REFERENCES users(collection, uid) ON DELETE CASCADE
);
CREATE INDEX faces_by_user ON faces(collection, uid);
CREATE TABLE changes (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    collection_id INTEGER NOT NULL,
    op            TEXT NOT NULL CHECK (op IN ('add', 'remove')),
    face_id       INTEGER NOT NULL
);
CREATE INDEX changes_by_collection ON changes(collection_id, seq);
"""
# Encryption bookkeeping (schema version 2). Key ids only; key material never lives here.
_CRYPTO_SCHEMA = """
CREATE INDEX faces_by_key ON faces(key_id);
CREATE TABLE data_keys (
    key_id   TEXT PRIMARY KEY,  -- every key that has sealed rows: its absence at start is an
    added_at REAL NOT NULL      -- error (wrong/missing key), not a per-row integrity failure
);
CREATE TABLE crypto_state (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE transform_keys (
    collection_id INTEGER NOT NULL,
    generation    INTEGER NOT NULL,
    salt          BLOB NOT NULL,
    PRIMARY KEY (collection_id, generation)
);
"""
_SCHEMA += _CRYPTO_SCHEMA + "INSERT INTO crypto_state VALUES ('plaintext_migrated', '1');"
_UPGRADES = {
    # 1 -> 2: templates sealed at rest. Existing rows keep key_id NULL (plaintext) until
    # CryptoPasses.seal_plaintext_rows seals them, on the first start that has a key.
    1: """
ALTER TABLE collections ADD COLUMN transform_gen INTEGER NOT NULL DEFAULT 0;
ALTER TABLE faces ADD COLUMN key_id TEXT;
ALTER TABLE faces ADD COLUMN transform_gen INTEGER NOT NULL DEFAULT 0;
"""
    + _CRYPTO_SCHEMA,
    # 2 -> 3: per-collection quality limits and liveness requirement (defaults: none).
    2: """
ALTER TABLE collections ADD COLUMN enroll_quality TEXT NOT NULL DEFAULT '{}';
ALTER TABLE collections ADD COLUMN identify_quality TEXT NOT NULL DEFAULT '{}';
ALTER TABLE collections ADD COLUMN require_liveness INTEGER;
""",
    # 3 -> 4: opt-in user metadata in Identify answers (default: off).
    3: """
ALTER TABLE collections ADD COLUMN identify_returns_metadata INTEGER NOT NULL DEFAULT 0;
""",
}


class SqliteStore:
    """SQLite store (``service.ports.FaceStore``). Thread-safe; open once per process and share.

    ``cipher`` seals and opens templates; by default the key is ``template.key`` beside the
    database (created on first use), which is also the service's default. ``exclusive``
    (key maintenance) refuses to open while any other process has the store open.
    Opening checks that every key that has sealed rows is in the keyring (else
    ``DataKeyError``) and seals any rows left in plaintext by schema version 1.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        cipher: TemplateCipher | None = None,
        busy_timeout_ms: int = 10_000,
        exclusive: bool = False,
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = StoreLock(self.path, exclusive=exclusive)
        self.cipher = cipher or TemplateCipher(directory_keyring(self.path.parent))
        self._templates = SealedTemplates(self.cipher)
        try:
            self._db = SqliteDb(self.path, busy_timeout_ms=busy_timeout_ms)
        except BaseException:
            self._lock.release()
            raise
        # The whole-table encryption passes (key checks, re-sealing), on the same database.
        self.crypto = CryptoPasses(self._db, self._templates, self.path)
        try:
            self._db.migrate(_SCHEMA, SCHEMA_VERSION, _UPGRADES)
            self.crypto.check_keys()
            self.crypto.seal_plaintext_rows()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self._db.close()
        self._lock.release()

    def schema_version(self) -> int:
        row = self._one("PRAGMA user_version", ())
        return 0 if row is None else int(row[0])

    def compact(self) -> None:
        """Rewrite the database file so that no old copy of a rewritten row survives in free
        pages or the WAL (after a key rotation: no ciphertext under the retired key)."""
        self._db.rewrite_file()

    def unreadable_templates(self) -> dict[int, TemplateUnreadable]:
        """Faces whose templates failed to open since the store was opened, by face id."""
        return self._templates.unreadable()

    def transform_salts(self, collection_id: int) -> dict[int, bytes]:
        """The revocable-template salts of a collection, by generation."""
        return self.crypto.transform_salts(collection_id)

    def _tx(self) -> AbstractContextManager[sqlite3.Connection]:
        return self._db.transaction()

    def _one(self, sql: str, params: tuple[object, ...]) -> tuple[Any, ...] | None:
        return self._db.one(sql, params)

    def _all(self, sql: str, params: tuple[object, ...]) -> list[tuple[Any, ...]]:
        return self._db.all(sql, params)

    def _count(self, sql: str, collection: str) -> int:
        row = self._one(sql, (collection,))
        return 0 if row is None else int(row[0])

    # --------------------------------------------------------------- collections

    def create_collection(self, new: CollectionRow) -> CollectionRow:
        """Insert ``new`` (its id and created_at are assigned here). A ``transform_gen`` of 1
        makes it revocable: templates go through the collection's secret transform, whose
        generation 1 salt is drawn here (see ``service.crypto.template_transform``)."""
        if new.transform_gen not in (0, 1):
            raise ValueError("a new collection starts at transform generation 0 or 1")
        row = dataclasses.replace(new, created_at=time.time())
        try:
            with self._tx() as db:
                cur = db.execute(
                    "INSERT INTO collections (name, kind, threshold, margin, hint_required_above,"
                    " model_id, created_at, transform_gen, enroll_quality, identify_quality,"
                    " require_liveness, identify_returns_metadata)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    _collection_values(row),
                )
                cid = int(cur.lastrowid or 0)
                if row.transform_gen:
                    db.execute(
                        "INSERT INTO transform_keys VALUES (?, ?, ?)",
                        (cid, row.transform_gen, os.urandom(SALT_BYTES)),
                    )
        except sqlite3.IntegrityError as exc:
            raise CollectionExists(
                f"collection {new.name!r} already exists", metadata={"collection": new.name}
            ) from exc
        return dataclasses.replace(row, id=cid)

    def update_collection(self, row: CollectionRow) -> CollectionRow:
        """Store the tunables of ``row`` (threshold, margin, hint limit, quality limits,
        liveness, metadata in answers) for the collection with its id; the rest of a
        collection never changes. Returns the row as stored."""
        values = _collection_values(row)
        with self._tx() as db:
            cur = db.execute(
                "UPDATE collections SET threshold = ?, margin = ?, hint_required_above = ?,"
                " enroll_quality = ?, identify_quality = ?, require_liveness = ?,"
                " identify_returns_metadata = ? WHERE id = ?",
                (*values[2:5], *values[8:], row.id),
            )
            if cur.rowcount != 1:
                raise _unknown_collection(row.name)
        return self.get_collection(row.name)

    def delete_collection(self, name: str) -> int:
        """Delete the collection with its users, faces and change log. Returns faces removed."""
        with self._tx() as db:
            row = db.execute("SELECT id FROM collections WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise _unknown_collection(name)
            faces = db.execute("SELECT count(*) FROM faces WHERE collection = ?", (name,))
            n = int(faces.fetchone()[0])
            db.execute("DELETE FROM faces WHERE collection = ?", (name,))
            db.execute("DELETE FROM users WHERE collection = ?", (name,))
            db.execute("DELETE FROM changes WHERE collection_id = ?", (row[0],))
            db.execute("DELETE FROM transform_keys WHERE collection_id = ?", (row[0],))
            db.execute("DELETE FROM collections WHERE id = ?", (row[0],))
        return n

    def get_collection(self, name: str) -> CollectionRow:
        row = self._one(_COLLECTION_SELECT + " WHERE name = ?", (name,))
        if row is None:
            raise _unknown_collection(name)
        return _collection_row(row)

    def list_collections(self) -> list[CollectionRow]:
        return [_collection_row(r) for r in self._all(_COLLECTION_SELECT + " ORDER BY name", ())]

    def count_users(self, collection: str) -> int:
        return self._count("SELECT count(*) FROM users WHERE collection = ?", collection)

    def count_users_with_phone(self, collection: str) -> int:
        return self._count(
            "SELECT count(*) FROM users WHERE collection = ? AND phone_bucket IS NOT NULL",
            collection,
        )

    def count_faces(self, collection: str) -> int:
        return self._count("SELECT count(*) FROM faces WHERE collection = ?", collection)

    # --------------------------------------------------------------------- users

    def enroll(
        self,
        collection: str,
        uid: str,
        faces: Sequence[NewFace],
        *,
        model_id: str,
        metadata: dict[str, str] | None,
        phone: tuple[str, str] | None,
    ) -> EnrollOutcome:
        """Create or update the user and add its faces, in one durable transaction.

        ``metadata`` None keeps the stored metadata; ``phone`` (hash, bucket) None keeps the
        stored phone. A changed phone moves the user's existing faces to new face ids in the
        new bucket (face ids never change meaning, so the index stays a set of ids).
        """
        now = time.time()
        with self._tx() as db:
            cid, gen = _collection_key(db, collection)
            user = db.execute(
                "SELECT phone_hash, phone_bucket FROM users WHERE collection = ? AND uid = ?",
                (collection, uid),
            ).fetchone()
            created = user is None
            bucket: str | None
            moved: list[FaceRow] = []
            removed: list[int] = []
            if created:
                bucket = phone[1] if phone is not None else None
                db.execute(_USER_INSERT, _user_values(collection, uid, metadata or {}, phone, now))
            else:
                bucket = user[1]
                if metadata is not None:
                    db.execute(
                        "UPDATE users SET metadata = ? WHERE collection = ? AND uid = ?",
                        (json.dumps(metadata, sort_keys=True), collection, uid),
                    )
                if phone is not None and phone[1] != bucket:
                    bucket = phone[1]
                    moved, removed = self._move_faces(db, cid, collection, uid, bucket)
                if phone is not None:
                    db.execute(
                        "UPDATE users SET phone_hash = ?, phone_bucket = ?"
                        " WHERE collection = ? AND uid = ?",
                        (phone[0], phone[1], collection, uid),
                    )
                db.execute(
                    "UPDATE users SET updated_at = ? WHERE collection = ? AND uid = ?",
                    (now, collection, uid),
                )
            new_ids: list[int] = []
            added = list(moved)
            for face in faces:
                fid = self._insert_face(
                    db,
                    cid=cid,
                    collection=collection,
                    uid=uid,
                    model_id=model_id,
                    face=face,
                    now=now,
                    gen=gen,
                )
                new_ids.append(fid)
                added.append(FaceRow(fid, uid, face.template, bucket, face.image_digest))
        renamed = {old: row.face_id for old, row in zip(removed, moved, strict=True)}
        return EnrollOutcome(created, tuple(added), tuple(removed), tuple(new_ids), renamed)

    def import_users(
        self,
        collection: str,
        users: Sequence[ImportedUser],
        *,
        model_id: str,
    ) -> list[FaceRow]:
        """Create new users with one template each, in one durable transaction.

        Refuses the whole batch with ``UserExists`` when any uid is already enrolled.
        """
        now = time.time()
        with self._tx() as db:
            cid, gen = _collection_key(db, collection)
            uids = [u.uid for u in users]
            for start in range(0, len(uids), 500):  # SQLite's bound-parameter limit
                chunk = uids[start : start + 500]
                marks = ",".join("?" * len(chunk))
                taken = db.execute(
                    f"SELECT uid FROM users WHERE collection = ? AND uid IN ({marks}) LIMIT 1",
                    (collection, *chunk),
                ).fetchone()
                if taken is not None:
                    raise UserExists(
                        f"uid {taken[0]!r} is already enrolled in {collection!r}; imports"
                        " never overwrite users",
                        metadata={"uid": str(taken[0]), "collection": collection},
                    )
            db.executemany(
                _USER_INSERT,
                [_user_values(collection, u.uid, u.metadata, u.phone, now) for u in users],
            )
            # Batched inserts (one statement each for faces and the change log) keep a
            # 10,000-template import to a fraction of a second. AUTOINCREMENT ids only grow and
            # nobody else writes inside this transaction, so the ids after the sequence's
            # current value are free; they are assigned up front because each template's
            # associated data binds its face id.
            before = _face_sequence(db)
            ids = list(range(before + 1, before + 1 + len(users)))
            rows = []
            for fid, u in zip(ids, users, strict=True):
                label = TemplateLabel(fid, collection, u.uid, model_id, gen)
                key_id, blob = self._templates.seal(u.template, label)
                rows.append((fid, collection, u.uid, model_id, blob, now, key_id, gen))
            db.executemany(
                "INSERT INTO faces (face_id, collection, uid, model_id, template, image_digest,"
                " box_left, box_top, box_right, box_bottom, det_score, inter_eye_px, created_at,"
                " key_id, transform_gen)"
                " VALUES (?, ?, ?, ?, ?, '', 0, 0, 0, 0, 0, 0, ?, ?, ?)",  # no image, no box
                rows,
            )
            db.executemany(
                "INSERT INTO changes (collection_id, op, face_id) VALUES (?, 'add', ?)",
                [(cid, fid) for fid in ids],
            )
        return [
            FaceRow(fid, u.uid, u.template, u.phone[1] if u.phone else None, "")
            for fid, u in zip(ids, users, strict=True)
        ]

    def _insert_face(
        self,
        db: sqlite3.Connection,
        *,
        cid: int,
        collection: str,
        uid: str,
        model_id: str,
        face: NewFace,
        now: float,
        gen: int,
    ) -> int:
        fid = _face_sequence(db) + 1  # assigned first: the ciphertext is bound to it
        label = TemplateLabel(fid, collection, uid, model_id, gen)
        key_id, blob = self._templates.seal(face.template, label)
        db.execute(
            "INSERT INTO faces (face_id, collection, uid, model_id, template, image_digest,"
            " box_left, box_top, box_right, box_bottom, det_score, inter_eye_px, created_at,"
            " key_id, transform_gen) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                fid,
                collection,
                uid,
                model_id,
                blob,
                face.image_digest,
                *face.box,
                face.det_score,
                face.inter_eye_px,
                now,
                key_id,
                gen,
            ),
        )
        db.execute(
            "INSERT INTO changes (collection_id, op, face_id) VALUES (?, 'add', ?)", (cid, fid)
        )
        return fid

    def _move_faces(
        self, db: sqlite3.Connection, cid: int, collection: str, uid: str, bucket: str
    ) -> tuple[list[FaceRow], list[int]]:
        """Re-insert the user's faces under fresh ids (their bucket changes)."""
        rows = db.execute(
            "SELECT face_id, model_id, template, image_digest, box_left, box_top, box_right,"
            " box_bottom, det_score, inter_eye_px, created_at, key_id, transform_gen FROM faces"
            " WHERE collection = ? AND uid = ? ORDER BY face_id",
            (collection, uid),
        ).fetchall()
        moved: list[FaceRow] = []
        removed: list[int] = []
        for r in rows:
            label = TemplateLabel(int(r[0]), collection, uid, str(r[1]), int(r[12]))
            try:
                # Re-sealed under its new face id, so it must open first: a row that does not
                # is refused rather than silently re-sealed (that would launder the tampering).
                template = self._templates.open_or_raise(r[11], r[2], label)
            except TemplateUnreadable as exc:
                raise TemplateUnreadable(
                    f"{exc.message}; the user's phone number cannot change until the user is"
                    " deleted and enrolled again",
                    metadata=exc.metadata,
                ) from exc
            face = NewFace(template, r[3], (r[4], r[5], r[6], r[7]), r[8], r[9])
            fid = self._insert_face(
                db,
                cid=cid,
                collection=collection,
                uid=uid,
                model_id=r[1],
                face=face,
                now=r[10],
                gen=int(r[12]),
            )
            self._delete_face(db, cid, int(r[0]))
            moved.append(FaceRow(fid, uid, template, bucket, r[3]))
            removed.append(int(r[0]))
        return moved, removed

    def _delete_face(self, db: sqlite3.Connection, cid: int, face_id: int) -> None:
        db.execute("DELETE FROM faces WHERE face_id = ?", (face_id,))
        db.execute(
            "INSERT INTO changes (collection_id, op, face_id) VALUES (?, 'remove', ?)",
            (cid, face_id),
        )

    def delete_user(self, collection: str, uid: str) -> list[int]:
        """Delete the user and its faces durably; returns the removed face ids."""
        with self._tx() as db:
            coll = db.execute("SELECT id FROM collections WHERE name = ?", (collection,)).fetchone()
            if coll is None:
                raise _unknown_collection(collection)
            exists = db.execute(
                "SELECT 1 FROM users WHERE collection = ? AND uid = ?", (collection, uid)
            ).fetchone()
            if exists is None:
                raise _unknown_user(collection, uid)
            ids = [
                int(r[0])
                for r in db.execute(
                    "SELECT face_id FROM faces WHERE collection = ? AND uid = ? ORDER BY face_id",
                    (collection, uid),
                )
            ]
            for fid in ids:
                self._delete_face(db, int(coll[0]), fid)
            db.execute("DELETE FROM users WHERE collection = ? AND uid = ?", (collection, uid))
        return ids

    def get_user(self, collection: str, uid: str) -> UserRow | None:
        row = self._one(_USER_SELECT + " WHERE u.collection = ? AND u.uid = ?", (collection, uid))
        return None if row is None else _user_row(row)

    def list_users(self, collection: str, *, after_uid: str, limit: int) -> list[UserRow]:
        rows = self._all(
            _USER_SELECT + " WHERE u.collection = ? AND u.uid > ? ORDER BY u.uid LIMIT ?",
            (collection, after_uid, limit),
        )
        return [_user_row(r) for r in rows]

    def user_faces(self, collection: str, uid: str) -> list[FaceRow]:
        rows = self._all(
            _FACE_SELECT + " WHERE f.collection = ? AND f.uid = ? ORDER BY f.face_id",
            (collection, uid),
        )
        return self._face_rows(rows)

    def _face_rows(self, rows: list[tuple[Any, ...]]) -> list[FaceRow]:
        """Rows of ``_FACE_SELECT`` whose templates open; the others are reported, left out."""
        out: list[FaceRow] = []
        for r in rows:
            label = TemplateLabel(int(r[0]), str(r[5]), str(r[1]), str(r[6]), int(r[8]))
            template = self._templates.open(r[7], r[2], label)
            if template is not None:
                out.append(FaceRow(label.face_id, label.uid, template, r[3], str(r[4])))
        return out

    # ------------------------------------------------------- index restore support

    def iter_faces(
        self, collection: str, model_id: str, *, batch: int = 10_000
    ) -> Iterator[list[FaceRow]]:
        """Every face of the collection made by ``model_id``, in face-id order, in batches."""
        last = 0
        while True:
            rows = self._all(
                _FACE_SELECT + " WHERE f.collection = ? AND f.model_id = ? AND f.face_id > ?"
                " ORDER BY f.face_id LIMIT ?",
                (collection, model_id, last, batch),
            )
            if not rows:
                return
            yield self._face_rows(rows)
            last = int(rows[-1][0])

    def faces_by_id(self, face_ids: Sequence[int], model_id: str) -> list[FaceRow]:
        """The faces among ``face_ids`` that still exist (and were made by ``model_id``)."""
        out: list[FaceRow] = []
        ids = sorted({int(f) for f in face_ids})
        for start in range(0, len(ids), 500):  # stay under SQLite's bound-parameter limit
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self._all(
                _FACE_SELECT + f" WHERE f.model_id = ? AND f.face_id IN ({marks})"
                " ORDER BY f.face_id",
                (model_id, *chunk),
            )
            out.extend(self._face_rows(rows))
        return out

    def sequence(self) -> int:
        """The newest change sequence ever committed (0 before the first change)."""
        row = self._one("SELECT seq FROM sqlite_sequence WHERE name = 'changes'", ())
        return 0 if row is None else int(row[0])

    def changes_since(self, collection_id: int, sequence: int) -> ChangesSince:
        rows = self._all(
            "SELECT op, face_id FROM changes WHERE collection_id = ? AND seq > ? ORDER BY seq",
            (collection_id, sequence),
        )
        added = tuple(int(f) for op, f in rows if op == "add")
        removed = tuple(int(f) for op, f in rows if op == "remove")
        return ChangesSince(added, removed)

    def prune_changes(self, collection_id: int, upto: int) -> int:
        """Forget the log up to ``upto`` once a snapshot including it is safely on disk."""
        with self._tx() as db:
            cur = db.execute(
                "DELETE FROM changes WHERE collection_id = ? AND seq <= ?", (collection_id, upto)
            )
            return int(cur.rowcount)


_COLLECTION_SELECT = (
    "SELECT id, name, kind, threshold, margin, hint_required_above, model_id, created_at,"
    " transform_gen, enroll_quality, identify_quality, require_liveness,"
    " identify_returns_metadata FROM collections"
)


def _collection_values(row: CollectionRow) -> tuple[object, ...]:
    """The row's columns after ``id``, in ``_COLLECTION_SELECT`` order: name, kind,
    threshold, margin, hint_required_above, model_id, created_at, transform_gen,
    enroll_quality, identify_quality, require_liveness, identify_returns_metadata."""
    liveness = row.require_liveness
    return (
        row.name,
        row.kind,
        row.threshold,
        row.margin,
        row.hint_required_above,
        row.model_id,
        row.created_at,
        row.transform_gen,
        json.dumps(dict(row.enroll_quality), sort_keys=True),
        json.dumps(dict(row.identify_quality), sort_keys=True),
        None if liveness is None else int(liveness),
        int(row.identify_returns_metadata),
    )


def _collection_row(r: tuple[Any, ...]) -> CollectionRow:
    cid, name, kind, threshold, margin, hint_required_above, model_id, created_at, gen = r[:9]
    return CollectionRow(
        cid,
        name,
        kind,
        threshold,
        margin,
        hint_required_above,
        model_id,
        created_at,
        gen,
        enroll_quality=json.loads(r[9]),
        identify_quality=json.loads(r[10]),
        require_liveness=None if r[11] is None else bool(r[11]),
        identify_returns_metadata=bool(r[12]),
    )


_FACE_SELECT = (
    "SELECT f.face_id, f.uid, f.template, u.phone_bucket, f.image_digest, f.collection,"
    " f.model_id, f.key_id, f.transform_gen FROM faces f"
    " JOIN users u ON u.collection = f.collection AND u.uid = f.uid"
)
_USER_SELECT = (
    "SELECT u.collection, u.uid, u.metadata, u.phone_hash, u.phone_bucket, u.created_at,"
    " u.updated_at, (SELECT count(*) FROM faces f WHERE f.collection = u.collection"
    " AND f.uid = u.uid) FROM users u"
)


_USER_INSERT = (
    "INSERT INTO users (collection, uid, metadata, phone_hash, phone_bucket, created_at,"
    " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
)


def _user_values(
    collection: str,
    uid: str,
    metadata: Mapping[str, str],
    phone: tuple[str, str] | None,
    now: float,
) -> tuple[object, ...]:
    """A new user's ``_USER_INSERT`` parameters; ``phone`` is (number hash, bucket)."""
    hashed, bucket = phone if phone is not None else (None, None)
    return (collection, uid, json.dumps(dict(metadata), sort_keys=True), hashed, bucket, now, now)


def _collection_key(db: sqlite3.Connection, collection: str) -> tuple[int, int]:
    """(id, transform generation) of the collection, inside a write transaction."""
    row = db.execute(
        "SELECT id, transform_gen FROM collections WHERE name = ?", (collection,)
    ).fetchone()
    if row is None:
        raise _unknown_collection(collection)
    return int(row[0]), int(row[1])


def _face_sequence(db: sqlite3.Connection) -> int:
    """The largest face id ever assigned (AUTOINCREMENT never hands out one below it)."""
    seq = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'faces'").fetchone()
    return int(seq[0]) if seq is not None else 0


def _user_row(r: tuple[Any, ...]) -> UserRow:
    meta = json.loads(str(r[2]))
    return UserRow(
        collection=str(r[0]),
        uid=str(r[1]),
        metadata={str(k): str(v) for k, v in meta.items()},
        phone_hash=None if r[3] is None else str(r[3]),
        phone_bucket=None if r[4] is None else str(r[4]),
        created_at=float(r[5]),
        updated_at=float(r[6]),
        face_count=int(r[7]),
    )


def _unknown_collection(name: str) -> UnknownCollection:
    return UnknownCollection(f"no collection named {name!r}", metadata={"collection": name})


def _unknown_user(collection: str, uid: str) -> UnknownUser:
    return UnknownUser(
        f"no user {uid!r} in collection {collection!r}",
        metadata={"collection": collection, "uid": uid},
    )
