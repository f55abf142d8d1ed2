"""The import graph of service/ and index/, and the structural rules it must keep.

Run as a script (``python tests/import_graph.py``) it prints the packages, every import
cycle, every cross-module private access and every layering breach, and exits 1 if there
is any; ``tests/test_import_graph.py`` runs the same checks under pytest.

What counts:
* an import is any ``import`` / ``from ... import`` anywhere in a module: at the top, inside
  a function, under ``if TYPE_CHECKING`` (an import hidden in a function still ties the
  two modules together; hiding it is how cycles survived before);
* ``from package import name`` depends on ``package.name`` when that is a module, else on
  ``package``;
* a private access is ``something._name`` (not a dunder) on anything but ``self`` / ``cls``
  where the module itself defines no ``_name``, or ``from module import _name`` from
  another module: a module's underscore names are its own business.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("service", "index")

# Who may import the wire: only the transport package speaks gRPC and protobuf.
WIRE_PREFIXES = ("grpc", "grpc_health", "grpc_reflection", "grpc_status", "google", "facegate")
WIRE_OWNERS = ("service.transport",)
# Layering: (importing package, forbidden prefixes, why).
FORBIDDEN: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("index", ("service",), "the matching core knows nothing of the service"),
    (
        "service.engine",
        ("service.store.sqlite", "service.vector_index", "service.transport", "service.app",
         "service.cli", "index.gallery"),
        "the engine depends on service.ports, not on a backend or a transport",
    ),
    ("service.store", ("service.engine", "service.transport", "service.vector_index"),
     "the store is below the engine"),
    ("service.pipeline", ("service.engine", "service.store", "service.transport"),
     "the pipeline turns images into vectors and nothing more"),
    ("service.observability", ("service.transport",), "metrics and audit are transport-neutral"),
    ("service.app", ("service.transport", "service.cli"), "the transports use app, not back"),
)


@dataclass
class Module:
    name: str
    path: Path
    tree: ast.Module
    imports: set[str] = field(default_factory=set)
    external: set[str] = field(default_factory=set)  # third-party imports (grpc, numpy)


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def load_modules(root: Path = ROOT) -> dict[str, Module]:
    modules: dict[str, Module] = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            name = module_name(path, root)
            modules[name] = Module(name, path.relative_to(root), tree)
    for mod in modules.values():
        for target in _imports_of(mod, modules):
            if target in modules:
                if target != mod.name:
                    mod.imports.add(target)
            else:
                mod.external.add(target)
    return modules


def _imports_of(mod: Module, modules: dict[str, Module]) -> Iterator[str]:
    is_package = mod.path.name == "__init__.py"  # relative imports start one level deeper
    for node in ast.walk(mod.tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield _known_prefix(alias.name, modules)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, mod.name, is_package)
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                yield candidate if candidate in modules else _known_prefix(base, modules)


def _absolute(node: ast.ImportFrom, current: str, is_package: bool) -> str:
    if node.level == 0:
        return node.module or ""
    parts = current.split(".")
    keep = len(parts) - node.level + (1 if is_package else 0)
    base = ".".join(parts[:keep])
    return f"{base}.{node.module}" if node.module else base


def _known_prefix(name: str, modules: dict[str, Module]) -> str:
    """``a.b.c`` -> the longest first-party module it names, else the name itself."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return name


def cycles(modules: dict[str, Module]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(start: str) -> None:
        nonlocal counter
        # Iterative, so a deep graph never hits the recursion limit.
        work: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(modules[start].imports)))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            advanced = False
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(modules[nxt].imports))))
                    advanced = True
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))

    for name in sorted(modules):
        if name not in index:
            visit(name)
    return sorted(found)


def _defined_private_names(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, ast.alias):
            names.add(node.asname or node.name.split(".")[-1])
    return {n for n in names if _is_private(n)}


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_accesses(modules: dict[str, Module]) -> list[str]:
    """``module:line: expression`` for each use of another module's private name."""
    found: list[str] = []
    for mod in modules.values():
        own = _defined_private_names(mod.tree)
        for node in ast.walk(mod.tree):
            if isinstance(node, ast.Attribute) and _is_private(node.attr):
                value = node.value
                if isinstance(value, ast.Name) and value.id in ("self", "cls"):
                    continue
                if node.attr in own:
                    continue
                found.append(f"{mod.name}:{node.lineno}: .{node.attr}")
            elif isinstance(node, ast.ImportFrom):
                for alias in node.names:
                    if _is_private(alias.name):
                        found.append(f"{mod.name}:{node.lineno}: import {alias.name}")
    return sorted(found)


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def layering_breaches(modules: dict[str, Module]) -> list[str]:
    found: list[str] = []
    for mod in modules.values():
        for pkg, banned, why in FORBIDDEN:
            if not _within(mod.name, pkg):
                continue
            for target in sorted(mod.imports | mod.external):
                if any(_within(target, b) for b in banned):
                    found.append(f"{mod.name} imports {target}: {why}")
        if not any(_within(mod.name, owner) for owner in WIRE_OWNERS):
            for target in sorted(mod.external):
                if any(_within(target, w) for w in WIRE_PREFIXES):
                    found.append(f"{mod.name} imports {target}: only service.transport speaks gRPC")
            users = {t for t in mod.imports if _within(t, "service.transport")}
            if users and not _within(mod.name, "service.cli"):
                found.append(f"{mod.name} imports {sorted(users)}: only the CLI uses a transport")
    return sorted(found)


def package_sizes(modules: dict[str, Module]) -> dict[str, int]:
    """Modules per package (``service`` = the top-level modules of service/)."""
    sizes: dict[str, int] = {}
    for mod in modules.values():
        key = "/".join(mod.path.parts[:-1])
        sizes[key] = sizes.get(key, 0) + 1
    return dict(sorted(sizes.items()))


def report(lines: Iterable[str], title: str) -> int:
    items = list(lines)
    print(f"{title}: {len(items)}")
    for item in items:
        print(f"  {item}")
    return len(items)


def main() -> int:
    modules = load_modules()
    for package, n in package_sizes(modules).items():
        print(f"{package:<28} {n:>3} modules")
    bad = report((" -> ".join(c) for c in cycles(modules)), "import cycles")
    bad += report(private_accesses(modules), "cross-module private accesses")
    bad += report(layering_breaches(modules), "layering breaches")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
