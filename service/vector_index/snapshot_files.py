"""Where a collection's gallery snapshot lives and how it is sealed: shared by the
in-process index (``service.vector_index.local``) and the offline key maintenance that
re-seals or drops snapshots (``service.maintenance``)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from service.crypto.data_keys import Keyring
from service.crypto.snapshot_cipher import SnapshotCipher
from service.store.rows import CollectionRow

SNAPSHOT_SUFFIX = ".snap"


def snapshot_path(snapshot_dir: Path, row: CollectionRow) -> Path:
    """Named by the collection's never-reused id, so a re-created collection of the same
    name can never pick up its predecessor's snapshot."""
    return snapshot_dir / f"collection-{row.id}{SNAPSHOT_SUFFIX}"


def snapshot_codec(keyring: Keyring, row: CollectionRow) -> SnapshotCipher:
    """The cipher of ``row``'s snapshot: a snapshot of another collection, or of another
    transform generation of this one, fails to open (and the gallery is rebuilt)."""
    return SnapshotCipher(keyring, f"collection={row.id};transform={row.transform_gen}")


def remove_orphan_snapshots(snapshot_dir: Path, live: Iterable[CollectionRow]) -> None:
    """Delete snapshots of collections that no longer exist."""
    if not snapshot_dir.is_dir():
        return
    keep = {snapshot_path(snapshot_dir, r).name for r in live}
    for p in snapshot_dir.glob(f"collection-*{SNAPSHOT_SUFFIX}"):
        if p.name not in keep:
            p.unlink(missing_ok=True)
