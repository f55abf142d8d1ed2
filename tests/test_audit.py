"""The audit log: one record per audited call with the right fields, nothing sensitive in it,
retention that never drops a record inside the window, whole lines under concurrent writers
(threads and another process) and after a torn write."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT
from fakes import FAKE_DIM, FakeAnalyzer, face_png, no_face_png

from service.access.principal import Principal, Role, acting_as
from service.app import build_served_service
from service.cli.main import main as cli_main
from service.config import AuditSettings, Settings, load_settings
from service.domain import (
    CollectionSpec,
    Decision,
    EnrollRequest,
    IdentifyRequest,
    ImportTemplatesRequest,
    VerifyRequest,
)
from service.errors import (
    DuplicateFace,
    InvalidArgument,
    NoFace,
    UnknownCollection,
    UnknownUser,
)
from service.observability import audit
from service.observability.audit import (
    AuditEvent,
    AuditLog,
    ReadStats,
    day_file,
    prune_days,
    read_events,
)
from service.observability.audited_service import AuditedService

ALICE, BOB = 1, 2
PHONE = "+86 138 0013 7294"
HINT = "7294"
KIOSK = Principal("kiosk-7", Role.ENROLLER)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", batch_window_ms=1.0)


@pytest.fixture
def svc(settings: Settings) -> Iterator[AuditedService]:
    s = build_served_service(settings, analyzer=FakeAnalyzer())
    yield s
    s.close()


def records(settings: Settings) -> list[AuditEvent]:
    return list(read_events(settings.audit_dir))


def raw_lines(settings: Settings) -> list[str]:
    return [
        line
        for path in sorted(settings.audit_dir.glob("audit-*.jsonl"))
        for line in path.read_text(encoding="utf-8").splitlines()
    ]


class Recorder:
    """Counts records as they are written, so each call can be checked for exactly one."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.seen = 0

    def one(self, **expected: object) -> AuditEvent:
        now = records(self.settings)
        assert len(now) == self.seen + 1, [e.action for e in now[self.seen :]]
        self.seen = len(now)
        event = now[-1]
        for name, value in expected.items():
            assert getattr(event, name) == value, (name, event)
        return event


def test_each_audited_call_leaves_exactly_one_record(
    settings: Settings, svc: AuditedService
) -> None:
    rec = Recorder(settings)
    with acting_as(Principal("ops", Role.ADMIN)):
        svc.create_collection(CollectionSpec("shop"))
    rec.one(
        action="create_collection",
        outcome="ok",
        key_id="ops",
        role="admin",
        collection="shop",
        uid=None,
    )
    with acting_as(KIOSK):
        svc.enroll(
            EnrollRequest(
                "shop", "alice", [face_png(ALICE), face_png(ALICE, 1)], phone_number=PHONE
            )
        )
        rec.one(
            action="enroll",
            outcome="ok",
            key_id="kiosk-7",
            role="enroller",
            collection="shop",
            uid="alice",
            decision="CREATED",
            count=2,
        )
        svc.enroll(EnrollRequest("shop", "alice", [face_png(ALICE, 2)]))
        rec.one(action="enroll", decision="UPDATED", count=1)
        svc.enroll(EnrollRequest("shop", "bob", [face_png(BOB)]))
        rec.one(action="enroll", uid="bob")

        result = svc.identify(IdentifyRequest("shop", face_png(ALICE, 3)))
        assert result.decision is Decision.MATCH
        e = rec.one(
            action="identify",
            outcome="ok",
            collection="shop",
            uid="alice",
            decision="MATCH",
            hinted=False,
        )
        assert e.score == pytest.approx(result.score, abs=1e-4)
        svc.identify(IdentifyRequest("shop", face_png(99), hint=HINT))
        rec.one(action="identify", decision="NO_MATCH", uid=None, hinted=True)

        verdict = svc.verify(VerifyRequest("shop", "bob", face_png(ALICE, 4)))
        assert not verdict.match
        rec.one(action="verify", outcome="ok", uid="bob", decision="NO_MATCH")
        svc.get_user("shop", "alice")
        rec.one(action="get_user", uid="alice", outcome="ok")
        svc.list_users("shop")
        rec.one(action="list_users", count=2, uid=None)
        assert svc.delete_user("shop", "bob") == 1
        rec.one(action="delete_user", uid="bob", count=1, outcome="ok")
    with acting_as(Principal("migration", Role.ADMIN)):
        vectors = np.eye(FAKE_DIM, dtype=np.float32)[:3]
        model = FakeAnalyzer().model_id
        svc.import_templates(ImportTemplatesRequest("shop", model, ("x1", "x2", "x3"), vectors))
        rec.one(action="import_templates", count=3, key_id="migration", uid=None)
        # Reads of collections are not audited; deleting one is.
        svc.get_collection("shop")
        svc.list_collections()
        svc.delete_collection("shop")
        rec.one(action="delete_collection", collection="shop", outcome="ok")
    # Without a principal bound (no auth configured) calls run as LOCAL_ADMIN, and say so.
    with pytest.raises(UnknownCollection):
        svc.verify(VerifyRequest("gone", "x", face_png(ALICE)))
    rec.one(
        action="verify",
        outcome="refused",
        reason="UNKNOWN_COLLECTION",
        key_id="local-unauthenticated",
        role="admin",
        collection="gone",
        uid="x",
    )


