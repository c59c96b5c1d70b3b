"""The package's shape, checked: statuses interpreted in one place, a client that needs no Airflow, every public
name documented, and the API-as-data module used only by the client and the hook."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from tests.layering import MAX_LINES, package_modules, package_problems

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "kernel_provider"
#: Where an HTTP status may be compared with a number: the status -> error class map and the retry policy.
STATUS_HOMES = {PACKAGE / "client" / "errors.py", PACKAGE / "client" / "retry.py"}
#: The API as data (endpoints, calls, operations): the client runs them; only the hooks may reach past it.
API_AS_DATA = {"kernel_provider.client.wire", "kernel_provider.client.invocations"}


def provider_files() -> Iterator[Path]:
    """Every module of the package but the emulator (``kernel_provider/testing``)."""
    for path in sorted(PACKAGE.rglob("*.py")):
        if "testing" not in path.relative_to(PACKAGE).parts:
            yield path


def where(path: Path, node: ast.AST) -> str:
    shown = path.relative_to(ROOT) if ROOT in path.parents else path
    return f"{shown}:{getattr(node, 'lineno', 0)}"


# --- (a) HTTP statuses are decided in one place -------------------------------------------------------------


def _status_literals(node: ast.expr) -> list[int]:
    """HTTP error statuses (400..599) written as int literals in ``node``, or in a tuple/list/set literal of them."""
    items = node.elts if isinstance(node, (ast.Tuple, ast.List, ast.Set)) else [node]
    return [
        item.value
        for item in items
        if isinstance(item, ast.Constant) and type(item.value) is int and 400 <= item.value <= 599
    ]


def status_comparisons(path: Path) -> list[str]:
    """Comparisons and membership tests of ``path`` against an HTTP error status literal."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Compare):
            literals = [v for operand in (node.left, *node.comparators) for v in _status_literals(operand)]
            if literals:
                found.append(f"{where(path, node)}: {ast.unparse(node)}")
        elif isinstance(node, ast.match_case) and _status_literals(getattr(node.pattern, "value", ast.Constant(0))):
            found.append(f"{where(path, node)}: case {ast.unparse(node.pattern)}")
    return found


def test_no_status_literal_outside_errors_and_retry() -> None:
    offenders = [hit for path in provider_files() if path not in STATUS_HOMES for hit in status_comparisons(path)]
    assert not offenders, (
        "HTTP statuses are interpreted only in kernel_provider/client/errors.py (and retry.py); "
        "catch the error classes instead:\n" + "\n".join(offenders)
    )


def test_the_status_scan_sees_what_it_must(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "def f(r):\n    a = r.status == 404\n    b = r.status in (401, 403)\n    c = r.status >= 500\n"
        "    d = r.status < 400\n    e = r.status == 200 or r.count > 1000\n    return a, b, c, d, e\n"
    )
    assert [hit.split(": ", 1)[1] for hit in status_comparisons(sample)] == [
        "r.status == 404",
        "r.status in (401, 403)",
        "r.status >= 500",
        "r.status < 400",
    ]


# --- (b) the client needs no Airflow ------------------------------------------------------------------------

NO_AIRFLOW = r"""
import asyncio, importlib, importlib.abc, json, pkgutil, sys

class BlockAirflow(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "airflow" or name.startswith("airflow."):
            raise ImportError(f"importing {name} is blocked in this test")
        return None

sys.meta_path.insert(0, BlockAirflow())
import kernel_provider.client
modules = ["kernel_provider.client", "kernel_provider.exceptions"]
for info in pkgutil.iter_modules(kernel_provider.client.__path__):
    modules.append(f"kernel_provider.client.{info.name}")
    importlib.import_module(modules[-1])
import kernel_provider.exceptions
from kernel_provider.client import KernelClient, KernelSettings
from kernel_provider.client.transport import close_loop_resources
from kernel_provider.testing.server import KernelEmulator

emulator = KernelEmulator().start()
try:
    client = KernelClient(KernelSettings.from_mapping({"host": emulator.url, "password": emulator.token}))
    echoed = client.invoke("demo", "echo", payload={"hello": "world"}, invoke_async=False)

    async def follow():
        started = await client.ainvoke("demo", "logs", payload={"lines": 2, "interval": 0.01}, invoke_async=True)
        events = [event async for event in client.astream_events(started.id, silence_timeout=10)]
        final = await client.aget_invocation(started.id)
        await close_loop_resources()
        return events, final

    events, final = asyncio.run(follow())
    agent = emulator.requests(path="/invocations", method="POST")[0].get("user_agent")
finally:
    emulator.stop()
print(json.dumps({
    "modules": modules,
    "status": echoed.raw_status, "output": echoed.result,
    "logs": [e["message"].strip() for e in events if e.get("event") == "log"], "final": final.raw_status,
    "user_agent": agent,
    "airflow_loaded": sorted(m for m in sys.modules if m == "airflow" or m.startswith("airflow.")),
}))
"""


