"""The face gate in the engine, with the FakeAnalyzer (fast): which policy each call gets,
per-collection limits stored and restored, liveness required by kind or by the collection,
the duplicate-face uid shown by role, and stores written by schema version 1."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from fakes import FakeAnalyzer, face_png

from service.access.principal import Principal, Role, acting_as
from service.app import build_service
from service.config import LivenessSettings, QualitySettings, Settings
from service.domain import (
    CollectionKind,
    CollectionSpec,
    CollectionUpdate,
    Decision,
    EnrollRequest,
    IdentifyRequest,
    QualityLimits,
    QualityPolicy,
    VerifyRequest,
)
from service.engine.face_service import FaceService
from service.errors import (
    DuplicateFace,
    InvalidArgument,
    LivenessFailed,
    LowQuality,
    UnknownCollection,
)
from service.pipeline.face_gate import kinds_requiring_liveness, liveness_required
from service.pipeline.types import DecodedImage
from service.store.rows import CollectionRow
from service.store.sqlite import SCHEMA_VERSION, SqliteStore
from service.vector_index.local import LocalIndexes


class RecordingLiveness:
    """A PAD stand-in: scores every face ``score`` and records each check."""

    def __init__(self, score: float, threshold: float = 0.5) -> None:
        self.score = score
        self._threshold = threshold
        self.calls = 0

    @property
    def threshold(self) -> float:
        return self._threshold

    @property
    def model_ids(self) -> tuple[str, ...]:
        return ("fake.onnx@sha256:00",)

    def check(self, image: DecodedImage, box: npt.ArrayLike) -> float:
        self.calls += 1
        assert np.asarray(box).shape == (4,)
        if self.score < self._threshold:
            raise LivenessFailed(
                "spoof",
                metadata={"check": "liveness", "score": str(self.score), "threshold": "0.5"},
            )
        return self.score


def _engine(settings: Settings, liveness: RecordingLiveness | None) -> FaceService:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = SqliteStore(settings.store_path)
    indexes = LocalIndexes(
        store,
        store.cipher.keyring,
        dim=FakeAnalyzer().embedding_dim,
        snapshot_dir=settings.snapshot_dir,
    )
    return FaceService(settings, FakeAnalyzer(), store, indexes, b"k" * 32, liveness=liveness)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", batch_window_ms=1.0, snapshot_every_s=0)


# ---------------------------------------------------------------- liveness by kind


@pytest.mark.parametrize(
    ("text", "kinds"),
    [
        ("pay", (CollectionKind.PAY,)),
        (" PAY , member,pay", (CollectionKind.PAY, CollectionKind.MEMBER)),
        ("", ()),
    ],
)
def test_require_for_parses(text: str, kinds: tuple[CollectionKind, ...]) -> None:
    assert kinds_requiring_liveness(LivenessSettings(require_for=text)) == kinds


def test_require_for_refuses_unknown_kinds() -> None:
    with pytest.raises(InvalidArgument, match="vip"):
        kinds_requiring_liveness(LivenessSettings(require_for="pay,vip"))


def test_a_collection_choice_wins_over_its_kind() -> None:
    pay, member = CollectionKind.PAY, CollectionKind.MEMBER
    assert liveness_required(pay, None, (pay,)) and not liveness_required(member, None, (pay,))
    assert liveness_required(member, True, (pay,)) and not liveness_required(pay, False, (pay,))


def test_liveness_runs_where_required(settings: Settings) -> None:
    live = RecordingLiveness(0.9)
    svc = _engine(settings, live)
    try:
        svc.create_collection(CollectionSpec("pay", kind=CollectionKind.PAY))
        svc.create_collection(CollectionSpec("member"))
        enrolled = svc.enroll(EnrollRequest("pay", "a", [face_png(1)]))
        assert live.calls == 1 and enrolled.qualities[0].liveness_score == 0.9
        svc.identify(IdentifyRequest("pay", face_png(1, 2)))
        svc.verify(VerifyRequest("pay", "a", face_png(1, 3)))
        assert live.calls == 3
        svc.enroll(EnrollRequest("member", "a", [face_png(1)]))
        svc.identify(IdentifyRequest("member", face_png(1, 2)))
        assert live.calls == 3
        live.score = 0.1
        with pytest.raises(LivenessFailed):
            svc.identify(IdentifyRequest("pay", face_png(1, 2)))
        assert svc.server_info().liveness.configured
    finally:
        svc.close()


def test_check_enroll_off_leaves_enrolment_unchecked(settings: Settings) -> None:
    live = RecordingLiveness(0.1)
    quiet = Settings(
        data_dir=settings.data_dir, liveness=LivenessSettings(check_enroll=False), batch_window_ms=1
    )
    svc = _engine(quiet, live)
    try:
        svc.create_collection(CollectionSpec("pay", kind=CollectionKind.PAY))
        res = svc.enroll(EnrollRequest("pay", "a", [face_png(1)]))
        assert live.calls == 0 and res.qualities[0].liveness_score is None
        with pytest.raises(LivenessFailed):
            svc.identify(IdentifyRequest("pay", face_png(1, 2)))
    finally:
        svc.close()


# ---------------------------------------------------------------- limits stored and restored


def test_collection_limits_survive_a_restart_and_server_defaults_apply_underneath(
    settings: Settings,
) -> None:
    svc = build_service(settings, analyzer=FakeAnalyzer())
    spec = CollectionSpec(
        "c",
        enroll_quality=QualityLimits(min_sharpness=1e9),
        identify_quality=QualityLimits(max_yaw_deg=7.0),
        require_liveness=True,
    )
    created = svc.create_collection(spec)
    with pytest.raises(LowQuality, match="sharpness"):
        svc.enroll(EnrollRequest("c", "a", [face_png(1)]))
    svc.close()

    stricter = Settings(
        data_dir=settings.data_dir,
        quality=QualitySettings(identify=QualityLimits(max_roll_deg=3.0, max_yaw_deg=30.0)),
    )
    again = build_service(stricter, analyzer=FakeAnalyzer())
    try:
        info = again.get_collection("c")
        assert info.enroll_quality_overrides == created.enroll_quality_overrides
        assert info.require_liveness is True and not info.liveness_active  # no PAD model
        assert info.identify_quality == QualityPolicy.identify().__class__(
            **{**QualityPolicy.identify().__dict__, "max_roll_deg": 3.0, "max_yaw_deg": 7.0}
        )
        with pytest.raises(LowQuality, match="sharpness"):
            again.enroll(EnrollRequest("c", "a", [face_png(1)]))
    finally:
        again.close()


# ---------------------------------------------------------------- duplicate uid by role


def test_duplicate_face_names_the_other_uid_to_enrollers_only(settings: Settings) -> None:
    svc = build_service(settings, analyzer=FakeAnalyzer())
    try:
        svc.create_collection(CollectionSpec("shop"))
        svc.enroll(EnrollRequest("shop", "alice", [face_png(1)]))
        again = EnrollRequest("shop", "mallory", [face_png(1, 4)])
        for role in (Role.ENROLLER, Role.ADMIN):
            with acting_as(Principal("k", role)), pytest.raises(DuplicateFace) as seen:
                svc.enroll(again)
            assert seen.value.metadata["uid"] == "alice"
        with acting_as(Principal("t", Role.TERMINAL)), pytest.raises(DuplicateFace) as hidden:
            svc.enroll(again)
        assert "uid" not in hidden.value.metadata and "alice" not in hidden.value.message
        assert "score" in hidden.value.metadata
    finally:
        svc.close()


# ---------------------------------------------------------------- update_collection


def test_update_changes_later_decisions_and_survives_a_restart(settings: Settings) -> None:
    svc = build_service(settings, analyzer=FakeAnalyzer())
    svc.create_collection(CollectionSpec("shop"))
    svc.enroll(
        EnrollRequest(
            "shop", "alice", [face_png(1)], phone_number="+15551234567", metadata={"tier": "gold"}
        )
    )
    probe = IdentifyRequest("shop", face_png(1, 2))
    first = svc.identify(probe)
    assert first.decision is Decision.MATCH and first.metadata == {}  # not opted in

    info = svc.update_collection(CollectionUpdate("shop", identify_returns_metadata=True))
    assert info.identify_returns_metadata
    greeted = svc.identify(probe)
    assert greeted.decision is Decision.MATCH and greeted.metadata == {"tier": "gold"}
    assert svc.identify(IdentifyRequest("shop", face_png(2))).metadata == {}  # a stranger

    strict = svc.update_collection(CollectionUpdate("shop", threshold=0.999, margin=0.2))
    assert (strict.threshold, strict.margin) == (0.999, 0.2)
    refused = svc.identify(probe)
    assert refused.decision is Decision.NO_MATCH and refused.uid is None
    assert refused.metadata == {}  # metadata only ever comes with a MATCH
    svc.close()

    again = build_service(settings, analyzer=FakeAnalyzer())
    try:
        info = again.get_collection("shop")
        assert (info.threshold, info.margin, info.identify_returns_metadata) == (0.999, 0.2, True)
        assert again.identify(probe).decision is Decision.NO_MATCH
        again.update_collection(CollectionUpdate("shop", threshold=first.threshold))
        assert again.identify(probe).metadata == {"tier": "gold"}
    finally:
        again.close()


def test_update_turns_liveness_on_and_back_to_the_kind_default(settings: Settings) -> None:
    live = RecordingLiveness(0.1)  # every face looks like a spoof
    svc = _engine(settings, live)
    try:
        svc.create_collection(CollectionSpec("member"))
        svc.enroll(EnrollRequest("member", "a", [face_png(1)]))
        svc.identify(IdentifyRequest("member", face_png(1, 2)))  # members: no check by default
        info = svc.update_collection(CollectionUpdate("member", require_liveness=True))
        assert info.require_liveness is True and info.liveness_active
        with pytest.raises(LivenessFailed):
            svc.identify(IdentifyRequest("member", face_png(1, 2)))
        info = svc.update_collection(CollectionUpdate("member", reset_require_liveness=True))
        assert info.require_liveness is None and not info.liveness_active
        svc.identify(IdentifyRequest("member", face_png(1, 2)))
    finally:
        svc.close()


def test_update_replaces_own_limits_and_refuses_what_create_refuses(settings: Settings) -> None:
    svc = build_service(settings, analyzer=FakeAnalyzer())
    try:
        svc.create_collection(CollectionSpec("c", identify_quality=QualityLimits(max_yaw_deg=7.0)))
        info = svc.update_collection(
            CollectionUpdate("c", enroll_quality=QualityLimits(min_sharpness=1e9))
        )
        assert info.enroll_quality_overrides == QualityLimits(min_sharpness=1e9)
        assert info.identify_quality_overrides == QualityLimits(max_yaw_deg=7.0)  # untouched
        with pytest.raises(LowQuality, match="sharpness"):
            svc.enroll(EnrollRequest("c", "a", [face_png(1)]))
        svc.update_collection(CollectionUpdate("c", enroll_quality=QualityLimits()))
        svc.enroll(EnrollRequest("c", "a", [face_png(1)]))

        before = svc.get_collection("c")
        bad = [
            CollectionUpdate(
                "c", identify_quality=QualityLimits(min_brightness=200.0, max_brightness=100.0)
            ),
            CollectionUpdate("c", threshold=1.5),
            CollectionUpdate("c", margin=-0.1),
            CollectionUpdate("c", hint_required_above=-1),
            CollectionUpdate("c", require_liveness=True, reset_require_liveness=True),
        ]
        for change in bad:
            with pytest.raises(InvalidArgument):
                svc.update_collection(change)
        assert svc.get_collection("c") == before  # nothing was stored
        with pytest.raises(UnknownCollection):
            svc.update_collection(CollectionUpdate("nope", threshold=0.5))
    finally:
        svc.close()


# ---------------------------------------------------------------- schema version 1

# Facegate's schema version 1 (before templates were sealed and before per-collection
# quality limits): it is upgraded through version 2 to the current one.
V1_SCHEMA = """
CREATE TABLE collections (
    id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL UNIQUE, kind TEXT NOT NULL,
    threshold REAL NOT NULL, margin REAL NOT NULL, hint_required_above INTEGER NOT NULL,
    model_id TEXT NOT NULL, created_at REAL NOT NULL);
