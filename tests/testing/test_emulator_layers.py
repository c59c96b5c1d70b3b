"""The emulator package's shape, checked from its source: imports form no circle, no submodule imports the package
``__init__`` (whose re-exports sit on top of everything), every import points down the declared layer order, and
no module is longer than :data:`MAX_LINES`.

:func:`package_problems` is the reusable part: give it any package directory and it reads every module with
:mod:`ast` (nothing is imported), so it also runs on a package planted in ``tmp_path``.
"""

from __future__ import annotations

import ast
import importlib
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

import kernel_provider.testing

EMULATOR_DIR = Path(kernel_provider.testing.__file__).resolve().parent
EMULATOR_PACKAGE = "kernel_provider.testing"
#: The longest a module of the emulator may be.
MAX_LINES = 450

#: The emulator's layers, lowest first: a module may import modules of its own layer or of a lower one. A new
#: module must be placed here (the test says so), which is the moment to decide what it may depend on.
EMULATOR_LAYERS: tuple[tuple[str, ...], ...] = (
    # building blocks: no emulator state, no web framework
    (
        "access",
        "capture",
        "chromium",
        "config",
        "fault_plan",
        "faults",
        "introspection",
        "signing",
        "timeutil",
        "wire",
    ),
    # what the emulator keeps: apps and actions, invocations, browsers, live-view URLs, recordings; the store
    (
        "actions",
        "apps",
        "browser_sessions",
        "demo_app",
        "invocation",
        "live_view_urls",
        "replays",
        "store",
    ),
    # what it does: run actions (the store only holds the callback)
    ("runner",),
    # HTTP in front of the routes: shared answers, the admin routes the middleware's sign-in uses, the middleware
    ("responses", "admin", "middleware"),
    # Kernel's API and the live-view pages
    ("invocation_routes", "browser_routes", "live_view", "replay_routes"),
    # the assembled ASGI app
    ("app",),
    # running it: in-process or as a subprocess, and the client of its admin routes
    ("emulator_client", "server"),
    # entry points: the CLI (``kernel-emulator``, ``python -m``) and the pytest plugin
    ("cli", "__main__", "pytest_plugin"),
    # the package's public names
    ("__init__",),
)


# --- reading a package --------------------------------------------------------------------------------------


def module_name(package_dir: Path, package: str, path: Path) -> str:
    """The dotted name of ``path`` inside ``package`` (a package's ``__init__.py`` is the package itself)."""
    parts = path.relative_to(package_dir).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join((package, *parts))


