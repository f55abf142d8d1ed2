"""The store's encryption bookkeeping: which keys sealed which rows, and the whole-table
passes that re-seal them (plaintext migration, data-key rotation, transform re-issue).

Every pass works in face-id order in short transactions and only touches rows not yet in
their target state (``key_id`` / ``transform_gen``), so a pass killed at any moment is
simply run again: each row is either fully old or fully new, and both stay readable.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from service.crypto.template_crypto import TemplateLabel
from service.crypto.template_transform import SALT_BYTES
from service.errors import DataKeyError
from service.pipeline.types import FloatArray
from service.store.rows import CollectionRow
from service.store.sealed_templates import SealedTemplates
from service.store.sqlite_db import SqliteDb

log = logging.getLogger(__name__)

BATCH = 500
ROTATION_TARGET = "rotation_target"  # key id a data-key rotation is moving rows to
ROTATION_SOURCE = "rotation_source"  # where that key is (a path; never the key)


@dataclass
class PassReport:
    """What one whole-table pass did."""

    resealed: int = 0
    unreadable: list[int] = field(default_factory=list)  # face ids left as they were


class CryptoPasses:
    """The encryption bookkeeping of one SQLite store (``SqliteStore.crypto``): it shares the
    store's connections and sealed-template codec, and owns no other state."""

    def __init__(self, db: SqliteDb, templates: SealedTemplates, path: Path) -> None:
        self._db = db
        self._templates = templates
        self._path = path

    def state(self, name: str) -> str | None:
        row = self._db.one("SELECT value FROM crypto_state WHERE name = ?", (name,))
        return None if row is None else str(row[0])

    def set_state(self, name: str, value: str | None) -> None:
        with self._db.transaction() as db:
            if value is None:
                db.execute("DELETE FROM crypto_state WHERE name = ?", (name,))
            else:
                db.execute("INSERT OR REPLACE INTO crypto_state VALUES (?, ?)", (name, value))

    def key_usage(self) -> dict[str | None, int]:
        """Number of templates per key id (None: plaintext rows of schema version 1)."""
        rows = self._db.all("SELECT key_id, count(*) FROM faces GROUP BY key_id", ())
        return {(None if k is None else str(k)): int(n) for k, n in rows}

    def models_in(self, collection: str) -> list[str]:
        rows = self._db.all(
            "SELECT DISTINCT model_id FROM faces WHERE collection = ?", (collection,)
        )
        return sorted(str(r[0]) for r in rows)

    def registered_keys(self) -> set[str]:
        return {str(r[0]) for r in self._db.all("SELECT key_id FROM data_keys", ())}

    def check_keys(self) -> None:
        """Refuse to open when a key that sealed rows is not configured; then register the
        primary key. (A row naming an unregistered key id was altered: reported per row.)"""
        keyring = self._templates.cipher.keyring
        registered = self.registered_keys()
        missing = {
            k: n
            for k, n in self.key_usage().items()
            if k is not None and k in registered and keyring.get(k) is None
        }
        if missing:
            listed = ", ".join(f"{n} under key {k}" for k, n in sorted(missing.items()))
            message = (
                f"{self._path}: templates are sealed under keys that are not configured ({listed});"
                f" configured: {keyring.describe()}. Wrong or missing key: point crypto.key_file"
                " (or FACEGATE_CRYPTO_KEY) at the key these templates were sealed with"
            )
            target, source = self.state(ROTATION_TARGET), self.state(ROTATION_SOURCE)
            if target in missing:
                message += (
                    f". A rotation to key {target} ({source}) is unfinished: rerun"
                    f" `facegate crypto rotate-key --new-key-file {source}`, or configure that"
                    " file as crypto.key_file with the old key as crypto.previous_key_file"
                )
            raise DataKeyError(message, metadata={"missing_key_ids": ",".join(sorted(missing))})
        if keyring.primary.key_id not in registered:
            with self._db.transaction() as db:
                db.execute(
                    "INSERT OR IGNORE INTO data_keys VALUES (?, ?)",
                    (keyring.primary.key_id, time.time()),
                )

    def seal_plaintext_rows(self) -> int:
        """Seal the plaintext templates a schema-1 store holds (once, on the first start with a
        key), then rewrite the file so no plaintext copy survives in free pages or the WAL."""
        if self.state("plaintext_migrated") == "1":
            return 0
        done, last = 0, 0
        while True:
            with self._db.transaction() as db:
                rows = db.execute(
                    "SELECT face_id, collection, uid, model_id, template, transform_gen FROM faces"
                    " WHERE key_id IS NULL AND face_id > ? ORDER BY face_id LIMIT ?",
                    (last, BATCH),
                ).fetchall()
                if not rows:
                    break
                updates = []
                for fid, coll, uid, model, raw, gen in rows:
                    label = TemplateLabel(int(fid), str(coll), str(uid), str(model), int(gen))
                    if len(raw) % 4:  # not a float32 vector: leave it; it will be reported
                        continue
                    template = np.frombuffer(bytes(raw), dtype="<f4").astype(np.float32)
                    key_id, sealed = self._templates.seal(template, label)
                    updates.append((sealed, key_id, label.face_id))
                db.executemany(
                    "UPDATE faces SET template = ?, key_id = ?"
                    " WHERE face_id = ? AND key_id IS NULL",
                    updates,
                )
                done += len(updates)
                last = int(rows[-1][0])
        self.set_state("plaintext_migrated", "1")
        self._db.rewrite_file()
        if done:
            log.warning(
                "%s: sealed %d plaintext templates from an older facegate under key %s",
                self._path,
                done,
                self._templates.cipher.primary_key_id,
            )
        return done

    def reseal_all(self, *, progress: Callable[[int], None] | None = None) -> PassReport:
        """Re-seal every template not under the primary key with the primary key."""
        return self._rewrite(
            "key_id IS NULL OR key_id != ?",
            (self._templates.cipher.primary_key_id,),
            lambda label, template: (template, label),
            progress,
        )

    def _rewrite(
        self,
        where: str,
        params: tuple[object, ...],
        rewrite: Callable[[TemplateLabel, FloatArray], tuple[FloatArray, TemplateLabel]],
        progress: Callable[[int], None] | None = None,
    ) -> PassReport:
        """Open, rewrite and re-seal (under the primary key) every template of the rows
        matching ``where``, in face-id order, ``BATCH`` rows per transaction. ``rewrite``
        returns the template and the label it is sealed under (a new transform generation,
        or the same). Rows that do not open are reported and left as they are."""
        report = PassReport()
        last = 0
        while True:
            with self._db.transaction() as db:
                rows = db.execute(
                    "SELECT face_id, collection, uid, model_id, template, transform_gen, key_id"
                    f" FROM faces WHERE face_id > ? AND ({where}) ORDER BY face_id LIMIT ?",
                    (last, *params, BATCH),
                ).fetchall()
                if not rows:
                    break
                updates = []
                for fid, coll, uid, model, blob, gen, key_id in rows:
                    label = TemplateLabel(int(fid), str(coll), str(uid), str(model), int(gen))
                    template = self._templates.open(key_id, blob, label)
                    if template is None:
                        report.unreadable.append(label.face_id)
                        continue
                    new_template, new_label = rewrite(label, template)
                    new_key, sealed = self._templates.seal(new_template, new_label)
                    updates.append((sealed, new_key, new_label.transform_gen, label.face_id))
                db.executemany(
                    "UPDATE faces SET template = ?, key_id = ?, transform_gen = ?"
                    " WHERE face_id = ?",
                    updates,
                )
                report.resealed += len(updates)
                last = int(rows[-1][0])
            if progress is not None:
                progress(report.resealed)
        return report

    # ------------------------------------------------------------ transform generations

    def transform_salts(self, collection_id: int) -> dict[int, bytes]:
        rows = self._db.all(
            "SELECT generation, salt FROM transform_keys WHERE collection_id = ?", (collection_id,)
        )
        return {int(g): bytes(s) for g, s in rows}

    def faces_behind(self, row: CollectionRow) -> int:
        """Templates of the collection not yet at its current transform generation."""
        found = self._db.one(
            "SELECT count(*) FROM faces WHERE collection = ? AND transform_gen != ?",
            (row.name, row.transform_gen),
        )
        return 0 if found is None else int(found[0])

    def begin_transform_rotation(self, row: CollectionRow) -> CollectionRow:
        """Draw the next generation's salt and make it the collection's current generation;
        the rows follow with ``retransform_all``. Returns the updated row."""
        if row.transform_gen == 0:
            raise DataKeyError(
                f"collection {row.name!r} was not created with revocable templates",
                metadata={"collection": row.name},
            )
        gen = row.transform_gen + 1
        with self._db.transaction() as db:
            db.execute(
                "INSERT INTO transform_keys VALUES (?, ?, ?)", (row.id, gen, os.urandom(SALT_BYTES))
            )
            db.execute("UPDATE collections SET transform_gen = ? WHERE id = ?", (gen, row.id))
        return replace(row, transform_gen=gen)

    def retransform_all(
        self,
        row: CollectionRow,
        reissue: Callable[[int, FloatArray], FloatArray],
    ) -> PassReport:
        """Re-issue every template of ``row`` made under an older generation:
        ``reissue(old_generation, templates)`` returns them under the current one."""
        target = row.transform_gen

        def to_current(
            label: TemplateLabel, template: FloatArray
        ) -> tuple[FloatArray, TemplateLabel]:
            return reissue(label.transform_gen, template), replace(label, transform_gen=target)

        return self._rewrite(
            "collection = ? AND transform_gen != ?", (row.name, target), to_current
        )

    def forget_old_generations(self, row: CollectionRow) -> int:
        """Delete the salts of generations no template uses any more: from then on not even
        the master key can re-create those transforms. Returns how many were deleted."""
        with self._db.transaction() as db:
            cur = db.execute(
                "DELETE FROM transform_keys WHERE collection_id = ? AND generation != ?"
                " AND generation NOT IN (SELECT DISTINCT transform_gen FROM faces"
                " WHERE collection = ?)",
                (row.id, row.transform_gen, row.name),
            )
            return int(cur.rowcount)
