"""Test set-up shared by every test: an isolated AIRFLOW_HOME with a migrated SQLite metadata DB.

The environment is prepared here, before anything imports airflow, so tests never touch a user's Airflow.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_major = "unknown"
try:
    from importlib.metadata import version as _dist_version

    _major = "af" + _dist_version("apache-airflow").split(".")[0]
except Exception:
    pass
os.environ.setdefault("AIRFLOW_HOME", str(ROOT / ".airflow" / _major))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(ROOT / "example_dags"))
os.environ.setdefault("AIRFLOW__CORE__TEST_CONNECTION", "Enabled")
os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "INFO")
Path(os.environ["AIRFLOW_HOME"]).mkdir(parents=True, exist_ok=True)


@pytest.fixture(autouse=True)
def _task_failures(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test's task exceptions, for ``airflow_helpers.all_logs`` (see ``record_task_failures``)."""
    if "airflow" in sys.modules:  # tests that never load Airflow (client core, emulator) need nothing here
        from tests.airflow_helpers import record_task_failures

        record_task_failures(monkeypatch)


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """A migrated metadata DB (needed by dag.test()); migrated once per AIRFLOW_HOME and Airflow version."""
    home = Path(os.environ["AIRFLOW_HOME"])
    from airflow import __version__ as airflow_version

    stamp = home / f".migrated-{airflow_version}"
    if not stamp.exists():
        subprocess.run(
            [sys.executable, "-m", "airflow", "db", "migrate"],
            check=True,
            env=os.environ.copy(),
            stdout=subprocess.DEVNULL,
        )
        if not airflow_version.startswith("2."):
            # DAGs written to the DB by tests belong to the "dags-folder" bundle, whose row a fresh DB lacks
            # until a DAG processor has run.
            sync = "from airflow.dag_processing.bundles.manager import DagBundlesManager as M; M().sync_bundles_to_db()"
            subprocess.run([sys.executable, "-c", sync], check=True, env=os.environ.copy(), stdout=subprocess.DEVNULL)
        stamp.touch()
    return home
