"""The ``facegate`` command: ``serve`` runs the server; the other commands are clients of a
running server (``--target``, default 127.0.0.1:50051), human-readable by default and one
JSON document with ``--json``.

Exit status: 0 success (including "no match", which is an answer), 1 the server or the
connection reported an error (``error: REASON: message`` on stderr), 2 bad usage or an
unreadable input file.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from service.cli import collections
from service.cli.keys import add_client_options
from service.cli.remote import (
    EXIT_OK,
    EXIT_REMOTE,
    EXIT_USAGE,
    UsageError,
    connect,
    print_json,
    print_listing,
)
from service.config import load_settings
from service.domain import (
    Decision,
    EnrollRequest,
    FaceBox,
    IdentifyRequest,
    IdentifyResult,
    UserInfo,
    VerifyRequest,
)
from service.errors import FacegateError
from service.transport.client import DEFAULT_TARGET

# Subcommands other modules add (``register(subparsers)``), when they are installed.
PLUGIN_MODULES = (
    "service.cli.models",
    "service.cli.embed",
    "service.cli.keys",
    "service.cli.audit",
    "service.cli.crypto",
)

Command = Callable[[argparse.Namespace], int]


# ---------------------------------------------------------------- output helpers


def _box(box: FaceBox | None) -> str:
    if box is None:
        return "-"
    return f"({box.left:.0f},{box.top:.0f},{box.right:.0f},{box.bottom:.0f})"


def _read_image(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _user_line(user: UserInfo) -> str:
    meta = ",".join(f"{k}={v}" for k, v in sorted(user.metadata.items()))
    return f"{user.uid}  faces={user.face_count}  phone={'yes' if user.has_phone else 'no'}" + (
        f"  {meta}" if meta else ""
    )


# ---------------------------------------------------------------- commands


def _serve(args: argparse.Namespace) -> int:
    from service.transport.server import serve

    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    settings = load_settings(config_file=args.config, listen=args.listen, data_dir=args.data_dir)
    try:
        serve(settings)
    except OSError as exc:  # e.g. the port is taken
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_REMOTE
    return EXIT_OK


def _parse_metadata(pairs: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--meta expects KEY=VALUE, got {pair!r}")
        out[key] = value
    return out


def _enroll(args: argparse.Namespace) -> int:
    request = EnrollRequest(
        collection=args.collection,
        uid=args.uid,
        images=tuple(_read_image(p) for p in args.images),
        phone_number=args.phone,
        metadata=_parse_metadata(args.meta),
        allow_duplicate=args.allow_duplicate,
    )
    with connect(args) as client:
        result = client.enroll(request)
    if args.json:
        print_json(result)
        return EXIT_OK
    state = "new user" if result.created else "existing user"
    print(f"enrolled {result.uid} ({state}): {len(result.face_ids)} face(s)")
    for path, face_id, quality in zip(args.images, result.face_ids, result.qualities, strict=False):
        print(
            f"  {path}: face_id={face_id} box={_box(quality.box)}"
            f" eyes={quality.inter_eye_px:.0f}px score={quality.detection_score:.3f}"
        )
    return EXIT_OK


def _identify_text(result: IdentifyResult) -> list[str]:
    head = f"{result.decision.value}"
    if result.decision is Decision.MATCH:
        head += f" uid={result.uid}"
    head += f" score={result.score:.3f} threshold={result.threshold:.3f} face={_box(result.face)}"
    if result.metadata:  # the collection opted in (identify_returns_metadata)
        head += "  " + ",".join(f"{k}={v}" for k, v in sorted(result.metadata.items()))
    lines = [head]
    lines += [f"  {c.uid}  {c.score:.3f}" for c in result.candidates]
    if result.probe_token:
        lines.append(
            f"  retry with: --hint NNNN --probe-token {result.probe_token}"
            f" (valid {result.probe_token_ttl_s:.0f}s)"
        )
    return lines


def _identify(args: argparse.Namespace) -> int:
    if (args.image is None) == (args.probe_token is None):
        raise UsageError("identify needs exactly one of IMAGE or --probe-token")
    request = IdentifyRequest(
        collection=args.collection,
        image=None if args.image is None else _read_image(args.image),
        hint=args.hint,
        top_k=args.top_k,
        probe_token=args.probe_token,
    )
    with connect(args) as client:
        result = client.identify(request)
    if args.json:
        print_json(result)
    else:
        print("\n".join(_identify_text(result)))
    return EXIT_OK


def _verify(args: argparse.Namespace) -> int:
    request = VerifyRequest(collection=args.collection, uid=args.uid, image=_read_image(args.image))
    with connect(args) as client:
        result = client.verify(request)
    if args.json:
        print_json(result)
    else:
        verdict = "SAME PERSON" if result.match else "DIFFERENT PERSON"
        print(
            f"{verdict} uid={args.uid} score={result.score:.3f}"
            f" threshold={result.threshold:.3f} face={_box(result.face)}"
        )
    return EXIT_OK


def _delete(args: argparse.Namespace) -> int:
    with connect(args) as client:
        faces = client.delete_user(args.collection, args.uid)
    if args.json:
        print_json({"uid": args.uid, "faces_deleted": faces})
    else:
        print(f"deleted {args.uid} ({faces} face(s))")
    return EXIT_OK


def _users(args: argparse.Namespace) -> int:
    with connect(args) as client:
        if args.uid is not None:
            users = [client.get_user(args.collection, args.uid)]
        else:
            users = list(client.iter_users(args.collection, page_size=args.page_size))
    print_listing(args, "users", users, _user_line, f"no users in {args.collection}")
    return EXIT_OK


# ---------------------------------------------------------------- parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="facegate", description="Face recognition service for face-pay terminals."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the gRPC server (prepares the model pack)")
    serve.add_argument("--listen", help="host:port (default 127.0.0.1:50051)")
    serve.add_argument("--data-dir", type=Path, help="gallery, store and model packs")
    serve.add_argument("--config", type=Path, help="TOML settings file")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    serve.set_defaults(func=_serve)

    client_opts = argparse.ArgumentParser(add_help=False)
    client_opts.add_argument(
        "--target",
        default=os.environ.get("FACEGATE_TARGET", DEFAULT_TARGET),
        help=f"server address (default $FACEGATE_TARGET or {DEFAULT_TARGET})",
    )
    client_opts.add_argument("--timeout", type=float, default=30.0, help="seconds per call")
    client_opts.add_argument("--json", action="store_true", help="print one JSON document")
    add_client_options(client_opts)

    collections.register(sub, client_opts)

    enroll = sub.add_parser("enroll", parents=[client_opts], help="enroll face photos")
    enroll.add_argument("--collection", required=True)
    enroll.add_argument("--uid", required=True)
    enroll.add_argument("--phone", help="full phone number (stored hashed)")
    enroll.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE")
    enroll.add_argument("--allow-duplicate", action="store_true")
    enroll.add_argument("images", nargs="+", type=Path, metavar="IMG")
    enroll.set_defaults(func=_enroll)

    identify = sub.add_parser("identify", parents=[client_opts], help="who is this face?")
    identify.add_argument("--collection", required=True)
    identify.add_argument("image", nargs="?", type=Path, metavar="IMG")
    identify.add_argument("--hint", help="last 4 digits of the phone number")
    identify.add_argument("--top-k", type=_positive_int, default=5)
    identify.add_argument("--probe-token", help="from a NEED_HINT answer, instead of IMG")
    identify.set_defaults(func=_identify)

    verify = sub.add_parser("verify", parents=[client_opts], help="is this face UID?")
    verify.add_argument("--collection", required=True)
    verify.add_argument("--uid", required=True)
    verify.add_argument("image", type=Path, metavar="IMG")
    verify.set_defaults(func=_verify)

    delete_user = sub.add_parser("delete", parents=[client_opts], help="delete a user")
    delete_user.add_argument("--collection", required=True)
    delete_user.add_argument("--uid", required=True)
    delete_user.set_defaults(func=_delete)

    users = sub.add_parser("users", parents=[client_opts], help="list users (or one: --uid)")
    users.add_argument("--collection", required=True)
    users.add_argument("--uid")
    users.add_argument("--page-size", type=_positive_int, default=100)
    users.set_defaults(func=_users)

    for name in PLUGIN_MODULES:
        if importlib.util.find_spec(name) is not None:
            importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on bad usage, 0 on --help
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    func: Command = args.func
    try:
        return func(args)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except FacegateError as exc:
        print(f"error: {exc.reason}: {exc.message}", file=sys.stderr)
        return EXIT_REMOTE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