CREATE TABLE users (
    collection TEXT NOT NULL REFERENCES collections(name) ON DELETE CASCADE,
    uid TEXT NOT NULL, metadata TEXT NOT NULL DEFAULT '{}', phone_hash TEXT,
    phone_bucket TEXT, created_at REAL NOT NULL, updated_at REAL NOT NULL,
    PRIMARY KEY (collection, uid)) WITHOUT ROWID;
CREATE TABLE faces (
    face_id INTEGER PRIMARY KEY AUTOINCREMENT, collection TEXT NOT NULL, uid TEXT NOT NULL,
    model_id TEXT NOT NULL, template BLOB NOT NULL, image_digest TEXT NOT NULL,
    box_left REAL NOT NULL, box_top REAL NOT NULL, box_right REAL NOT NULL,
    box_bottom REAL NOT NULL, det_score REAL NOT NULL, inter_eye_px REAL NOT NULL,
    created_at REAL NOT NULL,
    FOREIGN KEY (collection, uid) REFERENCES users(collection, uid) ON DELETE CASCADE);
CREATE INDEX faces_by_user ON faces(collection, uid);
CREATE TABLE changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, collection_id INTEGER NOT NULL,
    op TEXT NOT NULL CHECK (op IN ('add', 'remove')), face_id INTEGER NOT NULL);
