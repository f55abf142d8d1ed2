"""An in-memory engine for transport tests (server, client, CLI): it implements
``service.ports.FaceServicePort`` with plain dicts, so those tests exercise gRPC, conversion
and error mapping, not the face pipeline (tests/test_e2e.py runs the real one).

"Images" are byte strings the fake interprets: ``b""`` is refused as a missing argument (as
the real engine does), ``b"garbage"`` is undecodable, ``b"noface"`` has no
face, ``b"two"`` has two faces, ``b"boom"`` makes the engine crash unexpectedly; any other
bytes are "a face" identified by their content, so enrolling ``b"alice"`` and identifying
``b"alice"`` matches.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from service.config import MetricsSettings, Settings
from service.domain import (
    Candidate,
    CollectionInfo,
    CollectionSpec,
    CollectionUpdate,
    Decision,
    EnrollRequest,
    EnrollResult,
    FaceBox,
    FaceQuality,
    IdentifyRequest,
    IdentifyResult,
    ImportTemplatesRequest,
    LivenessInfo,
    QualityPolicy,
    ServerInfo,
    UserInfo,
    UserPage,
    VerifyRequest,
    VerifyResult,
)
from service.errors import (
    CollectionExists,
    ImageUndecodable,
    InvalidArgument,
    ModelMismatch,
    MultipleFaces,
    NoFace,
    ProbeTokenInvalid,
    UnknownCollection,
    UnknownUser,
    UserExists,
)
from service.transport.server import FaceGateServer, create_server

BOX = FaceBox(left=10.0, top=20.0, right=110.0, bottom=140.0, score=0.99)
THRESHOLD = 0.6
FAKE_DIM = 4


@dataclass
class _User:
    faces: list[bytes]
    phone: str | None
    metadata: dict[str, str]
    created_at: float
    updated_at: float


@dataclass
class _Collection:
    spec: CollectionSpec
    created_at: float
    users: dict[str, _User] = field(default_factory=dict)


class FakeFaceService:
    def __init__(self) -> None:
        self.collections: dict[str, _Collection] = {}
        self.closed = False
        self.next_face_id = 1
        # Test hooks: an exception every method raises; a gate identify waits on; what the
        # engine saw.
        self.fail_with: BaseException | None = None
        self.gate: threading.Event | None = None
        self.entered = threading.Semaphore(0)
        self.deadlines: list[float | None] = []
        self.seen_imports: list[ImportTemplatesRequest] = []
        self.sleep_s = 0.0
        self.embedding_dim = FAKE_DIM  # what get_collection reports and imports must match

    # ---------------------------------------------------------------- helpers
    def _check(self) -> None:
        if self.fail_with is not None:
            raise self.fail_with

    def _collection(self, name: str) -> _Collection:
        try:
            return self.collections[name]
        except KeyError:
            raise UnknownCollection(
                f"no collection {name!r}", metadata={"collection": name}
            ) from None

    @staticmethod
    def _face(image: bytes) -> bytes:
        if image == b"":
            raise InvalidArgument("image: must be non-empty image bytes")
        if image == b"garbage":
            raise ImageUndecodable("not an image")
        if image == b"noface":
            raise NoFace("no face found")
        if image == b"two":
            raise MultipleFaces("2 faces of similar size", metadata={"faces": "2"})
        if image == b"boom":
            raise RuntimeError("secret internal detail /etc/passwd")
        return image

    def _info(self, c: _Collection) -> CollectionInfo:
        return CollectionInfo(
            name=c.spec.name,
            kind=c.spec.kind,
            threshold=THRESHOLD if c.spec.threshold is None else c.spec.threshold,
            margin=0.05 if c.spec.margin is None else c.spec.margin,
            hint_required_above=c.spec.hint_required_above or 0,
            model_id="fake/1",
            user_count=len(c.users),
            face_count=sum(len(u.faces) for u in c.users.values()),
            created_at=c.created_at,
            embedding_dim=self.embedding_dim,
        )

    # ---------------------------------------------------------------- collections
    def create_collection(self, spec: CollectionSpec) -> CollectionInfo:
        self._check()
        if spec.name in self.collections:
            raise CollectionExists(f"collection {spec.name!r} exists")
        self.collections[spec.name] = _Collection(spec, created_at=1_700_000_000.5)
        return self._info(self.collections[spec.name])

    def update_collection(self, change: CollectionUpdate) -> CollectionInfo:
        self._check()
        c = self._collection(change.name)
        c.spec = dataclasses.replace(
            c.spec,
            threshold=c.spec.threshold if change.threshold is None else change.threshold,
            margin=c.spec.margin if change.margin is None else change.margin,
        )
        return self._info(c)

    def delete_collection(self, name: str) -> None:
        self._check()
        self._collection(name)
        del self.collections[name]

    def get_collection(self, name: str) -> CollectionInfo:
        self._check()
        return self._info(self._collection(name))

    def list_collections(self) -> list[CollectionInfo]:
        self._check()
        return [self._info(c) for c in self.collections.values()]

    # ---------------------------------------------------------------- faces
    def enroll(self, req: EnrollRequest, *, deadline: float | None = None) -> EnrollResult:
        self._check()
        self.deadlines.append(deadline)
        c = self._collection(req.collection)
        faces = [self._face(image) for image in req.images]
        now = time.time()
        user = c.users.get(req.uid)
        created = user is None
        if user is None:
            user = c.users[req.uid] = _User([], req.phone_number, dict(req.metadata), now, now)
        user.faces.extend(faces)
        user.updated_at = now
        ids = tuple(range(self.next_face_id, self.next_face_id + len(faces)))
        self.next_face_id += len(faces)
        quality = FaceQuality(box=BOX, inter_eye_px=40.0, detection_score=BOX.score)
        return EnrollResult(
            uid=req.uid, face_ids=ids, qualities=(quality,) * len(faces), created=created
        )

    def identify(self, req: IdentifyRequest, *, deadline: float | None = None) -> IdentifyResult:
        self._check()
        self.deadlines.append(deadline)
        self.entered.release()
        if self.gate is not None:
            self.gate.wait(30)
        if self.sleep_s:
            time.sleep(self.sleep_s)
        c = self._collection(req.collection)
        if req.probe_token is not None:
            if req.probe_token != "valid-token":
                raise ProbeTokenInvalid("unknown or expired probe token")
            face = b"alice"
        else:
            assert req.image is not None
            face = self._face(req.image)
        hits = [Candidate(uid, 0.95) for uid, u in c.users.items() if face in u.faces]
        hits = hits[: req.top_k]
        if len(hits) == 1:
            return IdentifyResult(Decision.MATCH, hits[0].uid, 0.95, tuple(hits), BOX, THRESHOLD)
        decision = Decision.AMBIGUOUS if hits else Decision.NO_MATCH
        score = hits[0].score if hits else 0.0
        return IdentifyResult(decision, None, score, tuple(hits), BOX, THRESHOLD)

    def verify(self, req: VerifyRequest, *, deadline: float | None = None) -> VerifyResult:
        self._check()
        self.deadlines.append(deadline)
        user = self._user(req.collection, req.uid)
        match = self._face(req.image) in user.faces
        return VerifyResult(
            match=match, score=0.95 if match else 0.1, threshold=THRESHOLD, face=BOX
        )

    # ---------------------------------------------------------------- users
    def _user(self, collection: str, uid: str) -> _User:
        c = self._collection(collection)
        try:
            return c.users[uid]
        except KeyError:
            raise UnknownUser(f"no user {uid!r} in {collection!r}", metadata={"uid": uid}) from None

    def delete_user(self, collection: str, uid: str) -> int:
        self._check()
        user = self._user(collection, uid)
        del self.collections[collection].users[uid]
        return len(user.faces)

    def get_user(self, collection: str, uid: str) -> UserInfo:
        self._check()
        u = self._user(collection, uid)
        return UserInfo(
            collection,
            uid,
            len(u.faces),
            u.phone is not None,
            u.metadata,
            u.created_at,
            u.updated_at,
        )

    def list_users(
        self, collection: str, *, page_size: int = 100, page_token: str = ""
    ) -> UserPage:
        self._check()
        uids = sorted(self._collection(collection).users)
        start = int(page_token or 0)
        chunk = uids[start : start + page_size]
        nxt = str(start + page_size) if start + page_size < len(uids) else ""
        return UserPage(tuple(self.get_user(collection, uid) for uid in chunk), nxt)

    def import_templates(self, req: ImportTemplatesRequest) -> tuple[int, ...]:
        """Records the templates' bytes as each new user's one "face"."""
        self._check()
        self.seen_imports.append(req)
        c = self._collection(req.collection)
        if req.model_id != "fake/1":
            raise ModelMismatch(f"collection uses fake/1, not {req.model_id}")
        if req.embeddings.shape != (len(req.uids), self.embedding_dim):
            raise InvalidArgument(f"embeddings must be ({len(req.uids)}, {self.embedding_dim})")
        taken = [u for u in req.uids if u in c.users]
        if taken:
            raise UserExists(f"uid {taken[0]!r} exists", metadata={"uid": taken[0]})
        ids = []
        now = time.time()
        for uid, vector in zip(req.uids, req.embeddings, strict=True):
            c.users[uid] = _User([vector.tobytes()], None, {}, now, now)
            ids.append(self.next_face_id)
            self.next_face_id += 1
        return tuple(ids)

    # ---------------------------------------------------------------- lifecycle
    def server_info(self) -> ServerInfo:
        self._check()
        return ServerInfo(
            version="0.0-fake",
            model_pack="fake",
            model_id="fake/1",
            embedding_dim=self.embedding_dim,
            default_threshold=THRESHOLD,
            liveness=LivenessInfo(configured=False),
            enroll_quality=QualityPolicy.enroll(),
            identify_quality=QualityPolicy.identify(),
        )

    def stats(self) -> dict[str, int]:
        return {"collections": len(self.collections)}

    def close(self) -> None:
        self.closed = True


def fake_settings(**overrides: Any) -> Settings:
    # No metrics endpoint: fake-engine tests need no port beyond the gRPC one.
    values: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "worker_threads": 8,
        "metrics": MetricsSettings(listen=""),
    }
    values.update(overrides)
    return Settings(**values)


@contextmanager
def running_server(
    service: FakeFaceService | None = None, **settings: Any
) -> Iterator[tuple[FaceGateServer, int, FakeFaceService]]:
    """A started server on a free port over a fake engine; stopped on exit."""
    fake = service if service is not None else FakeFaceService()
    server, port = create_server(fake_settings(**settings), service=fake, port=0)
    server.start()
    try:
        yield server, port, fake
    finally:
        if fake.gate is not None:
            fake.gate.set()
        server.stop(None).wait(10)
