"""``max_browser_seconds`` (kernel_provider/triggers/follower.py, client/browser_usage.py) in real DAG runs against
the emulator: a run whose browsers pass the budget is cancelled at Kernel and fails naming the budget, deferred and
on a worker; a bad budget fails before any request."""

from __future__ import annotations

import re
from typing import Any

import pytest

from kernel_provider.decorators.kernel import kernel_task
from kernel_provider.links import XCOM_USAGE
from kernel_provider.operators.kernel import KernelInvokeOperator
from tests.airflow_helpers import all_logs, make_dag, record_task_failures, run_dag, states, xcom
from tests.helpers import count_requests

pytestmark = pytest.mark.usefixtures("airflow_db")

MESSAGE = re.compile(
    r"Kernel invocation (\w+) passed the task's max_browser_seconds=3: its browsers had run ([\d.]+) browser-seconds\. "
    r"It was cancelled\."
)


def never_ending_run(gated_kernel: Any, browsers: int, **op_kwargs: Any) -> Any:
    """Run a DAG whose one task waits for a gate that never opens, in a run that opens ``browsers`` browsers and
    says so in its log; only the task's own limits (``op_kwargs``) end it. Returns the DagRun."""
    gate = gated_kernel.gate()
    with make_dag("limits") as dag:
        KernelInvokeOperator(
            task_id="invoke",
            app_name="gate",
            action_name="wait",
            payload=gate.payload(browsers=browsers, say=["opened the browser"], max_seconds=120),
            live_view="off",
            poll_interval=0.1,
            **op_kwargs,
        )
    return run_dag(dag)


@pytest.mark.parametrize("deferrable", [True, False], ids=["deferred", "worker"])
def test_a_run_past_its_budget_is_cancelled_and_fails_naming_it(gated_kernel, caplog, capfd, monkeypatch, deferrable):
    record_task_failures(monkeypatch)
    dr = never_ending_run(gated_kernel, 2, deferrable=deferrable, max_browser_seconds=3)
    assert states(dr) == {"invoke": "failed"}
    (inv,) = gated_kernel.invocations()
    # The cancel reached Kernel: the run is failed there, its browsers deleted.
    assert inv["status"] == "failed" and inv["_emulator"]["browsers"] == []
    assert count_requests(gated_kernel, "/invocations/{id}", "PATCH") >= 1
    assert "max_browser_seconds=3" in (inv.get("output") or "") + (inv.get("status_reason") or "")
    (found,) = {m.groups() for m in MESSAGE.finditer(all_logs(caplog, capfd))}
    assert found[0] == inv["id"] and 3 < float(found[1]) < 30
    usage = xcom(dr, "invoke", key=XCOM_USAGE)
    assert (usage["status"], usage["browsers"]) == ("failed", 2)
    assert usage["browser_seconds"] >= 3  # Kernel's uptime of the two deleted browsers


@pytest.mark.parametrize("budget", [0, -1, "10", True, float("nan")])
def test_a_bad_budget_fails_before_any_request(gated_kernel, caplog, capfd, monkeypatch, budget):
    record_task_failures(monkeypatch)
    with make_dag("budget") as dag:

        @kernel_task(app_name="gate", action_name="wait", max_browser_seconds=budget)
        def run() -> dict:
            return {"gate": "never"}

        run()
    dr = run_dag(dag)
    assert states(dr) == {"run": "failed"}
    assert gated_kernel.requests(path="/invocations", method="POST") == []
    assert "max_browser_seconds" in all_logs(caplog, capfd)


@pytest.mark.parametrize("deferrable", [True, False], ids=["deferred", "worker"])
def test_a_run_cancelled_at_its_deadline_reports_its_browsers(gated_kernel, monkeypatch, deferrable):
    record_task_failures(monkeypatch)
    dr = never_ending_run(gated_kernel, 1, deferrable=deferrable, timeout=4)
    assert states(dr) == {"invoke": "failed"}
    (inv,) = gated_kernel.invocations()
    assert inv["status"] == "failed"
    usage = xcom(dr, "invoke", key=XCOM_USAGE)
    assert (usage["status"], usage["browsers"], usage["browser_seconds_source"]) == ("failed", 1, "kernel_uptime")
    assert 0 < usage["browser_seconds"] < 60
