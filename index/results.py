"""Search results and the face -> UID collapsing step shared by all search paths."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from index.validation import F32Array, I64Array


@dataclass(frozen=True)
class SearchResult:
    """Top-k distinct UIDs for one query, best first."""

    uids: tuple[str, ...] = ()
    # Cosine similarity of each UID's best face (float32), same length as uids.
    scores: F32Array = field(default_factory=lambda: np.empty(0, dtype=np.float32))
    # The best-matching face id of each UID (int64).
    face_ids: I64Array = field(default_factory=lambda: np.empty(0, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.uids)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SearchResult):
            return NotImplemented
        return (
            self.uids == other.uids
            and np.array_equal(self.scores, other.scores)
            and np.array_equal(self.face_ids, other.face_ids)
        )

    __hash__ = None  # type: ignore[assignment]


def best_per_uid(
    scores: F32Array, rows: I64Array, row_uid: I64Array, k: int
) -> tuple[I64Array, F32Array, I64Array]:
    """Collapse face candidates (sorted by score, descending) to the first k UIDs.

    Returns (uid codes, scores, rows) of each UID's best face. Rows < 0 (FAISS's
    'no result') are ignored. Because the input is sorted, the first occurrence
    of a UID is its best face.
    """
    valid = rows >= 0
    if not valid.all():
        scores, rows = scores[valid], rows[valid]
    codes = row_uid[rows]
    if codes.shape[0] <= 512:
        # Typical case (k * faces-per-UID candidates): a Python scan that stops
        # at k beats np.unique's sort by ~10x per query.
        seen: set[int] = set()
        picked: list[int] = []
        for i, c in enumerate(codes.tolist()):
            if c not in seen:
                seen.add(c)
                picked.append(i)
                if len(picked) == k:
                    break
        first = np.array(picked, dtype=np.int64)
    else:
        _, first = np.unique(codes, return_index=True)
        first.sort()
        first = first[:k]
    return codes[first], scores[first].astype(np.float32, copy=False), rows[first]
