"""The package's import structure (ARCHITECTURE.md, "Layers"): walked from the source, not from a running import.

Every ``import`` and ``from ... import`` statement of every module under ``georobust/`` is read with ``ast``
(module level and inside functions alike), resolved to the module it loads, and checked:

* no module under ``attacks/``, ``geometry/``, ``defenses/`` imports a private module (a path component
  starting with ``_``) or a private name of another package;
* the foundation (``errors``, ``storage``, ``core``, ``engine``, ``registry``, ``checks``, ``results``,
  ``models``, ``data``, ``evaluation.metrics``) imports no method package (``attacks``, ``geometry``, ``defenses``), nor
  the suite or the CLI;
* the import graph has no cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "georobust"
METHOD_PACKAGES = ("attacks", "geometry", "defenses")
FOUNDATION = ("errors", "storage", "core", "engine", "registry", "checks", "results", "models", "data", "detection",
              "evaluation.metrics",
              "plots")


def _modules() -> dict[str, Path]:
    out = {}
    for p in ROOT.rglob("*.py"):
        rel = p.relative_to(ROOT.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES.get(name, Path()).name == "__init__.py"


def _resolve(module: str, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    if not _is_package(module):
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(module: str) -> list[tuple[str, str | None]]:
    """``(target module, imported name or None)`` for every import statement of ``module`` inside georobust."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, None) for a in node.names if a.name.startswith("georobust")]
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, node)
            if not target.startswith("georobust"):
                continue
            for a in node.names:
                sub = f"{target}.{a.name}"
                out.append((sub, None) if sub in MODULES else (target, a.name))
    return out


def graph() -> dict[str, set[str]]:
    g = {m: set() for m in MODULES}
    for m in MODULES:
        for target, _ in imports(m):
            while target not in MODULES and "." in target:  # an attribute of a module: the module
                target = target.rsplit(".", 1)[0]
            if target in MODULES and target != m:
                g[m].add(target)
    return g


def _package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_the_walk_sees_the_package():
    # the resolution itself: known edges must be found, or the other tests would pass vacuously
    g = graph()
    assert len(MODULES) > 40
    assert "georobust.engine.pgd" in g["georobust.attacks.pgd"] and "georobust.core.ops" in g["georobust.engine.pgd"]
    assert "georobust.checks" in g["georobust.attacks.deepfool"]
    assert "georobust.attacks.deepfool" in g["georobust.geometry.normals"]


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _package_of(m) in METHOD_PACKAGES))
def test_no_private_imports_across_packages(module):
    mine = _package_of(module)
    for target, name in imports(module):
        other = _package_of(target) != mine
        private_module = any(p.startswith("_") and p != "__init__" for p in target.split(".")[1:])
        private_name = name is not None and name.startswith("_") and not name.startswith("__")
        assert not (other and (private_module or private_name)), (
            f"{module} imports {'the private name ' + name + ' from ' if private_name else ''}{target}, "
            "private to another package: move the shared piece to georobust.core or make it public")


@pytest.mark.parametrize("module", sorted(m for m in MODULES
                                          if any(m == f"georobust.{f}" or m.startswith(f"georobust.{f}.")
                                                 for f in FOUNDATION)))
def test_foundation_does_not_import_methods(module):
    for target in graph()[module]:
        pkg = _package_of(target)
        assert pkg not in METHOD_PACKAGES and target not in ("georobust.cli", "georobust.evaluation.suite",
                                                             "georobust"), (
            f"{module} (foundation) imports {target}: the foundation must not depend on methods, the suite or the CLI")


def test_core_is_pure():
    # core/ is the lowest layer: tensor maths and concepts, importing only errors (and other core modules)
    for m in (m for m in MODULES if m.startswith("georobust.core")):
        for target in graph()[m]:
            assert target == "georobust.errors" or target.startswith("georobust.core"), (
                f"{m} imports {target}: core/ is pure; machinery that needs models goes to georobust.engine")


def test_no_import_cycle():
    g = graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(g[m]):
            if state.get(t) == 1:
                cycle = stack[stack.index(t):] + [t]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m)
