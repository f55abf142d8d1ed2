"""Regenerate the committed Python stubs of facegate's public API.

    python proto/generate.py            # rewrites proto/facegate/v1/*_pb2*.py[i]
    python proto/generate.py --out DIR  # writes DIR/facegate/v1/... instead (the stub test)

Uses ``grpc_tools.protoc`` with the well-known protos bundled in grpcio-tools, and ``-I proto``
so the generated imports read ``from facegate.v1 import facegate_pb2``. The output depends on
the grpcio-tools version (it embeds protobuf's and grpc's versions), so the generator is
pinned: ``GRPCIO_TOOLS_VERSION`` must equal the installed grpcio-tools, and pyproject's dev
extra pins the same version.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import sys
from pathlib import Path

import grpc_tools  # type: ignore[import-untyped]
from grpc_tools import protoc

# The grpcio-tools release the committed stubs were generated with.
GRPCIO_TOOLS_VERSION = "1.85.1"

PROTO_ROOT = Path(__file__).resolve().parent
PROTO_FILES = ("facegate/v1/facegate.proto",)
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def generated_paths(root: Path) -> list[Path]:
    """The files the generator writes under ``root``, in a stable order."""
    out: list[Path] = []
    for proto in PROTO_FILES:
        stem = proto.removesuffix(".proto")
        out.extend(root / f"{stem}{suffix}" for suffix in GENERATED_SUFFIXES)
    return out


def installed_tools_version() -> str:
    return importlib.metadata.version("grpcio-tools")


def generate(out_dir: Path) -> list[Path]:
    """Run protoc for every API proto into ``out_dir``; return the files written."""
    well_known = Path(grpc_tools.__file__).resolve().parent / "_proto"
    out_dir.mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *PROTO_FILES,
    ]
    # protoc resolves the proto paths against the include dirs, and records them (not the
    # absolute paths) in the descriptors, so the output does not depend on the checkout path.
    cwd = os.getcwd()
    try:
        os.chdir(PROTO_ROOT)
        status = protoc.main(args)
    finally:
        os.chdir(cwd)
    if status != 0:
        raise RuntimeError(f"protoc failed with exit status {status}")
    return generated_paths(out_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=PROTO_ROOT, help="output root")
    parser.add_argument(
        "--any-version",
        action="store_true",
        help=f"run even if grpcio-tools is not {GRPCIO_TOOLS_VERSION} (then bump the pin)",
    )
    args = parser.parse_args(argv)
    version = installed_tools_version()
    if version != GRPCIO_TOOLS_VERSION and not args.any_version:
        print(
            f"error: grpcio-tools {version} is installed but the stubs are pinned to "
            f"{GRPCIO_TOOLS_VERSION}; install grpcio-tools=={GRPCIO_TOOLS_VERSION}, or pass "
            "--any-version and update GRPCIO_TOOLS_VERSION and pyproject's pin together",
            file=sys.stderr,
        )
        return 2
    for path in generate(args.out.resolve()):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
