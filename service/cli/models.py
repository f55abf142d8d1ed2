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
import time
from typing import Any

from service.cli import byo
from service.cli.pack_output import add_pack_flags, fail, pack_summary, packs_dir, print_summary
from service.errors import FacegateError, ModelPackError
from service.models.pack import DEFAULT_PACK, load_pack, prepare_default_pack


def register(subparsers: Any) -> None:
    models = subparsers.add_parser("models", help="prepare or verify the model pack")
    sub = models.add_subparsers(dest="models_command", metavar="{prepare,verify,add}")
    sub.required = True

    prepare = sub.add_parser(
        "prepare", help="convert the dlib models into the default pack (seconds)"
    )
    add_pack_flags(prepare)
    prepare.add_argument(
        "--force", action="store_true", help="rebuild even when a valid pack exists"
    )
    prepare.set_defaults(func=run_prepare)

    verify = sub.add_parser("verify", help="check the pack's files against its manifest")
    add_pack_flags(verify)
    verify.add_argument(
        "--name",
        default=DEFAULT_PACK,
        help="pack name, or a BYO pack's directory or manifest path (default: %(default)s)",
    )
    verify.set_defaults(func=run_verify)

    byo.register(sub)


def run_prepare(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    try:
        packs = packs_dir(args)
        manifest = prepare_default_pack(packs, force=args.force)
    except (ModelPackError, FacegateError, OSError) as exc:
        return fail(exc)
    summary = pack_summary(packs / manifest.name, manifest)
    summary["seconds"] = round(time.perf_counter() - start, 3)
    print_summary(summary, args.json, "prepared")
    return 0


def run_verify(args: argparse.Namespace) -> int:
    try:
        if args.name == DEFAULT_PACK:
            pack_dir, manifest = load_pack(packs_dir(args), args.name)
        else:
            from service.models.byo_pack import load_byo_pack

            pack = load_byo_pack(args.name, packs_dir(args))
            pack_dir, manifest = pack.pack_dir, pack.manifest
    except (ModelPackError, FacegateError, OSError) as exc:
        return fail(exc)
    print_summary(pack_summary(pack_dir, manifest), args.json, "verified")
    return 0
