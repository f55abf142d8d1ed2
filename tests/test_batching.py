"""MicroBatcher: batching, result routing, errors, deadlines, shutdown."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from service.engine.batching import BatcherClosedError, MicroBatcher
from service.errors import Overloaded


class Recorder:
    """A batch function that squares its inputs and remembers each batch."""

    def __init__(self, delay: float = 0.0, gate: threading.Event | None = None) -> None:
        self.batches: list[list[int]] = []
        self.delay = delay
        self.gate = gate
        self.started = threading.Event()

    def __call__(self, items: list[int]) -> list[int]:
        self.started.set()
        if self.gate is not None:
            self.gate.wait(10)
        self.batches.append(list(items))
        if self.delay:
            time.sleep(self.delay)
        return [x * x for x in items]


def run_threads(n: int, target: Callable[[int], None]) -> None:
    threads = [threading.Thread(target=target, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)


def test_single_item() -> None:
    rec = Recorder()
    b = MicroBatcher(rec, window_ms=1)
    try:
        assert b.submit(7) == 49
        assert rec.batches == [[7]]
    finally:
        b.close()


def test_concurrent_items_share_batches_and_get_their_own_results() -> None:
    rec = Recorder(delay=0.02)
    b = MicroBatcher(rec, window_ms=20, max_batch=8)
    results: dict[int, int] = {}
    barrier = threading.Barrier(20)

    def one(i: int) -> None:
        barrier.wait()
        results[i] = b.submit(i, timeout=10)

    try:
        run_threads(20, one)
    finally:
        b.close()
    assert results == {i: i * i for i in range(20)}
    assert sorted(x for batch in rec.batches for x in batch) == list(range(20))
    assert len(rec.batches) < 20
    assert max(len(batch) for batch in rec.batches) <= 8
    assert b.batches_run == len(rec.batches) and b.items_run == 20


def test_submit_many_keeps_order() -> None:
    rec = Recorder()
    b = MicroBatcher(rec, window_ms=5, max_batch=3)
    try:
        assert b.submit_many([1, 2, 3, 4, 5]) == [1, 4, 9, 16, 25]
        assert b.submit_many([]) == []
    finally:
        b.close()


def test_zero_window() -> None:
    b = MicroBatcher(Recorder(), window_ms=0)
    try:
        assert [b.submit(i) for i in range(5)] == [0, 1, 4, 9, 16]
    finally:
        b.close()


def test_errors_reach_every_caller_of_the_batch_and_the_batcher_survives() -> None:
    calls = []

    def fn(items: list[int]) -> list[int]:
        calls.append(items)
        if any(x < 0 for x in items):
            raise ValueError("negative")
        return items

    b = MicroBatcher(fn, window_ms=30)
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            b.submit(-1 if i == 0 else i, timeout=10)
        except ValueError as exc:
            errors.append(exc)

    try:
        run_threads(3, one)
        assert len(errors) >= 1  # at least the negative item's caller
        assert b.submit(5) == 5  # still working
    finally:
        b.close()


def test_wrong_number_of_results_is_an_error() -> None:
    b: MicroBatcher[int, int] = MicroBatcher(lambda items: items[:-1], window_ms=0)
    try:
        with pytest.raises(RuntimeError, match="returned 0 results for 1 items"):
            b.submit(1)
    finally:
        b.close()


def test_timeout_while_waiting_and_expired_items_are_not_computed() -> None:
    gate = threading.Event()
    rec = Recorder(gate=gate)
    b = MicroBatcher(rec, window_ms=0, max_batch=1)
    first = threading.Thread(target=lambda: b.submit(1, timeout=10))
    try:
        first.start()
        assert rec.started.wait(5)  # the worker is now blocked inside fn on item 1
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            b.submit(2, timeout=0.05)
        assert time.monotonic() - t0 < 2
        gate.set()
        first.join(5)
        assert b.submit(3) == 9
    finally:
        gate.set()
        b.close()
    # Item 2's caller gave up before its batch ran: fn never saw it.
    assert [x for batch in rec.batches for x in batch] == [1, 3]


def test_close_drains_queued_items_then_refuses() -> None:
    gate = threading.Event()
    rec = Recorder(gate=gate)
    b = MicroBatcher(rec, window_ms=0, max_batch=2)
    results: dict[int, int] = {}

    def one(i: int) -> None:
        results[i] = b.submit(i)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(5)]
    for t in threads:
        t.start()
    assert rec.started.wait(5)
    time.sleep(0.05)  # let the others queue up behind the blocked batch
    closer = threading.Thread(target=b.close)
    closer.start()
    gate.set()
    closer.join(10)
    for t in threads:
        t.join(10)
    assert results == {i: i * i for i in range(5)}
    with pytest.raises(BatcherClosedError):
        b.submit(1)


def test_bounded_queue_sheds_load() -> None:
    gate = threading.Event()
    rec = Recorder(gate=gate)
    b = MicroBatcher(rec, window_ms=0, max_batch=1, max_queue=2)
    threads = [threading.Thread(target=lambda: b.submit(1, timeout=10)) for _ in range(3)]
    try:
        threads[0].start()
        assert rec.started.wait(5)  # one in fn, queue empty
        threads[1].start()
        threads[2].start()
        deadline = time.monotonic() + 5
        while len(b._queue) < 2 and time.monotonic() < deadline:
            time.sleep(0.005)
        with pytest.raises(Overloaded):
            b.submit(9)
    finally:
        gate.set()
        for t in threads:
            t.join(10)
        b.close()


@pytest.mark.parametrize(
    "kwargs", [{"window_ms": -1}, {"max_batch": 0}, {"workers": 0}, {"max_queue": 0}]
)
def test_bad_configuration(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        MicroBatcher(lambda items: items, **kwargs)  # type: ignore[arg-type]


def test_several_workers() -> None:
    rec = Recorder(delay=0.01)
    b = MicroBatcher(rec, window_ms=1, max_batch=4, workers=2)
    results: dict[int, int] = {}

    def one(i: int) -> None:
        results[i] = b.submit(i, timeout=10)

    try:
        run_threads(16, one)
    finally:
        b.close()
    assert results == {i: i * i for i in range(16)}
