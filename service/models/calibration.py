"""A model pack's calibration: thresholds for target false-match rates, measured on labelled faces.

Semantics (the ones ``service.engine.decisions`` applies: a score *at or above* the threshold is a
match). For a target false-match rate (FMR) ``f`` and ``n`` impostor scores, at most
``k = floor(f · n)`` impostors may reach the threshold; the threshold is the smallest value
on a grid of ``resolution`` (1e-4) that lets at most ``k`` through, i.e. the first grid
point strictly above the (k+1)-th highest impostor score. Ties therefore never let more than
``k`` through: impostors tied with the (k+1)-th score are all rejected together.

How much data a target needs: with ``n < 1/f`` impostors no threshold can show an FMR of
``f`` (one false match already exceeds it), so the target is refused with a message that
says how many are needed. With ``1/f <= n < 10/f`` the threshold is computed but marked
``weak``: its expected false-match count is under 10, so the measured rate is coarse. Every
point also carries the one-sided 95 % Clopper-Pearson upper bound of the true FMR given the
false matches observed (e.g. 0 of n → about 3/n), which is the honest confidence statement.
Pairs formed from the same images are correlated, so the effective sample is smaller than
the pair count; the bound is optimistic in that sense and the README says so.

The calibration is stored in the pack's ``manifest.json`` under ``calibration``; for the
default dlib pack it is also committed beside this module (see ``pack.py``), because that
pack is rebuilt from its sources on every fresh machine.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from service.errors import InvalidArgument, ModelPackError

CALIBRATION_FORMAT = 1
TARGET_FMRS = (1e-3, 1e-4, 1e-5)
THRESHOLD_RESOLUTION = 1e-4
# A threshold is "measured" when at least this many impostors are expected at its FMR.
MIN_EXPECTED_FALSE_MATCHES = 10
CONFIDENCE = 0.95
SUPPORT_LEVELS = ("measured", "weak")

FloatScores = npt.NDArray[np.floating[Any]] | Sequence[float]


# ---------------------------------------------------------------------------- statistics


def allowed_false_matches(target_fmr: float, impostors: int) -> int:
    """``floor(target · n)``, robust to binary rounding (1e-3 · 3000 is 3.0000000000000004)."""
    return math.floor(target_fmr * impostors * (1.0 + 1e-12))


def impostors_needed(target_fmr: float) -> int:
    """The fewest impostor scores at which one false match is within ``target_fmr``."""
    return math.ceil(1.0 / target_fmr * (1.0 - 1e-12))


def fmr_upper_bound(false_matches: int, impostors: int, confidence: float = CONFIDENCE) -> float:
    """One-sided Clopper-Pearson upper confidence bound of a binomial rate.

    The p at which observing ``false_matches`` or fewer out of ``impostors`` has probability
    ``1 - confidence`` (for 0 false matches: ``1 - (1-c)^(1/n)``, about 3/n at 95 %).
    """
    x, n = int(false_matches), int(impostors)
    if n <= 0 or not 0 <= x <= n:
        raise ValueError(f"bad counts: {x} of {n}")
    if x == n:
        return 1.0
    alpha = 1.0 - confidence
    if x == 0:
        return float(-math.expm1(math.log(alpha) / n))
    i = np.arange(x + 1, dtype=np.float64)
    # log C(n, i) for i = 0..x, without lgamma of huge arguments.
    log_fact_i = np.concatenate(([0.0], np.cumsum(np.log(i[1:]))))
    log_falling = np.concatenate(([0.0], np.cumsum(np.log(n - i[:-1]))))
    log_binom = log_falling - log_fact_i

    def cdf(p: float) -> float:
        terms = log_binom + i * math.log(p) + (n - i) * math.log1p(-p)
        top = float(terms.max())
        return float(math.exp(top) * np.exp(terms - top).sum())

    lo, hi = x / n, 1.0
    for _ in range(200):  # bisection; the cdf falls monotonically in p
        mid = (lo + hi) / 2.0
        if cdf(mid) > alpha:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * max(hi, 1e-300):
            break
    return hi


def _scores(values: FloatScores, what: str) -> npt.NDArray[np.float64]:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(arr)):
        raise InvalidArgument(f"{what} scores must be finite", metadata={"field": what})
    return arr


def threshold_at_fmr(
    impostor_scores: FloatScores, target_fmr: float, *, resolution: float = THRESHOLD_RESOLUTION
) -> float:
    """The smallest threshold on the ``resolution`` grid whose FMR is at most ``target_fmr``.

    Raises InvalidArgument when there are too few impostor scores for the target.
    """
    if not 0.0 < target_fmr < 1.0:
        raise InvalidArgument(f"target FMR {target_fmr!r} is not in (0, 1)")
    scores = _scores(impostor_scores, "impostor")
    n = len(scores)
    need = impostors_needed(target_fmr)
    if n < need:
        raise InvalidArgument(
            f"target FMR {target_fmr:g} needs at least {need:,} impostor pairs (one false "
            f"match in {need:,}; >= {MIN_EXPECTED_FALSE_MATCHES * need:,} for a reliable "
            f"threshold), but there are {n:,}",
            metadata={
                "target_fmr": f"{target_fmr:g}",
                "impostor_pairs": str(n),
                "needed": str(need),
            },
        )
    allowed = allowed_false_matches(target_fmr, n)
    descending = np.sort(scores)[::-1]
    pivot = float(descending[allowed])  # the highest impostor score that must be rejected

    def accepted(t: float) -> int:
        return int(np.count_nonzero(scores >= t))

    def grid(step: int) -> float:
        return round(step * resolution, 10)

    step = math.floor(pivot / resolution) + 1
    while grid(step) <= pivot or accepted(grid(step)) > allowed:  # float rounding guards
        step += 1
    while grid(step - 1) > pivot:
        step -= 1
    threshold = grid(step)
    if threshold > 1.0:
        raise InvalidArgument(
            f"impostor scores reach {pivot:.6f}: no cosine threshold keeps the FMR at "
            f"{target_fmr:g} (the same photo under two identities?)",
            metadata={"target_fmr": f"{target_fmr:g}", "impostor_score": f"{pivot:.6f}"},
        )
    return threshold


# ---------------------------------------------------------------------------- records


@dataclass(frozen=True)
class OperatingPoint:
    """One target FMR's threshold, what it let through, and the genuine pairs it accepted."""

    target_fmr: float
    threshold: float
    impostor_pairs: int
    false_matches: int
    fmr: float
    fmr_upper95: float
    genuine_pairs: int
    true_matches: int
    tmr: float
    support: str  # "measured" or "weak" (see the module docstring)

    def to_doc(self) -> dict[str, Any]:
        return {
            "target_fmr": self.target_fmr,
            "threshold": self.threshold,
            "impostor_pairs": self.impostor_pairs,
            "false_matches": self.false_matches,
            "fmr": self.fmr,
            "fmr_upper95": self.fmr_upper95,
            "genuine_pairs": self.genuine_pairs,
            "true_matches": self.true_matches,
            "tmr": self.tmr,
            "support": self.support,
        }


