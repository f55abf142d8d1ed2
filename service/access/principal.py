"""Who is calling: the authenticated principal of the current call.

The auth interceptor binds it for the duration of a call (a ``ContextVar``, so it follows the
call's thread and never leaks into another call); the engine and the audit log read it with
``current_principal()``. Without authentication configured, calls run as ``LOCAL_ADMIN``
(the embedded loopback default), and the audit log says so.
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass


class Role(enum.Enum):
    TERMINAL = "terminal"  # Identify, Verify
    ENROLLER = "enroller"  # Enroll, DeleteUser, GetUser, ListUsers (+ terminal's calls)
    ADMIN = "admin"  # collections, imports, everything


@dataclass(frozen=True, slots=True)
class Principal:
    key_id: str  # names the API key, never the key itself
    role: Role
    collections: frozenset[str] | None = None  # None: every collection

    def may_use(self, collection: str) -> bool:
        return self.collections is None or collection in self.collections


LOCAL_ADMIN = Principal("local-unauthenticated", Role.ADMIN)

_current: ContextVar[Principal] = ContextVar("facegate_principal", default=LOCAL_ADMIN)


def current_principal() -> Principal:
    return _current.get()


@contextlib.contextmanager
def acting_as(principal: Principal) -> Iterator[Principal]:
    token = _current.set(principal)
    try:
        yield principal
    finally:
        _current.reset(token)
