"""The ``facegate`` CLI as a client of a real server (fake engine), run in-process."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from grpc_fakes import running_server

from service.cli.main import EXIT_OK, EXIT_REMOTE, EXIT_USAGE, main


@pytest.fixture
def target() -> Iterator[str]:
    with running_server() as (_, port, _fake):
        yield f"127.0.0.1:{port}"


@pytest.fixture
def photos(tmp_path: Path) -> dict[str, Path]:
    # The fake engine treats file contents as the face; "noface" has none.
    out = {}
    for name in ("alice", "alice2", "bob", "carol", "noface"):
        path = tmp_path / f"{name}.jpg"
        path.write_bytes(name.encode())
        out[name] = path
    return out


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_full_session_human_readable(
    target: str, photos: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    t = ("--target", target)
    code, out, _ = run(capsys, "collections", "create", "shop", "--kind", "pay", *t)
    assert code == EXIT_OK and out.startswith("created shop  kind=PAY")
    code, out, _ = run(
        capsys, "enroll", "--collection", "shop", "--uid", "alice", "--phone", "+15551234567",
        "--meta", "tier=gold", str(photos["alice"]), str(photos["alice2"]), *t,
    )  # fmt: skip
    assert code == EXIT_OK
    assert out.splitlines()[0] == "enrolled alice (new user): 2 face(s)"
    assert "face_id=1" in out and "face_id=2" in out
    assert (
        run(capsys, "enroll", "--collection", "shop", "--uid", "bob", str(photos["bob"]), *t)[0]
        == EXIT_OK
    )

    code, out, _ = run(capsys, "identify", "--collection", "shop", str(photos["alice"]), *t)
    assert code == EXIT_OK and out.startswith("MATCH uid=alice score=0.950")
    code, out, _ = run(capsys, "identify", "--collection", "shop", str(photos["carol"]), *t)
    assert code == EXIT_OK and out.startswith("NO_MATCH score=0.000")

    code, out, _ = run(
        capsys, "verify", "--collection", "shop", "--uid", "bob", str(photos["bob"]), *t
    )
    assert code == EXIT_OK and out.startswith("SAME PERSON uid=bob")
    code, out, _ = run(
        capsys, "verify", "--collection", "shop", "--uid", "bob", str(photos["alice"]), *t
    )
    assert code == EXIT_OK and out.startswith("DIFFERENT PERSON uid=bob")

    code, out, _ = run(capsys, "users", "--collection", "shop", "--page-size", "1", *t)
    assert code == EXIT_OK
    assert out.splitlines() == [
        "alice  faces=2  phone=yes  tier=gold",
        "bob  faces=1  phone=no",
    ]
    code, out, _ = run(capsys, "collections", "list", *t)
    assert out.startswith("shop  kind=PAY  users=2  faces=3")

    code, out, _ = run(capsys, "delete", "--collection", "shop", "--uid", "alice", *t)
    assert (code, out) == (EXIT_OK, "deleted alice (2 face(s))\n")
    code, out, _ = run(capsys, "identify", "--collection", "shop", str(photos["alice"]), *t)
    assert out.startswith("NO_MATCH")
    code, out, _ = run(capsys, "collections", "delete", "shop", *t)
    assert (code, out) == (EXIT_OK, "deleted collection shop\n")


def test_json_output_is_one_parseable_document(
    target: str, photos: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    t = ("--target", target, "--json")
    code, out, _ = run(capsys, "collections", "create", "shop", "--threshold", "0.7", *t)
    info = json.loads(out)
    assert (code, info["name"], info["kind"], info["threshold"]) == (EXIT_OK, "shop", "MEMBER", 0.7)
    out = run(capsys, "enroll", "--collection", "shop", "--uid", "bob", str(photos["bob"]), *t)[1]
    enrolled = json.loads(out)
    assert enrolled["uid"] == "bob" and enrolled["created"] is True
    assert enrolled["qualities"][0]["box"]["score"] == pytest.approx(0.99)
    result = json.loads(run(capsys, "identify", "--collection", "shop", str(photos["bob"]), *t)[1])
    assert result["decision"] == "MATCH" and result["uid"] == "bob"
    assert result["candidates"] == [{"uid": "bob", "score": 0.95}]
    result = json.loads(
        run(capsys, "identify", "--collection", "shop", str(photos["carol"]), *t)[1]
    )
    assert result["decision"] == "NO_MATCH" and result["uid"] is None
    users = json.loads(run(capsys, "users", "--collection", "shop", *t)[1])
    assert [u["uid"] for u in users["users"]] == ["bob"]
    one = json.loads(run(capsys, "users", "--collection", "shop", "--uid", "bob", *t)[1])
    assert one["users"][0]["face_count"] == 1
    listed = json.loads(run(capsys, "collections", "list", *t)[1])
    assert [c["name"] for c in listed["collections"]] == ["shop"]
    deleted = json.loads(run(capsys, "delete", "--collection", "shop", "--uid", "bob", *t)[1])
    assert deleted == {"uid": "bob", "faces_deleted": 1}


def test_remote_errors_exit_1_with_the_reason(
    target: str, photos: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    t = ("--target", target)
    code, out, err = run(capsys, "identify", "--collection", "nope", str(photos["alice"]), *t)
    assert (code, out) == (EXIT_REMOTE, "")
    assert err.startswith("error: UNKNOWN_COLLECTION: ")
    run(capsys, "collections", "create", "shop", *t)
    code, _, err = run(capsys, "collections", "create", "shop", *t)
    assert code == EXIT_REMOTE and err.startswith("error: COLLECTION_EXISTS: ")
    code, _, err = run(
        capsys, "enroll", "--collection", "shop", "--uid", "u", str(photos["noface"]), *t
    )
    assert code == EXIT_REMOTE and err.startswith("error: NO_FACE: ")
    code, _, err = run(capsys, "delete", "--collection", "shop", "--uid", "ghost", *t)
    assert code == EXIT_REMOTE and err.startswith("error: UNKNOWN_USER: ")
    assert len(err.splitlines()) == 1


def test_no_server_is_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code, _, err = run(capsys, "collections", "list", "--target", f"127.0.0.1:{port}")
    assert code == EXIT_REMOTE and err.startswith("error: UNAVAILABLE: ")


def test_usage_errors_exit_2(
    target: str, photos: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, "identify", str(photos["alice"]))[0] == EXIT_USAGE  # no --collection
    assert run(capsys, "bogus-command")[0] == EXIT_USAGE
    assert run(capsys, "users", "--collection", "c", "--page-size", "0")[0] == EXIT_USAGE
    code, _, err = run(
        capsys, "identify", "--collection", "c", str(tmp_path / "missing.jpg"), "--target", target
    )
    assert code == EXIT_USAGE and err.startswith("error: cannot read ")
    code, _, err = run(capsys, "identify", "--collection", "c", "--target", target)
    assert code == EXIT_USAGE and "exactly one of IMAGE or --probe-token" in err
    code, _, err = run(
        capsys, "enroll", "--collection", "c", "--uid", "u", "--meta", "novalue",
        str(photos["alice"]), "--target", target,
    )  # fmt: skip
    assert code == EXIT_USAGE and "KEY=VALUE" in err


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--help")
    assert code == EXIT_OK
    for command in ("serve", "collections", "enroll", "identify", "verify", "delete", "users"):
        assert command in out
    assert "embed" in out  # registered by service.cli.embed


def test_probe_token_retry(target: str, capsys: pytest.CaptureFixture[str]) -> None:
    fake_target = ("--target", target)
    run(capsys, "collections", "create", "shop", *fake_target)
    code, _, err = run(
        capsys, "identify", "--collection", "shop", "--probe-token", "expired", *fake_target
    )
    assert code == EXIT_REMOTE and err.startswith("error: PROBE_TOKEN_INVALID: ")
