"""``facegate crypto ...``: keys of the templates at rest, run on the server's machine.

    status            keys configured, templates per key id, revocable collections
    verify            decrypt every template; list the ones that fail (exit 1 if any)
    new-key FILE      write a fresh 32-byte key file (mode 0600)
    rotate-key        re-seal every template and snapshot under a new key (server stopped)
    rotate-transform  re-issue a revocable collection's templates under a new secret
                      transform (server stopped); leaked templates become useless

These work on the data directory (``--data-dir`` / ``--config`` / ``FACEGATE_*`` as for
``serve``), not through the gRPC API: the keys never travel. The rotations take the store's
exclusive lock, so they refuse to run beside a serving process. Exit status: 0 done,
1 an error or unreadable templates (``error: ...`` on stderr), 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from service.config import Settings, load_settings
from service.crypto.data_keys import create_key_file, load_keyring, transform_master_key
from service.crypto.template_crypto import TemplateCipher
from service.errors import FacegateError
from service.maintenance.key_rotation import rotate_data_key, verify_templates
from service.maintenance.transform_rotation import rotate_transform
from service.observability.audit import (
    FAILED,
    OK,
    ROTATE_DATA_KEY,
    ROTATE_TRANSFORM,
    record_local_action,
)
from service.store.sqlite import SqliteStore
from service.store.sqlite_crypto import ROTATION_TARGET
from service.store.sqlite_db import StoreInUse


def register(subparsers: Any) -> None:
    crypto = subparsers.add_parser("crypto", help="template encryption keys and revocation")
    sub = crypto.add_subparsers(dest="crypto_command", metavar="ACTION")
    sub.required = True

    status = sub.add_parser("status", help="keys and what they seal")
    _local(status)
    status.set_defaults(func=run_status)

    verify = sub.add_parser("verify", help="decrypt every stored template")
    _local(verify)
    verify.set_defaults(func=run_verify)

    new_key = sub.add_parser("new-key", help="write a fresh key file (mode 0600)")
    new_key.add_argument("file", type=Path)
    new_key.add_argument("--json", action="store_true")
    new_key.set_defaults(func=run_new_key)

    rotate = sub.add_parser("rotate-key", help="re-seal everything under a new key")
    _local(rotate)
    rotate.add_argument(
        "--new-key-file",
        type=Path,
        help="the new key (required when crypto.key_file/crypto.key is configured; the"
        " default layout generates <data_dir>/template.key.next itself)",
    )
    rotate.set_defaults(func=run_rotate_key)

    transform = sub.add_parser(
        "rotate-transform", help="re-issue a revocable collection's templates"
    )
    _local(transform)
    transform.add_argument("--collection", required=True)
    transform.set_defaults(func=run_rotate_transform)


def _local(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", type=Path, help="the server's data directory")
    p.add_argument("--config", type=Path, help="TOML settings file")
    p.add_argument("--json", action="store_true", help="print one JSON document")


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(config_file=args.config, data_dir=args.data_dir)


def _fail(exc: BaseException) -> int:
    message = exc.message if isinstance(exc, FacegateError) else str(exc)
    print(f"error: {' '.join(message.split())}", file=sys.stderr)
    return 1


def _emit(args: argparse.Namespace, doc: dict[str, Any], lines: list[str]) -> None:
    print(json.dumps(doc, sort_keys=True) if args.json else "\n".join(lines))


def run_status(args: argparse.Namespace) -> int:
    try:
        settings = _settings(args)
        keyring = load_keyring(settings)
        store = SqliteStore(settings.store_path, cipher=TemplateCipher(keyring))
    except (FacegateError, StoreInUse, OSError) as exc:
        return _fail(exc)
    try:
        usage = store.crypto.key_usage()
        rotating = store.crypto.state(ROTATION_TARGET)
        collections = {r.name: r.transform_gen for r in store.list_collections()}
    finally:
        store.close()
    per_key = {str(k): n for k, n in usage.items()}  # "None": plaintext rows (schema 1)
    doc = {
        "primary_key_id": keyring.primary.key_id,
        "keys": {k.key_id: k.source for k in keyring.all_keys()},
        "templates_per_key": per_key,
        "rotation_target": rotating,
        "transform_generation": collections,
    }
    lines = [f"keys: {keyring.describe()}"]
    lines += [f"  {n} templates under key {k}" for k, n in sorted(per_key.items())]
    if rotating:
        lines.append(f"a rotation to key {rotating} is unfinished: run rotate-key again")
    for name, gen in sorted(collections.items()):
        lines.append(f"collection {name}: " + (f"revocable, generation {gen}" if gen else "plain"))
    _emit(args, doc, lines)
    return 0


def run_verify(args: argparse.Namespace) -> int:
    try:
        result = verify_templates(_settings(args))
    except (FacegateError, StoreInUse, OSError) as exc:
        return _fail(exc)
    unreadable = {str(k): v for k, v in result.unreadable.items()}
    doc = {"checked": result.checked, "unreadable": unreadable}
    lines = [f"checked {result.checked} templates: {len(result.unreadable)} unreadable"]
    lines += [f"  face {f}: {why}" for f, why in result.unreadable.items()]
    _emit(args, doc, lines)
    return 1 if result.unreadable else 0


def run_new_key(args: argparse.Namespace) -> int:
    path: Path = args.file
    if path.exists():
        print(f"error: {path} exists; a key file is never overwritten", file=sys.stderr)
        return 2
    try:
        create_key_file(path, what="key")
    except OSError as exc:
        return _fail(exc)
    _emit(args, {"key_file": str(path)}, [f"wrote a new 32-byte key to {path} (mode 0600)"])
    return 0


def run_rotate_key(args: argparse.Namespace) -> int:
    try:
        settings = _settings(args)
        result = rotate_data_key(settings, args.new_key_file)
    except (FacegateError, StoreInUse, OSError) as exc:
        return _fail(exc)
    record_local_action(
        settings,
        ROTATE_DATA_KEY,
        outcome=OK if result.finished else FAILED,
        reason=None if result.finished else "TEMPLATES_UNREADABLE",
        count=result.resealed,
        target=f"key {result.key_id}",
    )
    doc = {
        "key_id": result.key_id,
        "key_source": result.key_source,
        "resealed": result.resealed,
        "unreadable": result.unreadable,
        "snapshots_resealed": result.snapshots_resealed,
        "snapshots_dropped": result.snapshots_dropped,
        "finished": result.finished,
        "installed": result.installed,
    }
    lines = [
        f"re-sealed {result.resealed} templates and {result.snapshots_resealed} snapshots"
        f" under key {result.key_id} ({result.key_source})"
    ]
    if result.unreadable:
        lines.append(
            f"{len(result.unreadable)} templates could not be decrypted and were left as they"
            f" are (face ids {', '.join(map(str, result.unreadable[:20]))}); delete those users"
            " (or restore them from a backup) and run rotate-key again to finish"
        )
    elif result.installed:
        lines.append(f"installed it as {settings.data_dir / 'template.key'}; the old key is gone")
    else:
        lines.append(
            f"now set crypto.key_file = {result.key_source} (or FACEGATE_CRYPTO_KEY) before the"
            " next start; the old key is no longer needed"
        )
    _emit(args, doc, lines)
    return 0 if result.finished else 1


def run_rotate_transform(args: argparse.Namespace) -> int:
    try:
        settings = _settings(args)
        store = SqliteStore(
            settings.store_path, cipher=TemplateCipher(load_keyring(settings)), exclusive=True
        )
    except (FacegateError, StoreInUse, OSError) as exc:
        return _fail(exc)
    try:
        row, report = rotate_transform(
            store, args.collection, transform_master_key(settings), settings.snapshot_dir
        )
    except (FacegateError, OSError) as exc:
        return _fail(exc)
    finally:
        store.close()
    record_local_action(
        settings,
        ROTATE_TRANSFORM,
        outcome=FAILED if report.unreadable else OK,
        reason="TEMPLATES_UNREADABLE" if report.unreadable else None,
        collection=row.name,
        count=report.resealed,
        target=f"transform generation {row.transform_gen}",
    )
    doc = {
        "collection": row.name,
        "transform_generation": row.transform_gen,
        "reissued": report.resealed,
        "unreadable": report.unreadable,
    }
    lines = [
        f"collection {row.name}: re-issued {report.resealed} templates under transform"
        f" generation {row.transform_gen}; templates of earlier generations no longer match"
    ]
    if report.unreadable:
        lines.append(f"{len(report.unreadable)} unreadable templates were left behind")
    _emit(args, doc, lines)
    return 1 if report.unreadable else 0
