"""The face service without a transport: collections, enrolment, identification, deletion.

Data flow (see docs/ARCHITECTURE.md): bytes -> decode -> locate -> select the customer's face
-> align -> quality gate -> liveness (``service.pipeline.face_gate``) -> embed (micro-batched
across concurrent requests) -> search (micro-batched) -> decide. Enroll gates with the
collection's strict policy, Identify and Verify with its lenient one.

The engine depends on the seams in ``service.ports`` only: a ``FaceStore`` and the
``VectorIndexes`` that follow it.

Consistency rules:
* Writes go to the store alone, durably; the collection's vector index follows the store's
  change log (``VectorIndexes.sync``), never the engine's hands. Every write to a
  collection (enrol, import, delete user) holds that collection's lock across the store
  write and the sync, so the index never lags the store by more than the call in progress,
  a duplicate-face check sees every face enrolled before it, and a deleted user is out of
  the index before ``delete_user`` returns.
* Searches take no collection lock (the index has its own readers-writer lock), so
  payments are never queued behind enrolments.

Revocable collections (``CollectionSpec.revocable``): every embedding entering the
collection (enrolment, import, identify and verify probes, hence probe tokens) is first
rotated by the collection's secret orthogonal transform (``service.crypto.template_transform``);
cosine scores are unchanged, stored templates are useless without the collection's key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import importlib.metadata
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from index import SearchResult, UnknownId
from service.access.principal import Role, current_principal
from service.cancellation import raise_if_abandoned
from service.config import DecodeLimits, Settings
from service.crypto.data_keys import transform_master_key
from service.crypto.template_transform import OrthogonalTransform
from service.domain import (
    CollectionInfo,
    CollectionKind,
    CollectionSpec,
    CollectionUpdate,
    Decision,
    EnrollRequest,
    EnrollResult,
    FaceQuality,
    IdentifyRequest,
    IdentifyResult,
    ImportTemplatesRequest,
    LivenessInfo,
    QualityLimits,
    ServerInfo,
    UserInfo,
    UserPage,
    VerifyRequest,
    VerifyResult,
)
from service.engine import request_checks as checks
from service.engine.decisions import (
    Policy,
    decide,
    default_hint_required_above,
    default_margin,
    default_threshold,
    hint_required_by_size,
    need_hint,
)
from service.engine.enrollment import plan_enrollment
from service.engine.phone import PhoneHasher
from service.engine.probe_tokens import Probe, ProbeTokens
from service.engine.shared_runs import SharedRuns
from service.errors import (
    DuplicateFace,
    FacegateError,
    InvalidArgument,
    ModelMismatch,
    UnknownCollection,
    UnknownUser,
)
from service.pipeline.analyzer import FaceAnalyzer
from service.pipeline.decode import decode_image
from service.pipeline.face_gate import (
    GatePolicy,
    LivenessCheck,
    collection_policies,
    gate_face,
    kinds_requiring_liveness,
    liveness_required,
    server_policies,
)
from service.pipeline.timing import DECODE, NO_TIMING, StageTimer
from service.pipeline.types import DecodedImage, FloatArray, UInt8Array
from service.ports import FaceStore, VectorIndex, VectorIndexes
from service.store.rows import CollectionRow, ImportedUser, UserRow

log = logging.getLogger(__name__)

Decoder = Callable[[bytes, DecodeLimits], DecodedImage]
_T = TypeVar("_T")


@dataclass
class _Collection:
    row: CollectionRow
    gallery: VectorIndex | None  # None: enrolled with another model than the one loaded
    lock: threading.Lock
    enroll_gate: GatePolicy  # what Enroll requires of each photo
    identify_gate: GatePolicy  # what Identify and Verify require of the probe
    transform: OrthogonalTransform | None = None  # revocable collections only


@dataclass(frozen=True, slots=True)
class _Face:
    embedding: FloatArray  # (D,)
    quality: FaceQuality


class FaceService:
    def __init__(
        self,
        settings: Settings,
        analyzer: FaceAnalyzer,
        store: FaceStore,
        indexes: VectorIndexes,
        secret: bytes,
        *,
        clock: Callable[[], float] = time.monotonic,
        decoder: Decoder | None = None,
        timer: StageTimer = NO_TIMING,
        liveness: LivenessCheck | None = None,
    ) -> None:
        self._settings = settings
        # Checked before anything is loaded: a bad [quality] or [liveness] setting stops the
        # start with a message naming it.
        self._quality = server_policies(settings)
        self._liveness_kinds = kinds_requiring_liveness(settings.liveness)
        self._liveness = liveness
        self._timer = timer
        self._analyzer = analyzer
        self._store = store
        self.indexes = indexes
        self._clock = clock
        self._decode: Decoder = decoder if decoder is not None else decode_image
        self._model_id = analyzer.model_id
        self._dim = analyzer.embedding_dim
        self._phones = PhoneHasher(secret)
        self._digest_key = hmac.new(secret, b"facegate/image-digest", hashlib.sha256).digest()
        self._tokens = ProbeTokens(ttl_s=settings.probe_token_ttl_s, clock=clock)
        self._registry_lock = threading.Lock()
        self._collections: dict[str, _Collection] = {}
        self._master_lock = threading.Lock()
        self._master: bytes | None = None
        for row in store.list_collections():
            self._collections[row.name] = self._load_collection(row)
        self._runs = SharedRuns(
            analyzer, window_ms=settings.batch_window_ms, max_batch=settings.max_batch, timer=timer
        )
        self._closed = False

    def _load_collection(self, row: CollectionRow) -> _Collection:
        gallery: VectorIndex | None = None
        if row.model_id != self._model_id:
            log.warning(
                "collection %r was enrolled with model %r but %r is loaded; it answers "
                "ModelMismatch until re-enrolled",
                row.name,
                row.model_id,
                self._model_id,
            )
        else:
            gallery = self.indexes.load(row)
        return self._with_gates(row, gallery)

    def _with_gates(self, row: CollectionRow, gallery: VectorIndex | None) -> _Collection:
        enroll, identify = collection_policies(
            self._quality,
            QualityLimits(**row.enroll_quality),
            QualityLimits(**row.identify_quality),
        )
        live = self._liveness_for(row)
        return _Collection(
            row,
            gallery,
            threading.Lock(),
            enroll_gate=GatePolicy(enroll, live if self._settings.liveness.check_enroll else None),
            identify_gate=GatePolicy(identify, live),
            transform=self._transform(row),
        )

    def _liveness_for(self, row: CollectionRow) -> LivenessCheck | None:
        """The liveness check this collection's faces get here (None: none)."""
        required = liveness_required(
            CollectionKind(row.kind), row.require_liveness, self._liveness_kinds
        )
        return self._liveness if required else None

    def _transform(self, row: CollectionRow) -> OrthogonalTransform | None:
        if row.transform_gen == 0:
            return None
        with self._master_lock:
            if self._master is None:
                self._master = transform_master_key(self._settings)
            master = self._master
        salts = self._store.transform_salts(row.id)
        return OrthogonalTransform.derive(
            master, row.id, row.transform_gen, salts[row.transform_gen], self._dim
        )

    @staticmethod
    def _protect(coll: _Collection, vectors: FloatArray) -> FloatArray:
        """The embedding(s) as this collection stores and matches them."""
        return vectors if coll.transform is None else coll.transform.apply(vectors)

    # --------------------------------------------------------------- collections

    def create_collection(self, spec: CollectionSpec) -> CollectionInfo:
        spec = checks.collection_spec(spec)
        base = self._analyzer.default_threshold
        # Refuse inconsistent limits (min above max) before anything is stored.
        collection_policies(self._quality, spec.enroll_quality, spec.identify_quality)
        with self._registry_lock:
            new = CollectionRow(
                id=0,  # the store assigns id and created_at
                name=spec.name,
                kind=spec.kind.value,
                threshold=float(
                    spec.threshold
                    if spec.threshold is not None
                    else default_threshold(spec.kind, base, self._analyzer.calibration)
                ),
                margin=float(spec.margin if spec.margin is not None else default_margin(spec.kind)),
                hint_required_above=int(
                    spec.hint_required_above
                    if spec.hint_required_above is not None
                    else default_hint_required_above(
                        spec.kind, self._settings.default_hint_required_above
                    )
                ),
                model_id=self._model_id,
                created_at=0.0,
                transform_gen=1 if spec.revocable else 0,
                enroll_quality=spec.enroll_quality.items(),
                identify_quality=spec.identify_quality.items(),
                require_liveness=spec.require_liveness,
                identify_returns_metadata=spec.identify_returns_metadata,
            )
            row = self._store.create_collection(new)
            coll = self._with_gates(row, self.indexes.create(row))
            self._collections[row.name] = coll
        return self._info(coll)

    def update_collection(self, change: CollectionUpdate) -> CollectionInfo:
        """Change a collection's tunables, checked like ``create_collection``; calls in
        flight finish under the old values, later ones see the new."""
        change = checks.collection_update(change)
        coll = self._collection(change.name)
        with coll.lock:
            row = coll.row
            liveness = row.require_liveness
            if change.reset_require_liveness:
                liveness = None
            elif change.require_liveness is not None:
                liveness = change.require_liveness
            new = dataclasses.replace(
                row,
                threshold=_given(change.threshold, row.threshold),
                margin=_given(change.margin, row.margin),
                hint_required_above=_given(change.hint_required_above, row.hint_required_above),
                enroll_quality=_limits(change.enroll_quality, row.enroll_quality),
                identify_quality=_limits(change.identify_quality, row.identify_quality),
                require_liveness=liveness,
                identify_returns_metadata=_given(
                    change.identify_returns_metadata, row.identify_returns_metadata
                ),
            )
            # Refuse inconsistent limits (min above max) before anything is stored.
            collection_policies(
                self._quality,
                QualityLimits(**new.enroll_quality),
                QualityLimits(**new.identify_quality),
            )
            stored = self._store.update_collection(new)
            gated = self._with_gates(stored, coll.gallery)
            # In place: the collection keeps its lock and identity (writers compare it).
            coll.enroll_gate, coll.identify_gate = gated.enroll_gate, gated.identify_gate
            coll.row = stored
        return self._info(coll)

    def delete_collection(self, name: str) -> None:
        coll = self._collection(name)
        with coll.lock:
            self._store.delete_collection(coll.row.name)
            with self._registry_lock:
                if self._collections.get(coll.row.name) is coll:
                    del self._collections[coll.row.name]
            self.indexes.drop(coll.row)

    def get_collection(self, name: str) -> CollectionInfo:
        return self._info(self._collection(name))

    def list_collections(self) -> list[CollectionInfo]:
        with self._registry_lock:
            colls = sorted(self._collections.values(), key=lambda c: c.row.name)
        return [self._info(c) for c in colls]

    def _collection(self, name: str) -> _Collection:
        checks.collection_name(name)
        with self._registry_lock:
            coll = self._collections.get(name)
        if coll is None:
            raise UnknownCollection(f"no collection named {name!r}", metadata={"collection": name})
        return coll

    def _gallery(self, coll: _Collection) -> VectorIndex:
        if coll.gallery is None:
            raise ModelMismatch(
                f"collection {coll.row.name!r} holds templates of model {coll.row.model_id!r}, "
                f"but this service runs {self._model_id!r}; templates of different models are "
                "never compared: re-enrolment (or re-embedding the photos with this model and "
                "ImportTemplates into a new collection) is required, or serve the collection "
                "with the pack it was enrolled with",
                metadata={"collection_model": coll.row.model_id, "service_model": self._model_id},
            )
        return coll.gallery

    def _info(self, coll: _Collection) -> CollectionInfo:
        r = coll.row
        g = coll.gallery
        return CollectionInfo(
            name=r.name,
            kind=CollectionKind(r.kind),
            threshold=r.threshold,
            margin=r.margin,
            hint_required_above=r.hint_required_above,
            model_id=r.model_id,
            user_count=g.count_uids() if g is not None else self._store.count_users(r.name),
            face_count=g.count() if g is not None else self._store.count_faces(r.name),
            created_at=r.created_at,
            embedding_dim=self._dim,
            revocable=r.transform_gen > 0,
            transform_generation=r.transform_gen,
            enroll_quality_overrides=QualityLimits(**r.enroll_quality),
            identify_quality_overrides=QualityLimits(**r.identify_quality),
            enroll_quality=coll.enroll_gate.quality,
            identify_quality=coll.identify_gate.quality,
            require_liveness=r.require_liveness,
            liveness_active=coll.identify_gate.liveness is not None,
            identify_returns_metadata=r.identify_returns_metadata,
        )

    @staticmethod
    def _policy(row: CollectionRow) -> Policy:
        return Policy(row.threshold, row.margin, row.hint_required_above)

    @property
    def model_id(self) -> str:
        """The loaded model pack's embedding space (for the metrics' info label)."""
        return self._model_id

    def server_info(self) -> ServerInfo:
        """What this server runs and checks: model, liveness (never claimed when absent),
        the quality limits collections start from."""
        live = self._liveness
        return ServerInfo(
            version=_version(),
            model_pack=self._settings.model_pack,
            model_id=self._model_id,
            embedding_dim=self._dim,
            default_threshold=float(self._analyzer.default_threshold),
            liveness=LivenessInfo(
                configured=live is not None,
                model_ids=tuple(live.model_ids) if live is not None else (),
                threshold=float(live.threshold) if live is not None else 0.0,
                required_for=self._liveness_kinds,
                check_enroll=self._settings.liveness.check_enroll,
            ),
            enroll_quality=self._quality[0],
            identify_quality=self._quality[1],
        )

    # --------------------------------------------------------------------- faces

    def _remaining(self, deadline: float | None) -> float | None:
        """Seconds left before ``deadline``; raises once it passed or the caller left."""
        left = None
        if deadline is not None:
            left = deadline - self._clock()
            if left <= 0:
                raise TimeoutError("the call's deadline passed")
        raise_if_abandoned()
        return left

    def _faces(self, images: list[bytes], deadline: float | None, gate: GatePolicy) -> list[_Face]:
        """Decode, locate, select, align and gate each image here; embed them in one batch."""
        chips: list[UInt8Array] = []
        qualities: list[FaceQuality] = []
        for i, data in enumerate(images):
            try:
                self._remaining(deadline)
                with self._timer.stage(DECODE):
                    image = self._decode(data, self._settings.decode)
                self._remaining(deadline)
                gated = gate_face(image, self._analyzer, gate, self._timer)
                chips.append(gated.chip)
            except FacegateError as exc:
                if len(images) == 1:
                    raise
                # Say which of an enrolment's images was refused.
                raise type(exc)(
                    f"images[{i}]: {exc.message}", metadata={**exc.metadata, "image_index": str(i)}
                ) from exc
            qualities.append(gated.quality)
        vectors = self._runs.embed(chips, self._remaining(deadline))
        return [_Face(v, q) for v, q in zip(vectors, qualities, strict=True)]

    def _search(
        self,
        gallery: VectorIndex,
        query: FloatArray,
        k: int,
        partition: str | None,
        deadline: float | None,
    ) -> SearchResult:
        return self._runs.search(gallery, query, k, partition, self._remaining(deadline))

    def _digest(self, image: bytes) -> str:
        return hmac.new(self._digest_key, image, hashlib.sha256).hexdigest()

    # ------------------------------------------------------------------- enrol

    def enroll(self, req: EnrollRequest, *, deadline: float | None = None) -> EnrollResult:
        coll = self._collection(req.collection)
        uid = checks.uid(req.uid)
        images = checks.images(req.images)
        metadata = checks.metadata(req.metadata)
        phone = None
        if req.phone_number is not None and req.phone_number != "":
            phone = (
                self._phones.number_hash(req.phone_number),
                self._phones.bucket(req.phone_number),
            )
        gallery = self._gallery(coll)
        faces = [
            _Face(self._protect(coll, f.embedding), f.quality)
            for f in self._faces(images, deadline, coll.enroll_gate)
        ]
        digests = [self._digest(img) for img in images]
        with coll.lock:
            with self._registry_lock:
                if self._collections.get(coll.row.name) is not coll:
                    raise UnknownCollection(f"collection {coll.row.name!r} was deleted")
            existing = self._store.user_faces(coll.row.name, uid)
            try:
                plan = plan_enrollment(
                    uid=uid,
                    embeddings=[f.embedding for f in faces],
                    digests=digests,
                    existing=existing,
                    gallery=gallery,
                    threshold=coll.row.threshold,
                    allow_duplicate=req.allow_duplicate,
                )
            except DuplicateFace as exc:
                raise _as_seen_by_caller(exc) from None
            nothing_to_do = existing and not plan.new_faces and not metadata and phone is None
            if nothing_to_do:
                created = False
                new_ids: tuple[int, ...] = ()
                renamed: dict[int, int] = {}
            else:
                outcome = self._store.enroll(
                    coll.row.name,
                    uid,
                    [plan.new_face(j, faces[i].quality) for j, i in enumerate(plan.new_faces)],
                    model_id=self._model_id,
                    metadata=metadata if (metadata or not existing) else None,
                    phone=phone,
                )
                self.indexes.sync(coll.row)
                created, new_ids, renamed = outcome.created, outcome.new_face_ids, outcome.renamed
            face_ids = plan.resolve(new_ids, renamed)
        return EnrollResult(
            uid=uid,
            face_ids=face_ids,
            qualities=tuple(f.quality for f in faces),
            created=created,
        )

    # ---------------------------------------------------------------- identify

    def identify(self, req: IdentifyRequest, *, deadline: float | None = None) -> IdentifyResult:
        coll = self._collection(req.collection)
        top_k = checks.top_k(req.top_k)
        hint = req.hint if req.hint else None
        bucket = self._phones.bucket_for_hint(hint) if hint is not None else None
        gallery = self._gallery(coll)
        policy = self._policy(coll.row)
        if req.probe_token:
            if req.image:
                raise InvalidArgument(
                    "send either image or probe_token, not both", metadata={"field": "image"}
                )
            if bucket is None:
                raise InvalidArgument(
                    "a probe_token is only for the retry with a hint; hint is missing",
                    metadata={"field": "hint"},
                )
            probe = self._tokens.redeem(
                req.probe_token,
                collection=coll.row.name,
                collection_id=coll.row.id,
                model_id=self._model_id,
            )
            embedding, box = probe.embedding, probe.face
        else:
            face = self._faces([checks.image(req.image)], deadline, coll.identify_gate)[0]
            # Probe tokens keep this protected embedding, so a retry needs no transform.
            embedding, box = self._protect(coll, face.embedding), face.quality.box
        if hint_required_by_size(policy, gallery.count_uids(), bucket is not None):
            outcome = need_hint()
        else:
            result = self._search(gallery, embedding, max(top_k, 2), bucket, deadline)
            outcome = decide(
                result,
                policy,
                hinted=bucket is not None,
                hints_available=gallery.count_partitions() > 0,
                top_k=top_k,
            )
        metadata: Mapping[str, str] = {}
        if (
            outcome.decision is Decision.MATCH
            and outcome.uid is not None
            and coll.row.identify_returns_metadata
        ):
            user = self._store.get_user(coll.row.name, outcome.uid)
            metadata = dict(user.metadata) if user is not None else {}
        token = None
        if outcome.decision is Decision.NEED_HINT:
            token = self._tokens.issue(
                Probe(coll.row.name, coll.row.id, self._model_id, embedding, box)
            )
        return IdentifyResult(
            decision=outcome.decision,
            uid=outcome.uid,
            score=outcome.score,
            candidates=outcome.candidates,
            face=box,
            threshold=policy.threshold,
            probe_token=token,
            probe_token_ttl_s=self._tokens.ttl_s if token is not None else 0.0,
            metadata=metadata,
        )

    def verify(self, req: VerifyRequest, *, deadline: float | None = None) -> VerifyResult:
        coll = self._collection(req.collection)
        uid = checks.uid(req.uid)
        image = checks.image(req.image)
        gallery = self._gallery(coll)
        self._require_user(coll, uid)
        face = self._faces([image], deadline, coll.identify_gate)[0]
        try:
            vectors = gallery.vectors_of(gallery.faces_of(uid))
        except UnknownId:
            raise self._unknown_user(coll, uid) from None
        score = float(np.max(vectors @ self._protect(coll, face.embedding)))
        return VerifyResult(
            match=score >= coll.row.threshold,
            score=score,
            threshold=coll.row.threshold,
            face=face.quality.box,
        )

    # ------------------------------------------------------------------- users

    def delete_user(self, collection: str, uid: str) -> int:
        coll = self._collection(collection)
        uid = checks.uid(uid)
        with coll.lock:
            face_ids = self._store.delete_user(coll.row.name, uid)  # UnknownUser if absent
            if coll.gallery is not None:
                self.indexes.sync(coll.row)
        return len(face_ids)

    def get_user(self, collection: str, uid: str) -> UserInfo:
        coll = self._collection(collection)
        return _user_info(self._require_user(coll, checks.uid(uid)))

    def list_users(
        self, collection: str, *, page_size: int = 100, page_token: str = ""
    ) -> UserPage:
        coll = self._collection(collection)
        size = checks.page_size(page_size)
        after = checks.decode_page_token(page_token)
        rows = self._store.list_users(coll.row.name, after_uid=after, limit=size + 1)
        more = len(rows) > size
        rows = rows[:size]
        token = checks.encode_page_token(rows[-1].uid) if more else ""
        return UserPage(users=tuple(_user_info(r) for r in rows), next_page_token=token)

    def _require_user(self, coll: _Collection, uid: str) -> UserRow:
        user = self._store.get_user(coll.row.name, uid)
        if user is None:
            raise self._unknown_user(coll, uid)
        return user

    @staticmethod
    def _unknown_user(coll: _Collection, uid: str) -> FacegateError:
        return UnknownUser(
            f"no user {uid!r} in collection {coll.row.name!r}",
            metadata={"collection": coll.row.name, "uid": uid},
        )

    # ------------------------------------------------------------ admin import

    def import_templates(self, req: ImportTemplatesRequest) -> tuple[int, ...]:
        """Add new users from templates of this collection's model (admin; migrations and
        load benchmarks). There is no image, so there is no duplicate-face check; a uid that
        already exists refuses the whole batch (``UserExists``). Returns the face ids."""
        coll = self._collection(req.collection)
        self._gallery(coll)  # ModelMismatch when this service cannot serve the collection
        if req.model_id != coll.row.model_id:
            raise ModelMismatch(
                f"templates of model {req.model_id!r} cannot join collection {coll.row.name!r}"
                f" of model {coll.row.model_id!r}: templates of different models are never"
                " compared; re-embed the faces with this model",
                metadata={"collection_model": coll.row.model_id, "request_model": req.model_id},
            )
        uids = checks.import_uids(req.uids)
        vectors = self._protect(coll, checks.templates(req.embeddings, len(uids), self._dim))
        phones = req.phone_numbers or (None,) * len(uids)
        metadata = req.metadata or ({},) * len(uids)
        if len(phones) != len(uids) or len(metadata) != len(uids):
            raise InvalidArgument(
                f"templates: {len(uids)} uids but {len(phones)} phone numbers and"
                f" {len(metadata)} metadata maps; give one of each per template (or none)",
                metadata={"field": "templates"},
            )
        users = [
            ImportedUser(
                uid=u,
                template=vectors[i],
                phone=(self._phones.number_hash(p), self._phones.bucket(p)) if p else None,
                metadata=checks.metadata(md),
            )
            for i, (u, p, md) in enumerate(zip(uids, phones, metadata, strict=True))
        ]
        with coll.lock:
            with self._registry_lock:
                if self._collections.get(coll.row.name) is not coll:
                    raise UnknownCollection(f"collection {coll.row.name!r} was deleted")
            rows = self._store.import_users(coll.row.name, users, model_id=self._model_id)
            self.indexes.sync(coll.row)
        return tuple(r.face_id for r in rows)

    # --------------------------------------------------------------- operations

    def stats(self) -> dict[str, int]:
        with self._registry_lock:
            colls = list(self._collections.values())
        infos = [self._info(c) for c in colls]
        return {
            "collections": len(infos),
            "users": sum(i.user_count for i in infos),
            "faces": sum(i.face_count for i in infos),
            "probe_tokens": len(self._tokens),
            "unreadable_templates": len(self._store.unreadable_templates()),
            **self._runs.counters(),
        }

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.indexes.close()  # stops its background work before the store closes under it
        self._runs.close()
        self._store.close()


