"""What the ``facegate models`` commands share: the pack-directory flags, a pack's summary
and how it is printed, and the one-line error exit (used by ``models`` and ``byo``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from service.config import load_settings
from service.errors import FacegateError
from service.models.pack import PackManifest


def add_pack_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--packs-dir", type=Path, default=None, help="model packs directory (default: settings)"
    )
    p.add_argument("--json", action="store_true", help="print one JSON document")


def packs_dir(args: argparse.Namespace) -> Path:
    if args.packs_dir is not None:
        return Path(args.packs_dir)
    return load_settings().packs_dir


def pack_summary(pack_dir: Path, manifest: PackManifest) -> dict[str, Any]:
    return {
        "pack_dir": str(pack_dir),
        "name": manifest.name,
        "model_id": manifest.model_id,
        "format_version": manifest.format_version,
        "embedding_dim": manifest.embedder.get("embedding_dim"),
        "cosine_default": manifest.thresholds.get("cosine_default"),
        # target FMR → threshold, from the pack's calibration (empty: uncalibrated).
        "calibrated_thresholds": {
            f"{p.target_fmr:g}": p.threshold
            for p in (manifest.calibration.points if manifest.calibration is not None else ())
        },
        "files": {
            role: {"path": f.path, "sha256": f.sha256, "bytes": f.bytes}
            for role, f in manifest.files.items()
        },
        "created_by": manifest.created_by,
    }


def print_summary(summary: dict[str, Any], as_json: bool, verb: str) -> None:
    if as_json:
        print(json.dumps(summary, sort_keys=True))
        return
    print(f"{verb} model pack {summary['name']} ({summary['model_id']}) at {summary['pack_dir']}")
    print(f"  embedding_dim={summary['embedding_dim']} cosine_default={summary['cosine_default']}")
    calibrated = summary["calibrated_thresholds"]
    print(
        "  calibrated: "
        + (", ".join(f"FMR {k} -> {v}" for k, v in calibrated.items()) or "no (uncalibrated)")
    )
    for role, f in summary["files"].items():
        print(f"  {role:<10} {f['path']:<24} {f['bytes']:>10} bytes  sha256 {f['sha256'][:16]}…")


def fail(exc: FacegateError | OSError) -> int:
    message = exc.message if isinstance(exc, FacegateError) else str(exc)
    print(f"error: {' '.join(message.split())}", file=sys.stderr)
    return 1
