"""``facegate collections create|update|get|list|delete``.

Quality limits are given as ``--enroll-quality NAME=VALUE`` / ``--identify-quality
NAME=VALUE`` (repeatable; the names of ``QualityLimits``, e.g. ``min_sharpness=60``).
``update`` changes only what it is told: a limit given replaces that one limit, ``NAME=``
removes it (the server's applies again), ``--clear-enroll-quality`` removes them all;
``--liveness default`` goes back to the server's rule for the kind. The server checks an
update exactly as it checks a create.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from service.cli.remote import (
    EXIT_OK,
    UsageError,
    collection_line,
    connect,
    print_json,
    print_listing,
)
from service.domain import CollectionInfo, CollectionKind, CollectionSpec, CollectionUpdate
from service.errors import InvalidArgument
from service.pipeline.quality import QualityLimits

LIMIT_NAMES = tuple(f.name for f in dataclasses.fields(QualityLimits))
_LIVENESS = {"required": True, "off": False, "default": None}


def register(sub: Any, client_opts: argparse.ArgumentParser) -> None:
    coll = sub.add_parser("collections", help="create, update, delete, list collections")
    coll_sub = coll.add_subparsers(dest="action", required=True, metavar="ACTION")

    create = coll_sub.add_parser("create", parents=[client_opts], help="create a collection")
    create.add_argument("name")
    create.add_argument("--kind", choices=["pay", "member"], default="member")
    _tunable_flags(create, default="the model pack's")
    create.add_argument(
        "--revocable",
        action="store_true",
        help="store templates under a secret per-collection transform that can be re-issued",
    )
    create.set_defaults(func=run_create)

    update = coll_sub.add_parser(
        "update", parents=[client_opts], help="change a collection's threshold, limits, liveness"
    )
    update.add_argument("name")
    _tunable_flags(update, default="unchanged")
    for phase in ("enroll", "identify"):
        update.add_argument(
            f"--clear-{phase}-quality",
            action="store_true",
            help=f"drop the collection's own {phase} limits (the server's apply)",
        )
    update.set_defaults(func=run_update)

    delete = coll_sub.add_parser("delete", parents=[client_opts], help="delete a collection")
    delete.add_argument("name")
    delete.set_defaults(func=run_delete)
    coll_sub.add_parser("list", parents=[client_opts], help="list collections").set_defaults(
        func=run_list
    )
    get = coll_sub.add_parser("get", parents=[client_opts], help="show one collection")
    get.add_argument("name")
    get.set_defaults(func=run_get)


def _tunable_flags(p: argparse.ArgumentParser, *, default: str) -> None:
    p.add_argument("--threshold", type=float, help=f"cosine threshold (default: {default})")
    p.add_argument("--margin", type=float, help=f"best-vs-second margin (default: {default})")
    p.add_argument(
        "--hint-required-above",
        type=_count,
        help=f"users above which Identify needs a hint, 0 = never (default: {default})",
    )
    for phase in ("enroll", "identify"):
        p.add_argument(
            f"--{phase}-quality",
            action="append",
            default=[],
            metavar="NAME=VALUE",
            help=f"a {phase} quality limit, repeatable; NAME one of: {', '.join(LIMIT_NAMES)}",
        )
    p.add_argument(
        "--liveness",
        choices=sorted(_LIVENESS),
        help="required / off for this collection, or default: the server's rule for the kind",
    )
    p.add_argument(
        "--identify-returns-metadata",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="MATCH answers carry the user's Enroll metadata (never the phone)",
    )


def _count(text: str) -> int:
    """A non-negative integer (the wire field is unsigned: say so here, not in a traceback)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative; 0 means never")
    return value


def parse_limits(pairs: Sequence[str], flag: str) -> dict[str, float | None]:
    """``NAME=VALUE`` pairs -> {name: value}; ``NAME=`` -> {name: None} (remove it)."""
    out: dict[str, float | None] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        name = name.strip()
        if not sep or name not in LIMIT_NAMES:
            raise UsageError(
                f"{flag} expects NAME=VALUE with NAME one of {', '.join(LIMIT_NAMES)};"
                f" got {pair!r}"
            )
        if not text.strip():
            out[name] = None
            continue
        try:
            out[name] = float(text)
        except ValueError:
            raise UsageError(f"{flag} {name}: {text!r} is not a number") from None
    return out