def package_modules(package_dir: Path, package: str) -> dict[str, Path]:
    """Every module below ``package_dir`` by dotted name."""
    return {module_name(package_dir, package, path): path for path in sorted(package_dir.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    """Whether an ``if`` tests ``TYPE_CHECKING`` (bare or as ``typing.TYPE_CHECKING``)."""
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def _import_nodes(nodes: list[ast.stmt] | ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement under ``nodes`` at any depth (functions included), except in ``if TYPE_CHECKING:``
    bodies: those never run, so they cannot make a circle at import time."""
    for child in nodes if isinstance(nodes, list) else ast.iter_child_nodes(nodes):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            yield from _import_nodes(child.orelse)
        else:
            yield from _import_nodes(child)


def _base_of(node: ast.ImportFrom, importer: str, is_package: bool) -> str:
    """The absolute module a ``from ... import`` reads from (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    parts = importer.split(".")
    # A package's ``.`` is the package itself; a module's ``.`` is the package holding it.
    keep = len(parts) - node.level + (1 if is_package else 0)
    base = ".".join(parts[:keep])
    return f"{base}.{node.module}" if node.module else base


def imported_modules(path: Path, importer: str, modules: Mapping[str, Path]) -> set[str]:
    """The modules of ``modules`` that the module ``importer`` (at ``path``) imports.

    ``from pkg import name`` counts as importing ``pkg.name`` when that is a module, else as importing ``pkg``.
    When ``pkg`` is a package it also counts as importing ``pkg`` itself: the statement reads the package's
    namespace (and its ``__getattr__``) whatever ``name`` is.
    """
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in _import_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in modules)
            continue
        base = _base_of(node, importer, is_package)
        if base in modules and modules[base].name == "__init__.py":
            found.add(base)
        for alias in node.names:
            if f"{base}.{alias.name}" in modules:
                found.add(f"{base}.{alias.name}")
            elif base in modules:
                found.add(base)
    found.discard(importer)
    return found


def import_graph(package_dir: Path, package: str) -> dict[str, set[str]]:
    """``{module: the package's modules it imports}`` for every module of the package."""
    modules = package_modules(package_dir, package)
    return {name: imported_modules(path, name, modules) for name, path in modules.items()}


# --- judging it ---------------------------------------------------------------------------------------------


def circles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """One circle per strongly connected group of modules, as a path that returns to its start.

    Tarjan's algorithm finds the groups; a path through each is then walked so the message names real imports.
    """
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_walk_circle(graph, group) for group in groups]


def _walk_circle(graph: Mapping[str, set[str]], group: set[str]) -> list[str]:
    """The shortest path inside ``group`` from its first module back to itself (breadth first)."""
    start = min(group)
    parent: dict[str, str | None] = {start: None}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for target in sorted(graph[node] & group):
                if target == start:
                    path = [node]
                    while (previous := parent[path[-1]]) is not None:
                        path.append(previous)
                    return [*reversed(path), start]
                if target not in parent:
                    parent[target] = node
                    following.append(target)
        frontier = following
    raise AssertionError(f"{sorted(group)} is not strongly connected")


def package_problems(
    package_dir: Path,
    package: str,
    max_lines: int = MAX_LINES,
    layers: tuple[tuple[str, ...], ...] | None = None,
) -> list[str]:
    """Everything wrong with the shape of a package, one line each (empty when all is well).

    :param package_dir: the directory holding the package's ``__init__.py``.
    :param package: its dotted import name.
    :param max_lines: the longest a module may be.
    :param layers: module names relative to the package (``"store"``, ``"__init__"``), lowest layer first. When
        given, every module must be in one layer, and may import only its own layer or lower ones.
    """
    modules = package_modules(package_dir, package)
    graph = import_graph(package_dir, package)
    problems = [f"import circle: {' -> '.join(circle)}" for circle in circles(graph)]
    for importer, targets in sorted(graph.items()):
        if importer != package and package in targets:
            problems.append(f"{importer} imports the package {package} (import from its submodules instead)")
    for name, path in sorted(modules.items()):
        lines = len(path.read_text().splitlines())
        if lines > max_lines:
            problems.append(f"{name} has {lines} lines (at most {max_lines})")
    if layers is not None:
        problems += _layer_problems(graph, package, layers)
    return problems


def _short(package: str, name: str) -> str:
    return "__init__" if name == package else name[len(package) + 1 :]


def _layer_problems(graph: Mapping[str, set[str]], package: str, layers: tuple[tuple[str, ...], ...]) -> list[str]:
    layer_of = {module: depth for depth, layer in enumerate(layers) for module in layer}
    problems = []
    for importer, targets in sorted(graph.items()):
        short = _short(package, importer)
        if short not in layer_of:
            problems.append(f"{importer} is in no layer: add it to the layer order")
            continue
        for target in sorted(targets):
            target_short = _short(package, target)
            if layer_of.get(target_short, -1) > layer_of[short]:
                problems.append(f"{importer} (layer {layer_of[short]}) imports {target} from a higher layer")
    listed = {_short(package, name) for name in graph}
    problems += [f"the layer order names {name}, which is no module" for name in sorted(set(layer_of) - listed)]
    return problems


# --- the emulator --------------------------------------------------------------------------------------------


def test_the_emulator_has_no_import_circle_no_upward_import_and_no_long_module() -> None:
    problems = package_problems(EMULATOR_DIR, EMULATOR_PACKAGE, MAX_LINES, EMULATOR_LAYERS)
    assert not problems, "\n".join(problems)


def test_the_public_names_and_entry_points_still_resolve() -> None:
    """The package ``__init__`` re-exports lazily from submodules, and ``pyproject.toml`` names modules: a rename
    that forgot either shows here rather than in a user's import."""
    missing = [name for name in kernel_provider.testing.__all__ if getattr(kernel_provider.testing, name, None) is None]
    assert not missing
    pyproject = (EMULATOR_DIR.parents[1] / "pyproject.toml").read_text()
    targets = re.findall(r'=\s*"(kernel_provider\.testing[\w.]*)(?::(\w+))?"', pyproject)
    assert {module for module, _ in targets} >= {"kernel_provider.testing.cli", "kernel_provider.testing.pytest_plugin"}
    for module, attribute in targets:
        loaded = importlib.import_module(module)
        assert not attribute or callable(getattr(loaded, attribute)), f"{module}:{attribute}"


# --- the checker itself --------------------------------------------------------------------------------------


#: Packages planted in ``tmp_path``: their modules' sources, the checker's options, what it must report.
PLANTED: dict[str, tuple[dict[str, str], dict[str, Any], list[str]]] = {
    "a circle closed by a function-level import, through a relative one": (
        {
            "__init__.py": "from planted.high import Thing\n",
            "low.py": "def late():\n    from planted.high import Thing\n    return Thing\n",
            "mid.py": "from .low import late\n",
            "high.py": "from planted.mid import late\nThing = late\n",
        },
        {},
        ["import circle: planted.high -> planted.mid -> planted.low -> planted.high"],
    ),
    "no circle through TYPE_CHECKING, but a submodule importing the package": (
        {
            "__init__.py": "from planted.a import A\n",
            "a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from planted.b import B\nA = 1\n",
            "b.py": "import planted.a\nfrom planted import a\nB = 2\n",
        },
        {},
        ["planted.b imports the package planted (import from its submodules instead)"],
    ),
    "a long module, an upward import and a layer naming no module": (
        {"__init__.py": "", "low.py": "from planted.top import y\n" + "x = 1\n" * 5, "top.py": "y = 2\n"},
        {"max_lines": 5, "layers": (("low", "extra"), ("top", "__init__"))},
        [
            "planted.low has 6 lines (at most 5)",
            "planted.low (layer 0) imports planted.top from a higher layer",
            "the layer order names extra, which is no module",
        ],
    ),
}


@pytest.mark.parametrize(("files", "options", "expected"), PLANTED.values(), ids=list(PLANTED))
def test_the_checker_reports_what_is_planted(
    tmp_path: Path, files: dict[str, str], options: dict[str, Any], expected: list[str]
) -> None:
    package_dir = tmp_path / "planted"
    package_dir.mkdir()
    for name, source in files.items():
        (package_dir / name).write_text(source)
    assert package_problems(package_dir, "planted", **options) == expected
