"""ImportTemplates: bulk users from templates (admin), through the engine and a real server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from fakes import FAKE_DIM, FakeAnalyzer, expected_embedding, face_png
from grpc_fakes import running_server

from service.app import build_service
from service.config import Settings
from service.domain import CollectionSpec, Decision, IdentifyRequest, ImportTemplatesRequest
from service.engine import request_checks as checks
from service.engine.face_service import FaceService
from service.errors import InvalidArgument, ModelMismatch, UnknownCollection, UserExists
from service.transport.client import FaceGateClient
from service.transport.status import code_for

ALICE = 1


def unit_rows(n: int, dim: int = FAKE_DIM, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", batch_window_ms=1.0)


@pytest.fixture
def svc(settings: Settings) -> Iterator[FaceService]:
    s = build_service(settings, analyzer=FakeAnalyzer())
    s.create_collection(CollectionSpec("shop"))
    yield s
    s.close()


def request(uids: list[str], vectors: np.ndarray, **kw: object) -> ImportTemplatesRequest:
    model = kw.pop("model_id", FakeAnalyzer().model_id)
    return ImportTemplatesRequest("shop", str(model), tuple(uids), vectors, **kw)  # type: ignore[arg-type]


def test_imported_users_are_searchable_deletable_and_survive_restart(
    settings: Settings, svc: FaceService
) -> None:
    vectors = unit_rows(500)
    vectors[7] = expected_embedding(ALICE)  # one imported user is a person we have photos of
    uids = [f"u{i}" for i in range(500)]
    phones: list[str | None] = [None] * 500
    phones[7] = "13800001234"
    ids = svc.import_templates(request(uids, vectors, phone_numbers=tuple(phones)))
    assert len(ids) == 500 and len(set(ids)) == 500
    info = svc.get_collection("shop")
    assert (info.user_count, info.face_count, info.embedding_dim) == (500, 500, FAKE_DIM)

    res = svc.identify(IdentifyRequest("shop", face_png(ALICE, 2)))
    assert (res.decision, res.uid) == (Decision.MATCH, "u7")
    hinted = svc.identify(IdentifyRequest("shop", face_png(ALICE, 2), hint="1234"))
    assert hinted.uid == "u7"
    svc.close()

    again = build_service(settings, analyzer=FakeAnalyzer())
    try:
        assert again.get_collection("shop").user_count == 500
        assert again.identify(IdentifyRequest("shop", face_png(ALICE, 2))).uid == "u7"
        assert again.delete_user("shop", "u7") == 1
        after = again.identify(IdentifyRequest("shop", face_png(ALICE, 2)))
        assert after.decision is Decision.NO_MATCH
    finally:
        again.close()


def test_existing_uid_refuses_the_whole_batch(svc: FaceService) -> None:
    svc.import_templates(request(["a"], unit_rows(1)))
    with pytest.raises(UserExists) as info:
        svc.import_templates(request(["b", "a"], unit_rows(2, seed=1)))
    assert info.value.metadata["uid"] == "a"
    assert svc.get_collection("shop").user_count == 1  # "b" was not added either


@pytest.mark.parametrize(
    ("vectors", "uids", "fragment"),
    [
        (unit_rows(2, dim=FAKE_DIM + 1), ["a", "b"], "templates of"),
        (unit_rows(2) * 2.0, ["a", "b"], "L2-normalised"),
        (np.full((1, FAKE_DIM), np.nan, np.float32), ["a"], "finite"),
        (unit_rows(2), ["a", "a"], "more than once"),
        (unit_rows(1), [""], "uid"),
    ],
)
def test_bad_templates_are_refused(
    svc: FaceService, vectors: np.ndarray, uids: list[str], fragment: str
) -> None:
    with pytest.raises(InvalidArgument) as info:
        svc.import_templates(request(uids, vectors))
    assert fragment in info.value.message
    assert svc.get_collection("shop").user_count == 0


def test_other_model_and_unknown_collection(svc: FaceService) -> None:
    with pytest.raises(ModelMismatch):
        svc.import_templates(request(["a"], unit_rows(1), model_id="someone-elses-model"))
    with pytest.raises(UnknownCollection):
        svc.import_templates(
            ImportTemplatesRequest("nope", FakeAnalyzer().model_id, ("a",), unit_rows(1))
        )


def test_over_the_batch_limit(svc: FaceService) -> None:
    n = 10_001
    with pytest.raises(InvalidArgument, match="1-10000 templates"):
        svc.import_templates(request([f"u{i}" for i in range(n)], unit_rows(n)))


def test_through_a_real_server_with_the_fake_engine() -> None:
    with running_server() as (_, port, fake), FaceGateClient(f"127.0.0.1:{port}") as client:
        client.create_collection(CollectionSpec("c"))
        info = client.get_collection("c")
        vectors = unit_rows(3, dim=info.embedding_dim)
        ids = client.import_templates("c", info.model_id, ["a", "b", "d"], vectors)
        assert len(ids) == 3
        assert client.get_collection("c").user_count == 3
        assert fake.collections["c"].users["b"].faces == [vectors[1].tobytes()]
        with pytest.raises(ModelMismatch) as err:
            client.import_templates("c", "other/1", ["e"], unit_rows(1, dim=4))
        assert code_for(err.value) is grpc.StatusCode.FAILED_PRECONDITION


def test_a_full_batch_fits_the_transport_and_phones_metadata_arrive() -> None:
    """10,000 templates of 128 float32 values (~5.3 MB) are under the 16 MiB message limit."""
    with running_server() as (_, port, fake), FaceGateClient(f"127.0.0.1:{port}") as client:
        fake.embedding_dim = 128
        client.create_collection(CollectionSpec("c"))
        info = client.get_collection("c")
        assert info.embedding_dim == 128
        n = 10_000
        vectors = unit_rows(n, dim=128, seed=3)
        phones = [None if i % 2 else f"1380000{i:04d}" for i in range(n)]
        ids = client.import_templates(
            "c",
            info.model_id,
            [f"u{i}" for i in range(n)],
            vectors,
            phone_numbers=phones,
            metadata=[{"i": str(i)} for i in range(n)],
        )
        assert len(ids) == n
        seen = fake.seen_imports[-1]
        assert np.array_equal(seen.embeddings, vectors) and seen.embeddings.dtype == np.float32
        assert seen.phone_numbers == tuple(phones)
        assert seen.metadata is not None and seen.metadata[42] == {"i": "42"}
        with pytest.raises(UserExists) as err:
            client.import_templates("c", info.model_id, ["new", "u5"], vectors[:2])
        assert err.value.metadata["uid"] == "u5"
        assert code_for(err.value) is grpc.StatusCode.ALREADY_EXISTS


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        ({"phone_numbers": ("13800001234",)}, "phone numbers"),
        ({"metadata": ({}, {}, {})}, "metadata maps"),
        ({"phone_numbers": ("not a phone", None)}, "phone"),
        ({"metadata": ({"k" * 10_000: "v"}, {})}, "metadata"),
    ],
)
def test_bad_phones_or_metadata_refuse_the_batch(
    svc: FaceService, extra: dict[str, object], fragment: str
) -> None:
    with pytest.raises(InvalidArgument) as info:
        svc.import_templates(request(["a", "b"], unit_rows(2), **extra))
    assert fragment in info.value.message
    assert svc.get_collection("shop").user_count == 0


def test_nearly_unit_templates_are_renormalised_without_touching_the_callers_array() -> None:
    given = unit_rows(3) * np.float32(1 + 5e-4)  # inside the 1e-3 tolerance
    before = given.copy()
    out = checks.templates(given, 3, FAKE_DIM)
    assert np.array_equal(given, before)
    assert np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-6)
    assert out.dtype == np.float32 and out.flags.c_contiguous
