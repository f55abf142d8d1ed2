"""Security on the command line: ``facegate keys create|list|revoke`` and the client flags
for API keys and TLS that every client command takes.

``keys create`` prints the new key alone on stdout (so ``KEY=$(facegate keys create ...)``
works) and a reminder on stderr: the key is shown once and only its hash is written.
The keys file is ``--keys-file``, else ``auth.keys_file`` from ``--config`` / the
environment. Exit status: 0 success, 1 a bad or unreadable keys file, 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from service.access.api_keys import KeyEntry, add_key, load_keys, revoke_key
from service.access.principal import Role
from service.config import Settings, load_settings
from service.errors import InvalidArgument
from service.observability.audit import CREATE_API_KEY, REVOKE_API_KEY, record_local_action
from service.transport.tls import ClientTls

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


# ---------------------------------------------------------------- client flags


def add_client_options(parser: argparse.ArgumentParser) -> None:
    env = os.environ.get
    parser.add_argument(
        "--api-key",
        default=env("FACEGATE_API_KEY"),
        help="API key (default $FACEGATE_API_KEY; prefer it or --api-key-file: command"
        " lines are visible to other users)",
    )
    parser.add_argument("--api-key-file", type=Path, help="file whose first line is the API key")
    parser.add_argument(
        "--tls", action="store_true", help="use TLS (implied by --ca-file / --cert-file)"
    )
    parser.add_argument(
        "--ca-file",
        type=Path,
        default=env("FACEGATE_CA_FILE"),
        help="PEM CA to trust for the server (default $FACEGATE_CA_FILE, else system roots)",
    )
    parser.add_argument(
        "--cert-file",
        type=Path,
        default=env("FACEGATE_CLIENT_CERT"),
        help="PEM client certificate for mTLS (default $FACEGATE_CLIENT_CERT)",
    )
    parser.add_argument(
        "--key-file",
        type=Path,
        default=env("FACEGATE_CLIENT_KEY"),
        help="PEM key of the client certificate (default $FACEGATE_CLIENT_KEY)",
    )
    parser.add_argument("--server-name", help="the name the server certificate must carry")


def connection_options(args: argparse.Namespace) -> dict[str, Any]:
    """``FaceGateClient`` keyword arguments (api_key, tls) from the client flags; raises
    ``InvalidArgument`` when a named file cannot be used."""
    api_key = args.api_key
    if args.api_key_file is not None:
        try:
            lines = args.api_key_file.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidArgument(
                f"cannot read the API key file {args.api_key_file}: {exc}"
            ) from exc
        api_key = lines[0].strip() if lines else ""
        if not api_key:
            raise InvalidArgument(f"the API key file {args.api_key_file} is empty")
    tls = None
    if args.tls or args.ca_file or args.cert_file or args.key_file or args.server_name:
        tls = ClientTls.from_files(args.ca_file, args.cert_file, args.key_file, args.server_name)
    return {"api_key": api_key or None, "tls": tls}


# ---------------------------------------------------------------- keys commands


def register(subparsers: Any) -> None:
    keys = subparsers.add_parser("keys", help="create, list or revoke API keys")
    sub = keys.add_subparsers(dest="keys_command", metavar="{create,list,revoke}")
    sub.required = True

    create = sub.add_parser("create", help="make a key: prints it once, stores its hash")
    _common(create)
    create.add_argument("--id", required=True, help="names the key in logs (e.g. till-7)")
    create.add_argument("--role", required=True, choices=[r.value for r in Role])
    create.add_argument(
        "--collection",
        action="append",
        metavar="NAME",
        help="limit the key to this collection (repeat for several; default: all)",
    )
    create.set_defaults(func=run_create)

    list_ = sub.add_parser("list", help="key ids, roles and scopes (never keys or hashes)")
    _common(list_)
    list_.set_defaults(func=run_list)

    revoke = sub.add_parser("revoke", help="remove a key (a running server notices)")
    _common(revoke)
    revoke.add_argument("--id", required=True)
    revoke.set_defaults(func=run_revoke)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--keys-file", type=Path, help="default: auth.keys_file of the settings")
    p.add_argument("--config", type=Path, help="TOML settings file (for auth.keys_file)")
    p.add_argument(
        "--data-dir", type=Path, help="the server's data directory (its audit log records this)"
    )
    p.add_argument("--json", action="store_true", help="print one JSON document")


def _keys_file(args: argparse.Namespace) -> Path | None:
    if args.keys_file is not None:
        return Path(args.keys_file)
    return _settings(args).auth.keys_file


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(config_file=args.config, data_dir=getattr(args, "data_dir", None))


def _audit(args: argparse.Namespace, action: str, entry: KeyEntry) -> None:
    """Record a key change in the server's audit log (``[audit]`` of the settings)."""
    record_local_action(
        _settings(args),
        action,
        target=f"{entry.key_id} role={entry.role.value} scope={_scope(entry)}",
    )


def _describe(entry: KeyEntry) -> dict[str, Any]:
    return {
        "id": entry.key_id,
        "role": entry.role.value,
        "collections": None if entry.collections is None else sorted(entry.collections),
        "created": entry.created,
    }


def _scope(entry: KeyEntry) -> str:
    return "all collections" if entry.collections is None else ",".join(sorted(entry.collections))


def _run(args: argparse.Namespace, action: Any) -> int:
    try:
        path = _keys_file(args)
        if path is None:
            print("error: no keys file: pass --keys-file or set auth.keys_file", file=sys.stderr)
            return EXIT_USAGE
        return int(action(path))
    except InvalidArgument as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return EXIT_ERROR


def run_create(args: argparse.Namespace) -> int:
    def create(path: Path) -> int:
        key, entry = add_key(path, args.id, args.role, args.collection)
        _audit(args, CREATE_API_KEY, entry)
        if args.json:
            print(json.dumps({**_describe(entry), "key": key, "keys_file": str(path)}))
        else:
            print(key)
        print(
            f"created key {entry.key_id!r} (role {entry.role.value}, {_scope(entry)}) in {path};"
            " it is shown only now: store it safely",
            file=sys.stderr,
        )
        return EXIT_OK

    return _run(args, create)


def run_list(args: argparse.Namespace) -> int:
    def show(path: Path) -> int:
        entries = load_keys(path)
        if args.json:
            print(json.dumps({"keys": [_describe(e) for e in entries]}))
            return EXIT_OK
        for e in entries:
            print(f"{e.key_id}  role={e.role.value}  {_scope(e)}  created={e.created or '-'}")
        if not entries:
            print(f"no keys in {path}")
        return EXIT_OK

    return _run(args, show)


def run_revoke(args: argparse.Namespace) -> int:
    def revoke(path: Path) -> int:
        entry = revoke_key(path, args.id)
        _audit(args, REVOKE_API_KEY, entry)
        if args.json:
            print(json.dumps({"revoked": entry.key_id}))
        else:
            print(f"revoked key {entry.key_id!r} ({entry.role.value}) from {path}")
        return EXIT_OK

    return _run(args, revoke)
