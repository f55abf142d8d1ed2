from __future__ import annotations

import threading

from service.access.principal import LOCAL_ADMIN, Principal, Role, acting_as, current_principal


def test_default_is_local_admin_and_binding_is_scoped() -> None:
    assert current_principal() is LOCAL_ADMIN
    p = Principal("till-7", Role.TERMINAL, frozenset({"shop"}))
    with acting_as(p):
        assert current_principal() is p
        assert p.may_use("shop") and not p.may_use("other")
    assert current_principal() is LOCAL_ADMIN
    assert LOCAL_ADMIN.may_use("anything")


def test_binding_does_not_leak_into_other_threads() -> None:
    seen: list[Principal] = []
    with acting_as(Principal("enrol-1", Role.ENROLLER)):
        t = threading.Thread(target=lambda: seen.append(current_principal()))
        t.start()
        t.join()
    assert seen == [LOCAL_ADMIN]
