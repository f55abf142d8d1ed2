"""Strangers against a large gallery: does Identify answer NO_MATCH for someone not enrolled?

    python benchmarks/stranger_bench.py [--data DIR] [--packs-dir DIR] [--gallery 1000]
                                        [--phones] [--json]

Identities come from the *evaluation* half of the folder (``calibrate.py``'s seeded identity
split), so the thresholds (calibrated on the other half and shipped in the pack) never saw
them. Every person with >= 2 photos where a face was found is enrolled with their first
photo and probes with the others (genuine probes); people with one photo fill the gallery up
to ``--gallery`` users; the remaining one-photo people are the strangers (impostor probes).

The numbers are the service's own answers: an in-process FaceService with the pack's
defaults for a *pay* and a *member* collection (threshold from the calibration, margin,
hint policy), the gallery loaded with ``import_templates``, every probe sent to
``identify`` as its JPEG. To avoid running the networks again, the analyzer replays the
face location and embedding the same pack computed for ``calibrate.py`` (the cache) and
aligns for real; decoding, face selection, search and the decision rules are the service's.

``--phones`` gives every enrolled user a phone number: an AMBIGUOUS search then answers
NEED_HINT, and the probe retries with a hint (genuine: their own last 4 digits; stranger: 4
random digits), as a terminal would; the final answer is counted.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.accuracy import machine  # noqa: E402
from benchmarks.calibrate import DEFAULT_DATA, DEFAULT_SEED, in_calibration_half  # noqa: E402
from benchmarks.face_cache import (  # noqa: E402
    DatasetError,
    Embedded,
    Labelled,
    build_analyzer,
    embed_labelled,
    load_labelled,
)
from service.config import Settings, load_settings  # noqa: E402
from service.domain import (  # noqa: E402
    CollectionKind,
    CollectionSpec,
    Decision,
    IdentifyRequest,
    IdentifyResult,
    ImportTemplatesRequest,
)
from service.errors import FacegateError  # noqa: E402
from service.models.calibration import Calibration, fmr_upper_bound  # noqa: E402
from service.pipeline.decode import decode_image  # noqa: E402
from service.pipeline.types import DecodedImage, FloatArray, LocatedFaces, UInt8Array  # noqa: E402


def _key(rgb: np.ndarray) -> bytes:
    return hashlib.sha1(rgb.tobytes()).digest() + str(rgb.shape).encode()


class ReplayAnalyzer:
    """A FaceAnalyzer answering locate/embed from a pack's cached results for known images
    (keyed by their decoded pixels) and aligning with the real pack; unknown images have no
    face."""

    def __init__(self, real: Any, emb: Embedded, rows: dict[bytes, int]) -> None:
        self._real = real
        self._emb = emb
        self._rows = rows
        self._by_chip: dict[bytes, int] = {}
        self._lock = threading.Lock()

    @property
    def model_id(self) -> str:
        return str(self._real.model_id)

    @property
    def embedding_dim(self) -> int:
        return int(self._real.embedding_dim)

    @property
    def default_threshold(self) -> float:
        return float(self._real.default_threshold)

    @property
    def calibration(self) -> Calibration | None:
        cal: Calibration | None = self._real.calibration
        return cal

    def _row(self, image: DecodedImage) -> int | None:
        row = self._rows.get(_key(image.rgb))
        return row if row is not None and bool(self._emb.found[row]) else None

    def locate(self, image: DecodedImage) -> LocatedFaces:
        row = self._row(image)
        if row is None:
            return LocatedFaces(
                np.zeros((0, 4), np.float32),
                np.zeros((0,), np.float32),
                np.zeros((0, 5, 2), np.float32),
            )
        return self._emb.located(row)

    def align(self, image: DecodedImage, faces: LocatedFaces) -> UInt8Array:
        chips: UInt8Array = self._real.align(image, faces)
        row = self._row(image)
        if row is not None:
            with self._lock:
                for chip in chips:
                    self._by_chip[_key(chip)] = row
        return chips

    def embed_chips(self, chips: UInt8Array) -> FloatArray:
        with self._lock:
            rows = [self._by_chip[_key(c)] for c in chips]
        out: FloatArray = np.ascontiguousarray(self._emb.vectors[rows], dtype=np.float32)
        return out


# ---------------------------------------------------------------------------- the plan


@dataclass
class Plan:
    gallery: list[int] = field(default_factory=list)  # image rows enrolled, one per user
    gallery_uid: dict[int, str] = field(default_factory=dict)  # image row → uid
    genuine: list[tuple[int, str]] = field(default_factory=list)  # (probe row, true uid)
    strangers: list[int] = field(default_factory=list)
    identities_with_probes: int = 0


def make_plan(data: Labelled, emb: Embedded, gallery_size: int, seed: int) -> Plan:
    by_person: dict[str, list[int]] = {}
    for row, ident in enumerate(data.identities):
        if not in_calibration_half(ident, seed) and bool(emb.found[row]):
            by_person.setdefault(ident, []).append(row)
    multi = sorted(p for p, rows in by_person.items() if len(rows) >= 2)
    single = sorted(p for p, rows in by_person.items() if len(rows) == 1)
    random.Random(seed).shuffle(single)
    plan = Plan(identities_with_probes=len(multi))
    fill = max(0, gallery_size - len(multi))
    if fill >= len(single):
        raise DatasetError(
            f"the evaluation half has {len(multi)} people with >= 2 photos and {len(single)}"
            f" with one: too few for a gallery of {gallery_size} and any strangers"
        )
    for n, person in enumerate(multi + single[:fill]):
        uid = f"u{n:05d}"
        rows = by_person[person]
        plan.gallery.append(rows[0])
        plan.gallery_uid[rows[0]] = uid
        plan.genuine.extend((r, uid) for r in rows[1:])
    plan.strangers = [by_person[p][0] for p in single[fill:]]
    return plan


# ---------------------------------------------------------------------------- running


@dataclass
class Tally:
    kind: str
    threshold: float
    margin: float
    hint_required_above: int
    gallery_users: int
    genuine: Counter[str] = field(default_factory=Counter)
    strangers: Counter[str] = field(default_factory=Counter)

    def summary(self) -> dict[str, Any]:
        g, s = sum(self.genuine.values()), sum(self.strangers.values())
        fm = self.strangers["MATCH"]
        return {
            "kind": self.kind,
            "threshold": self.threshold,
            "margin": self.margin,
            "hint_required_above": self.hint_required_above,
            "gallery_users": self.gallery_users,
            "stranger_probes": s,
            "stranger_false_match_rate": fm / s if s else 0.0,
            "stranger_false_match_upper95": fmr_upper_bound(fm, s) if s else 1.0,
            "genuine_probes": g,
            "true_match_rate": self.genuine["MATCH"] / g if g else 0.0,
            "wrong_uid_rate": self.genuine["WRONG_UID"] / g if g else 0.0,
            "genuine": dict(sorted(self.genuine.items())),
            "strangers": dict(sorted(self.strangers.items())),
        }


def phone_of(n: int, rng: random.Random) -> str:
    return f"+1555{n:03d}{rng.randrange(10_000):04d}"


def run(
    data: Labelled,
    emb: Embedded,
    analyzer: Any,
    settings: Settings,
    plan: Plan,
    *,
    phones: bool,
    seed: int,
    margins: dict[CollectionKind, float] | None = None,
) -> list[Tally]:
    from service.app import build_service

    rows = {
        _key(decode_image((data.root / data.paths[r]).read_bytes(), settings.decode).rgb): r
        for r in plan.gallery + [p for p, _ in plan.genuine] + plan.strangers
    }
    replay = ReplayAnalyzer(analyzer, emb, rows)
    rng = random.Random(seed)
    uids = tuple(plan.gallery_uid[r] for r in plan.gallery)
    numbers = tuple(phone_of(i % 1000, rng) for i in range(len(uids))) if phones else None
    suffix = {u: n[-4:] for u, n in zip(uids, numbers or (), strict=False)}
    tallies: list[Tally] = []
    with tempfile.TemporaryDirectory(prefix="stranger-bench-") as tmp:
        # One caller at a time: no point waiting for a micro-batch to fill.
        bench = dataclasses.replace(settings, data_dir=Path(tmp), batch_window_ms=0.0)
        svc = build_service(bench, analyzer=replay)
        try:
            for kind in (CollectionKind.PAY, CollectionKind.MEMBER):
                name = kind.value.lower()
                margin = (margins or {}).get(kind)  # None: the service's default
                info = svc.create_collection(CollectionSpec(name, kind=kind, margin=margin))
                for a in range(0, len(uids), 5000):
                    svc.import_templates(
                        ImportTemplatesRequest(
                            name,
                            replay.model_id,
                            uids[a : a + 5000],
                            np.ascontiguousarray(emb.vectors[plan.gallery[a : a + 5000]]),
                            phone_numbers=numbers[a : a + 5000] if numbers else None,
                        )
                    )
                tally = Tally(
                    kind.value, info.threshold, info.margin, info.hint_required_above, len(uids)
                )
                for row, uid in plan.genuine:
                    answer = _answer(
                        svc,
                        name,
                        data,
                        row,
                        true_uid=uid,
                        own_suffix=suffix.get(uid),
                        rng=rng,
                        phones=phones,
                    )
                    tally.genuine[answer] += 1
                for row in plan.strangers:
                    answer = _answer(
                        svc,
                        name,
                        data,
                        row,
                        true_uid=None,
                        own_suffix=None,
                        rng=rng,
                        phones=phones,
                    )
                    tally.strangers[answer] += 1
                tallies.append(tally)
        finally:
            svc.close()
    return tallies


def _identify(
    svc: Any,
    collection: str,
    data: Labelled,
    row: int,
    *,
    own_suffix: str | None,
    rng: random.Random,
    phones: bool,
) -> IdentifyResult:
    image = (data.root / data.paths[row]).read_bytes()
    r: IdentifyResult = svc.identify(IdentifyRequest(collection, image))
    if r.decision is Decision.NEED_HINT and phones and r.probe_token:
        hint = own_suffix if own_suffix is not None else f"{rng.randrange(10_000):04d}"
        r = svc.identify(IdentifyRequest(collection, hint=hint, probe_token=r.probe_token))
    return r


def _answer(
    svc: Any,
    collection: str,
    data: Labelled,
    row: int,
    *,
    true_uid: str | None,
    own_suffix: str | None,
    rng: random.Random,
    phones: bool,
) -> str:
    """The service's answer to one probe: a decision, WRONG_UID, or REFUSED_<reason> when
    the service refuses the photo (quality gate, liveness): a refusal is an answer too, and
    it counts in the rates' denominators."""
    try:
        r = _identify(svc, collection, data, row, own_suffix=own_suffix, rng=rng, phones=phones)
    except FacegateError as exc:
        return f"REFUSED_{exc.reason}"
    return _label(r, true_uid)


