"""NEED_HINT probe tokens: expiry, scope, use limit, bounded size, thread safety."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from service.domain import FaceBox
from service.engine.probe_tokens import Probe, ProbeTokens
from service.errors import ProbeTokenInvalid

BOX = FaceBox(1.0, 2.0, 3.0, 4.0, 0.9)


def probe(collection: str = "c", cid: int = 1, model: str = "m") -> Probe:
    return Probe(collection, cid, model, np.full(4, 0.5, np.float32), BOX)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_issue_and_redeem() -> None:
    tokens = ProbeTokens(ttl_s=60)
    src = probe()
    token = tokens.issue(src)
    assert len(token) >= 32 and token != tokens.issue(src)
    got = tokens.redeem(token, collection="c", collection_id=1, model_id="m")
    np.testing.assert_array_equal(got.embedding, src.embedding)
    assert got.face == BOX
    with pytest.raises(ValueError):
        got.embedding[0] = 5  # read-only copy, not the caller's array


def test_expiry() -> None:
    clock = Clock()
    tokens = ProbeTokens(ttl_s=10, clock=clock)
    token = tokens.issue(probe())
    clock.now += 9.9
    tokens.redeem(token, collection="c", collection_id=1, model_id="m")
    clock.now += 0.2
    with pytest.raises(ProbeTokenInvalid, match="expired"):
        tokens.redeem(token, collection="c", collection_id=1, model_id="m")
    assert len(tokens) == 0


@pytest.mark.parametrize(
    ("collection", "cid", "model"), [("other", 1, "m"), ("c", 2, "m"), ("c", 1, "m2")]
)
def test_scope(collection: str, cid: int, model: str) -> None:
    tokens = ProbeTokens(ttl_s=10)
    token = tokens.issue(probe())
    with pytest.raises(ProbeTokenInvalid):
        tokens.redeem(token, collection=collection, collection_id=cid, model_id=model)


@pytest.mark.parametrize("bad", ["", "x" * 200, "unknown-token"])
def test_unknown_or_malformed(bad: str) -> None:
    with pytest.raises(ProbeTokenInvalid):
        ProbeTokens(ttl_s=10).redeem(bad, collection="c", collection_id=1, model_id="m")


def test_use_limit() -> None:
    tokens = ProbeTokens(ttl_s=10, max_uses=2)
    token = tokens.issue(probe())
    for _ in range(2):
        tokens.redeem(token, collection="c", collection_id=1, model_id="m")
    with pytest.raises(ProbeTokenInvalid):
        tokens.redeem(token, collection="c", collection_id=1, model_id="m")


def test_capacity_evicts_oldest() -> None:
    tokens = ProbeTokens(ttl_s=10, capacity=3)
    issued = [tokens.issue(probe()) for _ in range(5)]
    assert len(tokens) == 3
    for t in issued[:2]:
        with pytest.raises(ProbeTokenInvalid):
            tokens.redeem(t, collection="c", collection_id=1, model_id="m")
    for t in issued[2:]:
        tokens.redeem(t, collection="c", collection_id=1, model_id="m")


def test_bad_configuration() -> None:
    for kwargs in ({"ttl_s": 0}, {"ttl_s": 1, "capacity": 0}, {"ttl_s": 1, "max_uses": 0}):
        with pytest.raises(ValueError):
            ProbeTokens(**kwargs)  # type: ignore[arg-type]


def test_thread_safety() -> None:
    tokens = ProbeTokens(ttl_s=10, capacity=500, max_uses=1)
    errors: list[BaseException] = []
    redeemed: list[int] = []

    def worker() -> None:
        try:
            for _ in range(200):
                t = tokens.issue(probe())
                try:
                    tokens.redeem(t, collection="c", collection_id=1, model_id="m")
                    redeemed.append(1)
                except ProbeTokenInvalid:
                    pass  # evicted by other threads' issues: allowed
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(redeemed) == 800 and len(tokens) == 0
