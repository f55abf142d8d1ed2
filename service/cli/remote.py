"""What the client commands of ``facegate`` share: exit codes, the usage error, the
connection to a running server, and JSON output."""

from __future__ import annotations

import argparse
import dataclasses
import enum
import json
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from service.cli.keys import connection_options
from service.domain import CollectionInfo
from service.errors import InvalidArgument
from service.transport.client import FaceGateClient

EXIT_OK, EXIT_REMOTE, EXIT_USAGE = 0, 1, 2

T = TypeVar("T")


class UsageError(Exception):
    """Bad invocation found after parsing (e.g. an image file that cannot be read)."""


def jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, bytes):
        return None  # never echo image bytes
    if hasattr(value, "items"):  # other mappings (metadata)
        return {str(k): jsonable(v) for k, v in value.items()}
    return value


def print_json(value: Any) -> None:
    print(json.dumps(jsonable(value), sort_keys=True))


def print_listing(
    args: argparse.Namespace,
    key: str,
    items: Sequence[T],
    line: Callable[[T], str],
    empty: str,
) -> None:
    """A list command's output: one JSON document ``{key: items}``, else a line per item."""
    if args.json:
        print_json({key: items})
        return
    for item in items:
        print(line(item))
    if not items:
        print(empty)


def connect(args: argparse.Namespace) -> FaceGateClient:
    try:
        security = connection_options(args)  # API key and TLS flags
    except InvalidArgument as exc:
        raise UsageError(exc.message) from exc
    return FaceGateClient(args.target, timeout=args.timeout, **security)


def collection_line(info: CollectionInfo) -> str:
    return (
        f"{info.name}  kind={info.kind.value}  users={info.user_count}  faces={info.face_count}"
        f"  threshold={info.threshold:.3f}  margin={info.margin:.3f}"
        f"  hint_above={info.hint_required_above or '-'}  model={info.model_id}"
    )