def rates_at(
    threshold: float,
    target_fmr: float,
    genuine_scores: FloatScores,
    impostor_scores: FloatScores,
) -> OperatingPoint:
    """FMR (with its upper bound) and TMR of ``threshold`` on the given score sets."""
    genuine = _scores(genuine_scores, "genuine")
    impostor = _scores(impostor_scores, "impostor")
    if len(impostor) == 0:
        raise InvalidArgument("no impostor scores")
    fm = int(np.count_nonzero(impostor >= threshold))
    tm = int(np.count_nonzero(genuine >= threshold))
    n = len(impostor)
    expected = target_fmr * n
    return OperatingPoint(
        target_fmr=target_fmr,
        threshold=threshold,
        impostor_pairs=n,
        false_matches=fm,
        fmr=fm / n,
        fmr_upper95=round(fmr_upper_bound(fm, n), 9),
        genuine_pairs=len(genuine),
        true_matches=tm,
        tmr=tm / len(genuine) if len(genuine) else 0.0,
        support="measured" if expected >= MIN_EXPECTED_FALSE_MATCHES else "weak",
    )


def operating_point(
    genuine_scores: FloatScores,
    impostor_scores: FloatScores,
    target_fmr: float,
    *,
    resolution: float = THRESHOLD_RESOLUTION,
) -> OperatingPoint:
    """Calibrate one target: its threshold (``threshold_at_fmr``) and its rates."""
    t = threshold_at_fmr(impostor_scores, target_fmr, resolution=resolution)
    return rates_at(t, target_fmr, genuine_scores, impostor_scores)