def test_refusals_are_recorded_with_reason_and_nothing_sensitive(
    settings: Settings, svc: AuditedService
) -> None:
    rec = Recorder(settings)
    svc.create_collection(CollectionSpec("shop", hint_required_above=1))
    rec.one(key_id="local-unauthenticated", role="admin")
    svc.enroll(EnrollRequest("shop", "alice-7f3c", [face_png(ALICE)], phone_number=PHONE))
    rec.one(uid="alice-7f3c")
    svc.enroll(EnrollRequest("shop", "bob", [face_png(BOB)]))
    rec.one(uid="bob")

    with pytest.raises(DuplicateFace) as dup:
        svc.enroll(EnrollRequest("shop", "mallory", [face_png(ALICE, 3)], phone_number=PHONE))
    assert dup.value.metadata["uid"] == "alice-7f3c"  # the error names the other user...
    refused = rec.one(
        action="enroll", outcome="refused", reason="DUPLICATE_FACE", uid="mallory", decision=None
    )
    # ...its record does not.
    assert "alice-7f3c" not in raw_lines(settings)[-1]
    assert refused.count is None and refused.score is None

    with pytest.raises(NoFace):
        svc.identify(IdentifyRequest("shop", no_face_png()))
    rec.one(action="identify", outcome="refused", reason="NO_FACE", uid=None)
    with pytest.raises(UnknownUser):
        svc.verify(VerifyRequest("shop", "nobody", face_png(ALICE)))
    rec.one(action="verify", outcome="refused", reason="UNKNOWN_USER", uid="nobody")
    with pytest.raises(InvalidArgument):
        svc.enroll(EnrollRequest("shop", "u" * 5000, [face_png(BOB)]))
    long_uid = rec.one(action="enroll", reason="INVALID_ARGUMENT").uid
    assert long_uid is not None and len(long_uid) <= audit.MAX_TEXT + 1  # bounded

    # NEED_HINT (gallery above 1 user), then the retry with the probe token and the hint.
    need = svc.identify(IdentifyRequest("shop", face_png(ALICE, 5)))
    assert need.decision is Decision.NEED_HINT and need.probe_token
    rec.one(action="identify", decision="NEED_HINT", hinted=False, uid=None)
    hinted = svc.identify(IdentifyRequest("shop", None, hint=HINT, probe_token=need.probe_token))
    assert hinted.decision is Decision.MATCH
    rec.one(action="identify", decision="MATCH", uid="alice-7f3c", hinted=True)

    text = "\n".join(raw_lines(settings))
    digits = "".join(c for c in PHONE if c.isdigit())
    for secret in (PHONE, digits, digits[-8:], need.probe_token):
        assert secret not in text
    for event in records(settings):
        # The hint's digits may occur by chance inside a random id or a time, never as a value.
        values = [v for k, v in json.loads(event.to_json()).items() if k not in ("id", "time")]
        assert all(HINT not in str(v) for v in values)
        assert len(event.to_json()) < 600  # no images or embeddings hiding in a record