# Roles that may learn which other user a refused enrolment's face belongs to.
_SEES_DUPLICATE_UID = frozenset({Role.ENROLLER, Role.ADMIN})


def _as_seen_by_caller(exc: DuplicateFace) -> DuplicateFace:
    """The refusal as the calling principal may see it: enrollers and admins learn the
    other uid (to merge or fix accounts); anyone else only that the face is taken."""
    if current_principal().role in _SEES_DUPLICATE_UID:
        return exc
    hidden = {k: v for k, v in exc.metadata.items() if k != "uid"}
    return DuplicateFace(
        "the face matches another enrolled user; pass allow_duplicate to enrol anyway",
        metadata=hidden,
    )


def _given(value: _T | None, current: _T) -> _T:
    return current if value is None else value


def _limits(limits: QualityLimits | None, current: Mapping[str, float]) -> Mapping[str, float]:
    return dict(current) if limits is None else limits.items()


def _version() -> str:
    try:
        return importlib.metadata.version("facegate")
    except importlib.metadata.PackageNotFoundError:  # running from a source tree
        return "unknown"


def _user_info(row: UserRow) -> UserInfo:
    return UserInfo(
        collection=row.collection,
        uid=row.uid,
        face_count=row.face_count,
        has_phone=row.phone_bucket is not None,
        metadata=dict(row.metadata),
        created_at=row.created_at,
        updated_at=row.updated_at,
    )
