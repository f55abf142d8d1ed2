"""The ``facegate`` command: ``serve`` runs the server; the other commands are clients of a
running server (``--target``, default 127.0.0.1:50051), human-readable by default and one
JSON document with ``--json``.

Exit status: 0 success (including "no match", which is an answer), 1 the server or the
connection reported an error (``error: REASON: message`` on stderr), 2 bad usage or an
unreadable input file.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import importlib
import importlib.util
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from service.cli.keys import add_client_options, connection_options
from service.config import load_settings
from service.domain import (
    CollectionInfo,
    CollectionKind,
    CollectionSpec,
    Decision,
    EnrollRequest,
    FaceBox,
    IdentifyRequest,
    IdentifyResult,
    UserInfo,
    VerifyRequest,
)
from service.errors import FacegateError, InvalidArgument
from service.transport.client import DEFAULT_TARGET, FaceGateClient

EXIT_OK, EXIT_REMOTE, EXIT_USAGE = 0, 1, 2
# Subcommands other modules add (``register(subparsers)``), when they are installed.
PLUGIN_MODULES = (
    "service.cli.models",
    "service.cli.embed",
    "service.cli.keys",
    "service.cli.audit",
    "service.cli.crypto",
)

Command = Callable[[argparse.Namespace], int]


class UsageError(Exception):
    """Bad invocation found after parsing (e.g. an image file that cannot be read)."""


# ---------------------------------------------------------------- output helpers


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, bytes):
        return None  # never echo image bytes
    if hasattr(value, "items"):  # other mappings (metadata)
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


def _print_json(value: Any) -> None:
    print(json.dumps(_jsonable(value), sort_keys=True))


def _box(box: FaceBox | None) -> str:
    if box is None:
        return "-"
    return f"({box.left:.0f},{box.top:.0f},{box.right:.0f},{box.bottom:.0f})"


def _read_image(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _collection_line(info: CollectionInfo) -> str:
    return (
        f"{info.name}  kind={info.kind.value}  users={info.user_count}  faces={info.face_count}"
        f"  threshold={info.threshold:.3f}  margin={info.margin:.3f}"
        f"  hint_above={info.hint_required_above or '-'}  model={info.model_id}"
    )


def _user_line(user: UserInfo) -> str:
    meta = ",".join(f"{k}={v}" for k, v in sorted(user.metadata.items()))
    return f"{user.uid}  faces={user.face_count}  phone={'yes' if user.has_phone else 'no'}" + (
        f"  {meta}" if meta else ""
    )


def _client(args: argparse.Namespace) -> FaceGateClient:
    try:
        security = connection_options(args)  # API key and TLS flags
    except InvalidArgument as exc:
        raise UsageError(exc.message) from exc
    return FaceGateClient(args.target, timeout=args.timeout, **security)


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


def _collections_create(args: argparse.Namespace) -> int:
    spec = CollectionSpec(
        name=args.name,
        kind=CollectionKind(args.kind.upper()),
        threshold=args.threshold,
        margin=args.margin,
        hint_required_above=args.hint_required_above,
        revocable=args.revocable,
    )
    with _client(args) as client:
        info = client.create_collection(spec)
    if args.json:
        _print_json(info)
    else:
        print(f"created {_collection_line(info)}")
    return EXIT_OK


def _collections_delete(args: argparse.Namespace) -> int:
    with _client(args) as client:
        client.delete_collection(args.name)
    if args.json:
        _print_json({"deleted": args.name})
    else:
        print(f"deleted collection {args.name}")
    return EXIT_OK


def _collections_list(args: argparse.Namespace) -> int:
    with _client(args) as client:
        infos = client.list_collections()
    if args.json:
        _print_json({"collections": infos})
    else:
        for info in infos:
            print(_collection_line(info))
        if not infos:
            print("no collections")
    return EXIT_OK


def _collections_get(args: argparse.Namespace) -> int:
    with _client(args) as client:
        info = client.get_collection(args.name)
    if args.json:
        _print_json(info)
    else:
        print(_collection_line(info))
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
    with _client(args) as client:
        result = client.enroll(request)
    if args.json:
        _print_json(result)
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
    with _client(args) as client:
        result = client.identify(request)
    if args.json:
        _print_json(result)
    else:
        print("\n".join(_identify_text(result)))
    return EXIT_OK


def _verify(args: argparse.Namespace) -> int:
    request = VerifyRequest(collection=args.collection, uid=args.uid, image=_read_image(args.image))
    with _client(args) as client:
        result = client.verify(request)
    if args.json:
        _print_json(result)
    else:
        verdict = "SAME PERSON" if result.match else "DIFFERENT PERSON"
        print(
            f"{verdict} uid={args.uid} score={result.score:.3f}"
            f" threshold={result.threshold:.3f} face={_box(result.face)}"
        )
    return EXIT_OK


def _delete(args: argparse.Namespace) -> int:
    with _client(args) as client:
        faces = client.delete_user(args.collection, args.uid)
    if args.json:
        _print_json({"uid": args.uid, "faces_deleted": faces})
    else:
        print(f"deleted {args.uid} ({faces} face(s))")
    return EXIT_OK


def _users(args: argparse.Namespace) -> int:
    with _client(args) as client:
        if args.uid is not None:
            users = [client.get_user(args.collection, args.uid)]
        else:
            users = list(client.iter_users(args.collection, page_size=args.page_size))
    if args.json:
        _print_json({"users": users})
    else:
        for user in users:
            print(_user_line(user))
        if not users:
            print(f"no users in {args.collection}")
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

    coll = sub.add_parser("collections", help="create, delete, list collections")
    coll_sub = coll.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = coll_sub.add_parser("create", parents=[client_opts], help="create a collection")
    create.add_argument("name")
    create.add_argument("--kind", choices=["pay", "member"], default="member")
    create.add_argument("--threshold", type=float, help="default: the model pack's")
    create.add_argument("--margin", type=float, help="default: the model pack's")
    create.add_argument(
        "--hint-required-above", type=int, help="users above which Identify needs a hint"
    )
    create.add_argument(
        "--revocable",
        action="store_true",
        help="store templates under a secret per-collection transform that can be re-issued",
    )
    create.set_defaults(func=_collections_create)
    delete = coll_sub.add_parser("delete", parents=[client_opts], help="delete a collection")
    delete.add_argument("name")
    delete.set_defaults(func=_collections_delete)
    coll_sub.add_parser("list", parents=[client_opts], help="list collections").set_defaults(
        func=_collections_list
    )
    get = coll_sub.add_parser("get", parents=[client_opts], help="show one collection")
    get.add_argument("name")
    get.set_defaults(func=_collections_get)

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
