"""Identify decisions: pure functions from search results and a collection's policy.

The rules, in order (a payment must never go to the wrong person, so every doubt resolves
to "ask for more" rather than to a guess):

1. No hint, and the collection holds more users than ``hint_required_above`` (> 0):
   NEED_HINT without searching. A large gallery's false-match budget is spent before the
   face is even compared, so no score can justify a MATCH.
2. Nobody at or above ``threshold``: NO_MATCH.
3. The second UID scores within ``margin`` of the best (``second >= best - margin``):
   AMBIGUOUS when the search was hinted (there is nothing left to narrow), NEED_HINT
   when it was not and hints can help (some user in the collection has a phone bucket),
   AMBIGUOUS otherwise.
4. Otherwise: MATCH with the best UID.

Candidates (best first, at most ``top_k``) are returned with MATCH, NO_MATCH and AMBIGUOUS
for the operator; NEED_HINT returns none, because it exists to withhold an identity.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from index import SearchResult
from service.domain import Candidate, CollectionKind, Decision
from service.models.calibration import Calibration

log = logging.getLogger(__name__)

# Default target false-match rates per assurance level (pairwise: one probe against one
# enrolled face). In 1:N identification a stranger is compared with every enrolled user, so
# the chance that *some* user reaches the threshold is about N × FMR: at 1e-5 a gallery of
# 1,000 customers lets ~1 % of strangers through the threshold alone (the margin rule and
# hints catch part of the rest; benchmarks/stranger_bench.py measures it). Paying as the
# wrong person is the costly error, so PAY takes the strictest rate the calibration data
# supports (LFW DevTrain's ~10^7 impostor pairs measure 1e-5 with ~100 false matches);
# a wrong member greeting is cheap and a missed one is annoying, so MEMBER takes 1e-3.
DEFAULT_TARGET_FMR = {CollectionKind.PAY: 1e-5, CollectionKind.MEMBER: 1e-3}
# Fallback when the pack has no calibration for the target: PAY is the pack's uncalibrated
# default plus this much (stricter), MEMBER is the pack's default.
PAY_THRESHOLD_OFFSET = 0.04
DEFAULT_MARGIN = {CollectionKind.PAY: 0.05, CollectionKind.MEMBER: 0.03}
# The 1:N budget of a PAY collection: the share of strangers allowed to reach the threshold
# of *some* enrolled user on an un-hinted search, before the margin rule. With N users that
# share is about N x the pairwise FMR, so an un-hinted search is allowed only up to
# budget / FMR users (1e-3 / 1e-5 = 100); above that, PAY collections answer NEED_HINT and the
# terminal asks for the last 4 phone digits, which narrow the search to a bucket (~N / 10,000
# users). benchmarks/stranger_bench.py measured why: at the calibrated pay threshold alone, a
# 1,000-user gallery let 3 % of strangers through with margin 0 and 0.1 % with margin 0.05
# (while matching only 7.7 % of customers without hints). MEMBER collections never require a
# hint because of their size: a wrong greeting is cheap.
PAY_IDENTIFICATION_BUDGET = 1e-3


def default_threshold(
    kind: CollectionKind, pack_default: float, calibration: Calibration | None = None
) -> float:
    """A collection's threshold when its spec leaves it unset: the pack's calibrated
    threshold for the kind's target FMR, else (with a warning) the uncalibrated default."""
    target = DEFAULT_TARGET_FMR[kind]
    if calibration is not None:
        threshold = calibration.threshold_for(target)
        if threshold is not None:
            return threshold
        log.warning(
            "model %s has no calibrated threshold for FMR %g (the %s default); using the "
            "uncalibrated default. Calibrate with benchmarks/calibrate.py on more data.",
            calibration.model_id,
            target,
            kind.value,
        )
    else:
        log.warning(
            "the model pack is not calibrated; %s collections use the uncalibrated threshold "
            "(run benchmarks/calibrate.py --write to calibrate it)",
            kind.value,
        )
    if kind is CollectionKind.PAY:
        return min(1.0, pack_default + PAY_THRESHOLD_OFFSET)
    return pack_default


def default_margin(kind: CollectionKind) -> float:
    return DEFAULT_MARGIN[kind]


def default_hint_required_above(kind: CollectionKind, setting: int = -1) -> int:
    """A collection's size limit for un-hinted searches when its spec leaves it unset:
    the server setting when it is >= 0 (0 = never), else the kind's rule (see
    ``PAY_IDENTIFICATION_BUDGET``)."""
    if setting >= 0:
        return setting
    if kind is CollectionKind.PAY:
        return round(PAY_IDENTIFICATION_BUDGET / DEFAULT_TARGET_FMR[CollectionKind.PAY])
    return 0


@dataclass(frozen=True, slots=True)
class Policy:
    threshold: float
    margin: float
    hint_required_above: int  # 0 = never require a hint because of size


@dataclass(frozen=True, slots=True)
class Outcome:
    decision: Decision
    uid: str | None
    score: float  # best UID's score (0.0 when nothing was searched or found)
    candidates: tuple[Candidate, ...]


def hint_required_by_size(policy: Policy, user_count: int, hinted: bool) -> bool:
    """Rule 1: must an un-hinted request be turned away before searching?"""
    limit = policy.hint_required_above
    return (not hinted) and limit > 0 and user_count > limit


def need_hint() -> Outcome:
    return Outcome(Decision.NEED_HINT, None, 0.0, ())


def decide(
    result: SearchResult,
    policy: Policy,
    *,
    hinted: bool,
    hints_available: bool,
    top_k: int,
) -> Outcome:
    """Rules 2-4 on one query's search result (top UIDs, best first)."""
    if len(result) == 0:
        return Outcome(Decision.NO_MATCH, None, 0.0, ())
    candidates = tuple(
        Candidate(uid, float(score))
        for uid, score in zip(result.uids[:top_k], result.scores[:top_k].tolist(), strict=True)
    )
    best = float(result.scores[0])
    if best < policy.threshold:
        return Outcome(Decision.NO_MATCH, None, best, candidates)
    if len(result) > 1 and float(result.scores[1]) >= best - policy.margin:
        if not hinted and hints_available:
            return Outcome(Decision.NEED_HINT, None, best, ())
        return Outcome(Decision.AMBIGUOUS, None, best, candidates)
    return Outcome(Decision.MATCH, result.uids[0], best, candidates)
