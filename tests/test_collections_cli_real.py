"""``facegate collections create|update`` and Identify's opt-in metadata through the real
path: the CLI in-process, a real gRPC server on a free port, the real engine wiring
(``service.app.build_served_service``: SQLite store, FAISS, audit) over the FakeAnalyzer."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fakes import FakeAnalyzer, face_png
from grpc_fakes import fake_settings

from service.app import build_served_service
from service.cli.main import EXIT_OK, EXIT_REMOTE, EXIT_USAGE, main
from service.domain import EnrollRequest
from service.transport.client import FaceGateClient
from service.transport.server import create_server

ALICE, STRANGER = 1, 9
PHONE = "+15551234567"


@pytest.fixture
def target(tmp_path: Path) -> Iterator[str]:
    settings = fake_settings(data_dir=tmp_path / "data", batch_window_ms=1.0)
    server, port = create_server(
        settings, loader=lambda: build_served_service(settings, analyzer=FakeAnalyzer()), port=0
    )
    server.start()
    try:
        assert server.wait_ready(60), server.load_error
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(5).wait(30)


@pytest.fixture
def photos(tmp_path: Path) -> dict[str, Path]:
    out = {}
    for name, png in (
        ("alice", face_png(ALICE)),
        ("alice2", face_png(ALICE, 2)),
        ("stranger", face_png(STRANGER)),
    ):
        path = tmp_path / f"{name}.png"
        path.write_bytes(png)
        out[name] = path
    return out


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _get(capsys: pytest.CaptureFixture[str], target: str, name: str) -> dict[str, object]:
    code, out, err = run(capsys, "collections", "get", name, "--target", target, "--json")
    assert code == EXIT_OK, err
    info: dict[str, object] = json.loads(out)
    return info


def _own(limits: object) -> dict[str, object]:
    """The limits a collection sets itself (the JSON lists every name, None = not set)."""
    assert isinstance(limits, dict)
    return {k: v for k, v in limits.items() if v is not None}


def _identify(capsys: pytest.CaptureFixture[str], target: str, photo: Path) -> dict[str, object]:
    code, out, err = run(
        capsys, "identify", "--collection", "shop", str(photo), "--target", target, "--json"
    )
    assert code == EXIT_OK, err
    result: dict[str, object] = json.loads(out)
    return result


def test_create_with_limits_liveness_and_metadata_then_update_each(
    target: str, photos: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    t = ("--target", target)
    code, out, err = run(
        capsys, "collections", "create", "shop", "--kind", "pay", "--threshold", "0.5",
        "--enroll-quality", "min_sharpness=1", "--identify-quality", "max_yaw_deg=20",
        "--liveness", "off", "--identify-returns-metadata", *t,
    )  # fmt: skip
    assert code == EXIT_OK, err
    lines = out.splitlines()
    assert lines[0].startswith("created shop  kind=PAY") and "threshold=0.500" in lines[0]
    assert "  enroll quality (own): min_sharpness=1" in lines
    assert "  identify quality (own): max_yaw_deg=20" in lines
    assert "  liveness: off (not checked on this server)" in lines
    assert "  identify returns metadata: yes" in lines

    with FaceGateClient(target) as client:
        client.enroll(
            EnrollRequest(
                "shop", "alice", [face_png(ALICE)], phone_number=PHONE, metadata={"tier": "gold"}
            )
        )
    greeted = _identify(capsys, target, photos["alice2"])
    assert greeted["decision"] == "MATCH" and greeted["metadata"] == {"tier": "gold"}
    assert PHONE not in json.dumps(greeted) and "phone" not in json.dumps(greeted["metadata"])
    code, out, _ = run(capsys, "identify", "--collection", "shop", str(photos["alice2"]), *t)
    assert out.startswith("MATCH uid=alice") and "tier=gold" in out.splitlines()[0]
    stranger = _identify(capsys, target, photos["stranger"])
    assert stranger["decision"] == "NO_MATCH" and stranger["metadata"] == {}

    # The threshold moves later decisions; the metadata goes with the MATCH.
    code, out, _ = run(capsys, "collections", "update", "shop", "--threshold", "0.999", *t)
    assert code == EXIT_OK and out.startswith("updated shop") and "threshold=0.999" in out
    refused = _identify(capsys, target, photos["alice2"])
    assert refused["decision"] == "NO_MATCH" and refused["metadata"] == {}
    run(
        capsys, "collections", "update", "shop", "--threshold", "0.5",
        "--no-identify-returns-metadata", *t,
    )  # fmt: skip
    quiet = _identify(capsys, target, photos["alice2"])
    assert quiet["decision"] == "MATCH" and quiet["metadata"] == {}

    # A limit given is merged onto the collection's own; NAME= removes one; --clear-* all.
    code, _, err = run(
        capsys, "collections", "update", "shop", "--identify-quality", "max_yaw_deg=",
        "--identify-quality", "max_roll_deg=9", "--liveness", "default", *t,
    )  # fmt: skip
    assert code == EXIT_OK, err
    info = _get(capsys, target, "shop")
    assert _own(info["identify_quality_overrides"]) == {"max_roll_deg": 9.0}
    assert _own(info["enroll_quality_overrides"]) == {"min_sharpness": 1.0}
    assert info["require_liveness"] is None
    run(capsys, "collections", "update", "shop", "--enroll-quality", "min_sharpness=1e9", *t)
    code, _, err = run(
        capsys, "enroll", "--collection", "shop", "--uid", "bob", str(photos["stranger"]), *t
    )
    assert code == EXIT_REMOTE and err.startswith("error: LOW_QUALITY: ")
    run(capsys, "collections", "update", "shop", "--clear-enroll-quality", *t)
    assert _own(_get(capsys, target, "shop")["enroll_quality_overrides"]) == {}
    code, _, err = run(
        capsys, "enroll", "--collection", "shop", "--uid", "bob", str(photos["stranger"]), *t
    )
    assert code == EXIT_OK, err

    code, _, _ = run(capsys, "collections", "update", "shop", "--liveness", "required", *t)
    assert code == EXIT_OK and _get(capsys, target, "shop")["require_liveness"] is True


def test_updates_are_checked_like_create_and_change_nothing_when_refused(
    target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    t = ("--target", target)
    code, _, err = run(
        capsys, "collections", "create", "bad", "--identify-quality", "min_brightness=200",
        "--identify-quality", "max_brightness=100", *t,
    )  # fmt: skip
    assert code == EXIT_REMOTE and err.startswith("error: INVALID_ARGUMENT: ")
    code, _, err = run(capsys, "collections", "get", "bad", *t)
    assert code == EXIT_REMOTE and err.startswith("error: UNKNOWN_COLLECTION: ")

    assert run(capsys, "collections", "create", "shop", "--threshold", "0.6", *t)[0] == EXIT_OK
    before = _get(capsys, target, "shop")
    refused = [
        ("--identify-quality", "min_brightness=200", "--identify-quality", "max_brightness=100"),
        ("--threshold", "1.5"),
        ("--margin", "-0.1"),
    ]
    for flags in refused:
        code, _, err = run(capsys, "collections", "update", "shop", *flags, *t)
        assert code == EXIT_REMOTE and err.startswith("error: INVALID_ARGUMENT: "), flags
    assert _get(capsys, target, "shop") == before

    usage = [
        (),  # nothing to change
        ("--enroll-quality", "min_bogus=1"),
        ("--enroll-quality", "min_sharpness=sharp"),
        ("--identify-quality", "max_yaw_deg=-5"),
        ("--hint-required-above", "-1"),
    ]
    for flags in usage:
        code, _, err = run(capsys, "collections", "update", "shop", *flags, *t)
        assert code == EXIT_USAGE and "error: " in err, flags
    code, _, err = run(
        capsys, "collections", "create", "x", "--enroll-quality", "min_sharpness=", *t
    )
    assert code == EXIT_USAGE and "collections update" in err
    code, _, err = run(capsys, "collections", "update", "nope", "--threshold", "0.5", *t)
    assert code == EXIT_REMOTE and err.startswith("error: UNKNOWN_COLLECTION: ")
    assert _get(capsys, target, "shop") == before