def _limits(values: Mapping[str, float | None]) -> QualityLimits:
    try:
        return QualityLimits(**{k: v for k, v in values.items() if v is not None})
    except InvalidArgument as exc:  # negative or non-finite: say so before any call
        raise UsageError(exc.message) from exc


def run_create(args: argparse.Namespace) -> int:
    enroll = parse_limits(args.enroll_quality, "--enroll-quality")
    identify = parse_limits(args.identify_quality, "--identify-quality")
    if None in enroll.values() or None in identify.values():
        raise UsageError("NAME= (remove a limit) is for `collections update`")
    spec = CollectionSpec(
        name=args.name,
        kind=CollectionKind(args.kind.upper()),
        threshold=args.threshold,
        margin=args.margin,
        hint_required_above=args.hint_required_above,
        revocable=args.revocable,
        enroll_quality=_limits(enroll),
        identify_quality=_limits(identify),
        require_liveness=_LIVENESS[args.liveness] if args.liveness else None,
        identify_returns_metadata=bool(args.identify_returns_metadata),
    )
    with connect(args) as client:
        info = client.create_collection(spec)
    _show(args, info, "created ")
    return EXIT_OK


def run_update(args: argparse.Namespace) -> int:
    enroll = parse_limits(args.enroll_quality, "--enroll-quality")
    identify = parse_limits(args.identify_quality, "--identify-quality")
    with connect(args) as client:
        current = client.get_collection(args.name) if enroll or identify else None
        change = CollectionUpdate(
            name=args.name,
            threshold=args.threshold,
            margin=args.margin,
            hint_required_above=args.hint_required_above,
            enroll_quality=_merged(
                current.enroll_quality_overrides if current else None,
                enroll,
                args.clear_enroll_quality,
            ),
            identify_quality=_merged(
                current.identify_quality_overrides if current else None,
                identify,
                args.clear_identify_quality,
            ),
            require_liveness=_LIVENESS[args.liveness] if args.liveness else None,
            reset_require_liveness=args.liveness == "default",
            identify_returns_metadata=args.identify_returns_metadata,
        )
        if change == CollectionUpdate(name=args.name):
            raise UsageError("nothing to change: give at least one setting")
        info = client.update_collection(change)
    _show(args, info, "updated ")
    return EXIT_OK


def _merged(
    current: QualityLimits | None, given: Mapping[str, float | None], clear: bool
) -> QualityLimits | None:
    """The collection's new own limits, or None to leave them as they are."""
    if not given and not clear:
        return None
    base: dict[str, float | None] = {} if clear or current is None else dict(current.items())
    base.update(given)
    return _limits(base)


def run_delete(args: argparse.Namespace) -> int:
    with connect(args) as client:
        client.delete_collection(args.name)
    if args.json:
        print_json({"deleted": args.name})
    else:
        print(f"deleted collection {args.name}")
    return EXIT_OK


def run_list(args: argparse.Namespace) -> int:
    with connect(args) as client:
        infos = client.list_collections()
    print_listing(args, "collections", infos, collection_line, "no collections")
    return EXIT_OK


def run_get(args: argparse.Namespace) -> int:
    with connect(args) as client:
        info = client.get_collection(args.name)
    _show(args, info, "")
    return EXIT_OK


def _show(args: argparse.Namespace, info: CollectionInfo, verb: str) -> None:
    if args.json:
        print_json(info)
        return
    print(f"{verb}{collection_line(info)}")
    own_limits: list[tuple[str, QualityLimits]] = [
        ("enroll", info.enroll_quality_overrides),
        ("identify", info.identify_quality_overrides),
    ]
    for phase, limits in own_limits:
        if limits.items():
            own = ", ".join(f"{k}={v:g}" for k, v in sorted(limits.items().items()))
            print(f"  {phase} quality (own): {own}")
    rule = {True: "required", False: "off", None: "server default"}[info.require_liveness]
    active = "checked" if info.liveness_active else "not checked"
    print(f"  liveness: {rule} ({active} on this server)")
    print(f"  identify returns metadata: {'yes' if info.identify_returns_metadata else 'no'}")
