"""The in-process vector index: one FAISS ``index.Gallery`` per collection, kept in step
with the store's change log, restored at start from a sealed snapshot plus the log after it.

The gallery is a cache of the store and follows it only through the log, never through
the caller's hands: after a write the engine calls ``sync(row)``, which reads the changes
after the position this gallery has applied and reconciles them. Face ids are never
reused, so reconciling is exact and idempotent:

* a face added after the position that still exists in the store and is not in the
  gallery is added (a face added and removed since is simply not found in the store);
* a face removed after the position is dropped if present;

adds before removes, so a user whose faces moved to new ids (a changed phone bucket) stays
findable throughout. Changes may be applied twice (a snapshot taken while writers run can
be ahead of the position it records); they are never skipped, because the position only
moves to a head read *before* the changes it covers.

Snapshots are this index's own business: ``checkpoint()`` writes each gallery with its
applied position (atomic, sealed under the store's data key), then prunes the log up to it.
A missing, corrupt or mismatched snapshot is logged and the gallery rebuilt from the store;
an unencrypted one left by an older facegate is deleted on sight (it holds templates in
clear).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from index import Gallery, GalleryError, IndexConfig, SnapshotCorrupt
from index.snapshot import write_data
from service.crypto.data_keys import Keyring
from service.crypto.snapshot_cipher import PlaintextSnapshot
from service.ports import FaceStore
from service.store.rows import CollectionRow, FaceRow
from service.vector_index.snapshot_files import (
    remove_orphan_snapshots,
    snapshot_codec,
    snapshot_path,
)
from service.vector_index.snapshotter import PeriodicSnapshots

log = logging.getLogger(__name__)


@dataclass
class _Entry:
    row: CollectionRow
    gallery: Gallery
    position: int  # every change of the log up to here is in the gallery
    lock: threading.Lock = field(default_factory=threading.Lock)


class LocalIndexes:
    """``service.ports.VectorIndexes`` in this process. Thread-safe.

    ``snapshot_every_s`` > 0 starts a daemon thread that checkpoints that often, so a
    restart replays minutes of the log, not all of it; ``close()`` stops it.
    """

    def __init__(
        self,
        store: FaceStore,
        keyring: Keyring,
        *,
        dim: int,
        snapshot_dir: Path,
        config: IndexConfig | None = None,
        snapshot_every_s: float = 0.0,
    ) -> None:
        self._store = store
        self._keyring = keyring
        self._dim = dim
        self._dir = snapshot_dir
        self._config = config if config is not None else IndexConfig()
        self._entries: dict[int, _Entry] = {}
        self._lock = threading.Lock()
        self._checkpoint_lock = threading.Lock()
        self._periodic: PeriodicSnapshots | None = None
        if snapshot_every_s > 0:
            self._periodic = PeriodicSnapshots(self.checkpoint, snapshot_every_s)
            self._periodic.start()

    # ----------------------------------------------------------- VectorIndexes

    def create(self, row: CollectionRow) -> Gallery:
        return self._register(row, Gallery(self._dim, self._config), 0)

    def load(self, row: CollectionRow) -> Gallery:
        """The collection's gallery from its snapshot plus the log after it, or rebuilt."""
        restored = self._restore(row)
        if restored is None:
            position = self._store.sequence()  # read first: changes during the scan replay
            gallery = Gallery(self._dim, self._config)
            for batch in self._store.iter_faces(row.name, row.model_id):
                _add(gallery, batch)
            log.info("collection %r: rebuilt %d faces from the store", row.name, gallery.count())
            return self._register(row, gallery, position)
        gallery, position = restored
        return self._register(row, gallery, position)

    def sync(self, row: CollectionRow) -> int:
        """Apply the log after this gallery's position; returns how many faces changed."""
        entry = self._entry(row)
        with entry.lock:
            head = self._store.sequence()
            changed = self._apply(entry.row, entry.gallery, entry.position)
            entry.position = max(entry.position, head)
        return changed

    def drop(self, row: CollectionRow) -> None:
        with self._lock:
            self._entries.pop(row.id, None)
        snapshot_path(self._dir, row).unlink(missing_ok=True)

    def checkpoint(self) -> None:
        """Snapshot every gallery with its position, then forget the log it covers.
        Concurrent calls run one after the other."""
        with self._checkpoint_lock:
            self._dir.mkdir(parents=True, exist_ok=True)
            with self._lock:
                entries = list(self._entries.values())
            for entry in entries:
                with entry.lock:
                    position = entry.position
                # Read before the copy: the copy holds at least every change up to it.
                data = entry.gallery.export(position)
                write_data(
                    snapshot_path(self._dir, entry.row),
                    data,
                    snapshot_codec(self._keyring, entry.row),
                )
                self._store.prune_changes(entry.row.id, position)
            remove_orphan_snapshots(self._dir, self._store.list_collections())

    def close(self) -> None:
        if self._periodic is not None:
            self._periodic.stop()  # before the store closes under a running checkpoint
            self._periodic = None

    # ----------------------------------------------------------- local extras

    def remove_orphans(self, live: list[CollectionRow]) -> None:
        """Delete snapshots of collections that no longer exist (at start-up)."""
        remove_orphan_snapshots(self._dir, live)

    # ----------------------------------------------------------- internals

    def _register(self, row: CollectionRow, gallery: Gallery, position: int) -> Gallery:
        entry = _Entry(row, gallery, position)
        with self._lock:
            self._entries[row.id] = entry
        self.sync(row)
        return gallery

    def _entry(self, row: CollectionRow) -> _Entry:
        with self._lock:
            entry = self._entries.get(row.id)
        if entry is None:
            raise KeyError(f"collection {row.name!r} (id {row.id}) has no index here")
        return entry

    def _apply(self, row: CollectionRow, gallery: Gallery, position: int) -> int:
        changes = self._store.changes_since(row.id, position)
        wanted = [f for f in dict.fromkeys(changes.added) if f not in gallery]
        rows = self._store.faces_by_id(wanted, row.model_id) if wanted else []
        _add(gallery, rows)
        gone = [f for f in dict.fromkeys(changes.removed) if f in gallery]
        if gone:
            gallery.remove_faces(np.array(gone, dtype=np.int64))
        return len(rows) + len(gone)

    def _restore(self, row: CollectionRow) -> tuple[Gallery, int] | None:
        path = snapshot_path(self._dir, row)
        if not path.exists():
            return None
        try:
            gallery, position = Gallery.load(path, codec=snapshot_codec(self._keyring, row))
            if gallery.dim != self._dim:
                raise SnapshotCorrupt(
                    f"snapshot has dimension {gallery.dim}, model has {self._dim}"
                )
            head = self._store.sequence()
            changed = self._apply(row, gallery, position)
            expected = self._store.count_faces(row.name)
            if gallery.count() != expected:
                # Should not happen; if it does, the store wins.
                raise SnapshotCorrupt(
                    f"after replay the gallery holds {gallery.count()} faces, the store {expected}"
                )
            log.info(
                "collection %r: restored %d faces from %s (position %d, %d replayed)",
                row.name,
                gallery.count(),
                path,
                position,
                changed,
            )
            return gallery, max(position, head)
        except PlaintextSnapshot:
            path.unlink(missing_ok=True)
            log.warning(
                "collection %r: deleted the unencrypted snapshot %s of an older facegate;"
                " rebuilding from the store",
                row.name,
                path,
            )
        except (GalleryError, OSError, ValueError) as exc:
            log.warning(
                "collection %r: snapshot %s unusable (%s); rebuilding from the store",
                row.name,
                path,
                exc,
            )
        return None


def _add(gallery: Gallery, rows: list[FaceRow]) -> None:
    if not rows:
        return
    vectors = np.ascontiguousarray(np.stack([r.template for r in rows]), dtype=np.float32)
    gallery.add(
        vectors,
        np.fromiter((r.face_id for r in rows), dtype=np.int64, count=len(rows)),
        [r.uid for r in rows],
        [r.partition for r in rows],
    )
