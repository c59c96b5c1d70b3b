"""The declared dependencies are true: ``.ci/floors.txt`` (the lowest-dependencies leg, ``make test-floors``) pins
every direct dependency at the floor ``pyproject.toml`` declares, and the ``[emulator]`` extra brings what
``kernel-emulator --app`` needs to load an app written with Kernel's SDK."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.requirements import Requirement

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
#: Direct dependencies the floors leg cannot hold at their floor, and why (see .ci/floors.txt).
NOT_FLOORED = {
    "apache-airflow": "the leg runs Airflow 3.3; the floor, 2.11, is the .venv-af2 leg",
    "starlette": "Airflow 3.3 needs >=1.0.1; the Airflow 3.0 leg runs the floor",
    "uvicorn": "Airflow 3.3 needs >=0.37; the Airflow 3.0 leg (.ci/pins-af30.txt) runs the floor",
}


def _direct() -> list[Requirement]:
    return [Requirement(r) for r in [*PROJECT["dependencies"], *PROJECT["optional-dependencies"]["emulator"]]]


def _floor(requirement: Requirement) -> str:
    floors = [s.version for s in requirement.specifier if s.operator == ">="]
    assert len(floors) == 1, f"{requirement}: one >= floor expected"
    return floors[0]


def _pins() -> dict[str, str]:
    lines = (ROOT / ".ci" / "floors.txt").read_text().splitlines()
    pairs = [line.split("==") for line in lines if line.strip() and not line.startswith("#")]
    return {name.strip(): pinned.strip() for name, pinned in pairs}


def test_the_floors_file_pins_every_direct_dependency_at_its_declared_floor() -> None:
    expected = {r.name: _floor(r) for r in _direct() if r.name not in NOT_FLOORED}
    # A floor written "1.22" is installed as 1.22.0: compare versions, not text.
    assert {name: Requirement(f"{name}=={pinned}").specifier for name, pinned in _pins().items()} == {
        name: Requirement(f"{name}=={floor}").specifier for name, floor in expected.items()
    }


def test_the_emulator_extra_brings_the_kernel_sdk_that_app_files_import() -> None:
    emulator = {r.name: r for r in map(Requirement, PROJECT["optional-dependencies"]["emulator"])}
    assert "kernel" in emulator
    assert version("kernel") in emulator["kernel"].specifier  # the SDK the suite loads apps with


def test_the_cli_names_the_module_an_app_file_lacks(tmp_path: Path) -> None:
    app = tmp_path / "my_app.py"
    app.write_text("import kernel_sdk_nobody_installed\n")
    done = subprocess.run(
        [sys.executable, "-m", "kernel_provider.testing", "--port", "0", "--app", str(app)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "an --app file could not be imported: No module named 'kernel_sdk_nobody_installed'" in done.stderr
    assert "airflow-provider-kernel[emulator]" in done.stderr
