"""FaceService end to end over the real store, index and decoder, with a FakeAnalyzer."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fakes import FAKE_FACE, FAKE_THRESHOLD, FakeAnalyzer, face_png, no_face_png

from service.app import build_service
from service.config import Settings
from service.crypto.secrets_file import load_or_create_secret
from service.domain import (
    CollectionKind,
    CollectionSpec,
    Decision,
    EnrollRequest,
    EnrollResult,
    IdentifyRequest,
    IdentifyResult,
    VerifyRequest,
)
from service.engine.decisions import PAY_THRESHOLD_OFFSET
from service.engine.face_service import FaceService
from service.errors import (
    CollectionExists,
    DuplicateFace,
    ImageUndecodable,
    InvalidArgument,
    ModelMismatch,
    MultipleFaces,
    NoFace,
    ProbeTokenInvalid,
    UnknownCollection,
    UnknownUser,
)
from service.store.sqlite import SqliteStore
from service.vector_index.local import LocalIndexes
from service.vector_index.snapshot_files import snapshot_path

ALICE, BOB, CAROL = 1, 2, 3
STRANGER = 99


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", batch_window_ms=1.0)


@pytest.fixture
def svc(settings: Settings) -> Iterator[FaceService]:
    s = build_service(settings, analyzer=FakeAnalyzer())
    yield s
    s.close()


def enroll(
    svc: FaceService,
    uid: str,
    identity: int,
    *variants: int,
    coll: str = "shop",
    phone: str | None = None,
    **kw: object,
) -> EnrollResult:
    images = [face_png(identity, v) for v in (variants or (0,))]
    return svc.enroll(EnrollRequest(coll, uid, images, phone_number=phone, **kw))  # type: ignore[arg-type]


def identify(
    svc: FaceService, image: bytes | None, coll: str = "shop", **kw: object
) -> IdentifyResult:
    return svc.identify(IdentifyRequest(coll, image, **kw))  # type: ignore[arg-type]


# ------------------------------------------------------------------- collections


def test_collection_lifecycle_and_defaults(svc: FaceService) -> None:
    member = svc.create_collection(CollectionSpec("shop"))
    assert member.kind is CollectionKind.MEMBER and member.threshold == FAKE_THRESHOLD
    assert member.model_id == "fake-v1" and member.user_count == member.face_count == 0
    pay = svc.create_collection(CollectionSpec("pay.eu-1", kind=CollectionKind.PAY))
    assert pay.threshold == pytest.approx(FAKE_THRESHOLD + PAY_THRESHOLD_OFFSET)
    # By kind: a pay collection needs the phone hint above 100 users, a member one never.
    assert (pay.hint_required_above, member.hint_required_above) == (100, 0)
    custom = svc.create_collection(
        CollectionSpec("custom", threshold=0.7, margin=0.1, hint_required_above=5)
    )
    assert (custom.threshold, custom.margin, custom.hint_required_above) == (0.7, 0.1, 5)
    assert [c.name for c in svc.list_collections()] == ["custom", "pay.eu-1", "shop"]
    with pytest.raises(CollectionExists):
        svc.create_collection(CollectionSpec("shop"))
    svc.delete_collection("custom")
    with pytest.raises(UnknownCollection):
        svc.get_collection("custom")
    with pytest.raises(UnknownCollection):
        svc.delete_collection("custom")


@pytest.mark.parametrize(
    "spec",
    [
        CollectionSpec(""),
        CollectionSpec("a/b"),
        CollectionSpec("x" * 65),
        CollectionSpec("ok", threshold=1.5),
        CollectionSpec("ok", threshold=float("nan")),
        CollectionSpec("ok", margin=-0.1),
        CollectionSpec("ok", hint_required_above=-1),
    ],
)
def test_bad_collection_specs(svc: FaceService, spec: CollectionSpec) -> None:
    with pytest.raises(InvalidArgument):
        svc.create_collection(spec)


# ------------------------------------------------------------ the main scenario


def test_enroll_identify_verify_delete(svc: FaceService) -> None:
    svc.create_collection(CollectionSpec("shop"))
    a = enroll(svc, "alice", ALICE, 0, 1, metadata={"tier": "gold"})
    assert a.created and len(a.face_ids) == 2 and len(a.qualities) == 2
    assert a.qualities[0].box.right - a.qualities[0].box.left == FAKE_FACE
    enroll(svc, "bob", BOB)

    r = identify(svc, face_png(ALICE, 7))
    assert r.decision is Decision.MATCH and r.uid == "alice" and r.score > 0.8
    assert r.candidates[0].uid == "alice" and r.threshold == FAKE_THRESHOLD
    assert r.face is not None and r.probe_token is None

    r = identify(svc, face_png(STRANGER))
    assert r.decision is Decision.NO_MATCH and r.uid is None

    v = svc.verify(VerifyRequest("shop", "alice", face_png(ALICE, 9)))
    assert v.match and v.score > 0.8
    v = svc.verify(VerifyRequest("shop", "alice", face_png(BOB, 9)))
    assert not v.match
    with pytest.raises(UnknownUser):
        svc.verify(VerifyRequest("shop", "nobody", face_png(BOB)))

    user = svc.get_user("shop", "alice")
    assert user.face_count == 2 and user.metadata == {"tier": "gold"} and not user.has_phone

    assert svc.delete_user("shop", "alice") == 2
    r = identify(svc, face_png(ALICE, 7))
    assert r.decision is Decision.NO_MATCH and all(c.uid != "alice" for c in r.candidates)
    with pytest.raises(UnknownUser):
        svc.get_user("shop", "alice")
    with pytest.raises(UnknownUser):
        svc.delete_user("shop", "alice")
    assert svc.stats()["users"] == 1


def test_restart_keeps_the_gallery(settings: Settings) -> None:
    svc = build_service(settings, analyzer=FakeAnalyzer())
    svc.create_collection(CollectionSpec("shop"))
    enroll(svc, "alice", ALICE, phone="+1 555 000 1234")
    enroll(svc, "bob", BOB)
    svc.indexes.checkpoint()
    # Changes after the snapshot are replayed from the store's log on restart.
    enroll(svc, "carol", CAROL)
    svc.delete_user("shop", "bob")
    svc.close()

    svc = build_service(settings, analyzer=FakeAnalyzer())
    try:
        assert identify(svc, face_png(ALICE, 3)).uid == "alice"
        assert identify(svc, face_png(CAROL, 3)).uid == "carol"
        assert identify(svc, face_png(BOB, 3)).decision is Decision.NO_MATCH
        assert identify(svc, face_png(ALICE, 3), hint="1234").uid == "alice"
        info = svc.get_collection("shop")
        assert (info.user_count, info.face_count) == (2, 2)
    finally:
        svc.close()


def test_restart_with_a_corrupt_snapshot_rebuilds_from_the_store(settings: Settings) -> None:
    svc = build_service(settings, analyzer=FakeAnalyzer())
    svc.create_collection(CollectionSpec("shop"))
    enroll(svc, "alice", ALICE)
    svc.indexes.checkpoint()
    svc.close()
    store = SqliteStore(settings.store_path)
    path = snapshot_path(settings.snapshot_dir, store.get_collection("shop"))
    store.close()
    assert path.exists()
    path.write_bytes(path.read_bytes()[:-7])  # truncated
    svc = build_service(settings, analyzer=FakeAnalyzer())
    try:
        assert identify(svc, face_png(ALICE, 3)).uid == "alice"
    finally:
        svc.close()


def test_snapshot_prunes_the_change_log_and_deleted_collections_lose_snapshots(
    svc: FaceService, settings: Settings
) -> None:
    svc.create_collection(CollectionSpec("shop"))
    enroll(svc, "alice", ALICE)
    svc.indexes.checkpoint()
    store = SqliteStore(settings.store_path)
    try:
        row = store.get_collection("shop")
        assert store.changes_since(row.id, 0).added == ()
    finally:
        store.close()
    assert snapshot_path(settings.snapshot_dir, row).exists()
    svc.delete_collection("shop")
    assert not snapshot_path(settings.snapshot_dir, row).exists()
    # A re-created collection of the same name starts empty.
    svc.create_collection(CollectionSpec("shop"))
    assert identify(svc, face_png(ALICE)).decision is Decision.NO_MATCH


def test_model_mismatch_after_switching_models(settings: Settings) -> None:
    svc = build_service(settings, analyzer=FakeAnalyzer())
    svc.create_collection(CollectionSpec("shop"))
    enroll(svc, "alice", ALICE)
    svc.close()

    class OtherModel(FakeAnalyzer):
        @property
        def model_id(self) -> str:
            return "other-v2"

    svc = build_service(settings, analyzer=OtherModel())
    try:
        assert svc.get_collection("shop").user_count == 1
        with pytest.raises(ModelMismatch):
            identify(svc, face_png(ALICE))
        with pytest.raises(ModelMismatch):
            enroll(svc, "bob", BOB)
        assert svc.delete_user("shop", "alice") == 1  # deletion still works
    finally:
        svc.close()


# ------------------------------------------------------------------ hints


def test_need_hint_by_gallery_size_then_retry_with_hint_and_token(svc: FaceService) -> None:
    svc.create_collection(CollectionSpec("shop", hint_required_above=2))
    enroll(svc, "alice", ALICE, phone="+1 555 000 1234")
    enroll(svc, "bob", BOB, phone="+1 555 000 5678")
    # Two users: not above the limit, so plain matching works.
    assert identify(svc, face_png(ALICE, 2)).decision is Decision.MATCH
    enroll(svc, "carol", CAROL, phone="+1 555 000 9999")
    r = identify(svc, face_png(ALICE, 2))
    assert r.decision is Decision.NEED_HINT and r.uid is None and r.candidates == ()
    assert r.probe_token and r.probe_token_ttl_s > 0
    # Retry with the token (no photo) and the right hint.
    again = identify(svc, None, hint="1234", probe_token=r.probe_token)
    assert again.decision is Decision.MATCH and again.uid == "alice"
    assert again.face == r.face
    # A wrong hint searches only that bucket: bob is not alice.
    wrong = identify(svc, None, hint="5678", probe_token=r.probe_token)
    assert wrong.decision is Decision.NO_MATCH
    # A hint with a fresh photo works without a token too.
    assert identify(svc, face_png(ALICE, 4), hint="1234").uid == "alice"


def test_ambiguous_look_alikes(svc: FaceService) -> None:
    svc.create_collection(CollectionSpec("shop"))
    enroll(svc, "alice", ALICE, phone="+1 555 000 1234")
    enroll(svc, "bob", BOB, phone="+1 555 000 5678")
    twin = face_png(ALICE, blend_with=BOB, blend_pct=50)  # equally like both
    r = identify(svc, twin)
    assert r.decision is Decision.NEED_HINT and r.probe_token
    hinted = identify(svc, None, hint="5678", probe_token=r.probe_token)
    assert hinted.decision is Decision.MATCH and hinted.uid == "bob"


def test_ambiguous_without_phones_is_ambiguous_not_need_hint(svc: FaceService) -> None:
    svc.create_collection(CollectionSpec("shop"))
    enroll(svc, "alice", ALICE)
    enroll(svc, "bob", BOB)
    r = identify(svc, face_png(ALICE, blend_with=BOB, blend_pct=50))
    assert r.decision is Decision.AMBIGUOUS and r.uid is None and r.probe_token is None
    assert {c.uid for c in r.candidates} == {"alice", "bob"}


def test_phone_change_moves_the_user_to_the_new_bucket(svc: FaceService) -> None:
    svc.create_collection(CollectionSpec("shop"))
    first = enroll(svc, "alice", ALICE, phone="+1 555 000 1234")
    again = enroll(svc, "alice", ALICE, phone="+1 555 000 4321")
    assert not again.created and again.face_ids != first.face_ids  # re-filed under new ids
    assert identify(svc, face_png(ALICE, 1), hint="4321").uid == "alice"
    assert identify(svc, face_png(ALICE, 1), hint="1234").decision is Decision.NO_MATCH
    assert svc.get_collection("shop").face_count == 1


def test_probe_token_rules(settings: Settings) -> None:
    now = [1000.0]
    store = SqliteStore(settings.store_path)
    indexes = LocalIndexes(
        store,
        store.cipher.keyring,
        dim=FakeAnalyzer().embedding_dim,
        snapshot_dir=settings.snapshot_dir,
    )
    svc = FaceService(
        settings,
        FakeAnalyzer(),
        store,
        indexes,
        load_or_create_secret(settings),
        clock=lambda: now[0],
    )
    try:
        svc.create_collection(CollectionSpec("shop", hint_required_above=1))
        svc.create_collection(CollectionSpec("other"))
        enroll(svc, "alice", ALICE, phone="5550001234")
        enroll(svc, "bob", BOB, phone="5550005678")
        token = identify(svc, face_png(ALICE)).probe_token
        assert token
        with pytest.raises(ProbeTokenInvalid):
            identify(svc, None, coll="other", hint="1234", probe_token=token)
        with pytest.raises(InvalidArgument):  # a token is for the retry with a hint
            identify(svc, None, probe_token=token)
        with pytest.raises(InvalidArgument):  # image or token, not both
            identify(svc, face_png(ALICE), hint="1234", probe_token=token)
        with pytest.raises(ProbeTokenInvalid):
            identify(svc, None, hint="1234", probe_token="forged")
        now[0] += settings.probe_token_ttl_s + 1
        with pytest.raises(ProbeTokenInvalid):
            identify(svc, None, hint="1234", probe_token=token)
        # Multi-use until used up (3 tries).
        token = identify(svc, face_png(ALICE)).probe_token
        for hint in ("9999", "0000", "1234"):
            identify(svc, None, hint=hint, probe_token=token)
        with pytest.raises(ProbeTokenInvalid):
            identify(svc, None, hint="1234", probe_token=token)
    finally:
        svc.close()


# ------------------------------------------------------------- enrolment rules


def test_reenrolment_is_idempotent(svc: FaceService) -> None:
    svc.create_collection(CollectionSpec("shop"))
    first = enroll(svc, "alice", ALICE, 0, 1)
    again = enroll(svc, "alice", ALICE, 0, 1)
    assert not again.created and again.face_ids == first.face_ids
    # The same photo re-encoded (other bytes, same face) is recognised too.
    reencoded = svc.enroll(EnrollRequest("shop", "alice", [face_png(ALICE, 0, background=5)]))
    assert reencoded.face_ids == first.face_ids[:1]
    # A duplicate inside one request is stored once.
    dup = svc.enroll(EnrollRequest("shop", "alice", [face_png(ALICE, 2), face_png(ALICE, 2)]))
    assert dup.face_ids[0] == dup.face_ids[1] and dup.face_ids[0] not in first.face_ids
    assert svc.get_user("shop", "alice").face_count == 3


def test_duplicate_face_under_another_uid_is_refused(svc: FaceService) -> None:
    svc.create_collection(CollectionSpec("shop"))
    enroll(svc, "alice", ALICE)
    with pytest.raises(DuplicateFace) as err:
        enroll(svc, "mallory", ALICE, 3)
    assert err.value.metadata["uid"] == "alice"
    with pytest.raises(UnknownUser):
        svc.get_user("shop", "mallory")  # nothing was written
    ok = enroll(svc, "alice-twin", ALICE, 3, allow_duplicate=True)
    assert ok.created


def test_faces_added_to_a_uid_must_match_it(svc: FaceService) -> None:
    svc.create_collection(CollectionSpec("shop"))
    enroll(svc, "alice", ALICE)
    with pytest.raises(InvalidArgument) as err:
        svc.enroll(EnrollRequest("shop", "alice", [face_png(BOB)], allow_duplicate=True))
    assert err.value.metadata["uid"] == "alice"
    # Within one new enrolment too: the second photo is someone else.
    with pytest.raises(InvalidArgument):
        svc.enroll(EnrollRequest("shop", "dave", [face_png(4), face_png(5)]))
    more = enroll(svc, "alice", ALICE, 5)
    assert svc.get_user("shop", "alice").face_count == 2 and not more.created


def test_photos_that_are_refused(svc: FaceService) -> None:
    svc.create_collection(CollectionSpec("shop"))
    enroll(svc, "alice", ALICE)
    with pytest.raises(NoFace):
        identify(svc, no_face_png())
    with pytest.raises(MultipleFaces) as err:
        identify(svc, face_png(ALICE, faces=2, second_area_pct=70))
    assert err.value.metadata["faces"] == "2"
    # A small face in the background is ignored; the customer is the large one.
    assert identify(svc, face_png(ALICE, faces=3, second_area_pct=30)).uid == "alice"
    with pytest.raises(ImageUndecodable):
        identify(svc, b"not an image at all")
    with pytest.raises(NoFace) as nerr:
        svc.enroll(EnrollRequest("shop", "bob", [face_png(BOB), no_face_png()]))
    assert nerr.value.metadata["image_index"] == "1"
    assert "images[1]" in str(nerr.value)


@pytest.mark.parametrize(
    "req",
    [
        EnrollRequest("shop", "", [b"x"]),
        EnrollRequest("shop", "u" * 129, [b"x"]),
        EnrollRequest("shop", "tab\there", [b"x"]),
        EnrollRequest("shop", "u", []),
        EnrollRequest("shop", "u", [b""]),
        EnrollRequest("shop", "u", [b"x"] * 11),
        EnrollRequest("shop", "u", [b"x"], phone_number="12"),
        EnrollRequest("shop", "u", [b"x"], metadata={"k": "v" * 2000}),
        EnrollRequest("bad name", "u", [b"x"]),
    ],
)
def test_bad_enroll_arguments(svc: FaceService, req: EnrollRequest) -> None:
    svc.create_collection(CollectionSpec("shop"))
    with pytest.raises(InvalidArgument):
        svc.enroll(req)


@pytest.mark.parametrize(
    "req",
    [
        IdentifyRequest("shop", b"x", top_k=0),
        IdentifyRequest("shop", b"x", top_k=101),
        IdentifyRequest("shop", b"x", hint="12a4"),
        IdentifyRequest("shop", b"x", hint="123"),
        IdentifyRequest("shop", None),
        IdentifyRequest("shop", b""),
    ],
)
def test_bad_identify_arguments(svc: FaceService, req: IdentifyRequest) -> None:
    svc.create_collection(CollectionSpec("shop"))
    with pytest.raises(InvalidArgument):
        svc.identify(req)


def test_unknown_collection_everywhere(svc: FaceService) -> None:
    with pytest.raises(UnknownCollection):
        identify(svc, face_png(ALICE), coll="nope")
    with pytest.raises(UnknownCollection):
        enroll(svc, "a", ALICE, coll="nope")
    with pytest.raises(UnknownCollection):
        svc.list_users("nope")


def test_list_users_pages(svc: FaceService) -> None:
    svc.create_collection(CollectionSpec("shop"))
    for i in range(5):
        enroll(svc, f"user-{i}", 10 + i)
    seen: list[str] = []
    token = ""
    while True:
        page = svc.list_users("shop", page_size=2, page_token=token)
        seen += [u.uid for u in page.users]
        token = page.next_page_token
        if not token:
            break
    assert seen == [f"user-{i}" for i in range(5)]
    with pytest.raises(InvalidArgument):
        svc.list_users("shop", page_token="!!!")
    with pytest.raises(InvalidArgument):
        svc.list_users("shop", page_size=0)


def test_deadline_in_the_past(svc: FaceService) -> None:
    svc.create_collection(CollectionSpec("shop"))
    with pytest.raises(TimeoutError):
        svc.identify(IdentifyRequest("shop", face_png(ALICE)), deadline=time.monotonic() - 1)


# ------------------------------------------------------------- concurrency


def test_concurrent_identifies_share_model_runs(settings: Settings) -> None:
    fake = FakeAnalyzer(embed_delay_s=0.05)
    svc = build_service(settings, analyzer=fake)
    try:
        svc.create_collection(CollectionSpec("shop"))
        enroll(svc, "alice", ALICE)
        fake.embed_batch_sizes.clear()
        barrier = threading.Barrier(8)
        results: list[str | None] = []

        def one() -> None:
            barrier.wait()
            results.append(identify(svc, face_png(ALICE, 2)).uid)

        threads = [threading.Thread(target=one) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results == ["alice"] * 8
        assert sum(fake.embed_batch_sizes) == 8
        assert max(fake.embed_batch_sizes) > 1  # at least one run served several requests
    finally:
        svc.close()


def test_concurrent_enroll_identify_delete_never_returns_a_deleted_user(
    settings: Settings,
) -> None:
    svc = build_service(settings, analyzer=FakeAnalyzer())
    svc.create_collection(CollectionSpec("shop"))
    errors: list[BaseException] = []
    deleted_at: dict[str, float] = {}
    lock = threading.Lock()
    stop = threading.Event()
    n_users = 30

    def enroller() -> None:
        try:
            for i in range(n_users):
                enroll(svc, f"u{i}", 100 + i)
        except BaseException as exc:
            errors.append(exc)

    def deleter() -> None:
        try:
            for i in range(0, n_users, 2):
                while True:
                    try:
                        svc.delete_user("shop", f"u{i}")
                        break
                    except UnknownUser:
                        time.sleep(0.002)  # not enrolled yet
                with lock:
                    deleted_at[f"u{i}"] = time.monotonic()
        except BaseException as exc:
            errors.append(exc)

    def identifier(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            while not stop.is_set():
                i = int(rng.integers(n_users))
                started = time.monotonic()
                r = identify(svc, face_png(100 + i, 1 + int(rng.integers(50))))
                with lock:
                    gone = deleted_at.get(f"u{i}")
                if r.uid is not None:
                    assert r.uid == f"u{i}"
                    assert gone is None or gone > started, f"deleted {r.uid} was returned"
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=enroller), threading.Thread(target=deleter)]
    readers = [threading.Thread(target=identifier, args=(s,)) for s in range(4)]
    try:
        for t in workers + readers:
            t.start()
        for t in workers:
            t.join(timeout=120)
        stop.set()
        for t in readers:
            t.join(timeout=60)
        assert errors == []
        info = svc.get_collection("shop")
        assert info.user_count == n_users // 2
        for i in range(n_users):
            r = identify(svc, face_png(100 + i, 77))
            assert r.uid == (None if i % 2 == 0 else f"u{i}")
    finally:
        stop.set()
        svc.close()


def _indexes(store: SqliteStore, settings: Settings) -> LocalIndexes:
    return LocalIndexes(store, store.cipher.keyring, dim=64, snapshot_dir=settings.snapshot_dir)


def test_replay_tolerates_a_snapshot_ahead_of_its_sequence(settings: Settings) -> None:
    """A snapshot may include changes made after the sequence it records (it is written
    without stopping writers); restoring must still end exactly at the store's state."""
    svc = build_service(settings, analyzer=FakeAnalyzer())
    svc.create_collection(CollectionSpec("shop"))
    enroll(svc, "alice", ALICE, phone="5550001234")
    enroll(svc, "bob", BOB)
    svc.close()
    store = SqliteStore(settings.store_path)
    try:
        row = store.get_collection("shop")
        early = store.sequence()
        gallery = _indexes(store, settings).load(row)
        # Later changes: carol added, bob deleted, alice moved to a new bucket (new ids).
        store.enroll("shop", "carol", [], model_id="fake-v1", metadata=None, phone=None)
        removed = store.delete_user("shop", "bob")
        gallery.remove_faces(np.array(removed, dtype=np.int64))  # the snapshot saw this one
        moved = store.enroll(
            "shop", "alice", [], model_id="fake-v1", metadata=None, phone=("h", "new-bucket")
        )
        path = snapshot_path(settings.snapshot_dir, row)
        settings.snapshot_dir.mkdir(parents=True, exist_ok=True)
        gallery.snapshot(path, early)  # records the early sequence
        restored = _indexes(store, settings).load(row)
        assert restored.uids() == ["alice"]
        assert sorted(restored.face_ids().tolist()) == sorted(moved.renamed.values())
        assert restored.partition_of(next(iter(moved.renamed.values()))) == "new-bucket"
    finally:
        store.close()


def test_periodic_snapshots_are_written_while_serving(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", batch_window_ms=1.0, snapshot_every_s=0.05)
    svc = build_service(settings, analyzer=FakeAnalyzer())
    try:
        svc.create_collection(CollectionSpec("shop"))
        enroll(svc, "alice", ALICE)
        deadline = time.monotonic() + 30
        while not list(settings.snapshot_dir.glob("*")) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert list(settings.snapshot_dir.glob("*")), "no snapshot was written"
    finally:
        svc.close()
    # The snapshot restores alone: nothing left to replay after it.
    again = build_service(settings, analyzer=FakeAnalyzer())
    try:
        assert identify(again, face_png(ALICE, 3)).uid == "alice"
    finally:
        again.close()
