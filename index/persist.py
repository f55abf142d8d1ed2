"""Gallery <-> SnapshotData: the in-memory side of snapshots (the file format is
in index/snapshot.py). Package-internal: it reads and fills a Gallery's state."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from index.accelerator import Accelerator
from index.config import IndexKind
from index.errors import SnapshotCorrupt
from index.snapshot import SnapshotData

if TYPE_CHECKING:
    from index.gallery import Gallery


def export_gallery(g: Gallery, sequence: int) -> SnapshotData:
    """Consistent copy of the state for a snapshot (taken under the read lock,
    so writers wait only for the copy, not for the disk)."""
    with g._lock.read():
        n = g._n
        live_codes, uid_codes = np.unique(g._row_uid[:n], return_inverse=True)
        part_names = sorted(g._part_faces)
        part_index = {p: i for i, p in enumerate(part_names)}
        face_part = g._face_part
        part_codes = np.fromiter(
            (part_index[face_part[f]] if f in face_part else -1
             for f in g._row_face[:n].tolist()),
            dtype=np.int64, count=n,
        )
        accel = g._accel
        return SnapshotData(
            dim=g.dim,
            sequence=sequence,
            config=g.config,
            vectors=g._vecs[:n].copy(),
            face_ids=g._row_face[:n].copy(),
            uid_codes=uid_codes.astype(np.int64).reshape(n),
            uids=[g._uid_name[c] for c in live_codes.tolist()],
            part_codes=part_codes,
            partitions=part_names,
            row_slot=g._row_slot[:n].copy(),
            accel_blob=None if accel is None else accel.serialize(),
            accel_trained_size=0 if accel is None else accel.trained_size,
        )


def gallery_from_data(data: SnapshotData) -> Gallery:
    """Rebuild a gallery from verified snapshot arrays."""
    from index.gallery import Gallery

    g = Gallery(data.dim, data.config)
    n = data.face_ids.shape[0]
    if n == 0:
        return g
    parts: list[str | None] = [
        None if c < 0 else data.partitions[c] for c in data.part_codes.tolist()
    ]
    uids = [data.uids[c] for c in data.uid_codes.tolist()]
    g._ensure_capacity(n)
    g._vecs[:n] = data.vectors
    g._row_face[:n] = data.face_ids
    g._row_slot[:n] = -1
    codes = np.fromiter((g._intern_uid(u) for u in uids), dtype=np.int64, count=n)
    g._row_uid[:n] = codes
    for row, (f, code, p) in enumerate(
        zip(data.face_ids.tolist(), codes.tolist(), parts, strict=True)
    ):
        g._face_row[f] = row
        g._track_uid_size(code, +1)
        g._uid_faces[code].add(f)
        if p is not None:
            g._face_part[f] = p
            g._part_faces.setdefault(p, {})[f] = None
    g._n = n
    if data.accel_blob is not None and g.config.kind is not IndexKind.FLAT:
        accel = Accelerator.deserialize(g.config.kind, data.accel_blob,
                                        data.accel_trained_size)
        slots = data.row_slot
        total = accel.ntotal
        live = slots >= 0
        if slots.max() >= total or np.unique(slots[live]).shape[0] != int(live.sum()):
            raise SnapshotCorrupt("accelerator slots out of range or duplicated")
        accel.set_live(slots[live])
        g._accel = accel
        g._row_slot[:n] = slots
        g._slots.restore(total, slots, g._row_uid[:n], g._row_face[:n])
    g._maybe_rebuild()
    return g
