"""Accelerator slot -> face bookkeeping.

An accelerator labels its entries by *slot* (insertion order). A slot always
stands for the same face, so its UID code and face id are fixed when it is
assigned and read straight from arrays on the search hot path (no dict look-up,
no slot -> row -> uid double hop). Only its row moves (the row store is kept
compact on removal), and a removed face's slot maps to row -1.
"""

from __future__ import annotations

import numpy as np

from index.validation import I64Array


def _grow(a: I64Array, size: int) -> I64Array:
    out = np.full(size, -1, dtype=np.int64)
    out[: a.shape[0]] = a
    return out


class SlotTable:
    def __init__(self) -> None:
        self.row: I64Array = np.empty(0, dtype=np.int64)
        self.uid: I64Array = np.empty(0, dtype=np.int64)
        self.face: I64Array = np.empty(0, dtype=np.int64)

    def reset(self, row_uid: I64Array, row_face: I64Array) -> None:
        """Slots 0..n-1 are rows 0..n-1 (a fresh build)."""
        n = row_uid.shape[0]
        self.row = np.arange(n, dtype=np.int64)
        self.uid = row_uid.copy()
        self.face = row_face.copy()

    def restore(self, total: int, row_slot: I64Array, row_uid: I64Array,
                row_face: I64Array) -> None:
        """From a snapshot: slot of each row (-1 = none); other slots are dead."""
        live = row_slot >= 0
        rows = np.flatnonzero(live)
        slots = row_slot[live]
        self.row = np.full(total, -1, dtype=np.int64)
        self.uid = np.full(total, -1, dtype=np.int64)
        self.face = np.full(total, -1, dtype=np.int64)
        self.row[slots] = rows
        self.uid[slots] = row_uid[rows]
        self.face[slots] = row_face[rows]

    def append(self, first: int, start: int, row_uid: I64Array, row_face: I64Array) -> None:
        """Slots first.. are rows start.. (an incremental add)."""
        m = row_uid.shape[0]
        total = first + m
        if total > self.row.shape[0]:
            size = max(total, self.row.shape[0] * 3 // 2)
            self.row, self.uid, self.face = (_grow(a, size) for a in (self.row, self.uid,
                                                                       self.face))
        self.row[first:total] = np.arange(start, start + m, dtype=np.int64)
        self.uid[first:total] = row_uid
        self.face[first:total] = row_face

    def clear(self) -> None:
        self.__init__()  # type: ignore[misc]

    def nbytes(self) -> int:
        return self.row.nbytes + self.uid.nbytes + self.face.nbytes