def _label(r: IdentifyResult, true_uid: str | None) -> str:
    if r.decision is Decision.MATCH and true_uid is not None and r.uid != true_uid:
        return "WRONG_UID"
    return r.decision.value


# ---------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join((__doc__ or "").splitlines()[1:]),
    )
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="labelled folder or CSV")
    ap.add_argument("--packs-dir", type=Path, default=None)
    ap.add_argument("--cache-dir", type=Path, default=None, help="embedding cache directory")
    ap.add_argument("--gallery", type=int, default=1000, help="enrolled users (at least)")
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED, help="identity split seed")
    ap.add_argument("--phones", action="store_true", help="users have phones; retry with hints")
    ap.add_argument("--pay-margin", type=float, default=None, help="override the default")
    ap.add_argument("--member-margin", type=float, default=None, help="override the default")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    start = time.perf_counter()
    try:
        data = load_labelled(args.data)
        settings = load_settings(model_dir=args.packs_dir)
        analyzer = build_analyzer(settings)
        emb = embed_labelled(
            data, settings=settings, analyzer=analyzer, cache_dir=args.cache_dir, progress=True
        )
        plan = make_plan(data, emb, args.gallery, args.seed)
        margins = {
            k: m
            for k, m in (
                (CollectionKind.PAY, args.pay_margin),
                (CollectionKind.MEMBER, args.member_margin),
            )
            if m is not None
        }
        tallies = run(
            data, emb, analyzer, settings, plan, phones=args.phones, seed=args.seed, margins=margins
        )
    except (DatasetError, FacegateError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    cal = analyzer.calibration
    doc = {
        "dataset": f"{data.name}, evaluation half of the identities (split seed {args.seed})",
        "model_id": emb.model_id,
        "calibrated_on": cal.dataset if cal is not None else None,
        "gallery_users": len(plan.gallery),
        "gallery_users_with_genuine_probes": plan.identities_with_probes,
        "phones": args.phones,
        "results": [t.summary() for t in tallies],
        "seconds": round(time.perf_counter() - start, 1),
        "machine": machine(),
    }
    if args.json:
        print(json.dumps(doc))
    else:
        print(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
