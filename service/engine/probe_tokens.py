"""Probe tokens: after NEED_HINT, the retry with a hint reuses the face already computed.

A token is an opaque random string (``secrets.token_urlsafe``) naming an in-memory entry:
the probe's embedding, its face box and the model and collection it belongs to. Entries
live ``ttl_s`` seconds in a bounded cache (oldest evicted first); tokens are never written
to disk, so a restart simply invalidates them and the terminal sends the photo again.

A token may be redeemed up to ``max_uses`` times before it expires: a customer who mistypes
the last 4 digits can retype them without showing their face again, while a leaked token
cannot be used to probe many buckets.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from service.domain import FaceBox
from service.errors import ProbeTokenInvalid
from service.pipeline.types import FloatArray

DEFAULT_MAX_USES = 3
DEFAULT_CAPACITY = 10_000


@dataclass(frozen=True, slots=True)
class Probe:
    collection: str
    collection_id: int  # a deleted and re-created collection does not accept old tokens
    model_id: str
    embedding: FloatArray  # (D,) float32, read-only
    face: FaceBox


@dataclass(slots=True)
class _Entry:
    probe: Probe
    expires: float
    uses_left: int


class ProbeTokens:
    """Thread-safe, bounded, expiring map token -> Probe."""

    def __init__(
        self,
        *,
        ttl_s: float,
        capacity: int = DEFAULT_CAPACITY,
        max_uses: int = DEFAULT_MAX_USES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl_s <= 0 or capacity < 1 or max_uses < 1:
            raise ValueError("ttl_s > 0, capacity >= 1 and max_uses >= 1 are required")
        self.ttl_s = float(ttl_s)
        self._capacity = capacity
        self._max_uses = max_uses
        self._clock = clock
        self._lock = threading.Lock()
        # Insertion order == expiry order (one TTL for all), so eviction pops from the front.
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    def issue(self, probe: Probe) -> str:
        embedding = np.array(probe.embedding, dtype=np.float32, copy=True)
        embedding.setflags(write=False)
        frozen = Probe(probe.collection, probe.collection_id, probe.model_id, embedding, probe.face)
        token = secrets.token_urlsafe(24)
        now = self._clock()
        with self._lock:
            self._evict(now)
            while len(self._entries) >= self._capacity:
                self._entries.popitem(last=False)
            self._entries[token] = _Entry(frozen, now + self.ttl_s, self._max_uses)
        return token

    def redeem(self, token: str, *, collection: str, collection_id: int, model_id: str) -> Probe:
        """The probe behind ``token``; raises ProbeTokenInvalid (unknown, expired, used up,
        or issued for another collection or model)."""
        if not isinstance(token, str) or not token or len(token) > 128:
            raise ProbeTokenInvalid("probe_token is malformed")
        now = self._clock()
        with self._lock:
            self._evict(now)
            entry = self._entries.get(token)
            if entry is None:
                raise ProbeTokenInvalid(
                    "probe_token is unknown or expired; send the photo again",
                    metadata={"ttl_s": f"{self.ttl_s:g}"},
                )
            p = entry.probe
            if p.collection != collection or p.collection_id != collection_id:
                raise ProbeTokenInvalid(
                    "probe_token was issued for another collection",
                    metadata={"collection": collection},
                )
            if p.model_id != model_id:
                raise ProbeTokenInvalid("probe_token was issued for another model")
            entry.uses_left -= 1
            if entry.uses_left <= 0:
                del self._entries[token]
            return p

    def __len__(self) -> int:
        with self._lock:
            self._evict(self._clock())
            return len(self._entries)

    def _evict(self, now: float) -> None:
        entries = self._entries
        while entries:
            token, entry = next(iter(entries.items()))
            if entry.expires > now:
                return
            del entries[token]
