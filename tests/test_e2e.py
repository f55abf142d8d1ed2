"""End to end through the real path: ``create_server`` with the real engine loader
(``service.app.build_service``), the default model pack, real photos, a real client.

Photos: matplotlib's grace_hopper.jpg and scikit-image's astronaut (always available);
/work/shared/faces adds other people and a real two-person photo when present (those parts
skip with a reason otherwise).
"""

from __future__ import annotations

import io
import os
import signal
import socket
import struct
import subprocess
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import grpc
import numpy as np
import pytest
from conftest import ROOT, SHARED_FACES, astronaut_rgb, jpeg_bytes
from PIL import Image

from service import errors
from service.config import Settings, load_settings
from service.domain import (
    CollectionKind,
    CollectionSpec,
    Decision,
    EnrollRequest,
    IdentifyRequest,
    QualityLimits,
    VerifyRequest,
)
from service.transport.client import FaceGateClient
from service.transport.server import FaceGateServer, create_server
from service.transport.status import RemoteError

pytest.importorskip(
    "service.app", reason="service.app.build_service (the real engine wiring) is not there yet"
)

READY_TIMEOUT_S = 300.0


def _settings(data_dir: Path, packs_dir: Path) -> Settings:
    # environ={} keeps the developer's FACEGATE_* variables out of the test.
    return load_settings(
        environ={},
        data_dir=data_dir,
        model_dir=packs_dir,
        listen="127.0.0.1:0",
        metrics={"listen": "127.0.0.1:0"},  # the real path, metrics on a free port
    )


def _start(settings: Settings) -> tuple[FaceGateServer, int]:
    server, port = create_server(settings, port=0)  # the real loader: build_service
    server.start()
    if not server.wait_ready(READY_TIMEOUT_S):
        server.stop(None).wait(30)
        pytest.fail(f"the real engine did not load: {server.load_error!r}")
    return server, port


# ---------------------------------------------------------------- photos


