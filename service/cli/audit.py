"""``facegate audit show|prune``: read the audit log on this machine (no server needed).

``show`` prints the records matching the filters, oldest first (``--last N`` keeps the
newest N), one line each, or one JSON document with ``--json``; the files themselves are
already JSON lines for a SIEM agent to ship. ``prune`` deletes the day files older than
the retention window now (the server also prunes at start and at each new day).
Exit status 0, 1 if the log cannot be read, 2 on bad usage (e.g. an unreadable ``--since``).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections import deque
from dataclasses import asdict
from pathlib import Path
from typing import Any

from service.config import Settings, load_settings
from service.errors import FacegateError
from service.observability.audit import (
    AuditEvent,
    ReadStats,
    iso_time,
    parse_time,
    prune_days,
    read_events,
)

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def register(subparsers: Any) -> None:
    audit = subparsers.add_parser("audit", help="show or prune the audit log")
    sub = audit.add_subparsers(dest="audit_command", metavar="{show,prune}")
    sub.required = True

    show = sub.add_parser("show", help="print audit records (filters combine with AND)")
    _common(show)
    show.add_argument("--since", help="ISO time (UTC unless an offset is given) or 15m/2h/7d")
    show.add_argument("--until", help="ISO time or 15m/2h/7d ago (exclusive)")
    show.add_argument("--action", action="append", help="e.g. enroll, identify (repeatable)")
    show.add_argument("--collection")
    show.add_argument("--uid")
    show.add_argument("--key-id")
    show.add_argument("--outcome", choices=["ok", "refused", "failed"])
    show.add_argument("--last", type=int, metavar="N", help="only the newest N records")
    show.add_argument("--json", action="store_true", help="print one JSON document")
    show.set_defaults(func=run_show)

    prune = sub.add_parser("prune", help="delete day files older than [audit] retention_days")
    _common(prune)
    prune.set_defaults(func=run_prune)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="TOML settings file")
    p.add_argument("--data-dir", type=Path, help="the server's data directory")
    p.add_argument("--dir", type=Path, help="the audit directory (default: from settings)")


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(config_file=args.config, data_dir=args.data_dir)


def _directory(args: argparse.Namespace, settings: Settings) -> Path:
    return Path(args.dir) if args.dir is not None else settings.audit_dir


def parse_when(text: str, now: float) -> float:
    """``15m``/``2h``/``7d`` (that long ago) or an ISO 8601 time."""
    m = _RELATIVE.match(text.strip())
    if m:
        return now - float(m.group(1)) * _UNIT_S[m.group(2)]
    try:
        return parse_time(text.strip())
    except ValueError:
        raise ValueError(f"cannot read time {text!r}: use ISO 8601 or 15m/2h/7d") from None


def _matches(e: AuditEvent, args: argparse.Namespace) -> bool:
    return (
        (not args.action or e.action in args.action)
        and (args.collection is None or e.collection == args.collection)
        and (args.uid is None or e.uid == args.uid)
        and (args.key_id is None or e.key_id == args.key_id)
        and (args.outcome is None or e.outcome == args.outcome)
    )


def _line(e: AuditEvent) -> str:
    parts = [iso_time(e.time), f"{e.action:<17}", f"{e.outcome:<7}", f"{e.key_id}({e.role})"]
    for name in ("collection", "uid", "decision", "reason", "count", "score", "hinted"):
        value = getattr(e, name)
        if value is not None:
            parts.append(f"{name}={round(value, 4) if isinstance(value, float) else value}")
    return "  ".join(parts)


def run_show(args: argparse.Namespace) -> int:
    now = time.time()
    try:
        since = parse_when(args.since, now) if args.since else None
        until = parse_when(args.until, now) if args.until else None
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.last is not None and args.last <= 0:
        print("error: --last must be positive", file=sys.stderr)
        return 2
    try:
        directory = _directory(args, _settings(args))
        stats = ReadStats()
        found = (e for e in read_events(directory, since=since, until=until, stats=stats))
        matched = deque((e for e in found if _matches(e, args)), maxlen=args.last)
    except (FacegateError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        records = [{**asdict(e), "time": iso_time(e.time)} for e in matched]
        print(json.dumps({"records": records, "damaged_lines": stats.damaged}, sort_keys=True))
    else:
        for e in matched:
            print(_line(e))
        if stats.damaged:
            print(f"({stats.damaged} damaged line(s) skipped)", file=sys.stderr)
    return 0


def run_prune(args: argparse.Namespace) -> int:
    try:
        settings = _settings(args)
        directory = _directory(args, settings)
        removed = prune_days(directory, settings.audit.retention_days, time.time())
    except (FacegateError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for path in removed:
        print(f"removed {path}")
    print(
        f"{len(removed)} day file(s) removed from {directory} "
        f"(retention {settings.audit.retention_days} days)"
    )
    return 0
