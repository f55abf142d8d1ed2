"""The stage-timing seam: how the engine and the pipeline report what they spend time on.

Any stage is timed by one line, ``with timer.stage(DETECT): ...``; micro-batched runs also
report their batch size. The default ``NO_TIMING`` does nothing, so the pipeline carries no
metrics dependency; ``service.observability.metrics`` implements the protocol with
Prometheus histograms.
"""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager
from typing import Final, Protocol

DECODE: Final = "decode"
DETECT: Final = "detect"
LANDMARKS: Final = "landmarks"
ALIGN: Final = "align"
QUALITY: Final = "quality"
LIVENESS: Final = "liveness"
EMBED: Final = "embed"  # one batched model run (all chips of the batch)
SEARCH: Final = "search"  # one batched index search (all queries of the batch)
STAGES: Final = (DECODE, DETECT, LANDMARKS, ALIGN, QUALITY, LIVENESS, EMBED, SEARCH)


class StageTimer(Protocol):
    def stage(self, name: str) -> AbstractContextManager[object]:
        """Times the ``with`` block as one run of stage ``name`` (also when it raises)."""

    def batch(self, queue: str, size: int) -> None:
        """A micro-batched run of ``queue`` (``embed``, ``search``) took ``size`` items."""


class NoTiming:
    """The default: times nothing."""

    def stage(self, name: str) -> AbstractContextManager[object]:
        return contextlib.nullcontext()

    def batch(self, queue: str, size: int) -> None:
        return None


NO_TIMING: Final[StageTimer] = NoTiming()
