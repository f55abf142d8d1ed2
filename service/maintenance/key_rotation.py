"""Data-key rotation and integrity checks over a whole data directory (server stopped).

``rotate_data_key`` re-seals every template and every gallery snapshot under a new key:

1. the new key joins the keyring (the old ones stay readable) and is recorded in the store
   as the rotation target (its id and path, never the key);
2. rows not yet under it are re-sealed in short transactions (a kill leaves each row under
   exactly one of the two keys, both readable, and the next run carries on);
3. snapshots are re-sealed atomically (write, fsync, rename); unreadable ones are deleted;
4. the database file is rewritten so no ciphertext under the old key survives in free pages;
5. in the default layout the new ``template.key.next`` is renamed over ``template.key``
   (the old key is gone); otherwise the operator points ``crypto.key_file`` at the new key.

Matching results do not change: the plaintext templates are bit-identical before and after.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from index import SnapshotCorrupt
from index.snapshot import read_data, write_data
from service.config import Settings
from service.crypto.data_keys import (
    Keyring,
    create_key_file,
    default_key_path,
    directory_keyring,
    load_keyring,
    pending_key_path,
    read_key_file,
    uses_default_layout,
)
from service.crypto.secrets_file import fsync_dir
from service.crypto.template_crypto import TemplateCipher
from service.errors import DataKeyError
from service.store.sqlite import SqliteStore
from service.store.sqlite_crypto import ROTATION_SOURCE, ROTATION_TARGET
from service.vector_index.snapshot_files import (
    remove_orphan_snapshots,
    snapshot_codec,
    snapshot_path,
)

log = logging.getLogger(__name__)


@dataclass
class RotationResult:
    key_id: str
    key_source: str
    resealed: int = 0
    unreadable: list[int] = field(default_factory=list)
    snapshots_resealed: int = 0
    snapshots_dropped: int = 0
    finished: bool = False
    installed: bool = False  # default layout: template.key now holds the new key


def rotate_data_key(
    settings: Settings,
    new_key_file: Path | None = None,
    *,
    progress: Callable[[int], None] | None = None,
) -> RotationResult:
    if uses_default_layout(settings):
        if new_key_file is not None:
            raise DataKeyError(
                "the data directory's own template.key is in use: run rotate-key without"
                " --new-key-file (it generates template.key.next), or configure"
                " crypto.key_file first",
                metadata={"setting": "crypto.key_file"},
            )
        pending = pending_key_path(settings.data_dir)
        create_key_file(pending, what="next template encryption key")
        old = directory_keyring(settings.data_dir)
        new = read_key_file(pending)
    else:
        if new_key_file is None:
            raise DataKeyError(
                "crypto.key_file or crypto.key is configured: name the new key with"
                " --new-key-file (e.g. made by `facegate crypto new-key FILE`)",
                metadata={"setting": "crypto.key_file"},
            )
        old = load_keyring(settings)
        new = read_key_file(new_key_file)
    ring = Keyring(new, old.all_keys())
    result = RotationResult(new.key_id, new.source)
    store = SqliteStore(settings.store_path, cipher=TemplateCipher(ring), exclusive=True)
    try:
        store.crypto.set_state(ROTATION_TARGET, new.key_id)
        store.crypto.set_state(ROTATION_SOURCE, str(Path(new.source).resolve()))
        report = store.crypto.reseal_all(progress=progress)
        result.resealed, result.unreadable = report.resealed, report.unreadable
        result.snapshots_resealed, result.snapshots_dropped = reseal_snapshots(
            store, ring, settings.snapshot_dir
        )
        if result.unreadable:
            return result  # the old key is still needed for nothing but these; keep state
        store.compact()
        store.crypto.set_state(ROTATION_TARGET, None)
        store.crypto.set_state(ROTATION_SOURCE, None)
        result.finished = True
    finally:
        store.close()
    if uses_default_layout(settings):
        os.replace(pending_key_path(settings.data_dir), default_key_path(settings.data_dir))
        fsync_dir(settings.data_dir)
        result.installed = True
    return result


def reseal_snapshots(store: SqliteStore, ring: Keyring, snapshot_dir: Path) -> tuple[int, int]:
    """Re-seal each live collection's snapshot under the primary key; (resealed, dropped)."""
    if not snapshot_dir.is_dir():
        return 0, 0
    rows = store.list_collections()
    remove_orphan_snapshots(snapshot_dir, rows)
    resealed = dropped = 0
    for row in rows:
        path = snapshot_path(snapshot_dir, row)
        if not path.exists():
            continue
        codec = snapshot_codec(ring, row)
        try:
            data = read_data(path, codec)
        except SnapshotCorrupt as exc:
            # Only a cache: the next start rebuilds it from the store.
            log.warning("dropping unusable snapshot %s: %s", path, exc)
            path.unlink(missing_ok=True)
            dropped += 1
            continue
        write_data(path, data, codec)  # atomic: temp file, fsync, rename, fsync dir
        resealed += 1
    return resealed, dropped


@dataclass
class VerifyResult:
    checked: int
    unreadable: dict[int, str]  # face id -> why


def verify_templates(settings: Settings) -> VerifyResult:
    """Open every stored template with the configured keys; list the ones that fail."""
    store = SqliteStore(settings.store_path, cipher=TemplateCipher(load_keyring(settings)))
    try:
        checked = 0
        for row in store.list_collections():
            for model in store.crypto.models_in(row.name):
                for batch in store.iter_faces(row.name, model):
                    checked += len(batch)
        bad = store.unreadable_templates()
        return VerifyResult(checked + len(bad), {f: e.message for f, e in sorted(bad.items())})
    finally:
        store.close()
