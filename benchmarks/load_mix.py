"""Mixed-load soak for load_bench.py ``--mix``: Enroll / Identify / Delete from K threads.

Each worker repeatedly draws an operation by weight:

* ``enroll``: a person not currently enrolled gets a new uid, enrolled from their photo;
* ``identify``: a probe photo of an enrolled person (a MATCH to anyone else is a wrong
  match), or of a stranger who is never enrolled (any MATCH is a wrong match);
* ``delete``: an enrolled person's uid is deleted, and the person can be enrolled again.

One operation per person at a time, so every answer can be judged. Refusals on a photo's
merits (NO_FACE, MULTIPLE_FACES, LOW_QUALITY, DUPLICATE_FACE on enrolment) are answers,
counted by reason; every other failed call is an error, counted by status code. Results
come per time window (throughput and latency percentiles per operation kind) with the
server's resident memory sampled each window (``--server-pid``), and a final accounting:
the collection's user count must equal its count at the start plus enrolments minus
deletions. The run's own users are deleted at the end (untimed).
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from service.domain import Decision, EnrollRequest, IdentifyRequest
from service.errors import DuplicateFace, FacegateError, FaceRejected
from service.transport.client import FaceGateClient
from service.transport.status import code_for

KINDS = ("enroll", "identify", "delete")
# Refusals that are correct answers about the photo, not failures of the service.
EXPECTED_REFUSALS = frozenset({"NO_FACE", "MULTIPLE_FACES", "LOW_QUALITY", "DUPLICATE_FACE"})


@dataclass
class Identity:
    name: str  # the real person (wrong-match judgement is by person)
    enrol: bytes
    probes: tuple[bytes, ...]
    uid: str | None = None  # set while enrolled
    busy: bool = False
    refusals: int = 0  # enrolment refused on the photo's merits; retired after two


@dataclass
class Window:
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    outcomes: Counter[str] = field(default_factory=Counter)


def parse_mix(text: str) -> dict[str, float]:
    """``"enroll=2,identify=6,delete=2"`` -> weights; unknown kinds are an error."""
    weights: dict[str, float] = {}
    for part in text.split(","):
        kind, _, value = part.partition("=")
        kind = kind.strip()
        if kind not in KINDS:
            raise ValueError(f"unknown operation {kind!r} in --mix; use {', '.join(KINDS)}")
        weights[kind] = float(value or 1)
    if not any(weights.values()):
        raise ValueError("--mix needs a positive weight")
    return weights


def read_rss(pid: int | None) -> int | None:
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class MixedLoad:
    def __init__(
        self,
        client: FaceGateClient,
        collection: str,
        people: Sequence[Identity],
        strangers: Sequence[bytes],
        weights: dict[str, float],
        *,
        allow_duplicate: bool,
        seed: int,
    ) -> None:
        self.client = client
        self.collection = collection
        self.people = list(people)
        self.strangers = list(strangers)
        self.kinds = [k for k in KINDS if weights.get(k, 0) > 0]
        self.weights = [weights[k] for k in self.kinds]
        self.allow_duplicate = allow_duplicate
        self.seed = seed
        self.run_tag = f"mix-{int(time.time()):x}"
        self.lock = threading.Lock()
        self.next_uid = 0
        self.enrolled = 0
        self.deleted = 0
        self.errors: Counter[str] = Counter()  # "kind:CODE"
        self.refusals: Counter[str] = Counter()  # "kind:REASON"
        self.wrong: Counter[str] = Counter()
        self.decisions: Counter[str] = Counter()
        self.windows: list[Window] = []

    # ------------------------------------------------------------ choosing work

    def _take(self, rng: random.Random, kind: str) -> tuple[str, Identity | None, bytes]:
        """Reserve a person for ``kind``; falls back to another kind when none fits."""
        with self.lock:
            free = [p for p in self.people if not p.busy and p.uid is None and p.refusals < 2]
            enrolled = [p for p in self.people if not p.busy and p.uid is not None]
            if kind == "enroll" and not free:
                kind = "delete"
            if kind == "delete" and not enrolled:
                kind = "enroll" if free else "identify"
            if kind == "identify":
                if self.strangers and (not enrolled or rng.random() < 0.2):
                    return "identify", None, rng.choice(self.strangers)
                if not enrolled:
                    return "idle", None, b""
                person = rng.choice(enrolled)
                photo = rng.choice(person.probes or (person.enrol,))
            else:
                person = rng.choice(free if kind == "enroll" else enrolled)
                photo = person.enrol
            person.busy = True
            return kind, person, photo

    # ------------------------------------------------------------ one operation

    def _one(self, kind: str, person: Identity | None, photo: bytes) -> str:
        """Run one call; returns its outcome label (OK, a refusal reason, or an error code)."""
        if kind == "enroll":
            assert person is not None
            with self.lock:
                uid = f"{self.run_tag}-{self.next_uid:07d}"
                self.next_uid += 1
            try:
                self.client.enroll(
                    EnrollRequest(
                        collection=self.collection,
                        uid=uid,
                        images=(photo,),
                        allow_duplicate=self.allow_duplicate,
                    )
                )
            except (FaceRejected, DuplicateFace) as exc:
                person.refusals += 1
                return exc.reason
            person.uid = uid
            with self.lock:
                self.enrolled += 1
            return "OK"
        if kind == "delete":
            assert person is not None and person.uid is not None
            self.client.delete_user(self.collection, person.uid)
            person.uid = None
            with self.lock:
                self.deleted += 1
            return "OK"
        try:
            res = self.client.identify(IdentifyRequest(collection=self.collection, image=photo))
        except FaceRejected as exc:
            return exc.reason
        with self.lock:
            self.decisions[res.decision.value] += 1
            if res.decision is Decision.MATCH:
                if person is None:
                    self.wrong["stranger_matched"] += 1
                elif res.uid != person.uid:
                    self.wrong["match_to_wrong_uid"] += 1
        return "OK"

    def _worker(self, index: int, stop: float, window_s: float, t0: float) -> None:
        rng = random.Random(self.seed * 1000 + index)
        while (now := time.monotonic()) < stop:
            kind, person, photo = self._take(rng, rng.choices(self.kinds, self.weights)[0])
            if kind == "idle":
                time.sleep(0.01)
                continue
            try:
                outcome = self._one(kind, person, photo)
            except FacegateError as exc:
                outcome = code_for(exc).name
            latency = time.monotonic() - now
            with self.lock:
                if person is not None:
                    person.busy = False
                window = self.windows[min(int((now - t0) / window_s), len(self.windows) - 1)]
                window.latencies[kind].append(latency)
                window.outcomes[f"{kind}:{outcome}"] += 1
                if outcome != "OK":
                    if outcome in EXPECTED_REFUSALS:
                        self.refusals[f"{kind}:{outcome}"] += 1
                    else:
                        self.errors[f"{kind}:{outcome}"] += 1

    # ------------------------------------------------------------ the run

    def run(
        self, concurrency: int, seconds: float, window_s: float, server_pid: int | None, log: Any
    ) -> dict[str, Any]:
        users_before = self.client.get_collection(self.collection).user_count
        n_windows = max(1, int(np.ceil(seconds / window_s)))
        self.windows = [Window() for _ in range(n_windows)]
        rss: list[tuple[float, int | None]] = [(0.0, read_rss(server_pid))]
        t0 = time.monotonic()
        stop = t0 + seconds
        workers = [
            threading.Thread(target=self._worker, args=(i, stop, window_s, t0), daemon=True)
            for i in range(concurrency)
        ]
        for w in workers:
            w.start()
        for i in range(1, n_windows + 1):
            time.sleep(max(0.0, min(t0 + i * window_s, stop) - time.monotonic()))
            rss.append((round(time.monotonic() - t0, 1), read_rss(server_pid)))
            log(f"window {i}/{n_windows}: {self._window_line(self.windows[i - 1], window_s)}")
        for w in workers:
            w.join()
        elapsed = time.monotonic() - t0
        users_after = self.client.get_collection(self.collection).user_count
        expected = users_before + self.enrolled - self.deleted
        cleaned = self._cleanup()
        return {
            "mix": dict(zip(self.kinds, self.weights, strict=True)),
            "seed": self.seed,
            "elapsed_s": round(elapsed, 1),
            "operations": sum(sum(w.outcomes.values()) for w in self.windows),
            "ops_per_s": round(sum(sum(w.outcomes.values()) for w in self.windows) / elapsed, 2),
            "per_kind": self._summary([w.latencies for w in self.windows]),
            "errors": sum(self.errors.values()),
            "errors_by_code": dict(self.errors),
            "refusals_by_reason": dict(self.refusals),
            "wrong_matches": dict(self.wrong),
            "decisions": dict(self.decisions),
            "enrolled": self.enrolled,
            "deleted": self.deleted,
            "users_before": users_before,
            "users_after": users_after,
            "accounting_ok": users_after == expected,
            "cleanup_deleted": cleaned,
            "windows": [self._window_summary(w, window_s) for w in self.windows],
            "server_rss_mib": [(t, _mib(b)) for t, b in rss],
            **_memory_ratios(rss),
        }

    def _cleanup(self) -> int:
        n = 0
        for person in self.people:
            if person.uid is not None:
                try:
                    self.client.delete_user(self.collection, person.uid)
                    n += 1
                except FacegateError:
                    pass
                person.uid = None
        return n

    @staticmethod
    def _summary(latency_maps: list[dict[str, list[float]]]) -> dict[str, Any]:
        merged: dict[str, list[float]] = defaultdict(list)
        for m in latency_maps:
            for k, v in m.items():
                merged[k].extend(v)
        return {k: _percentiles(v) for k, v in sorted(merged.items())}

    def _window_summary(self, window: Window, window_s: float) -> dict[str, Any]:
        return {
            "per_kind": {
                k: {**_percentiles(v), "per_s": round(len(v) / window_s, 2)}
                for k, v in sorted(window.latencies.items())
            },
            "outcomes": dict(window.outcomes),
        }

    def _window_line(self, window: Window, window_s: float) -> str:
        parts = []
        for kind, lat in sorted(window.latencies.items()):
            p = _percentiles(lat)
            parts.append(f"{kind} {len(lat) / window_s:.1f}/s p50 {p['p50_ms']} p99 {p['p99_ms']}")
        with self.lock:
            errors = sum(self.errors.values())
        return "; ".join(parts) + f"; errors so far {errors}"


def _percentiles(latencies: list[float]) -> dict[str, Any]:
    if not latencies:
        return {"count": 0, "p50_ms": None, "p95_ms": None, "p99_ms": None, "max_ms": None}
    ms = np.array(latencies) * 1000.0
    return {
        "count": len(latencies),
        "p50_ms": round(float(np.percentile(ms, 50)), 1),
        "p95_ms": round(float(np.percentile(ms, 95)), 1),
        "p99_ms": round(float(np.percentile(ms, 99)), 1),
        "max_ms": round(float(ms.max()), 1),
    }


def _mib(value: int | None) -> float | None:
    return None if value is None else round(value / 2**20, 1)


def _memory_ratios(rss: list[tuple[float, int | None]]) -> dict[str, Any]:
    """start/middle/end RSS and the flat-memory ratios (end/start, and end/middle, which
    leaves out the first half's warm-up growth)."""
    values = [b for _, b in rss]
    if any(v is None for v in values) or len(values) < 2:
        return {"rss_start_mib": None, "rss_middle_mib": None, "rss_end_mib": None}
    start, middle, end = values[0], values[len(values) // 2], values[-1]
    assert start is not None and middle is not None and end is not None
    return {
        "rss_start_mib": _mib(start),
        "rss_middle_mib": _mib(middle),
        "rss_end_mib": _mib(end),
        "rss_end_over_start": round(end / start, 3),
        "rss_end_over_middle": round(end / middle, 3),
    }
