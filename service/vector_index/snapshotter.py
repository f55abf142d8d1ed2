"""Periodic index snapshots, so a restart replays minutes of the change log, not all of it.

The store is the source of truth; a snapshot only shortens start-up (restore the file, then
replay the store's changes after its sequence) and lets the change log be pruned.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class PeriodicSnapshots:
    """Calls ``snapshot`` every ``every_s`` seconds on a daemon thread until ``stop()``."""

    def __init__(self, snapshot: Callable[[], None], every_s: float) -> None:
        if every_s <= 0:
            raise ValueError("every_s must be positive")
        self._snapshot = snapshot
        self._every_s = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="facegate-snapshots", daemon=True)
        self.taken = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self._every_s):
            try:
                self._snapshot()
                self.taken += 1
            except Exception:  # a failed snapshot costs start-up time, never data: keep going
                log.exception("periodic index snapshot failed; the next one will retry")
