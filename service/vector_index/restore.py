"""Bring a collection's in-memory gallery back from its snapshot plus the store's change log.

The gallery is a cache of the store. A snapshot records the store sequence S it includes
(every change <= S is in it; some later ones may be too, because it is taken without
stopping writers). Replaying the log after S is therefore a reconciliation rather than a
blind re-application, which face ids that are never reused make exact:

* a face removed after S: drop it from the gallery if present;
* a face added after S that still exists in the store and is not in the gallery: add it.

A missing, corrupt or mismatched snapshot is logged and the gallery rebuilt from the store.
Snapshots are sealed (``service.crypto.snapshot_cipher``) under the store's data key, bound to the
collection id and its transform generation; an unencrypted one left by an older facegate is
deleted on sight (it holds templates in clear) and the gallery rebuilt.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from index import Gallery, GalleryError, IndexConfig, SnapshotCorrupt
from service.crypto.data_keys import Keyring
from service.crypto.snapshot_cipher import PlaintextSnapshot, SnapshotCipher
from service.store.sqlite import CollectionRow, FaceRow, SqliteStore

log = logging.getLogger(__name__)

SNAPSHOT_SUFFIX = ".snap"


def snapshot_path(snapshot_dir: Path, row: CollectionRow) -> Path:
    """Named by the collection's never-reused id, so a re-created collection of the same
    name can never pick up its predecessor's snapshot."""
    return snapshot_dir / f"collection-{row.id}{SNAPSHOT_SUFFIX}"


def snapshot_codec(keyring: Keyring, row: CollectionRow) -> SnapshotCipher:
    """The cipher of ``row``'s snapshot: a snapshot of another collection, or of another
    transform generation of this one, fails to open (and the gallery is rebuilt)."""
    return SnapshotCipher(keyring, f"collection={row.id};transform={row.transform_gen}")


def add_rows(gallery: Gallery, rows: list[FaceRow]) -> None:
    if not rows:
        return
    vectors = np.ascontiguousarray(np.stack([r.template for r in rows]), dtype=np.float32)
    gallery.add(
        vectors,
        np.fromiter((r.face_id for r in rows), dtype=np.int64, count=len(rows)),
        [r.uid for r in rows],
        [r.partition for r in rows],
    )


def rebuild(store: SqliteStore, row: CollectionRow, dim: int, config: IndexConfig) -> Gallery:
    gallery = Gallery(dim, config)
    for batch in store.iter_faces(row.name, row.model_id):
        add_rows(gallery, batch)
    return gallery


def replay(store: SqliteStore, row: CollectionRow, gallery: Gallery, sequence: int) -> int:
    """Apply the store's changes after ``sequence``; returns how many faces changed."""
    changes = store.changes_since(row.id, sequence)
    gone = [f for f in set(changes.removed) if f in gallery]
    if gone:
        gallery.remove_faces(np.array(gone, dtype=np.int64))
    wanted = [f for f in set(changes.added) if f not in gallery]
    rows = store.faces_by_id(wanted, row.model_id)
    add_rows(gallery, rows)
    return len(gone) + len(rows)


def restore(
    store: SqliteStore, row: CollectionRow, dim: int, snapshot_dir: Path, config: IndexConfig
) -> Gallery:
    path = snapshot_path(snapshot_dir, row)
    if path.exists():
        try:
            gallery, sequence = Gallery.load(path, codec=snapshot_codec(store.cipher.keyring, row))
            if gallery.dim != dim:
                raise SnapshotCorrupt(f"snapshot has dimension {gallery.dim}, model has {dim}")
            changed = replay(store, row, gallery, sequence)
            expected = store.count_faces(row.name)
            if gallery.count() != expected:
                # Should not happen; if it does, the store wins.
                raise SnapshotCorrupt(
                    f"after replay the gallery holds {gallery.count()} faces, the store {expected}"
                )
            log.info(
                "collection %r: restored %d faces from %s (sequence %d, %d replayed)",
                row.name,
                gallery.count(),
                path,
                sequence,
                changed,
            )
            return gallery
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
    gallery = rebuild(store, row, dim, config)
    log.info("collection %r: rebuilt %d faces from the store", row.name, gallery.count())
    return gallery


def remove_orphan_snapshots(snapshot_dir: Path, live: list[CollectionRow]) -> None:
    """Delete snapshots of collections that no longer exist."""
    if not snapshot_dir.is_dir():
        return
    keep = {snapshot_path(snapshot_dir, r).name for r in live}
    for p in snapshot_dir.glob(f"collection-*{SNAPSHOT_SUFFIX}"):
        if p.name not in keep:
            p.unlink(missing_ok=True)