def test_the_client_imports_and_works_without_airflow() -> None:
    done = subprocess.run([sys.executable, "-c", NO_AIRFLOW], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    expected = {f"kernel_provider.client.{p.stem}" for p in (PACKAGE / "client").glob("*.py") if p.stem != "__init__"}
    assert expected <= set(result["modules"])
    assert (result["status"], result["output"]) == ("succeeded", {"hello": "world"})
    assert result["logs"] == ["line 0", "line 1"] and result["final"] == "succeeded"
    assert result["airflow_loaded"] == []
    assert result["user_agent"].startswith("airflow-provider-kernel/") and "apache-airflow" not in result["user_agent"]


# --- (c) every public name is documented --------------------------------------------------------------------


def _public_members(body: list[ast.stmt], prefix: str) -> Iterator[tuple[str, ast.AST]]:
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
            yield f"{prefix}{node.name}", node
            if isinstance(node, ast.ClassDef):
                yield from _public_members(node.body, f"{prefix}{node.name}.")


def undocumented(path: Path) -> list[str]:
    """Public names of ``path`` without a docstring: the module, its classes, functions and methods (names
    starting with ``_`` are private, and so is everything inside a private class)."""
    tree = ast.parse(path.read_text(), str(path))
    module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
    missing = [f"{module} (module)"] if not ast.get_docstring(tree) else []
    for name, node in _public_members(tree.body, f"{module}."):
        if not ast.get_docstring(node):  # type: ignore[arg-type]
            missing.append(f"{name} ({where(path, node)})")
    return missing


def test_every_public_name_has_a_docstring() -> None:
    missing = [name for path in provider_files() for name in undocumented(path)]
    assert not missing, "undocumented public names:\n" + "\n".join(missing)


# --- (d) the API as data stays behind the client --------------------------------------------------------------


def imported_names(path: Path) -> Iterator[tuple[ast.AST, str]]:
    """Every module (or module attribute) ``path`` imports, as absolute dotted names; relative imports resolved."""
    package = list(path.relative_to(ROOT).with_suffix("").parts)
    package = package[:-1]  # the module's package (a package's __init__ is its own package's module)
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from ((node, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(
                [*package[: len(package) - node.level + 1], node.module or ""] if node.level else [node.module or ""]
            ).strip(".")
            yield node, base
            yield from ((node, f"{base}.{alias.name}") for alias in node.names)


def test_only_the_client_and_the_hook_import_the_api_as_data() -> None:
    allowed = {PACKAGE / "hooks" / "kernel.py"}
    offenders = sorted(
        {
            where(path, node)
            for path in provider_files()
            if PACKAGE / "client" not in path.parents and path not in allowed
            for node, name in imported_names(path)
            if name in API_AS_DATA
        }
    )
    assert not offenders, (
        "only kernel_provider/client/ and hooks/kernel.py may import the wire and invocations modules: "
        + ", ".join(offenders)
    )


# --- (e) one layer order, no circle, small modules -----------------------------------------------------------

#: The provider's layers, lowest first, by module or folder (a folder stands for every module in it). A module
#: imports only its own layer or lower ones; the emulator (``testing``) is checked on its own and never imported.
PROVIDER_LAYERS: tuple[tuple[str, ...], ...] = (
    ("__init__", "version_compat", "get_provider_info"),
    ("client",),  # Airflow-free: the client core
    ("exceptions", "links", "utils", "assets"),
    ("hooks",),
    ("triggers",),
    ("operators",),
    ("sensors",),
    ("decorators",),
)


def _expanded_layers() -> tuple[tuple[str, ...], ...]:
    names = [
        "__init__" if name == "kernel_provider" else name.removeprefix("kernel_provider.")
        for name in package_modules(PACKAGE, "kernel_provider", exclude=("testing",))
    ]

    def members(entry: str) -> list[str]:
        return [n for n in names if n == entry or n.startswith(entry + ".")]

    return tuple(tuple(m for entry in layer for m in members(entry)) for layer in PROVIDER_LAYERS)


def test_the_provider_has_one_layer_order_no_circle_and_no_long_module() -> None:
    """Budget: :data:`tests.layering.MAX_LINES` lines a module, the emulator's too."""
    problems = package_problems(
        PACKAGE, "kernel_provider", MAX_LINES, _expanded_layers(), exclude=("testing",), init_on_top=False
    )
    assert not problems, "\n".join(problems)


def test_the_provider_never_imports_the_emulator() -> None:
    offenders = sorted(
        where(path, node)
        for path in provider_files()
        for node, name in imported_names(path)
        if name == "kernel_provider.testing" or name.startswith("kernel_provider.testing.")
    )
    assert not offenders, offenders


#: Where a ``**kwargs`` may stay: Airflow forwards ``BaseOperator`` / ``BaseHook`` arguments through them.
FORWARDS_AIRFLOW_ARGUMENTS = {
    "KernelInvokeOperator.__init__",
    "KernelInvocationSensor.__init__",
    "KernelLandFilesOperator.__init__",
    "KernelBaseHook.__init__",
    "_KernelDecoratedOperator.__init__",
    "_KernelBrowserDecoratedOperator.__init__",
    "kernel_task",
    "kernel_browser_task",
}


def catch_all_keywords(path: Path) -> list[str]:
    """``Owner.method`` (or ``function``) of every public function of ``path`` that takes ``**kwargs``."""
    found = []

    def visit(node: ast.AST, owner: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                visit(child, child.name)
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) and child.args.kwarg is not None:
                name = f"{owner}.{child.name}" if owner else child.name
                if not child.name.startswith("_") or child.name == "__init__":
                    found.append(name)

    visit(ast.parse(path.read_text(), str(path)), "")
    return found


def test_public_signatures_name_their_parameters() -> None:
    """No ``**options`` in a public method: an IDE completes every parameter and a typo fails at the call."""
    offenders = [
        f"{path.relative_to(ROOT)}: {name}"
        for path in provider_files()
        for name in catch_all_keywords(path)
        if name not in FORWARDS_AIRFLOW_ARGUMENTS
    ]
    assert not offenders, offenders


def test_the_keyword_scan_sees_what_it_must(tmp_path: Path) -> None:
    planted = tmp_path / "planted.py"
    planted.write_text(
        "class Hook:\n    def run(self, **options): ...\n    def _inner(self, **kw): ...\n"
        "async def fetch(*, limit=None, **filters): ...\ndef ok(*, a: int) -> None: ...\n"
    )
    assert catch_all_keywords(planted) == ["Hook.run", "fetch"]
