"""Calibrate a model pack: thresholds for target false-match rates on labelled faces.

    python benchmarks/calibrate.py [--data DIR_OR_CSV] [--packs-dir DIR] [--targets 1e-3,1e-4,1e-5]
                                   [--no-split] [--plot PNG] [--write] [--json]

DIR is LFW's layout (``<Name>/<Name>_NNNN.jpg``, optionally under ``images/``) or holds an
identity CSV (``path,identity``); the default is the shared LFW DevTrain. Every image is
embedded once (the face nearest the image centre; cached per pack and file list, see
``face_cache.py``), then ALL genuine pairs (same identity) and all impostor pairs (different
identities; ``--impostor-sample N`` draws N instead) are scored by cosine.

Honest rates: identities are split in two halves by a seeded hash of their name (the same
rule ``stranger_bench.py`` uses). Thresholds are calibrated on the *calibration* half; the
FMR/TMR they give on the *evaluation* half (identities never seen) is reported beside them.
``--no-split`` calibrates on everything (no held-out check; for small folders).

Threshold semantics, support levels and the confidence bound: ``service/models/calibration.py``.
``--write`` stores the result in the pack's ``manifest.json``. The default dlib pack is rebuilt
from its sources on each machine and takes its calibration from the committed
``service/models/dlib_default_calibration.json``: ``--update-repo-calibration`` rewrites
that file (a default pack whose manifest differs from it is brought back in line on load).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import importlib.metadata
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.accuracy import machine  # noqa: E402
from benchmarks.face_cache import (  # noqa: E402
    DatasetError,
    Embedded,
    Labelled,
    build_analyzer,
    embed_labelled,
    load_labelled,
)
from service.config import load_settings  # noqa: E402
from service.errors import FacegateError, InvalidArgument  # noqa: E402
from service.models.calibration import (  # noqa: E402
    TARGET_FMRS,
    Calibration,
    OperatingPoint,
    operating_point,
    rates_at,
    write_into_manifest,
    write_text_atomic,
)

SHARED = Path(os.environ.get("FACEGATE_SHARED", ROOT.parent / "shared"))
DEFAULT_DATA = SHARED / "faces" / "lfw-devtrain"
DEFAULT_SEED = 0
F32 = npt.NDArray[np.float32]


# ---------------------------------------------------------------------------- split


def in_calibration_half(identity: str, seed: int = DEFAULT_SEED) -> bool:
    """Which half an identity belongs to: a hash of (seed, name), so the split of one
    identity never depends on which others are in the folder."""
    return hashlib.sha256(f"{seed}:{identity}".encode()).digest()[0] % 2 == 0


# ---------------------------------------------------------------------------- scores


@dataclass(frozen=True)
class Scores:
    genuine: F32
    impostor: F32
    identities: int
    images: int  # with a face found
    undetected: int


def pair_scores(
    vectors: F32,
    labels: Sequence[str],
    *,
    impostor_sample: int = 0,
    seed: int = DEFAULT_SEED,
    block: int = 1024,
) -> tuple[F32, F32]:
    """Cosine scores of all genuine pairs and of all (or ``impostor_sample``) impostor pairs."""
    codes = np.unique(np.asarray(labels), return_inverse=True)[1].astype(np.int64)
    n = len(codes)
    genuine: list[F32] = []
    for c in np.unique(codes):
        members = np.flatnonzero(codes == c)
        if len(members) > 1:
            sims = vectors[members] @ vectors[members].T
            genuine.append(sims[np.triu_indices(len(members), 1)].astype(np.float32))
    impostor: list[F32] = []
    total = n * (n - 1) // 2 - sum(len(g) for g in genuine)
    if impostor_sample and impostor_sample < total:
        rng = np.random.default_rng(seed)
        got = 0
        while got < impostor_sample:
            i = rng.integers(0, n, 2 * (impostor_sample - got) + 16)
            j = rng.integers(0, n, len(i))
            keep = codes[i] != codes[j]
            i, j = i[keep][: impostor_sample - got], j[keep][: impostor_sample - got]
            impostor.append(np.einsum("ij,ij->i", vectors[i], vectors[j]).astype(np.float32))
            got += len(i)
    else:
        for a in range(0, n, block):
            sims = vectors[a : a + block] @ vectors[a:].T
            rows = np.arange(a, min(a + block, n))[:, None]
            cols = np.arange(a, n)[None, :]
            mask = (cols > rows) & (codes[rows] != codes[cols])
            impostor.append(sims[mask].astype(np.float32))
    empty = np.zeros(0, np.float32)
    return (
        np.concatenate(genuine) if genuine else empty,
        np.concatenate(impostor) if impostor else empty,
    )


def subset_scores(data: Labelled, emb: Embedded, keep: npt.NDArray[np.bool_], **kw: Any) -> Scores:
    rows = np.flatnonzero(keep & emb.found)
    labels = [data.identities[i] for i in rows]
    genuine, impostor = pair_scores(emb.vectors[rows], labels, **kw)
    return Scores(
        genuine,
        impostor,
        identities=len({data.identities[i] for i in np.flatnonzero(keep)}),
        images=len(rows),
        undetected=int(np.count_nonzero(keep & ~emb.found)),
    )


# ---------------------------------------------------------------------------- calibrate


def calibrate(
    cal: Scores,
    targets: Sequence[float],
    *,
    model_id: str,
    dataset: str,
    held_out: Scores | None = None,
    evaluation_dataset: str = "",
) -> Calibration:
    points: list[OperatingPoint] = []
    evaluation: list[OperatingPoint] = []
    unsupported: dict[str, str] = {}
    for target in targets:
        try:
            point = operating_point(cal.genuine, cal.impostor, target)
        except InvalidArgument as exc:
            unsupported[f"{target:g}"] = exc.message
            continue
        points.append(point)
        if held_out is not None and len(held_out.impostor):
            evaluation.append(
                rates_at(point.threshold, target, held_out.genuine, held_out.impostor)
            )
    return Calibration(
        model_id=model_id,
        dataset=dataset,
        date=datetime.date.today().isoformat(),
        created_by=f"{_version()} benchmarks/calibrate.py",
        identities=cal.identities,
        images=cal.images + cal.undetected,
        undetected=cal.undetected,
        points=tuple(points),
        unsupported=unsupported,
        evaluation=tuple(evaluation),
        evaluation_dataset=evaluation_dataset,
        notes=(
            "threshold: smallest 1e-4 grid value with at most floor(target x impostor pairs) "
            "impostor scores >= it; tmr: genuine pairs >= threshold; fmr_upper95: one-sided "
            "95% Clopper-Pearson bound (pairs share images, so it is optimistic); pairs with "
            "an image where no face was found are left out"
        ),
    )


def _version() -> str:
    try:
        return "facegate " + importlib.metadata.version("facegate")
    except importlib.metadata.PackageNotFoundError:
        return "facegate"


# ---------------------------------------------------------------------------- plot


def det_curve(genuine: F32, impostor: F32, points: int = 400) -> tuple[F32, F32, F32]:
    """(thresholds, FMR, FNMR) with FMR = impostors >= t, FNMR = genuine < t."""
    lo = float(min(genuine.min(initial=1.0), impostor.min(initial=1.0)))
    thresholds = np.linspace(lo, 1.0, points).astype(np.float32)
    imp = np.sort(impostor)
    gen = np.sort(genuine)
    fmr = (len(imp) - np.searchsorted(imp, thresholds, side="left")) / max(len(imp), 1)
    fnmr = np.searchsorted(gen, thresholds, side="left") / max(len(gen), 1)
    return thresholds, fmr.astype(np.float32), fnmr.astype(np.float32)


def plot(calibration: Calibration, cal: Scores, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.6))
    bins = np.linspace(
        float(min(cal.genuine.min(initial=1.0), cal.impostor.min(initial=1.0))), 1.0, 120
    )
    left.hist(
        cal.impostor,
        bins=bins,
        density=True,
        alpha=0.6,
        label=f"impostor ({len(cal.impostor):,} pairs)",
    )
    left.hist(
        cal.genuine,
        bins=bins,
        density=True,
        alpha=0.6,
        label=f"genuine ({len(cal.genuine):,} pairs)",
    )
    left.set_yscale("log")
    left.set_xlabel("cosine similarity")
    left.set_ylabel("density (log)")
    colours = ("tab:red", "tab:purple", "tab:brown", "tab:gray")
    for p, colour in zip(calibration.points, colours, strict=False):
        left.axvline(
            p.threshold,
            color=colour,
            ls="--",
            lw=1,
            label=f"FMR {p.target_fmr:g}: {p.threshold:.4f}",
        )
    left.legend(fontsize=8)
    left.set_title("score distributions (calibration half)")

    _, fmr, fnmr = det_curve(cal.genuine, cal.impostor)
    ok = (fmr > 0) & (fnmr > 0)
    right.loglog(fmr[ok], fnmr[ok], color="black", lw=1.5)
    for p, colour in zip(calibration.points, colours, strict=False):
        fn = 1.0 - p.tmr
        right.scatter([max(p.fmr, 1e-9)], [max(fn, 1e-9)], color=colour, zorder=3)
        right.annotate(
            f"  {p.threshold:.4f} (FMR {p.target_fmr:g})",
            (max(p.fmr, 1e-9), max(fn, 1e-9)),
            fontsize=8,
        )
    right.set_xlabel("false-match rate")
    right.set_ylabel("false non-match rate")
    right.grid(True, which="both", alpha=0.3)
    right.set_title("DET curve")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------- report


def report_lines(calibration: Calibration) -> list[str]:
    out = [
        f"model {calibration.model_id}, calibrated on {calibration.dataset}: "
        f"{calibration.identities:,} identities, {calibration.images:,} images "
        f"({calibration.undetected} without a face)",
        "| target FMR | threshold | impostor pairs | false matches | FMR (95% upper) | TMR"
        " (genuine pairs) | support | held-out FMR | held-out TMR |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    held = {p.target_fmr: p for p in calibration.evaluation}
    for p in calibration.points:
        e = held.get(p.target_fmr)
        out.append(
            f"| {p.target_fmr:g} | {p.threshold:.4f} | {p.impostor_pairs:,} | {p.false_matches:,}"
            f" | {p.fmr:.2e} ({p.fmr_upper95:.2e}) | {p.tmr:.2%} ({p.genuine_pairs:,})"
            f" | {p.support}"
            + (
                f" | {e.fmr:.2e} ({e.false_matches:,} of {e.impostor_pairs:,})"
                f" | {e.tmr:.2%} ({e.true_matches:,} of {e.genuine_pairs:,}) |"
                if e is not None
                else " | – | – |"
            )
        )
    for target, why in calibration.unsupported.items():
        out.append(f"| {target} | – | not supported: {why} |")
    return out


def parse_targets(text: str) -> list[float]:
    try:
        targets = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad target list {text!r}") from None
    if not targets or not all(0.0 < t < 1.0 for t in targets):
        raise argparse.ArgumentTypeError("targets must be false-match rates in (0, 1)")
    return sorted(set(targets), reverse=True)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join((__doc__ or "").splitlines()[1:]),
    )
    ap.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help="labelled folder or identity CSV"
    )
    ap.add_argument("--packs-dir", type=Path, default=None, help="model packs (default: settings)")
    ap.add_argument("--cache-dir", type=Path, default=None, help="embedding cache directory")
    ap.add_argument("--targets", type=parse_targets, default=list(TARGET_FMRS))
    ap.add_argument("--no-split", action="store_true", help="calibrate on all identities")
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED, help="identity split seed")
    ap.add_argument("--impostor-sample", type=int, default=0, help="sample N impostor pairs")
    ap.add_argument("--plot", type=Path, default=None, help="write the histogram + DET PNG here")
    ap.add_argument("--write", action="store_true", help="store the calibration in the pack")
    ap.add_argument(
        "--update-repo-calibration",
        action="store_true",
        help="default dlib pack only: also rewrite service/models/dlib_default_calibration.json",
    )
    ap.add_argument("--json", action="store_true", help="print the calibration as JSON")
    args = ap.parse_args(argv)

    from service.models import pack as default_pack

    try:
        data = load_labelled(args.data)
        settings = load_settings(model_dir=args.packs_dir)
        analyzer = build_analyzer(settings)
        start = time.perf_counter()
        emb = embed_labelled(
            data, settings=settings, analyzer=analyzer, cache_dir=args.cache_dir, progress=True
        )
        print(
            f"embeddings: {emb.cache_path} "
            + (f"(computed in {emb.seconds:.0f} s)" if emb.seconds else "(cached)"),
            file=sys.stderr,
        )
        everyone = np.ones(len(data), bool)
        if args.no_split:
            cal_mask, held = everyone, None
        else:
            cal_mask = np.array([in_calibration_half(i, args.seed) for i in data.identities])
        kw = {"impostor_sample": args.impostor_sample, "seed": args.seed}
        cal = subset_scores(data, emb, cal_mask, **kw)
        evaluation_dataset = ""
        if not args.no_split:
            held = subset_scores(data, emb, ~cal_mask, **kw)
            evaluation_dataset = (
                f"{data.name}, the other half of the identities (split seed {args.seed})"
            )
        dataset = (
            data.name
            if args.no_split
            else f"{data.name}, calibration half of the identities (split seed {args.seed})"
        )
        calibration = calibrate(
            cal,
            args.targets,
            model_id=emb.model_id,
            dataset=dataset,
            held_out=held,
            evaluation_dataset=evaluation_dataset,
        )
        if args.plot is not None and len(cal.genuine) and len(cal.impostor):
            plot(calibration, cal, args.plot, f"{emb.model_id} on {dataset}")
        if args.write:
            manifest = pack_dir_of(analyzer, settings.packs_dir) / "manifest.json"
            write_into_manifest(manifest, calibration)
            print(f"calibration written into {manifest}", file=sys.stderr)
        if args.update_repo_calibration:
            if emb.model_id != default_pack.MODEL_ID:
                raise InvalidArgument(
                    f"--update-repo-calibration is for the default pack ({default_pack.MODEL_ID}),"
                    f" not {emb.model_id}"
                )
            write_text_atomic(default_pack.DEFAULT_CALIBRATION_FILE, calibration.to_json())
            print(
                f"calibration written into {default_pack.DEFAULT_CALIBRATION_FILE}", file=sys.stderr
            )
    except (DatasetError, FacegateError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    seconds = time.perf_counter() - start
    if args.json:
        doc = calibration.to_doc()
        doc["machine"] = machine()
        doc["seconds"] = round(seconds, 1)
        print(json.dumps(doc))
    else:
        print("\n".join(report_lines(calibration)))
        print(f"({seconds:.0f} s on {machine()})")
    return 0


def pack_dir_of(analyzer: Any, packs_dir: Path) -> Path:
    """Where the analyzer's pack lives: its own ``pack_dir`` if it says, else by manifest name."""
    own = getattr(analyzer, "pack_dir", None)
    if isinstance(own, Path):
        return own
    return packs_dir / str(analyzer.manifest.name)


if __name__ == "__main__":
    raise SystemExit(main())
