"""What the gRPC layer needs from the engine: ``service.engine.face_service.FaceService``
satisfies this, and tests pass small fakes."""

from __future__ import annotations

from typing import Protocol

from service.domain import (
    CollectionInfo,
    CollectionSpec,
    EnrollRequest,
    EnrollResult,
    IdentifyRequest,
    IdentifyResult,
    ImportTemplatesRequest,
    ServerInfo,
    UserInfo,
    UserPage,
    VerifyRequest,
    VerifyResult,
)


class FaceServicePort(Protocol):
    """The engine's public methods. ``deadline`` is a ``time.monotonic()`` instant."""

    def create_collection(self, spec: CollectionSpec) -> CollectionInfo: ...

    def delete_collection(self, name: str) -> None: ...

    def get_collection(self, name: str) -> CollectionInfo: ...

    def list_collections(self) -> list[CollectionInfo]: ...

    def enroll(self, req: EnrollRequest, *, deadline: float | None = None) -> EnrollResult: ...

    def identify(
        self, req: IdentifyRequest, *, deadline: float | None = None
    ) -> IdentifyResult: ...

    def verify(self, req: VerifyRequest, *, deadline: float | None = None) -> VerifyResult: ...

    def delete_user(self, collection: str, uid: str) -> int: ...

    def get_user(self, collection: str, uid: str) -> UserInfo: ...

    def list_users(
        self, collection: str, *, page_size: int = 100, page_token: str = ""
    ) -> UserPage: ...

    def import_templates(self, req: ImportTemplatesRequest) -> tuple[int, ...]: ...

    def server_info(self) -> ServerInfo: ...

    def stats(self) -> dict[str, int]: ...

    def snapshot_all(self) -> None: ...

    def close(self) -> None: ...