@dataclass(frozen=True)
class Calibration:
    """What ``benchmarks/calibrate.py`` measured for one pack (the manifest's section)."""

    model_id: str
    dataset: str
    date: str  # ISO 8601 day
    created_by: str
    identities: int
    images: int
    undetected: int  # images where no face was found (their pairs are left out)
    points: tuple[OperatingPoint, ...]  # thresholds calibrated on this data, by target
    unsupported: Mapping[str, str] = field(default_factory=dict)  # target → why not
    # Held-out check: the same thresholds on identities the calibration never saw.
    evaluation: tuple[OperatingPoint, ...] = ()
    evaluation_dataset: str = ""
    notes: str = ""

    def point(self, target_fmr: float) -> OperatingPoint | None:
        for p in self.points:
            if math.isclose(p.target_fmr, target_fmr, rel_tol=1e-9):
                return p
        return None

    def threshold_for(self, target_fmr: float) -> float | None:
        p = self.point(target_fmr)
        return p.threshold if p is not None else None

    def to_doc(self) -> dict[str, Any]:
        return {
            "format": CALIBRATION_FORMAT,
            "model_id": self.model_id,
            "dataset": self.dataset,
            "date": self.date,
            "created_by": self.created_by,
            "identities": self.identities,
            "images": self.images,
            "undetected": self.undetected,
            "points": [p.to_doc() for p in self.points],
            "unsupported": dict(self.unsupported),
            "evaluation": [p.to_doc() for p in self.evaluation],
            "evaluation_dataset": self.evaluation_dataset,
            "notes": self.notes,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_doc(), indent=2, sort_keys=True) + "\n"

    @staticmethod
    def from_doc(doc: Any, *, where: str = "calibration") -> Calibration:
        """Parse and validate; anything missing or malformed → ModelPackError."""

        def bad(what: str) -> ModelPackError:
            return ModelPackError(f"{where}: invalid calibration: {what}")

        if not isinstance(doc, dict):
            raise bad("not an object")
        if doc.get("format") != CALIBRATION_FORMAT:
            raise bad(f"format {doc.get('format')!r}, this facegate reads {CALIBRATION_FORMAT}")

        def get(d: Mapping[str, Any], key: str, kind: type, ctx: str = "") -> Any:
            v = d.get(key)
            ok = isinstance(v, kind) and not isinstance(v, bool)
            if kind is float and isinstance(v, (int, float)) and not isinstance(v, bool):
                ok = math.isfinite(v)
                v = float(v)
            if not ok:
                raise bad(f"{ctx}{key} {v!r} is not a {kind.__name__}")
            return v

        def points(key: str) -> tuple[OperatingPoint, ...]:
            raw = doc.get(key, [])
            if not isinstance(raw, list):
                raise bad(f"{key} is not a list")
            out = []
            for i, p in enumerate(raw):
                if not isinstance(p, dict):
                    raise bad(f"{key}[{i}] is not an object")
                ctx = f"{key}[{i}]."
                point = OperatingPoint(
                    target_fmr=get(p, "target_fmr", float, ctx),
                    threshold=get(p, "threshold", float, ctx),
                    impostor_pairs=get(p, "impostor_pairs", int, ctx),
                    false_matches=get(p, "false_matches", int, ctx),
                    fmr=get(p, "fmr", float, ctx),
                    fmr_upper95=get(p, "fmr_upper95", float, ctx),
                    genuine_pairs=get(p, "genuine_pairs", int, ctx),
                    true_matches=get(p, "true_matches", int, ctx),
                    tmr=get(p, "tmr", float, ctx),
                    support=get(p, "support", str, ctx),
                )
                if not 0.0 < point.target_fmr < 1.0:
                    raise bad(f"{ctx}target_fmr {point.target_fmr!r} is not in (0, 1)")
                if not -1.0 <= point.threshold <= 1.0:
                    raise bad(f"{ctx}threshold {point.threshold!r} is not a cosine")
                if point.support not in SUPPORT_LEVELS:
                    raise bad(f"{ctx}support {point.support!r} is not one of {SUPPORT_LEVELS}")
                out.append(point)
            return tuple(out)

        unsupported = doc.get("unsupported", {})
        if not isinstance(unsupported, dict) or not all(
            isinstance(v, str) for v in unsupported.values()
        ):
            raise bad("unsupported must map targets to reasons")
        return Calibration(
            model_id=get(doc, "model_id", str),
            dataset=get(doc, "dataset", str),
            date=get(doc, "date", str),
            created_by=get(doc, "created_by", str),
            identities=get(doc, "identities", int),
            images=get(doc, "images", int),
            undetected=get(doc, "undetected", int),
            points=points("points"),
            unsupported={str(k): v for k, v in unsupported.items()},
            evaluation=points("evaluation"),
            evaluation_dataset=str(doc.get("evaluation_dataset", "")),
            notes=str(doc.get("notes", "")),
        )

    @staticmethod
    def from_json(text: str, *, where: str = "calibration") -> Calibration:
        try:
            doc = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ModelPackError(f"{where}: invalid calibration: not JSON ({exc})") from None
        return Calibration.from_doc(doc, where=where)


def write_into_manifest(manifest_path: Path, calibration: Calibration) -> None:
    """Set the ``calibration`` section of a pack's JSON manifest, atomically.

    Works at the JSON level, so any pack whose manifest is a JSON object can carry one; the
    other sections are kept as they are. The model ids must agree.
    """
    try:
        doc = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelPackError(f"cannot read the manifest {manifest_path}: {exc}") from None
    if not isinstance(doc, dict):
        raise ModelPackError(f"{manifest_path}: the manifest is not a JSON object")
    if doc.get("model_id") != calibration.model_id:
        raise ModelPackError(
            f"{manifest_path}: the pack's model is {doc.get('model_id')!r}, the calibration"
            f" was measured on {calibration.model_id!r}",
            metadata={"pack_model": str(doc.get("model_id")), "model": calibration.model_id},
        )
    doc["calibration"] = calibration.to_doc()
    write_text_atomic(manifest_path, json.dumps(doc, indent=2, sort_keys=True) + "\n")


def write_text_atomic(path: Path, text: str) -> None:
    """Write beside ``path``, fsync, rename into place: readers see the old or the new file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
