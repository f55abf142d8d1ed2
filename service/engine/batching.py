"""Micro-batching: concurrent requests share one model run or one index search.

gRPC serves each request on a worker thread. Those threads hand their item to a
:class:`MicroBatcher` and block; a background thread collects items for at most
``window_ms`` (or until ``max_batch``), calls ``fn`` once for the whole batch and hands each
caller its own result or exception. A model run on 8 chips costs far less than 8 runs on 1.

Deadlines: a caller waits at most its ``timeout``; an item whose caller has given up or
whose deadline passed before the batch ran is not computed at all. Both raise the builtin
``TimeoutError``, which the gRPC layer maps to DEADLINE_EXCEEDED.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from service.errors import Overloaded

T = TypeVar("T")
R = TypeVar("R")


@dataclass(eq=False)
class _Slot(Generic[T, R]):
    item: T
    deadline: float | None  # time.monotonic() value
    done: threading.Event = field(default_factory=threading.Event)
    result: R | None = None
    error: BaseException | None = None
    abandoned: bool = False


class BatcherClosedError(RuntimeError):
    """submit() after close()."""


class MicroBatcher(Generic[T, R]):
    """Run ``fn(list[T]) -> list[R]`` on batches of concurrently submitted items."""

    def __init__(
        self,
        fn: Callable[[list[T]], Sequence[R]],
        *,
        window_ms: float = 2.0,
        max_batch: int = 32,
        workers: int = 1,
        max_queue: int = 10_000,
        name: str = "batcher",
    ) -> None:
        if window_ms < 0 or max_batch < 1 or workers < 1 or max_queue < 1:
            raise ValueError("window_ms >= 0, max_batch >= 1, workers >= 1, max_queue >= 1")
        self._fn = fn
        self._window = window_ms / 1000.0
        self._max_batch = max_batch
        self._max_queue = max_queue
        self._name = name
        self._queue: deque[_Slot[T, R]] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self.batches_run = 0  # for tests and metrics
        self.items_run = 0
        self._threads = [
            threading.Thread(target=self._loop, name=f"{name}-{i}", daemon=True)
            for i in range(workers)
        ]
        for t in self._threads:
            t.start()

    def submit(self, item: T, timeout: float | None = None) -> R:
        """Block until the batch holding ``item`` has run; return its result or raise."""
        return self.submit_many([item], timeout)[0]

    def submit_many(self, items: Sequence[T], timeout: float | None = None) -> list[R]:
        """Submit several items at once (they may share a batch); results in order."""
        deadline = None if timeout is None else time.monotonic() + timeout
        slots = [_Slot[T, R](item, deadline) for item in items]
        with self._cond:
            if self._closed:
                raise BatcherClosedError(f"{self._name} is closed")
            if len(self._queue) + len(slots) > self._max_queue:
                raise Overloaded(
                    f"{self._name}: {len(self._queue)} items already queued",
                    metadata={"queue": self._name},
                )
            self._queue.extend(slots)
            self._cond.notify_all()
        out: list[R] = []
        for slot in slots:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not slot.done.wait(remaining):
                for s in slots:
                    s.abandoned = True  # the worker skips it if it has not started yet
                raise TimeoutError(f"{self._name}: deadline passed while waiting")
            if slot.error is not None:
                raise slot.error
            out.append(slot.result)  # type: ignore[arg-type]
        return out

    def close(self) -> None:
        """Stop accepting items, run everything already queued, stop the workers."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for t in self._threads:
            if t is not threading.current_thread():
                t.join()

    # ------------------------------------------------------------------ worker

    def _take_batch(self) -> list[_Slot[T, R]] | None:
        """Wait for a first item, then for the window to fill; None when closed and empty."""
        with self._cond:
            while not self._queue:
                if self._closed:
                    return None
                self._cond.wait()
            if self._window > 0 and not self._closed:
                end = time.monotonic() + self._window
                while len(self._queue) < self._max_batch and not self._closed:
                    left = end - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
            batch: list[_Slot[T, R]] = []
            while self._queue and len(batch) < self._max_batch:
                batch.append(self._queue.popleft())
            return batch

    def _loop(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            now = time.monotonic()
            live: list[_Slot[T, R]] = []
            for slot in batch:
                if slot.abandoned:
                    continue
                if slot.deadline is not None and now >= slot.deadline:
                    slot.error = TimeoutError(f"{self._name}: deadline passed before the batch ran")
                    slot.done.set()
                    continue
                live.append(slot)
            if live:
                self._run(live)

    def _run(self, live: list[_Slot[T, R]]) -> None:
        try:
            results = list(self._fn([s.item for s in live]))
            if len(results) != len(live):
                raise RuntimeError(
                    f"{self._name}: batch function returned {len(results)} results "
                    f"for {len(live)} items"
                )
        except BaseException as exc:  # every caller must learn of the failure
            for s in live:
                s.error = exc
                s.done.set()
            return
        self.batches_run += 1
        self.items_run += len(live)
        for s, r in zip(live, results, strict=True):
            s.result = r
            s.done.set()
