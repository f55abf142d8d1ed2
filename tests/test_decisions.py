"""Every branch of the Identify decision rules (service.engine.decisions)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from index import SearchResult
from service.domain import CollectionKind, Decision
from service.engine.decisions import (
    PAY_THRESHOLD_OFFSET,
    Policy,
    decide,
    default_hint_required_above,
    default_margin,
    default_threshold,
    hint_required_by_size,
    need_hint,
)


def result(*pairs: tuple[str, float]) -> SearchResult:
    return SearchResult(
        uids=tuple(u for u, _ in pairs),
        scores=np.array([s for _, s in pairs], dtype=np.float32),
        face_ids=np.arange(len(pairs), dtype=np.int64),
    )


# Values exactly representable in float32 so boundaries are exact.
POLICY = Policy(threshold=0.5, margin=0.25, hint_required_above=0)


def run(res: SearchResult, *, hinted: bool = False, hints: bool = True, top_k: int = 5):  # type: ignore[no-untyped-def]
    return decide(res, POLICY, hinted=hinted, hints_available=hints, top_k=top_k)


def test_empty_result_is_no_match() -> None:
    out = run(SearchResult())
    assert (out.decision, out.uid, out.score, out.candidates) == (Decision.NO_MATCH, None, 0.0, ())


def test_below_threshold_is_no_match_with_candidates() -> None:
    out = run(result(("a", 0.49), ("b", 0.1)))
    assert out.decision is Decision.NO_MATCH and out.uid is None
    assert out.score == pytest.approx(0.49)
    assert [c.uid for c in out.candidates] == ["a", "b"]


def test_exactly_threshold_matches() -> None:
    out = run(result(("a", 0.5)))
    assert out.decision is Decision.MATCH and out.uid == "a" and out.score == 0.5


def test_single_candidate_above_threshold_matches() -> None:
    out = run(result(("a", 0.9)))
    assert out.decision is Decision.MATCH and out.uid == "a"


def test_clear_margin_matches() -> None:
    out = run(result(("a", 0.75), ("b", 0.4999)))
    assert out.decision is Decision.MATCH and out.uid == "a"
    assert [c.uid for c in out.candidates] == ["a", "b"]


def test_second_exactly_at_margin_is_ambiguous_boundary() -> None:
    # second == best - margin counts as "too close"
    out = run(result(("a", 0.75), ("b", 0.5)), hinted=True)
    assert out.decision is Decision.AMBIGUOUS and out.uid is None
    assert [c.uid for c in out.candidates] == ["a", "b"]


def test_close_second_without_hint_needs_hint_and_withholds_candidates() -> None:
    out = run(result(("a", 0.8), ("b", 0.79)), hinted=False, hints=True)
    assert out.decision is Decision.NEED_HINT
    assert out.uid is None and out.candidates == ()


def test_close_second_without_hint_when_hints_cannot_help_is_ambiguous() -> None:
    out = run(result(("a", 0.8), ("b", 0.79)), hinted=False, hints=False)
    assert out.decision is Decision.AMBIGUOUS and out.uid is None


def test_close_second_with_hint_is_ambiguous() -> None:
    out = run(result(("a", 0.8), ("b", 0.79)), hinted=True)
    assert out.decision is Decision.AMBIGUOUS


def test_tie_with_zero_margin_is_ambiguous() -> None:
    policy = Policy(0.5, 0.0, 0)
    out = decide(result(("a", 0.8), ("b", 0.8)), policy, hinted=True, hints_available=True, top_k=5)
    assert out.decision is Decision.AMBIGUOUS


def test_second_below_threshold_can_still_make_it_ambiguous() -> None:
    # best 0.6 and second 0.4: the second is a stranger by threshold but within the margin.
    out = run(result(("a", 0.6), ("b", 0.4)), hinted=True)
    assert out.decision is Decision.AMBIGUOUS


def test_candidates_are_truncated_to_top_k() -> None:
    out = run(result(("a", 0.9), ("b", 0.2), ("c", 0.1)), top_k=1)
    assert out.decision is Decision.MATCH
    assert [c.uid for c in out.candidates] == ["a"]


def test_need_hint_outcome() -> None:
    out = need_hint()
    assert (out.decision, out.uid, out.candidates) == (Decision.NEED_HINT, None, ())


@pytest.mark.parametrize(
    ("limit", "users", "hinted", "expected"),
    [
        (0, 10**6, False, False),  # 0 = never
        (100, 100, False, False),  # at the limit: still allowed
        (100, 101, False, True),  # above: hint required
        (100, 101, True, False),  # a hinted request is always searched
        (1, 0, False, False),
    ],
)
def test_hint_required_by_size(limit: int, users: int, hinted: bool, expected: bool) -> None:
    assert hint_required_by_size(Policy(0.5, 0.1, limit), users, hinted) is expected


def test_default_thresholds_pay_is_stricter() -> None:
    assert default_threshold(CollectionKind.MEMBER, 0.8) == 0.8
    assert default_threshold(CollectionKind.PAY, 0.8) == pytest.approx(0.8 + PAY_THRESHOLD_OFFSET)
    assert default_threshold(CollectionKind.PAY, 0.99) == 1.0
    assert default_margin(CollectionKind.PAY) >= default_margin(CollectionKind.MEMBER) > 0


scores = st.floats(min_value=-1.0, max_value=1.0, allow_nan=False, width=32)


@given(
    st.lists(scores, min_size=0, max_size=6),
    st.floats(-1.0, 1.0, width=32),
    st.floats(0.0, 0.5, width=32),
    st.booleans(),
    st.booleans(),
)
def test_a_match_is_always_clear(
    raw: list[float], threshold: float, margin: float, hinted: bool, hints: bool
) -> None:
    ordered = sorted(raw, reverse=True)
    res = result(*((f"u{i}", s) for i, s in enumerate(ordered)))
    out = decide(res, Policy(threshold, margin, 0), hinted=hinted, hints_available=hints, top_k=3)
    if out.decision is Decision.MATCH:
        assert out.uid == "u0"
        assert out.score >= threshold
        assert len(ordered) == 1 or np.float32(ordered[1]) < out.score - margin
    else:
        assert out.uid is None
    if out.decision is Decision.NEED_HINT:
        assert not hinted and hints and out.candidates == ()
    assert len(out.candidates) <= 3


def test_default_hint_requirement_by_kind_and_setting() -> None:
    # PAY: the 1:N budget over the pairwise target FMR (1e-3 / 1e-5 users).
    assert default_hint_required_above(CollectionKind.PAY) == 100
    assert default_hint_required_above(CollectionKind.MEMBER) == 0
    # A server setting >= 0 wins for both kinds (0 = never).
    assert default_hint_required_above(CollectionKind.PAY, 0) == 0
    assert default_hint_required_above(CollectionKind.MEMBER, 5000) == 5000
