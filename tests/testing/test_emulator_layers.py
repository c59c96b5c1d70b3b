"""The emulator package's shape, checked from its source: imports form no circle, no submodule imports the package
``__init__`` (whose re-exports sit on top of everything), every import points down the declared layer order, and
no module is longer than :data:`MAX_LINES`.

The checker itself is :func:`tests.layering.package_problems`; its own tests (on packages planted in ``tmp_path``)
are here.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any

import pytest

import kernel_provider.testing
from tests.layering import MAX_LINES, package_problems

EMULATOR_DIR = Path(kernel_provider.testing.__file__).resolve().parent
EMULATOR_PACKAGE = "kernel_provider.testing"

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
    ("invocation_routes", "browser_routes", "live_view", "replay_routes", "fs_routes"),
    # the assembled ASGI app
    ("app",),
    # running it: in-process or as a subprocess, and the client of its admin routes
    ("emulator_client", "server"),
    # entry points: the CLI (``kernel-emulator``, ``python -m``) and the pytest plugin
    ("cli", "__main__", "pytest_plugin"),
    # the package's public names
    ("__init__",),
)


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
