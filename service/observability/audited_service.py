"""The engine as the server runs it: every audited call leaves exactly one ``AuditEvent``.

A thin layer around any ``FaceServicePort`` (no gRPC here): it knows the request, the
result or the refusal, and the calling principal (``current_principal()``, bound by the
auth interceptor), which is all an audit record needs. Refused calls are recorded with their
error's reason code, never its message or metadata (a DUPLICATE_FACE refusal names another
user). Events go to the audit log and to any other sinks (the metrics count decisions).

A sink that fails (disk full) is logged and skipped: the call's own outcome stands, because
refusing payments for want of a log line would turn a logging fault into an outage.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from service import domain
from service.access.principal import current_principal
from service.errors import FacegateError
from service.observability import audit
from service.observability.audit import AuditEvent, AuditLog, AuditSink
from service.ports import FaceServicePort

log = logging.getLogger(__name__)

R = TypeVar("R")
# What a successful result adds to the record (decision, uid, count, score...).
_Describe = Callable[[R], dict[str, Any]]


def _nothing(_: object) -> dict[str, Any]:
    return {}


class AuditedService:
    """A ``FaceServicePort`` that records each audited call on its way out."""

    def __init__(
        self,
        inner: FaceServicePort,
        *,
        log: AuditLog | None,
        sinks: Sequence[AuditSink] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._inner = inner
        self._log = log  # owned: closed with the service
        self._sinks: tuple[AuditSink, ...] = (*((log,) if log is not None else ()), *sinks)
        self._clock = clock

    def _run(
        self,
        action: str,
        call: Callable[[], R],
        *,
        collection: str | None = None,
        uid: str | None = None,
        describe: _Describe[R] = _nothing,
        **known: Any,
    ) -> R:
        principal = current_principal()
        started = time.perf_counter()
        details: dict[str, Any] = {"collection": collection, "uid": uid, **known}
        try:
            result = call()
        except FacegateError as exc:
            details.update(outcome=audit.REFUSED, reason=exc.reason)
            raise
        except TimeoutError:
            details.update(outcome=audit.FAILED, reason="DEADLINE_EXCEEDED")
            raise
        except Exception:
            details.update(outcome=audit.FAILED, reason="INTERNAL")
            raise
        else:
            details.update(outcome=audit.OK, **describe(result))
            return result
        finally:
            self._emit(
                AuditEvent(
                    time=self._clock(),
                    action=action,
                    key_id=principal.key_id,
                    role=principal.role.value,
                    duration_ms=(time.perf_counter() - started) * 1000.0,
                    **details,
                )
            )

    def _emit(self, event: AuditEvent) -> None:
        for sink in self._sinks:
            try:
                sink.write(event)
            except Exception:
                log.exception("audit: could not record %s (%s)", event.action, event.id)

    # ------------------------------------------------------------ collections

    def create_collection(self, spec: domain.CollectionSpec) -> domain.CollectionInfo:
        return self._run(
            audit.CREATE_COLLECTION,
            lambda: self._inner.create_collection(spec),
            collection=spec.name,
        )

    def update_collection(self, change: domain.CollectionUpdate) -> domain.CollectionInfo:
        return self._run(
            audit.UPDATE_COLLECTION,
            lambda: self._inner.update_collection(change),
            collection=change.name,
        )

    def delete_collection(self, name: str) -> None:
        self._run(
            audit.DELETE_COLLECTION, lambda: self._inner.delete_collection(name), collection=name
        )

    def get_collection(self, name: str) -> domain.CollectionInfo:
        return self._inner.get_collection(name)

    def list_collections(self) -> list[domain.CollectionInfo]:
        return self._inner.list_collections()

    # ------------------------------------------------------------------ faces

    def enroll(
        self, req: domain.EnrollRequest, *, deadline: float | None = None
    ) -> domain.EnrollResult:
        def describe(r: domain.EnrollResult) -> dict[str, Any]:
            return {"decision": "CREATED" if r.created else "UPDATED", "count": len(r.face_ids)}

        return self._run(
            audit.ENROLL,
            lambda: self._inner.enroll(req, deadline=deadline),
            collection=req.collection,
            uid=req.uid,
            describe=describe,
        )

    def identify(
        self, req: domain.IdentifyRequest, *, deadline: float | None = None
    ) -> domain.IdentifyResult:
        def describe(r: domain.IdentifyResult) -> dict[str, Any]:
            # Only a MATCH names a user; candidates of other decisions are other people.
            matched = r.uid if r.decision is domain.Decision.MATCH else None
            return {"decision": r.decision.value, "uid": matched, "score": r.score}

        return self._run(
            audit.IDENTIFY,
            lambda: self._inner.identify(req, deadline=deadline),
            collection=req.collection,
            describe=describe,
            hinted=bool(req.hint),
        )

    def verify(
        self, req: domain.VerifyRequest, *, deadline: float | None = None
    ) -> domain.VerifyResult:
        def describe(r: domain.VerifyResult) -> dict[str, Any]:
            return {"decision": "MATCH" if r.match else "NO_MATCH", "score": r.score}

        return self._run(
            audit.VERIFY,
            lambda: self._inner.verify(req, deadline=deadline),
            collection=req.collection,
            uid=req.uid,
            describe=describe,
        )

    # ------------------------------------------------------------------ users

    def delete_user(self, collection: str, uid: str) -> int:
        return self._run(
            audit.DELETE_USER,
            lambda: self._inner.delete_user(collection, uid),
            collection=collection,
            uid=uid,
            describe=lambda n: {"count": n},
        )

    def get_user(self, collection: str, uid: str) -> domain.UserInfo:
        return self._run(
            audit.GET_USER,
            lambda: self._inner.get_user(collection, uid),
            collection=collection,
            uid=uid,
        )

    def list_users(
        self, collection: str, *, page_size: int = 100, page_token: str = ""
    ) -> domain.UserPage:
        return self._run(
            audit.LIST_USERS,
            lambda: self._inner.list_users(collection, page_size=page_size, page_token=page_token),
            collection=collection,
            describe=lambda page: {"count": len(page.users)},
        )

    def import_templates(self, req: domain.ImportTemplatesRequest) -> tuple[int, ...]:
        return self._run(
            audit.IMPORT_TEMPLATES,
            lambda: self._inner.import_templates(req),
            collection=req.collection,
            describe=lambda ids: {"count": len(ids)},
        )

    # ------------------------------------------------------------- operations

    def server_info(self) -> domain.ServerInfo:
        return self._inner.server_info()

    def stats(self) -> dict[str, int]:
        return self._inner.stats()

    def close(self) -> None:
        try:
            self._inner.close()
        finally:
            if self._log is not None:
                self._log.close()
