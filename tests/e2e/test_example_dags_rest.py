"""Every example DAG, run on a real Airflow 3 the way the UI, ``airflow dags trigger`` and the REST API run it:
``POST /api/v2/dags/{dag_id}/dagRuns`` with ``logical_date`` null (``airflow dags test`` and ``make demo`` set a
logical date, so they hide whatever needs one, such as ``{{ ds }}``). Each run must succeed.

All DAGs are triggered at once and waited for in one test, which names every DAG that failed and why (one test,
so the ERROR-line audit sees each failure's lines inside it). The browser examples use ``example_dags/site/``
served on 127.0.0.1 (``site_url`` in the run's conf) and need Chromium.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import ExitStack
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest

from tests.harness.airflow3 import AirflowE2E
from tests.harness.processes import AIRFLOW_VERSION
from tests.kernel_browsers import find_chromium, serve_site

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(600),
    pytest.mark.skipif(AIRFLOW_VERSION < (3, 3), reason=f"runs on Airflow 3.3 (installed {version('apache-airflow')})"),
]

EXAMPLES = Path(__file__).resolve().parent.parent.parent / "example_dags"
DAG_FILES = sorted(EXAMPLES.glob("example_*.py"))
DAG_IDS = [path.stem for path in DAG_FILES]  # each file holds one DAG named like the file
#: The examples that drive a browser against ``example_dags/site/`` (served for them, ``site_url`` in the conf).
BROWSER_DAGS = ("example_kernel_browser", "example_kernel_files")


@pytest.fixture
def examples_deployed(airflow_e2e: AirflowE2E) -> Iterator[AirflowE2E]:
    """The example DAGs added to the session's Airflow, and paused again afterwards (the scheduled ones must not
    start runs while later tests count what reaches Kernel)."""
    airflow_e2e.deploy(DAG_FILES)
    yield airflow_e2e
    for dag_id in DAG_IDS:
        airflow_e2e.api("PATCH", f"/dags/{dag_id}", json={"is_paused": True})


def test_every_example_dag_succeeds_when_triggered_without_a_logical_date(examples_deployed: AirflowE2E) -> None:
    airflow_e2e = examples_deployed
    # The fan-out example runs in the "kernel" pool, as its docstring tells users to create it.
    airflow_e2e.api("POST", "/pools", json={"name": "kernel", "slots": 4, "include_deferred": True})
    outcomes: dict[str, str] = {}
    with ExitStack() as stack:
        runs: dict[str, str] = {}
        for dag_id in DAG_IDS:
            airflow_e2e.wait_for_dag(dag_id)
            conf: dict[str, Any] = {}
            if dag_id in BROWSER_DAGS:
                if find_chromium() is None:
                    print(f"[e2e] {dag_id} not run: the emulator's browsers need Chromium (/usr/bin/chromium)")
                    continue
                conf["site_url"] = stack.enter_context(serve_site())  # served until every run is over
            runs[dag_id] = airflow_e2e.trigger(dag_id, conf)
        for dag_id, run_id in runs.items():
            run = airflow_e2e.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}")
            assert run["logical_date"] is None, run
            state = airflow_e2e.wait_run_done(dag_id, run_id, timeout=300)
            if state != "success":
                outcomes[dag_id] = _why(airflow_e2e, dag_id, run_id, state)
    assert runs and not outcomes, "example DAGs that fail when triggered without a logical date:\n" + "\n".join(
        f"- {dag_id}: {why}" for dag_id, why in outcomes.items()
    )


def _why(e2e: AirflowE2E, dag_id: str, run_id: str, state: str) -> str:
    """The run's state, its unsuccessful tasks and the last ERROR-ish line of each failed one's log."""
    parts = [f"run {state}"]
    for (task_id, map_index), ti_state in e2e.states(dag_id, run_id).items():
        if ti_state == "success":
            continue
        text = "\n".join(e2e.task_logs(dag_id, run_id, task_id, map_index).values())
        reasons = [_exception(line) for line in text.splitlines()]
        found = [r for r in reasons if r]
        if not found:  # failed from outside (e.g. the scheduler's heartbeat timeout): say what the log ends with
            found = [" | ".join(line.strip()[:200] for line in text.splitlines()[-3:]) or "(no task log)"]
        parts.append(f"{task_id}[{map_index}] {ti_state}: {found[-1][:600]}")
    scheduler = "\n".join(p.read_text(errors="replace") for p in sorted(e2e.logs.glob("scheduler*.log")))
    outside = [line for line in scheduler.splitlines() if run_id in line and ("heartbeat" in line or "zombie" in line)]
    if outside:
        parts.append("scheduler: " + outside[-1][:400])
    # A task whose worker could not start it (e.g. the api-server did not answer "mark it running") is killed with
    # no word in its log; the executor's worker logs the reason in the scheduler's log.
    parts += [f"scheduler: {error[:400]}" for error in _errors(scheduler)[-3:]]
    return "; ".join(parts)


def _errors(log: str) -> list[str]:
    """Each ERROR-or-worse line of a service log, followed by the exception line that ends its traceback (if any)."""
    found: list[str] = []
    in_traceback = False
    for line in log.splitlines():
        if re.match(r"\S+ \[(error|critical)", line):
            found.append(line.strip())
            in_traceback = True
        elif re.match(r"\d{4}-\d\d-\d\d", line):
            in_traceback = False
        elif in_traceback and re.match(r"[A-Za-z_][\w.]*: ", line):
            found[-1] = f"{found[-1]} => {line.strip()}"
    return found


def _exception(line: str) -> str | None:
    """``Type: message`` of the exception a task log line (Airflow 3's JSON, or 2.x text) reports, if any."""
    try:
        record = json.loads(line)
    except ValueError:
        return line.strip() if "Error:" in line else None
    details = record.get("error_detail") if isinstance(record, dict) else None
    if isinstance(details, list) and details and isinstance(details[-1], dict):
        return f"{details[-1].get('exc_type')}: {details[-1].get('exc_value')}"
    return None
