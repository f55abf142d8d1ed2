"""A bring-your-own pack through the real server, and switching packs on the same data.

Two real packs share one data directory: the dlib default and a BYO pack (RetinaFace
mnet0.25 + MobileFaceNet, from ``../shared/models``). Enrol and identify work with the BYO
pack; a collection enrolled with one pack answers MODEL_MISMATCH under the other (saying
that re-enrolment or re-embedding is required), ImportTemplates refuses another model's
templates, and switching back finds the first collection intact.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from byo_packs import make_pack, require_shared_models
from conftest import SHARED_FACES

from service import errors
from service.config import Settings, load_settings
from service.domain import (
    CollectionKind,
    CollectionSpec,
    Decision,
    EnrollRequest,
    IdentifyRequest,
    QualityLimits,
)
from service.models.pack import DEFAULT_PACK, MODEL_ID
from service.transport.client import FaceGateClient
from service.transport.server import FaceGateServer, create_server

READY_TIMEOUT_S = 300.0
LFW = SHARED_FACES / "lfw-devtrain" / "images"
PEOPLE = ("Aaron_Peirsol", "Colin_Powell", "Jennifer_Aniston", "Serena_Williams")
STRANGER = "Abdullah_Ahmad_Badawi"
# Web press photos, not an enrolment desk: enrol with the lenient (identify) preset's limits.
IDENTIFY_GRADE = QualityLimits(
    min_inter_eye_px=18.0, min_sharpness=10.0, max_yaw_deg=40.0, max_pitch_deg=35.0
)


def _settings(data_dir: Path, packs: Path, pack: str) -> Settings:
    return load_settings(
        environ={},
        data_dir=data_dir,
        model_dir=packs,
        model_pack=pack,
        listen="127.0.0.1:0",
        metrics={"listen": "127.0.0.1:0"},
    )


def _start(settings: Settings) -> tuple[FaceGateServer, int]:
    server, port = create_server(settings, port=0)
    server.start()
    if not server.wait_ready(READY_TIMEOUT_S):
        server.stop(None).wait(30)
        pytest.fail(f"the engine did not load: {server.load_error!r}")
    return server, port


def _photo(name: str, i: int) -> bytes:
    return (LFW / name / f"{name}_{i:04d}.jpg").read_bytes()


@pytest.fixture
def packs(tmp_path: Path, packs_dir: Path) -> Path:
    """A packs directory with the (session's) dlib default and a BYO pack beside it."""
    require_shared_models()
    if not LFW.is_dir():
        pytest.skip(f"needs the shared LFW photos at {LFW} (absent on this machine)")
    out = tmp_path / "packs"
    out.mkdir()
    (out / DEFAULT_PACK).symlink_to(packs_dir / DEFAULT_PACK, target_is_directory=True)
    make_pack(out, "retina-mfn", "retinaface_mnet025")
    return out


def test_byo_pack_serves_and_switching_packs_never_mixes_templates(
    tmp_path: Path, packs: Path, grace_hopper_jpeg: bytes
) -> None:
    data = tmp_path / "data"
    byo_id = make_pack(packs, "retina-mfn", "retinaface_mnet025").manifest.model_id

    # 1. The dlib default: one collection, one user.
    server, port = _start(_settings(data, packs, DEFAULT_PACK))
    try:
        with FaceGateClient(f"127.0.0.1:{port}", timeout=120) as client:
            client.create_collection(CollectionSpec(name="dlib-shop", kind=CollectionKind.MEMBER))
            client.enroll(
                EnrollRequest(collection="dlib-shop", uid="grace", images=(grace_hopper_jpeg,))
            )
    finally:
        assert server.stop(10).wait(60)

    # 2. The BYO pack on the same data.
    server, port = _start(_settings(data, packs, "retina-mfn"))
    try:
        with FaceGateClient(f"127.0.0.1:{port}", timeout=120) as client:
            old = client.get_collection("dlib-shop")
            assert old.model_id == MODEL_ID and old.user_count == 1
            with pytest.raises(errors.ModelMismatch) as info:
                client.identify(IdentifyRequest(collection="dlib-shop", image=grace_hopper_jpeg))
            assert "re-enrolment" in info.value.message and "re-embedding" in info.value.message
            assert info.value.metadata == {"collection_model": MODEL_ID, "service_model": byo_id}
            with pytest.raises(errors.ModelMismatch):
                client.import_templates("dlib-shop", byo_id, ["x"], _unit(128))

            # LFW's 250×250 crops hold faces ~24 px between the eyes (strict preset: 40 px)
            # and some turned heads: this collection enrols identify-grade photos.
            info_new = client.create_collection(
                CollectionSpec(
                    name="byo-shop",
                    kind=CollectionKind.MEMBER,
                    enroll_quality=IDENTIFY_GRADE,
                )
            )
            assert info_new.model_id == byo_id and info_new.embedding_dim == 128
            assert info_new.threshold == pytest.approx(0.35)
            for name in PEOPLE:
                res = client.enroll(
                    EnrollRequest(collection="byo-shop", uid=name, images=(_photo(name, 1),))
                )
                assert res.created and res.qualities[0].inter_eye_px > 15
            for name in PEOPLE:
                hit = client.identify(IdentifyRequest(collection="byo-shop", image=_photo(name, 2)))
                assert (hit.decision, hit.uid) == (Decision.MATCH, name), (name, hit)
            stranger = client.identify(
                IdentifyRequest(collection="byo-shop", image=_photo(STRANGER, 1))
            )
            assert stranger.decision is Decision.NO_MATCH and stranger.uid is None

            with pytest.raises(errors.ModelMismatch) as info:
                client.import_templates("byo-shop", MODEL_ID, ["x"], _unit(128))
            assert "re-embed" in info.value.message
            ids = client.import_templates("byo-shop", byo_id, ["imported"], _unit(128))
            assert len(ids) == 1
    finally:
        assert server.stop(10).wait(60)

    # 3. Back to the dlib default: its collection is intact, the BYO one is refused.
    server, port = _start(_settings(data, packs, DEFAULT_PACK))
    try:
        with FaceGateClient(f"127.0.0.1:{port}", timeout=120) as client:
            hit = client.identify(IdentifyRequest(collection="dlib-shop", image=grace_hopper_jpeg))
            assert (hit.decision, hit.uid) == (Decision.MATCH, "grace")
            with pytest.raises(errors.ModelMismatch, match="re-enrolment"):
                client.identify(IdentifyRequest(collection="byo-shop", image=_photo(PEOPLE[0], 2)))
            assert client.get_collection("byo-shop").user_count == len(PEOPLE) + 1
    finally:
        assert server.stop(10).wait(60)


def _unit(dim: int) -> np.ndarray:
    v = np.random.default_rng(3).standard_normal((1, dim)).astype(np.float32)
    return v / np.linalg.norm(v)
