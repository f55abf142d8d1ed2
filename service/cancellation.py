"""Whether the caller still wants the answer: work for an abandoned call stops early.

gRPC gives a call's concurrency slot (``max_concurrent_rpcs``) back only when its handler
returns, and a handler learns nothing by itself of a client that cancelled or went away:
without this, a cancelled ten-photo enrolment kept its slot for its whole pipeline run (and
then enrolled the user anyway). The transport binds the call's liveness check for the
duration of the call (a ``ContextVar``, like ``service.access.principal``, so it follows the call's
thread and never leaks into another call); the engine calls ``raise_if_abandoned()`` where
it already checks the deadline, between pipeline stages, so an abandoned call ends at the
next stage and commits nothing after it. Outside a call (tests, in-process use) nothing is
bound and the check is free.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar

from service.errors import CallCancelled

_still_wanted: ContextVar[Callable[[], bool] | None] = ContextVar(
    "facegate_call_still_wanted", default=None
)


@contextlib.contextmanager
def call_scope(still_wanted: Callable[[], bool]) -> Iterator[None]:
    """Bind ``still_wanted`` (e.g. ``grpc.ServicerContext.is_active``) for one call."""
    token = _still_wanted.set(still_wanted)
    try:
        yield
    finally:
        _still_wanted.reset(token)


def raise_if_abandoned() -> None:
    """Raise ``CallCancelled`` when the current call's client has cancelled or gone."""
    check = _still_wanted.get()
    if check is not None and not check():
        raise CallCancelled("the caller cancelled the call (or its deadline passed); work stopped")
