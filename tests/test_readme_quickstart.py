"""The README's Quickstart, run as written, so it can never go stale.

Its files (the blocks after ``<!-- quickstart-file: PATH -->``) are written to a fresh directory and its run block
(after ``<!-- quickstart-run -->``) is executed by bash there, in a fresh ``AIRFLOW_HOME``, with this test's Python
environment first on ``PATH`` (the install step is what this environment already is; ``make release-check`` runs
it with ``KERNEL_QUICKSTART_BIN`` naming a fresh venv that holds the built wheel instead). Two changes only: a free
port for the emulator instead of 8083, and Airflow's example DAGs left out (they slow the parse, nothing else).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from kernel_provider.testing.emulator_client import EmulatorClient
from tests.airflow_helpers import AF2
from tests.harness.processes import free_port

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"<!-- quickstart-(?:file: (?P<path>\S+)|run) -->\n```\w+\n(?P<body>.*?)\n```", re.S)


def quickstart() -> tuple[dict[str, str], str]:
    """The Quickstart's files (path -> text) and its run block."""
    section = README.read_text().split("\n## Quickstart\n", 1)[1].split("\n## ", 1)[0]
    files: dict[str, str] = {}
    runs: list[str] = []
    for block in BLOCK.finditer(section):
        if block["path"]:
            files[block["path"]] = block["body"] + "\n"
        else:
            runs.append(block["body"])
    assert len(runs) == 1, f"the Quickstart has {len(runs)} run blocks"
    return files, runs[0]


def test_the_quickstart_has_an_app_a_dag_and_a_run() -> None:
    files, run = quickstart()

    assert set(files) == {"my_app.py", "dags/kernel_quickstart.py"}
    assert "--app my_app.py" in run and "--port 8083" in run
    assert "airflow dags test kernel_quickstart" in run


@pytest.mark.e2e  # Airflow's own CLI in a fresh AIRFLOW_HOME: runs where the e2e tests run (the 3.3 leg, the matrix)
@pytest.mark.skipif(AF2, reason="the Quickstart DAG imports airflow.sdk (Airflow 3); the README says what 2.11 needs")
def test_the_readme_quickstart_runs_as_written(tmp_path: Path) -> None:
    files, run = quickstart()
    for relative, text in files.items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text(text)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "KERNEL"))}
    # make release-check points it at a venv holding the built wheel; otherwise this test's own environment.
    bin_dir = os.environ.get("KERNEL_QUICKSTART_BIN") or str(Path(sys.executable).parent)
    env.update(
        {
            "PATH": f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
            "AIRFLOW_HOME": str(tmp_path / "airflow-home"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        }
    )
    for command in ("airflow", "kernel-emulator"):
        assert shutil.which(command, path=env["PATH"]) == str(Path(bin_dir) / command)
    script = "set -e\n" + run.replace("8083", str(port))
    log = tmp_path / "quickstart.log"  # a file, not a pipe: the background emulator would hold a pipe open
    with log.open("w") as out:
        bash = subprocess.Popen(
            ["bash", "-c", script],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # the emulator it starts in the background is stopped with it, below
        )
    try:
        bash.wait(timeout=280)
        output = log.read_text()
        emulator = EmulatorClient(f"http://127.0.0.1:{port}", "local-token")
        try:
            created = emulator.created_count(app="price-tracker", action="scrape")
            runs = [i for i in emulator.invocations() if i["app_name"] == "price-tracker"]
        except httpx.HTTPError as exc:
            raise AssertionError(f"the Quickstart's emulator cannot be reached ({exc}):\n{output[-6000:]}") from exc
    finally:
        with contextlib.suppress(ProcessLookupError):  # the script may have ended and taken its group with it
            os.killpg(bash.pid, signal.SIGTERM)
        bash.wait(30)

    tail = output[-6000:]
    assert bash.returncode == 0, tail
    assert created == 1, tail
    assert [r["status"] for r in runs] == ["succeeded"], runs
    assert "checking 1 page(s) for" in output, tail  # the action's log line reached the task log
    assert "prices of " in output and "https://example.com" in output, tail  # `report` got the action's output
    assert json.loads(runs[0]["output"])["prices"] == {"https://example.com": 9.99}
