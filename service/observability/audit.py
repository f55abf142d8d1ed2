"""The audit log: who did what to which collection, and what the service decided.

One JSON object per line, one file per UTC day (``audit-YYYY-MM-DD.jsonl``) in the audit
directory. Why JSON lines rather than a SQLite table:

* Crash safety by construction: a record is one ``write()`` of a whole line to a file opened
  ``O_APPEND``; earlier bytes are never rewritten, so a crash can at worst leave the *last*
  line torn. Before each record the writer checks the file ends in a newline and, if not,
  ends the torn fragment first, so it never corrupts the next record; readers skip it.
* Shipping: every SIEM agent (Filebeat, Fluent Bit, Vector, Splunk UF) tails JSON-lines
  files natively; nothing to export.
* Retention is deleting whole day files whose every record is older than the window, so
  pruning never touches a record inside it and never rewrites a file that is being written.

Writers in one process serialise on a lock; writers in several processes (the server and an
admin CLI) on ``flock``, so lines never interleave. Records hold ids, names, decisions and
reason codes only: never images, embeddings, phone numbers, hint digits or error messages
(a DUPLICATE_FACE message names the *other* user).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import getpass
import json
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Final, Protocol

from service.config import Settings
from service.errors import InvalidArgument

log = logging.getLogger(__name__)

# Actions recorded by service.observability.audited_service (admin tools may add their own,
# e.g. key rotation).
CREATE_COLLECTION: Final = "create_collection"
UPDATE_COLLECTION: Final = "update_collection"
DELETE_COLLECTION: Final = "delete_collection"
ENROLL: Final = "enroll"
DELETE_USER: Final = "delete_user"
IDENTIFY: Final = "identify"
VERIFY: Final = "verify"
GET_USER: Final = "get_user"
LIST_USERS: Final = "list_users"
IMPORT_TEMPLATES: Final = "import_templates"
# Admin commands run on the server's machine (no RPC, no API key: the OS user acts).
CREATE_API_KEY: Final = "create_api_key"
REVOKE_API_KEY: Final = "revoke_api_key"
ROTATE_DATA_KEY: Final = "rotate_data_key"
ROTATE_TRANSFORM: Final = "rotate_transform"
# Reads are not fsync'ed under fsync="writes": they are the payment hot path.
READ_ACTIONS: Final = frozenset({IDENTIFY, VERIFY, GET_USER, LIST_USERS})

OK: Final = "ok"  # the call completed (for identify: whatever the decision)
REFUSED: Final = "refused"  # a facegate error: bad input, no face, unknown user, ...
FAILED: Final = "failed"  # deadline passed or an internal error

FSYNC_MODES: Final = ("always", "writes", "never")
_DAY_S = 86_400
_FILE = re.compile(r"^audit-(\d{4}-\d{2}-\d{2})\.jsonl$")
# Names and uids are the caller's; a refused call may carry an absurd one. Bound what is kept.
MAX_TEXT = 200


def _bounded(text: str | None) -> str | None:
    if text is None or len(text) <= MAX_TEXT:
        return text
    return text[:MAX_TEXT] + "…"


@dataclass(frozen=True, slots=True)
class AuditEvent:
    time: float  # unix seconds, when the call finished
    action: str
    outcome: str  # OK, REFUSED or FAILED
    key_id: str  # the API key's id (never the key)
    role: str
    collection: str | None = None
    uid: str | None = None  # the uid the caller named, or the one Identify matched
    decision: str | None = None  # MATCH / NO_MATCH / AMBIGUOUS / NEED_HINT, CREATED / UPDATED
    reason: str | None = None  # the error's reason code when not OK
    count: int | None = None  # faces enrolled or removed, templates imported, users listed
    score: float | None = None  # identify/verify similarity
    hinted: bool | None = None  # identify: whether a phone hint was given (never the digits)
    duration_ms: float | None = None
    # A call refused before it reached the engine (no or bad key, wrong role or collection):
    # where it came from, since its key id may be unknown.
    peer: str | None = None
    target: str | None = None  # what an admin command acted on (an API key: id, role, scope)
    id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def __post_init__(self) -> None:
        object.__setattr__(self, "collection", _bounded(self.collection))
        object.__setattr__(self, "uid", _bounded(self.uid))

    def to_json(self) -> str:
        doc: dict[str, Any] = {"time": iso_time(self.time)}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name != "time" and value is not None:
                doc[f.name] = round(value, 4) if isinstance(value, float) else value
        return json.dumps(doc, ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_json(cls, line: str) -> AuditEvent:
        doc = json.loads(line)
        if not isinstance(doc, dict):
            raise ValueError("an audit record is a JSON object")
        doc["time"] = parse_time(doc["time"])
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in doc.items() if k in known})


def iso_time(t: float) -> str:
    stamp = dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


def parse_time(text: str) -> float:
    """ISO 8601 (``Z`` or an offset; a bare date is midnight UTC) to unix seconds."""
    when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


def _day(t: float) -> dt.date:
    return dt.datetime.fromtimestamp(t, dt.UTC).date()


def day_file(directory: Path, day: dt.date) -> Path:
    return directory / f"audit-{day.isoformat()}.jsonl"


def day_files(directory: Path) -> list[tuple[dt.date, Path]]:
    """The audit files in ``directory``, oldest first (other files are ignored)."""
    if not directory.is_dir():
        return []
    out = []
    for path in directory.iterdir():
        m = _FILE.match(path.name)
        if m:
            with contextlib.suppress(ValueError):
                out.append((dt.date.fromisoformat(m.group(1)), path))
    return sorted(out)


class AuditSink(Protocol):
    def write(self, event: AuditEvent) -> None: ...


class AuditLog:
    """Appends ``AuditEvent`` records to daily JSON-lines files; prunes old days."""

    def __init__(
        self,
        directory: Path,
        *,
        retention_days: int = 365,
        fsync: str = "writes",
        clock: Callable[[], float] = time.time,
    ) -> None:
        if fsync not in FSYNC_MODES:
            raise InvalidArgument(
                f"audit fsync must be one of {', '.join(FSYNC_MODES)}, not {fsync!r}",
                metadata={"field": "audit.fsync"},
            )
        if retention_days < 0:
            raise InvalidArgument(
                f"audit retention_days must be >= 0, not {retention_days}",
                metadata={"field": "audit.retention_days"},
            )
        self.directory = directory
        self.retention_days = retention_days
        self._fsync = fsync
        self._clock = clock
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._fd_day: dt.date | None = None
        self._closed = False
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.prune()

    def write(self, event: AuditEvent) -> None:
        line = (event.to_json() + "\n").encode("utf-8")
        sync = self._fsync == "always" or (
            self._fsync == "writes" and event.action not in READ_ACTIONS
        )
        with self._lock:
            if self._closed:
                raise RuntimeError("the audit log is closed")
            fd = self._file_for(_day(event.time))
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                _end_torn_line(fd)
                _write_all(fd, line)
                if sync:
                    os.fsync(fd)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)

    def prune(self) -> list[Path]:
        """Delete the day files whose whole day lies before the retention window."""
        return prune_days(self.directory, self.retention_days, self._clock())

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def _file_for(self, day: dt.date) -> int:
        if self._fd is not None and self._fd_day == day:
            return self._fd
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        path = day_file(self.directory, day)
        self._fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._fd_day = day
        self.prune()  # a new day: the oldest one may have left the window
        return self._fd


def open_audit_log(settings: Settings) -> AuditLog | None:
    """The ``[audit]`` log of these settings, or None when it is disabled."""
    if not settings.audit.enabled:
        return None
    return AuditLog(
        settings.audit_dir,
        retention_days=settings.audit.retention_days,
        fsync=settings.audit.fsync,
    )


def local_actor() -> str:
    """Who runs an admin command on this machine: ``local:<OS user>`` (no API key involved)."""
    try:
        return f"local:{getpass.getuser()}"
    except (KeyError, OSError):  # no passwd entry (some containers)
        return f"local:uid{os.getuid()}"


def record_local_action(
    settings: Settings, action: str, *, outcome: str = OK, **details: Any
) -> bool:
    """Record an admin command run on this machine (key or template-key management).

    True when recorded or the log is disabled. A failure is logged as a warning, not raised:
    the command has already done its work, and the operator must hear about the gap.
    """
    try:
        log_ = open_audit_log(settings)
        if log_ is None:
            return True
        try:
            log_.write(
                AuditEvent(
                    time=time.time(),
                    action=action,
                    outcome=outcome,
                    key_id=local_actor(),
                    role="admin",
                    **details,
                )
            )
        finally:
            log_.close()
    except (OSError, InvalidArgument, RuntimeError) as exc:
        log.warning("%s was done but could not be audited: %s", action, exc)
        return False
    return True


def prune_days(directory: Path, retention_days: int, now: float) -> list[Path]:
    """Delete the day files of ``directory`` that end at or before ``now - retention_days``
    (so every record younger than the window stays); 0 days keeps everything."""
    if retention_days < 0:
        raise InvalidArgument(
            f"audit retention_days must be >= 0, not {retention_days}",
            metadata={"field": "audit.retention_days"},
        )
    if retention_days == 0:
        return []
    cutoff = now - retention_days * _DAY_S
    removed = []
    for day, path in day_files(directory):
        day_end = dt.datetime.combine(day, dt.time(), dt.UTC).timestamp() + _DAY_S
        if day_end <= cutoff:
            path.unlink(missing_ok=True)
            removed.append(path)
    if removed:
        log.info(
            "audit log: removed %d day file(s) older than %d days", len(removed), retention_days
        )
    return removed


def _end_torn_line(fd: int) -> None:
    """If a crashed writer left a partial last line, end it so the next record stays whole."""
    size = os.fstat(fd).st_size
    if size > 0 and os.pread(fd, 1, size - 1) != b"\n":
        _write_all(fd, b"\n")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


@dataclass
class ReadStats:
    damaged: int = 0  # lines that are not a whole record (a torn last line after a crash)


def read_events(
    directory: Path,
    *,
    since: float | None = None,
    until: float | None = None,
    stats: ReadStats | None = None,
) -> Iterator[AuditEvent]:
    """Records with ``since <= time < until``, oldest first; damaged lines are skipped."""
    for day, path in day_files(directory):
        start = dt.datetime.combine(day, dt.time(), dt.UTC).timestamp()
        if (since is not None and start + _DAY_S <= since) or (
            until is not None and start >= until
        ):
            continue
        with path.open("rb") as f:
            for raw in f:
                if not raw.strip():
                    continue
                try:
                    event = AuditEvent.from_json(raw.decode("utf-8"))
                except (ValueError, KeyError, TypeError):
                    if stats is not None:
                        stats.damaged += 1
                    continue
                if (since is None or event.time >= since) and (until is None or event.time < until):
                    yield event