def test_a_failing_sink_does_not_fail_the_call(settings: Settings) -> None:
    class Broken:
        def write(self, event: AuditEvent) -> None:
            raise OSError("disk full")

    from service.app import build_service

    inner = build_service(settings, analyzer=FakeAnalyzer())
    svc = AuditedService(inner, log=None, sinks=(Broken(),))
    try:
        assert svc.create_collection(CollectionSpec("shop")).name == "shop"
    finally:
        svc.close()


def test_disabled_audit_writes_nothing(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "d", audit=AuditSettings(enabled=False))
    svc = build_served_service(settings, analyzer=FakeAnalyzer())
    try:
        svc.create_collection(CollectionSpec("shop"))
    finally:
        svc.close()
    assert not settings.audit_dir.exists()


# ------------------------------------------------------------------ the log file


def _event(t: float, action: str = "identify", **kw: object) -> AuditEvent:
    return AuditEvent(time=t, action=action, outcome="ok", key_id="k", role="terminal", **kw)  # type: ignore[arg-type]


def _ts(text: str) -> float:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC).timestamp()


def test_retention_drops_whole_days_only_outside_the_window(tmp_path: Path) -> None:
    now = _ts("2026-03-10T12:00:00")
    clock = [_ts("2026-03-01T00:00:00")]
    directory = tmp_path / "audit"
    log = AuditLog(directory, retention_days=2, fsync="never", clock=lambda: clock[0])
    hours = [_ts("2026-03-04T00:00:00") + h * 3600 for h in range(6 * 24 + 13)]  # to now
    for t in hours:
        log.write(_event(t, uid=f"u{int(t)}"))
    assert min(p.name for p in directory.iterdir()) == "audit-2026-03-04.jsonl"
    clock[0] = now
    removed = log.prune()
    cutoff = now - 2 * 86400  # 2026-03-08T12:00
    assert sorted(p.name for p in removed) == [f"audit-2026-03-0{d}.jsonl" for d in (4, 5, 6, 7)]
    kept = {e.time for e in read_events(directory)}
    assert {t for t in hours if t >= cutoff} <= kept  # nothing inside the window is lost
    assert min(kept) == _ts("2026-03-08T00:00:00")  # the boundary day is kept whole
    # A write on a new day prunes by itself.
    clock[0] = _ts("2026-03-12T00:30:00")
    log.write(_event(clock[0]))
    assert not day_file(directory, dt.date(2026, 3, 8)).exists()
    assert day_file(directory, dt.date(2026, 3, 10)).exists()
    log.close()
    assert prune_days(directory, 0, _ts("2030-01-01T00:00:00")) == []  # 0 = keep forever
    with pytest.raises(InvalidArgument):
        prune_days(directory, -1, now)
    with pytest.raises(InvalidArgument):
        AuditLog(directory, fsync="sometimes")


def test_a_torn_last_line_is_ended_before_the_next_record(tmp_path: Path) -> None:
    directory = tmp_path / "audit"
    t = _ts("2026-05-01T10:00:00")
    log = AuditLog(directory, clock=lambda: t)
    log.write(_event(t, uid="first"))
    path = day_file(directory, dt.date(2026, 5, 1))
    with path.open("ab") as f:  # a writer killed mid-record
        f.write(b'{"time":"2026-05-01T10:00:00.5Z","action":"enr')
    log.write(_event(t + 1, uid="second"))
    log.close()
    stats = ReadStats()
    assert [e.uid for e in read_events(directory, stats=stats)] == ["first", "second"]
    assert stats.damaged == 1


_WRITER = """
import sys, time
from pathlib import Path
from service.observability.audit import AuditEvent, AuditLog
log = AuditLog(Path(sys.argv[1]), fsync="never")
for i in range(int(sys.argv[2])):
    log.write(AuditEvent(time=time.time(), action="enroll", outcome="ok", key_id="cli",
                         role="admin", uid="p" + str(i) + "-" + "x" * 150))
log.close()
"""


