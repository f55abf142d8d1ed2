"""The seams of the service, as protocols: what a transport needs from the engine
(``FaceServicePort``), and what the engine needs from its durable store (``FaceStore``)
and from the vector index that searches it (``VectorIndex`` per collection, managed by
``VectorIndexes``).

Built from the calls the engine really makes, so a second backend implements exactly
these: ``service.store.sqlite.SqliteStore`` and ``service.vector_index.local.LocalIndexes``
(FAISS ``index.Gallery`` per collection) are the embedded defaults. Tests pass fakes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

import numpy as np

from index.results import SearchResult
from service import domain
from service.errors import TemplateUnreadable
from service.store.rows import (
    ChangesSince,
    CollectionRow,
    EnrollOutcome,
    FaceRow,
    ImportedUser,
    NewFace,
    UserRow,
)


class FaceServicePort(Protocol):
    """The engine's public methods. ``deadline`` is a ``time.monotonic()`` instant."""

    def create_collection(self, spec: domain.CollectionSpec) -> domain.CollectionInfo: ...

    def update_collection(self, change: domain.CollectionUpdate) -> domain.CollectionInfo: ...

    def delete_collection(self, name: str) -> None: ...

    def get_collection(self, name: str) -> domain.CollectionInfo: ...

    def list_collections(self) -> list[domain.CollectionInfo]: ...

    def enroll(
        self, req: domain.EnrollRequest, *, deadline: float | None = None
    ) -> domain.EnrollResult: ...

    def identify(
        self, req: domain.IdentifyRequest, *, deadline: float | None = None
    ) -> domain.IdentifyResult: ...

    def verify(
        self, req: domain.VerifyRequest, *, deadline: float | None = None
    ) -> domain.VerifyResult: ...

    def delete_user(self, collection: str, uid: str) -> int: ...

    def get_user(self, collection: str, uid: str) -> domain.UserInfo: ...

    def list_users(
        self, collection: str, *, page_size: int = 100, page_token: str = ""
    ) -> domain.UserPage: ...

    def import_templates(self, req: domain.ImportTemplatesRequest) -> tuple[int, ...]: ...

    def server_info(self) -> domain.ServerInfo: ...

    def stats(self) -> dict[str, int]: ...

    def close(self) -> None: ...


class FaceStore(Protocol):
    """The durable source of truth. Every acknowledged write is durable before the call
    returns, and each write appends to a change log (sequence, collection id, add/remove,
    face id) that vector indexes follow. Face ids are never reused. Templates are sealed at
    rest; a row that does not open is reported and left out of every answer."""

    # collections
    def create_collection(self, new: CollectionRow) -> CollectionRow: ...

    def update_collection(self, row: CollectionRow) -> CollectionRow: ...

    def delete_collection(self, name: str) -> int: ...

    def list_collections(self) -> list[CollectionRow]: ...

    def count_users(self, collection: str) -> int: ...

    def count_faces(self, collection: str) -> int: ...

    def transform_salts(self, collection_id: int) -> dict[int, bytes]: ...

    # users and faces
    def enroll(
        self,
        collection: str,
        uid: str,
        faces: Sequence[NewFace],
        *,
        model_id: str,
        metadata: dict[str, str] | None,
        phone: tuple[str, str] | None,
    ) -> EnrollOutcome: ...

    def import_users(
        self, collection: str, users: Sequence[ImportedUser], *, model_id: str
    ) -> list[FaceRow]: ...

    def delete_user(self, collection: str, uid: str) -> list[int]: ...

    def get_user(self, collection: str, uid: str) -> UserRow | None: ...

    def list_users(self, collection: str, *, after_uid: str, limit: int) -> list[UserRow]: ...

    def user_faces(self, collection: str, uid: str) -> list[FaceRow]: ...

    def unreadable_templates(self) -> dict[int, TemplateUnreadable]: ...

    # what a vector index reads to follow the store
    def iter_faces(
        self, collection: str, model_id: str, *, batch: int = 10_000
    ) -> Iterator[list[FaceRow]]: ...

    def faces_by_id(self, face_ids: Sequence[int], model_id: str) -> list[FaceRow]: ...

    def sequence(self) -> int: ...

    def changes_since(self, collection_id: int, sequence: int) -> ChangesSince: ...

    def prune_changes(self, collection_id: int, upto: int) -> int: ...

    def close(self) -> None: ...


class VectorIndex(Protocol):
    """One collection's enrolled faces, searchable 1:N (``index.Gallery`` is one). Scores
    are cosine similarities of L2-normalised vectors; ``faces_of`` / ``vectors_of`` raise
    ``index.UnknownId`` for a uid or face that is not there."""

    def search(
        self, queries: np.ndarray, k: int, partition: str | None = None
    ) -> list[SearchResult]: ...

    def search_partitions(
        self, queries: np.ndarray, k: int, partitions: Sequence[str | None]
    ) -> list[SearchResult]: ...

    def count(self) -> int: ...

    def count_uids(self) -> int: ...

    def count_partitions(self) -> int: ...

    def faces_of(self, uid: str) -> np.ndarray: ...

    def vectors_of(self, face_ids: np.ndarray) -> np.ndarray: ...


class VectorIndexes(Protocol):
    """The vector index of every collection, kept in step with the store's change log.
    The engine writes only to the store and then calls ``sync``, which applies the log up
    to its head before returning (read-your-writes); an index never takes writes from any
    other path, so a second replica or an external engine can follow the same log."""

    def create(self, row: CollectionRow) -> VectorIndex: ...

    def load(self, row: CollectionRow) -> VectorIndex: ...

    def sync(self, row: CollectionRow) -> int: ...

    def drop(self, row: CollectionRow) -> None: ...

    def checkpoint(self) -> None:
        """Persist whatever shortens the next start (the local index: snapshots)."""
        ...

    def close(self) -> None: ...
