"""The committed stubs are exactly what ``proto/generate.py`` produces from the .proto."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest
from facegate.v1 import facegate_pb2

ROOT = Path(__file__).resolve().parents[1]
GENERATED_DIR = ROOT / "proto"


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "facegate_proto_generate", ROOT / "proto" / "generate.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


generator = _load_generator()


def test_pin_matches_the_committed_stubs() -> None:
    grpc_stub = (GENERATED_DIR / "facegate" / "v1" / "facegate_pb2_grpc.py").read_text()
    found = re.search(r"GRPC_GENERATED_VERSION = '([^']+)'", grpc_stub)
    assert found is not None
    assert found.group(1) == generator.GRPCIO_TOOLS_VERSION, (
        "proto/generate.py's GRPCIO_TOOLS_VERSION does not match the version that generated "
        "the committed stubs; regenerate with `python proto/generate.py`"
    )


def test_installed_generator_is_the_pinned_one() -> None:
    installed = generator.installed_tools_version()
    assert installed == generator.GRPCIO_TOOLS_VERSION, (
        f"grpcio-tools {installed} is installed, but the committed stubs were generated with "
        f"grpcio-tools=={generator.GRPCIO_TOOLS_VERSION} (pinned in pyproject's dev extra); "
        "install the pinned version, or bump the pin in proto/generate.py and pyproject.toml "
        "together and regenerate with `python proto/generate.py`"
    )


def test_regenerating_reproduces_the_committed_stubs(tmp_path: Path) -> None:
    if generator.installed_tools_version() != generator.GRPCIO_TOOLS_VERSION:
        pytest.fail("wrong grpcio-tools installed; see test_installed_generator_is_the_pinned_one")
    written = generator.generate(tmp_path)
    committed = generator.generated_paths(GENERATED_DIR)
    assert [p.relative_to(tmp_path) for p in written] == [
        p.relative_to(GENERATED_DIR) for p in committed
    ]
    for fresh, old in zip(written, committed, strict=True):
        assert fresh.read_bytes() == old.read_bytes(), (
            f"{old.relative_to(ROOT)} is stale: run `python proto/generate.py` and commit"
        )


def test_generated_imports_use_the_package_path() -> None:
    grpc_stub = (GENERATED_DIR / "facegate" / "v1" / "facegate_pb2_grpc.py").read_text()
    assert "from facegate.v1 import facegate_pb2" in grpc_stub
    assert facegate_pb2.DESCRIPTOR.package == "facegate.v1"
    assert facegate_pb2.DESCRIPTOR.name == "facegate/v1/facegate.proto"
