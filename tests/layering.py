"""A package's shape, read from its source with :mod:`ast` (nothing is imported): its import graph, import
circles, submodules importing the package ``__init__``, imports pointing up a declared layer order, and modules
over a line budget. Used for the provider (``tests/test_layout.py``) and the emulator
(``tests/testing/test_emulator_layers.py``); it runs on packages planted in ``tmp_path`` too.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path

#: The longest a module may be, provider and emulator alike: a module a newcomer reads in one go.
MAX_LINES = 450


# --- reading a package --------------------------------------------------------------------------------------


def module_name(package_dir: Path, package: str, path: Path) -> str:
    """The dotted name of ``path`` inside ``package`` (a package's ``__init__.py`` is the package itself)."""
    parts = path.relative_to(package_dir).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join((package, *parts))


def package_modules(package_dir: Path, package: str, exclude: tuple[str, ...] = ()) -> dict[str, Path]:
    """Every module below ``package_dir`` by dotted name, leaving out the subpackages named in ``exclude``
    (relative names, e.g. ``"testing"``)."""
    modules = {module_name(package_dir, package, path): path for path in sorted(package_dir.rglob("*.py"))}
    skipped = tuple(f"{package}.{name}" for name in exclude)
    return {
        name: path for name, path in modules.items() if not any(name == s or name.startswith(s + ".") for s in skipped)
    }


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


def import_graph(package_dir: Path, package: str, exclude: tuple[str, ...] = ()) -> dict[str, set[str]]:
    """``{module: the package's modules it imports}`` for every module of the package (see ``exclude`` of
    :func:`package_modules`; imports of excluded modules are not counted)."""
    modules = package_modules(package_dir, package, exclude)
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
    *,
    exclude: tuple[str, ...] = (),
    init_on_top: bool = True,
) -> list[str]:
    """Everything wrong with the shape of a package, one line each (empty when all is well).

    :param package_dir: the directory holding the package's ``__init__.py``.
    :param package: its dotted import name.
    :param max_lines: the longest a module may be.
    :param layers: module names relative to the package (``"store"``, ``"__init__"``), lowest layer first. When
        given, every module must be in one layer, and may import only its own layer or lower ones.
    :param exclude: subpackages left out (checked on their own).
    :param init_on_top: the package ``__init__`` re-exports its submodules, so none may import it. False for a
        package whose ``__init__`` holds only what everything below may read (the provider's ``__version__``).
    """
    modules = package_modules(package_dir, package, exclude)
    graph = import_graph(package_dir, package, exclude)
    problems = [f"import circle: {' -> '.join(circle)}" for circle in circles(graph)]
    for importer, targets in sorted(graph.items()):
        if init_on_top and importer != package and package in targets:
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
