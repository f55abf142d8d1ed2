"""An abandoned call stops at the next pipeline stage and commits nothing (service.cancellation).

The real-server proof (cancelled calls give their max_concurrent_rpcs slot back) is in
tests/test_fuzz_rpc.py; these are the engine-level rules, with the fake analyzer.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from fakes import FakeAnalyzer, face_png

from service.app import build_service
from service.cancellation import call_scope, raise_if_abandoned
from service.config import Settings
from service.domain import CollectionSpec, EnrollRequest, IdentifyRequest
from service.engine.face_service import FaceService
from service.errors import CallCancelled


@pytest.fixture
def svc(tmp_path: Path) -> Iterator[FaceService]:
    s = build_service(
        Settings(data_dir=tmp_path / "data", batch_window_ms=1.0), analyzer=FakeAnalyzer()
    )
    s.create_collection(CollectionSpec("shop"))
    yield s
    s.close()


class LeavesAfter:
    """A caller that is still there for the first ``n`` checks, then gone."""

    def __init__(self, n: int) -> None:
        self.left = n
        self.checks = 0

    def __call__(self) -> bool:
        self.checks += 1
        self.left -= 1
        return self.left >= 0


def test_unbound_check_is_a_no_op() -> None:
    raise_if_abandoned()


def test_scope_is_per_call_and_per_thread() -> None:
    seen: list[BaseException | None] = []

    def other_thread() -> None:
        try:
            raise_if_abandoned()
            seen.append(None)
        except CallCancelled as exc:
            seen.append(exc)

    with call_scope(lambda: False):
        with pytest.raises(CallCancelled):
            raise_if_abandoned()
        t = threading.Thread(target=other_thread)
        t.start()
        t.join()
    raise_if_abandoned()  # the scope ended with the call
    assert seen == [None]


def test_abandoned_enrolment_stops_and_enrols_nothing(svc: FaceService) -> None:
    caller = LeavesAfter(2)  # gone after the first image's decode and locate
    request = EnrollRequest("shop", "ada", [face_png(1, v) for v in range(3)])
    with call_scope(caller), pytest.raises(CallCancelled):
        svc.enroll(request)
    assert caller.checks == 3
    assert svc.get_collection("shop").user_count == 0
    assert svc.list_users("shop").users == ()
    # The same request from a caller who stays is enrolled normally.
    with call_scope(lambda: True):
        assert svc.enroll(request).created


def test_abandoned_identify_is_cancelled(svc: FaceService) -> None:
    svc.enroll(EnrollRequest("shop", "ada", [face_png(1)]))
    with call_scope(lambda: False), pytest.raises(CallCancelled):
        svc.identify(IdentifyRequest("shop", face_png(1, 1)))
    assert svc.identify(IdentifyRequest("shop", face_png(1, 1))).uid == "ada"
