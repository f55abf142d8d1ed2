"""The structure of service/ and index/ (tests/import_graph.py): no import cycles, no
cross-module private access, the layering of the packages. First on small made-up trees,
so each check is shown to fail when it should, then on the real tree."""

from __future__ import annotations

from pathlib import Path

import import_graph as graph
import pytest


def _tree(root: Path, files: dict[str, str]) -> dict[str, graph.Module]:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for package in graph.PACKAGES:
        (root / package).mkdir(exist_ok=True)
        (root / package / "__init__.py").touch()
    return graph.load_modules(root)


def test_a_cycle_hidden_in_a_function_is_found(tmp_path: Path) -> None:
    modules = _tree(
        tmp_path,
        {
            "service/a.py": "from service.b import thing\n",
            "service/b.py": "def thing():\n    from service import a\n    return a\n",
            "service/c.py": "import service.a\n",
        },
    )
    assert graph.cycles(modules) == [["service.a", "service.b"]]


def test_relative_and_type_checking_imports_count(tmp_path: Path) -> None:
    modules = _tree(
        tmp_path,
        {
            "service/pkg/__init__.py": "from .x import X\n",
            "service/pkg/x.py": (
                "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                "    from service.pkg import y\nX = 1\n"
            ),
            "service/pkg/y.py": "from . import x\n",
        },
    )
    assert modules["service.pkg"].imports == {"service.pkg.x"}
    assert graph.cycles(modules) == [["service.pkg.x", "service.pkg.y"]]


def test_private_access_across_modules_is_found(tmp_path: Path) -> None:
    modules = _tree(
        tmp_path,
        {
            "service/store.py": "class Store:\n    def __init__(self):\n        self._db = 1\n",
            "service/user.py": (
                "from service.store import Store, _helper\n"
                "def f(s: Store):\n    return s._db\n"
                "class Own:\n    def __init__(self):\n        self._mine = 1\n"
                "    def same(self, other: 'Own'):\n        return other._mine\n"
            ),
        },
    )
    assert graph.private_accesses(modules) == [
        "service.user:1: import _helper",
        "service.user:3: ._db",
    ]


def test_layering_rules_are_enforced(tmp_path: Path) -> None:
    modules = _tree(
        tmp_path,
        {
            "index/core.py": "from service import config\n",
            "service/config.py": "",
            "service/engine/__init__.py": "",
            "service/engine/uses.py": "from service.store.sqlite import SqliteStore\n",
            "service/store/__init__.py": "",
            "service/store/sqlite.py": "",
            "service/metrics.py": "import grpc\n",
        },
    )
    breaches = graph.layering_breaches(modules)
    assert any(b.startswith("index.core imports service.config") for b in breaches)
    assert any(b.startswith("service.engine.uses imports service.store.sqlite") for b in breaches)
    assert any(b.startswith("service.metrics imports grpc") for b in breaches)
    assert len(breaches) == 3


@pytest.fixture(scope="module")
def real() -> dict[str, graph.Module]:
    return graph.load_modules()


def test_service_and_index_have_no_import_cycles(real: dict[str, graph.Module]) -> None:
    assert graph.cycles(real) == []


def test_no_module_uses_another_modules_private_names(real: dict[str, graph.Module]) -> None:
    assert graph.private_accesses(real) == []


def test_packages_keep_their_layers(real: dict[str, graph.Module]) -> None:
    assert graph.layering_breaches(real) == []


def test_the_top_of_service_stays_small(real: dict[str, graph.Module]) -> None:
    top = sorted(m.name for m in real.values() if m.path.parent == Path("service"))
    assert len(top) <= 12, top