CREATE INDEX changes_by_collection ON changes(collection_id, seq);
INSERT INTO collections VALUES (1, 'old-pay', 'PAY', 0.9, 0.02, 0, 'fake-v1', 1.0);
PRAGMA user_version = 1;
"""


@pytest.fixture
def v1_store(settings: Settings) -> Iterator[Path]:
    settings.data_dir.mkdir(parents=True)
    db = sqlite3.connect(settings.store_path)
    db.executescript(V1_SCHEMA)
    db.close()
    yield settings.store_path


def test_a_version_1_store_opens_and_gets_the_new_columns(
    settings: Settings, v1_store: Path
) -> None:
    store = SqliteStore(v1_store)
    try:
        (row,) = store.list_collections()
        assert row.name == "old-pay" and row.enroll_quality == {} and row.require_liveness is None
        assert store.schema_version() == SCHEMA_VERSION
    finally:
        store.close()
    svc = build_service(settings, analyzer=FakeAnalyzer())
    try:
        info = svc.get_collection("old-pay")
        assert info.enroll_quality == QualityPolicy.enroll()
        assert info.identify_quality == QualityPolicy.identify()
        svc.enroll(EnrollRequest("old-pay", "a", [face_png(1)]))
        assert svc.identify(IdentifyRequest("old-pay", face_png(1, 2))).uid == "a"
    finally:
        svc.close()


def test_a_version_2_store_opens_and_gets_the_new_columns(settings: Settings) -> None:
    """Schema 2 (templates sealed at rest, before per-collection limits) is today's schema
    without the policy columns of versions 3 and 4: make one by dropping them from a fresh
    store, then open it (2 -> 3 -> 4)."""
    first = SqliteStore(settings.store_path)
    first.create_collection(
        CollectionRow(
            0,
            "pay",
            kind="PAY",
            threshold=0.9,
            margin=0.02,
            hint_required_above=0,
            model_id="fake-v1",
            created_at=0,
        )
    )
    first.close()
    db = sqlite3.connect(settings.store_path)
    for column in (
        "enroll_quality",
        "identify_quality",
        "require_liveness",
        "identify_returns_metadata",
    ):
        db.execute(f"ALTER TABLE collections DROP COLUMN {column}")
    db.execute("PRAGMA user_version = 2")
    db.commit()
    db.close()
    svc = build_service(settings, analyzer=FakeAnalyzer())
    try:
        info = svc.get_collection("pay")
        assert info.enroll_quality == QualityPolicy.enroll() and info.require_liveness is None
        assert info.identify_returns_metadata is False
        svc.enroll(EnrollRequest("pay", "a", [face_png(1)]))
    finally:
        svc.close()
    db = sqlite3.connect(settings.store_path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    db.close()