def _reencoded_crop(jpeg: bytes, scale: float = 0.8, quality: int = 85) -> bytes:
    """Another photo of the same face: cropped, rescaled, re-encoded."""
    im = Image.open(io.BytesIO(jpeg)).convert("RGB")
    w, h = im.size
    im = im.crop((w // 20, h // 20, w - w // 20, h - h // 40))
    im = im.resize((int(im.width * scale), int(im.height * scale)), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _side_by_side(jpeg: bytes) -> bytes:
    """Two faces of the same size in one photo (the payment-safety refusal case)."""
    im = Image.open(io.BytesIO(jpeg)).convert("RGB")
    both = Image.new("RGB", (im.width * 2, im.height))
    both.paste(im, (0, 0))
    both.paste(im.transpose(Image.Transpose.FLIP_LEFT_RIGHT), (im.width, 0))
    buf = io.BytesIO()
    both.save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def _png_header_bomb(width: int, height: int) -> bytes:
    """A tiny PNG that declares a huge 1-bit image (rows of zeros compress to almost nothing)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    row = b"\x00" * (1 + (width + 7) // 8)
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(min(height, 64))) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def _no_face_photo() -> bytes:
    from skimage import data

    coffee = cast(Any, data).coffee()  # a cup of coffee: a real photo with no face
    return jpeg_bytes(np.ascontiguousarray(coffee[:, :, :3]))


def _lfw_people(n_people: int) -> list[list[bytes]]:
    """``n_people`` LFW identities with at least two photos each (needs /work/shared)."""
    root = SHARED_FACES / "lfw-devtrain" / "images"
    if not root.is_dir():
        pytest.skip(f"needs the shared LFW photos at {root} (absent on this machine)")
    people: list[list[bytes]] = []
    for person in sorted(root.iterdir()):
        photos = sorted(person.glob("*.jpg"))
        if len(photos) >= 2:
            people.append([p.read_bytes() for p in photos[:2]])
        if len(people) == n_people:
            break
    return people


# ---------------------------------------------------------------- the main flow


def test_enroll_identify_verify_delete_and_restart(
    tmp_path: Path, packs_dir: Path, grace_hopper_jpeg: bytes, astronaut_jpeg: bytes
) -> None:
    settings = _settings(tmp_path / "data", packs_dir)
    server, port = _start(settings)
    try:
        with FaceGateClient(f"127.0.0.1:{port}", timeout=120) as client:
            client.wait_ready(10)
            info = client.create_collection(CollectionSpec(name="shop", kind=CollectionKind.PAY))
            assert info.name == "shop" and info.kind is CollectionKind.PAY
            assert info.model_id and 0 < info.threshold <= 1

            grace = client.enroll(
                EnrollRequest(
                    collection="shop",
                    uid="grace",
                    images=(grace_hopper_jpeg,),
                    phone_number="+15550001234",
                )
            )
            assert grace.created and len(grace.face_ids) == 1
            q = grace.qualities[0]
            assert q.box.right > q.box.left and q.box.bottom > q.box.top and q.inter_eye_px > 20

            # A stranger while only Grace is enrolled.
            stranger = client.identify(IdentifyRequest(collection="shop", image=astronaut_jpeg))
            assert stranger.decision is Decision.NO_MATCH and stranger.uid is None

            client.enroll(EnrollRequest(collection="shop", uid="eileen", images=(astronaut_jpeg,)))
            for uid, photo in (("grace", grace_hopper_jpeg), ("eileen", astronaut_jpeg)):
                other_photo = _reencoded_crop(photo)
                hit = client.identify(IdentifyRequest(collection="shop", image=other_photo))
                assert (hit.decision, hit.uid) == (Decision.MATCH, uid), hit
                assert hit.score >= hit.threshold and hit.face is not None
                assert hit.candidates[0].uid == uid

            same = client.verify(
                VerifyRequest(
                    collection="shop", uid="grace", image=_reencoded_crop(grace_hopper_jpeg)
                )
            )
            assert same.match and same.score >= same.threshold
            other = client.verify(
                VerifyRequest(collection="shop", uid="grace", image=astronaut_jpeg)
            )
            assert not other.match and other.score < other.threshold

            user = client.get_user("shop", "grace")
            assert (user.face_count, user.has_phone) == (1, True)
            assert [u.uid for u in client.iter_users("shop", page_size=1)] == sorted(
                ["eileen", "grace"]
            )

            assert client.delete_user("shop", "eileen") == 1
            gone = client.identify(IdentifyRequest(collection="shop", image=astronaut_jpeg))
            assert gone.decision is Decision.NO_MATCH
            assert all(c.uid != "eileen" for c in gone.candidates)
    finally:
        assert server.stop(10).wait(60)

    # Same data dir, new server: the gallery and the deletion both survived.
    server, port = _start(settings)
    try:
        with FaceGateClient(f"127.0.0.1:{port}", timeout=120) as client:
            assert [c.name for c in client.list_collections()] == ["shop"]
            hit = client.identify(IdentifyRequest(collection="shop", image=grace_hopper_jpeg))
            assert (hit.decision, hit.uid) == (Decision.MATCH, "grace")
            gone = client.identify(IdentifyRequest(collection="shop", image=astronaut_jpeg))
            assert gone.decision is Decision.NO_MATCH
            with pytest.raises(errors.UnknownUser):
                client.get_user("shop", "eileen")
    finally:
        assert server.stop(10).wait(60)


# ---------------------------------------------------------------- bad inputs, one server


@pytest.fixture(scope="module")
def live(
    tmp_path_factory: pytest.TempPathFactory, packs_dir: Path, grace_hopper_jpeg: bytes
) -> Iterator[FaceGateClient]:
    settings = _settings(tmp_path_factory.mktemp("e2e-bad"), packs_dir)
    server, port = _start(settings)
    try:
        with FaceGateClient(f"127.0.0.1:{port}", timeout=120) as client:
            client.create_collection(CollectionSpec(name="shop"))
            client.enroll(
                EnrollRequest(
                    collection="shop",
                    uid="grace",
                    images=(grace_hopper_jpeg,),
                    phone_number="+15550001234",
                )
            )
            yield client
    finally:
        server.stop(10).wait(60)


def _refused(client: FaceGateClient, image: bytes) -> errors.FacegateError:
    with pytest.raises(errors.FacegateError) as info:
        client.identify(IdentifyRequest(collection="shop", image=image))
    return info.value


@pytest.mark.parametrize(
    ("name", "make", "expected"),
    [
        ("empty", lambda g: b"", errors.InvalidArgument),  # no image at all: a bad argument
        ("random bytes", lambda g: np.random.default_rng(0).bytes(5000), errors.ImageUndecodable),
        ("truncated jpeg", lambda g: g[: len(g) // 2], errors.ImageUndecodable),
        ("jpeg header only", lambda g: g[:200], errors.ImageUndecodable),
        ("1x1", lambda g: _png(np.zeros((1, 1, 3), np.uint8)), errors.InvalidArgument),
        ("bomb past max_side", lambda g: _png_header_bomb(20_000, 20_000), errors.ImageTooLarge),
        ("bomb past max_pixels", lambda g: _png_header_bomb(10_000, 10_000), errors.ImageTooLarge),
        ("too many bytes", lambda g: g + b"\x00" * (11 * 1024 * 1024), errors.ImageTooLarge),
        ("no face", lambda g: _no_face_photo(), errors.NoFace),
        ("two similar faces", _side_by_side, errors.MultipleFaces),
    ],
)
def test_bad_images_are_refused_with_the_right_reason(
    live: FaceGateClient,
    grace_hopper_jpeg: bytes,
    name: str,
    make: object,
    expected: type[errors.FacegateError],
) -> None:
    assert callable(make)
    err = _refused(live, make(grace_hopper_jpeg))
    assert type(err) is expected, f"{name}: {type(err).__name__}: {err}"
    # The same refusal on enrolment, where a bad photo must never become a template.
    with pytest.raises(expected):
        live.enroll(EnrollRequest(collection="shop", uid="x", images=(make(grace_hopper_jpeg),)))


def test_bomb_is_refused_from_its_header(live: FaceGateClient) -> None:
    err = _refused(live, _png_header_bomb(10_000, 10_000))
    assert err.metadata.get("limit_name") == "max_pixels"
    assert err.metadata.get("width") == "10000"


def test_real_two_person_photo_is_refused(live: FaceGateClient) -> None:
    couple = SHARED_FACES / "deepface" / "couple.jpg"
    if not couple.is_file():
        pytest.skip(f"needs {couple} (absent on this machine)")
    err = _refused(live, couple.read_bytes())
    assert isinstance(err, errors.MultipleFaces)


def test_message_over_the_transport_limit_is_resource_exhausted(live: FaceGateClient) -> None:
    with pytest.raises(RemoteError) as info:
        live.identify(IdentifyRequest(collection="shop", image=b"\xff" * (17 * 1024 * 1024)))
    assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_unknown_collection_and_user(live: FaceGateClient, grace_hopper_jpeg: bytes) -> None:
    with pytest.raises(errors.UnknownCollection):
        live.identify(IdentifyRequest(collection="nope", image=grace_hopper_jpeg))
    with pytest.raises(errors.UnknownCollection):
        live.enroll(EnrollRequest(collection="nope", uid="u", images=(grace_hopper_jpeg,)))
    with pytest.raises(errors.UnknownUser):
        live.verify(VerifyRequest(collection="shop", uid="ghost", image=grace_hopper_jpeg))
    with pytest.raises(errors.UnknownUser):
        live.delete_user("shop", "ghost")
    with pytest.raises(errors.UnknownUser):
        live.get_user("shop", "ghost")
    with pytest.raises(errors.CollectionExists):
        live.create_collection(CollectionSpec(name="shop"))


def test_missing_probe_is_invalid_argument(live: FaceGateClient) -> None:
    with pytest.raises(errors.InvalidArgument) as info:
        live.identify(IdentifyRequest(collection="shop"))
    assert info.value.metadata["field"] == "probe"


def test_duplicate_face_under_another_uid(live: FaceGateClient, grace_hopper_jpeg: bytes) -> None:
    with pytest.raises(errors.DuplicateFace):
        live.enroll(EnrollRequest(collection="shop", uid="impostor", images=(grace_hopper_jpeg,)))
    with pytest.raises(errors.UnknownUser):
        live.get_user("shop", "impostor")


def test_stale_probe_token(live: FaceGateClient) -> None:
    with pytest.raises(errors.ProbeTokenInvalid):
        live.identify(IdentifyRequest(collection="shop", probe_token="not-a-token", hint="1234"))


def test_need_hint_then_retry_with_hint_and_probe_token(
    live: FaceGateClient, grace_hopper_jpeg: bytes
) -> None:
    live.create_collection(CollectionSpec(name="big", hint_required_above=0 + 1))
    for uid, photo, phone in (
        ("grace", grace_hopper_jpeg, "+15550001234"),
        ("eileen", jpeg_bytes(astronaut_rgb()), "+15550009876"),
    ):
        live.enroll(EnrollRequest(collection="big", uid=uid, images=(photo,), phone_number=phone))
    first = live.identify(IdentifyRequest(collection="big", image=grace_hopper_jpeg))
    assert first.decision is Decision.NEED_HINT and first.uid is None
    assert first.probe_token and first.probe_token_ttl_s > 0
    retry = live.identify(
        IdentifyRequest(collection="big", probe_token=first.probe_token, hint="1234")
    )
    assert (retry.decision, retry.uid) == (Decision.MATCH, "grace")
    wrong_hint = live.identify(
        IdentifyRequest(collection="big", image=grace_hopper_jpeg, hint="9876")
    )
    assert wrong_hint.decision is not Decision.MATCH or wrong_hint.uid != "grace"


def test_imported_gallery_with_a_real_person_survives_a_restart(
    tmp_path: Path, packs_dir: Path, grace_hopper_jpeg: bytes
) -> None:
    """1,000 synthetic users imported as templates next to a real enrolled person: she is
    still found, imported users can be deleted, existing uids and other models are refused,
    and a restart keeps the imported users (and the deletion)."""
    settings = _settings(tmp_path / "data", packs_dir)
    vectors = np.random.default_rng(5).standard_normal((1000, 128)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    uids = [f"synthetic-{i}" for i in range(1000)]
    server, port = _start(settings)
    try:
        with FaceGateClient(f"127.0.0.1:{port}", timeout=120) as live:
            live.create_collection(CollectionSpec(name="imported"))
            live.enroll(
                EnrollRequest(collection="imported", uid="grace", images=(grace_hopper_jpeg,))
            )
            info = live.get_collection("imported")
            assert info.embedding_dim == 128
            phones: list[str | None] = [None] * 1000
            phones[9] = "+15550009999"
            ids = live.import_templates(
                "imported",
                info.model_id,
                uids,
                vectors,
                phone_numbers=phones,
                metadata=[{"source": "migration"}] * 1000,
            )
            assert len(ids) == len(set(ids)) == 1000
            after = live.get_collection("imported")
            assert (after.user_count, after.face_count) == (1001, 1001)
            imported = live.get_user("imported", "synthetic-9")
            assert imported.has_phone and imported.metadata == {"source": "migration"}
            res = live.identify(
                IdentifyRequest(collection="imported", image=_reencoded_crop(grace_hopper_jpeg))
            )
            assert (res.decision, res.uid) == (Decision.MATCH, "grace")
            assert live.delete_user("imported", "synthetic-3") == 1
            with pytest.raises(errors.UserExists) as exists:
                live.import_templates("imported", info.model_id, ["new", "grace"], vectors[:2])
            assert exists.value.metadata["uid"] == "grace"
            with pytest.raises(errors.ModelMismatch):
                live.import_templates("imported", "another-model", ["x"], vectors[:1])
            with pytest.raises(errors.InvalidArgument):
                live.import_templates("imported", info.model_id, ["x"], vectors[:1, :64] * 2)
            assert live.get_collection("imported").user_count == 1000
    finally:
        assert server.stop(10).wait(60)

    server, port = _start(settings)
    try:
        with FaceGateClient(f"127.0.0.1:{port}", timeout=120) as live:
            assert live.get_collection("imported").user_count == 1000
            assert live.get_user("imported", "synthetic-999").face_count == 1
            with pytest.raises(errors.UnknownUser):
                live.get_user("imported", "synthetic-3")
            res = live.identify(IdentifyRequest(collection="imported", image=grace_hopper_jpeg))
            assert (res.decision, res.uid) == (Decision.MATCH, "grace")
            assert live.delete_user("imported", "synthetic-0") == 1
            assert live.get_collection("imported").user_count == 999
    finally:
        assert server.stop(10).wait(60)


def test_other_people_from_lfw(live: FaceGateClient) -> None:
    people = _lfw_people(4)
    # LFW's 250×250 press crops hold faces ~24 px between the eyes, below the strict
    # enrolment preset's 40 px (the recogniser still matches them): this collection accepts
    # identify-grade photos for enrolment, through its own quality limits.
    live.create_collection(
        CollectionSpec(
            name="lfw",
            enroll_quality=QualityLimits(min_inter_eye_px=18.0, min_sharpness=10.0),
        )
    )
    enrolled = people[:3]
    for i, (first, _) in enumerate(enrolled):
        live.enroll(EnrollRequest(collection="lfw", uid=f"p{i}", images=(first,)))
    for i, (_, second) in enumerate(enrolled):
        hit = live.identify(IdentifyRequest(collection="lfw", image=second))
        assert (hit.decision, hit.uid) == (Decision.MATCH, f"p{i}"), hit
    stranger = live.identify(IdentifyRequest(collection="lfw", image=people[3][0]))
    assert stranger.decision is Decision.NO_MATCH


# ---------------------------------------------------------------- the command


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_facegate_serve_prepares_the_pack_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACEGATE_")}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "service.cli.main",
            "serve",
            "--listen",
            f"127.0.0.1:{port}",
            "--data-dir",
            str(tmp_path / "data"),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        with FaceGateClient(f"127.0.0.1:{port}", timeout=30) as client:
            client.wait_ready(READY_TIMEOUT_S)
            client.create_collection(CollectionSpec(name="c"))
            assert [c.name for c in client.list_collections()] == ["c"]
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, output.decode(errors="replace")
    assert (tmp_path / "data").is_dir()
