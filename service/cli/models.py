"""``facegate models prepare|verify|add``: build and check model packs.

``prepare`` converts the dlib models from the installed ``face_recognition_models``
package (seconds; a no-op when a valid pack built from the same sources exists, unless
``--force``). ``verify`` loads a pack (the default or a bring-your-own one) and re-checks
every file's sha256. ``add`` writes a bring-your-own pack (``service.cli.byo``). All print a
short summary, or one JSON document with ``--json``. Exit status 0 on success, 1 with a
one-line ``error: ...`` on stderr when the pack or its sources are missing or corrupt.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from service.config import load_settings
from service.errors import FacegateError, ModelPackError
from service.models.pack import (
    DEFAULT_PACK,
    PackManifest,
    load_pack,
    prepare_default_pack,
)


def register(subparsers: Any) -> None:
    models = subparsers.add_parser("models", help="prepare or verify the model pack")
    sub = models.add_subparsers(dest="models_command", metavar="{prepare,verify,add}")
    sub.required = True

    prepare = sub.add_parser(
        "prepare", help="convert the dlib models into the default pack (seconds)"
    )
    _common(prepare)
    prepare.add_argument(
        "--force", action="store_true", help="rebuild even when a valid pack exists"
    )
    prepare.set_defaults(func=run_prepare)

    verify = sub.add_parser("verify", help="check the pack's files against its manifest")
    _common(verify)
    verify.add_argument(
        "--name",
        default=DEFAULT_PACK,
        help="pack name, or a BYO pack's directory or manifest path (default: %(default)s)",
    )
    verify.set_defaults(func=run_verify)

    from service.cli import byo as cli_byo

    cli_byo.register(sub, _common)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--packs-dir", type=Path, default=None, help="model packs directory (default: settings)"
    )
    p.add_argument("--json", action="store_true", help="print one JSON document")


def _packs_dir(args: argparse.Namespace) -> Path:
    if args.packs_dir is not None:
        return Path(args.packs_dir)
    return load_settings().packs_dir


def _summary(pack_dir: Path, manifest: PackManifest) -> dict[str, Any]:
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


def _print(summary: dict[str, Any], as_json: bool, verb: str) -> None:
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


def _fail(exc: FacegateError | OSError) -> int:
    message = exc.message if isinstance(exc, FacegateError) else str(exc)
    print(f"error: {' '.join(message.split())}", file=sys.stderr)
    return 1


def run_prepare(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    try:
        packs_dir = _packs_dir(args)
        manifest = prepare_default_pack(packs_dir, force=args.force)
    except (ModelPackError, FacegateError, OSError) as exc:
        return _fail(exc)
    summary = _summary(packs_dir / manifest.name, manifest)
    summary["seconds"] = round(time.perf_counter() - start, 3)
    _print(summary, args.json, "prepared")
    return 0


def run_verify(args: argparse.Namespace) -> int:
    try:
        if args.name == DEFAULT_PACK:
            pack_dir, manifest = load_pack(_packs_dir(args), args.name)
        else:
            from service.models.byo_pack import load_byo_pack

            pack = load_byo_pack(args.name, _packs_dir(args))
            pack_dir, manifest = pack.pack_dir, pack.manifest
    except (ModelPackError, FacegateError, OSError) as exc:
        return _fail(exc)
    _print(_summary(pack_dir, manifest), args.json, "verified")
    return 0