def test_concurrent_writers_never_interleave_lines(tmp_path: Path) -> None:
    directory = tmp_path / "audit"
    log = AuditLog(directory, fsync="never")
    other = AuditLog(directory, fsync="never")  # a second handle on the same files
    n_threads, per_thread, in_process = 6, 300, 600
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(directory), str(in_process)], cwd=ROOT
    )

    def write(i: int) -> None:
        target = log if i % 2 else other
        for j in range(per_thread):
            target.write(_event(time.time(), action="verify", uid=f"t{i}-{j}-" + "y" * 150))

    threads = [threading.Thread(target=write, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert proc.wait(60) == 0
    log.close()
    other.close()
    stats = ReadStats()
    events = list(read_events(directory, stats=stats))
    assert stats.damaged == 0
    assert len(events) == n_threads * per_thread + in_process
    assert len({e.id for e in events}) == len(events)
    uids = {e.uid for e in events}
    assert f"t5-{per_thread - 1}-" + "y" * 150 in uids and f"p{in_process - 1}-" + "x" * 150 in uids


# ------------------------------------------------------------------ settings and CLI


def test_audit_and_metrics_sections_from_toml_and_env(tmp_path: Path) -> None:
    config = tmp_path / "facegate.toml"
    config.write_text(
        '[audit]\npath = "/var/log/facegate"\nretention_days = 90\n'
        '[metrics]\nlisten = "0.0.0.0:9100"\n'
    )
    s = load_settings(
        config_file=config,
        environ={"FACEGATE_AUDIT_FSYNC": "always", "FACEGATE_METRICS_LISTEN": ""},
    )
    assert s.audit == AuditSettings(
        path=Path("/var/log/facegate"), retention_days=90, fsync="always"
    )
    assert s.audit_dir == Path("/var/log/facegate")
    assert s.metrics.listen == ""
    assert load_settings(environ={}, data_dir=tmp_path).audit_dir == tmp_path / "audit"


def test_cli_shows_and_filters_records(
    settings: Settings, svc: AuditedService, capsys: pytest.CaptureFixture[str]
) -> None:
    svc.create_collection(CollectionSpec("shop"))
    svc.enroll(EnrollRequest("shop", "alice", [face_png(ALICE)]))
    with pytest.raises(NoFace):
        svc.identify(IdentifyRequest("shop", no_face_png()))
    svc.identify(IdentifyRequest("shop", face_png(ALICE, 1)))
    base = ["audit", "show", "--dir", str(settings.audit_dir)]
    assert cli_main([*base, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [r["action"] for r in doc["records"]] == [
        "create_collection",
        "enroll",
        "identify",
        "identify",
    ]
    assert doc["damaged_lines"] == 0
    assert cli_main([*base, "--action", "identify", "--outcome", "refused"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and "reason=NO_FACE" in lines[0]
    assert cli_main([*base, "--uid", "alice", "--last", "1", "--since", "1h"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and "decision=MATCH" in lines[0] and "identify" in lines[0]
    assert cli_main([*base, "--since", "2999-01-01"]) == 0
    assert capsys.readouterr().out == ""
    assert cli_main([*base, "--since", "yesterday"]) == 2
    assert cli_main(["audit", "prune", "--dir", str(settings.audit_dir)]) == 0
    assert "0 day file(s) removed" in capsys.readouterr().out


def test_records_name_the_authenticated_key_through_a_real_server(tmp_path: Path) -> None:
    """The auth interceptor binds the principal; the audited engine behind it records it.
    Calls the interceptor refuses never reach the engine: it records them itself, with the
    key id when the key was valid and the caller's address always."""
    from grpc_fakes import fake_settings

    from service.access.api_keys import add_key
    from service.config import AuthSettings
    from service.errors import ApiKeyInvalid, ApiKeyMissing, CollectionDenied, RoleDenied
    from service.transport.client import FaceGateClient
    from service.transport.server import create_server

    keys = tmp_path / "keys.toml"
    root, _ = add_key(keys, "root", "admin")
    desk, _ = add_key(keys, "desk-1", "enroller", ["shop"])
    till, _ = add_key(keys, "till-7", "terminal", ["shop"])
    settings = fake_settings(data_dir=tmp_path / "data", auth=AuthSettings(keys_file=keys))
    server, port = create_server(
        settings, loader=lambda: build_served_service(settings, analyzer=FakeAnalyzer()), port=0
    )
    server.start()
    try:
        assert server.wait_ready(60)
        target = f"127.0.0.1:{port}"
        with FaceGateClient(target, api_key=root) as c:
            c.create_collection(CollectionSpec("shop"))
        with FaceGateClient(target, api_key=desk) as c:
            c.enroll(EnrollRequest("shop", "alice", [face_png(ALICE)], phone_number=PHONE))
        with FaceGateClient(target, api_key=till) as c:
            c.identify(IdentifyRequest("shop", face_png(ALICE, 1)))
            with pytest.raises(NoFace):
                c.identify(IdentifyRequest("shop", no_face_png()))
            with pytest.raises(RoleDenied):
                c.delete_user("shop", "alice")
            with pytest.raises(CollectionDenied):
                c.identify(IdentifyRequest("cafe", face_png(ALICE, 1)))
        forged = "fgk_" + "A" * 43
        with FaceGateClient(target, api_key=forged) as c, pytest.raises(ApiKeyInvalid):
            c.identify(IdentifyRequest("shop", face_png(ALICE, 1)))
        with FaceGateClient(target) as c, pytest.raises(ApiKeyMissing):
            c.list_collections()
    finally:
        server.stop(None).wait(30)
    events = records(settings)
    got = [(e.action, e.key_id, e.role, e.outcome, e.decision or e.reason) for e in events]
    assert got == [
        ("create_collection", "root", "admin", "ok", None),
        ("enroll", "desk-1", "enroller", "ok", "CREATED"),
        ("identify", "till-7", "terminal", "ok", "MATCH"),
        ("identify", "till-7", "terminal", "refused", "NO_FACE"),
        ("delete_user", "till-7", "terminal", "refused", "ROLE_DENIED"),
        ("identify", "till-7", "terminal", "refused", "COLLECTION_DENIED"),
        ("identify", "-", "-", "refused", "API_KEY_INVALID"),
        ("list_collections", "-", "-", "refused", "API_KEY_MISSING"),
    ]
    assert events[5].collection == "cafe"  # the collection it was refused
    assert all(e.peer and "127.0.0.1" in e.peer for e in events[4:])  # where refusals came from
    assert all(e.peer is None for e in events[:4])
    text = "\n".join(raw_lines(settings))
    assert root not in text and desk not in text and till not in text  # ids, never keys
    assert forged not in text


def test_offline_admin_commands_are_audited(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Key creation and revocation, and template-key rotation, happen on the server's machine
    without an RPC; they are admin actions all the same and land in the same log."""
    data = tmp_path / "data"
    keys = str(tmp_path / "keys.toml")
    common = ("--keys-file", keys, "--data-dir", str(data))
    assert cli_main(["keys", "create", *common, "--id", "till-7", "--role", "terminal",
                     "--collection", "shop"]) == 0  # fmt: skip
    assert cli_main(["keys", "revoke", *common, "--id", "till-7"]) == 0
    assert cli_main(["crypto", "rotate-key", "--data-dir", str(data)]) == 0
    out = capsys.readouterr().out
    settings = load_settings(environ={}, data_dir=data)
    events = records(settings)
    assert [(e.action, e.outcome, e.role) for e in events] == [
        (audit.CREATE_API_KEY, "ok", "admin"),
        (audit.REVOKE_API_KEY, "ok", "admin"),
        (audit.ROTATE_DATA_KEY, "ok", "admin"),
    ]
    assert all(e.key_id.startswith("local:") for e in events)  # the OS user, not a key
    assert events[0].target == events[1].target == "till-7 role=terminal scope=shop"
    assert events[2].count == 0 and events[2].target is not None
    key = out.splitlines()[0]
    assert key.startswith("fgk_") and key not in "\n".join(raw_lines(settings))


def test_an_unwritable_audit_log_warns_but_does_not_undo_the_command(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = load_settings(environ={}, data_dir=tmp_path / "data")
    settings.data_dir.mkdir(parents=True)
    settings.audit_dir.write_text("not a directory")  # the log cannot be opened
    with caplog.at_level("WARNING"):
        assert not audit.record_local_action(settings, audit.CREATE_API_KEY, target="x")
    assert "create_api_key was done but could not be audited" in caplog.text
    disabled = load_settings(
        environ={}, data_dir=tmp_path / "off", audit=AuditSettings(enabled=False)
    )
    assert audit.record_local_action(disabled, audit.CREATE_API_KEY, target="x")
    assert not disabled.audit_dir.exists()
