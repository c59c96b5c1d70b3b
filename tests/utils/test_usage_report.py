"""The end-of-run usage report (kernel_provider/utils/usage_report.py) in real DAG runs against the emulator: the
XCom ``kernel_usage``, the one summary line and the metrics of the operator, ``@task.kernel`` and the sensor; the
figures checked against what the emulator recorded."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest

from kernel_provider.decorators.kernel import kernel_task
from kernel_provider.links import XCOM_USAGE
from kernel_provider.operators.kernel import KernelInvokeOperator
from kernel_provider.sensors.kernel import KernelInvocationSensor
from kernel_provider.testing.timeutil import parse_timestamp_ns
from kernel_provider.utils.usage_report import asset_event_extra
from tests.airflow_helpers import all_logs, make_dag, run_dag, states, xcom
from tests.helpers import count_requests, seen

pytestmark = pytest.mark.usefixtures("airflow_db")

LISTS = "/invocations/{id}/browsers"
LOOKUPS = "/browsers/{id}"
SUMMARY = re.compile(r"Kernel usage: invocation (\w+) \((\S+)\) (\w+) in ([\d.]+) s; (\d+) browsers?, ([\d.]+) browser")


class Metrics:
    """Airflow's Stats, captured (the one stand-in here: what a metrics backend would receive)."""

    def __init__(self, monkeypatch: Any) -> None:
        from airflow.providers.common.compat.sdk import Stats

        self.calls: list[tuple[str, str, Any, dict[str, Any]]] = []
        monkeypatch.setattr(
            Stats, "timing", lambda stat, dt, *, tags=None: self.calls.append(("timing", stat, dt, tags))
        )
        monkeypatch.setattr(
            Stats, "incr", lambda stat, count=1, rate=1, *, tags=None: self.calls.append(("incr", stat, count, tags))
        )

    def of(self, stat: str) -> list[tuple[str, Any, dict[str, Any]]]:
        return [(kind, value, tags) for kind, name, value, tags in self.calls if name == stat]


def emulator_run(emulator: Any) -> tuple[float, list[int]]:
    """The only invocation's duration (seconds) and its browsers' created_at (ns), as the emulator recorded them."""
    (inv,) = emulator.invocations()
    started, finished = parse_timestamp_ns(inv["started_at"]), parse_timestamp_ns(inv["finished_at"])
    created = [parse_timestamp_ns(b["created_at"]) for b in inv["_emulator"]["browsers"]]
    return (finished - started) / 1e9, created


def summary_of(caplog: Any, capfd: Any) -> list[tuple[str, ...]]:
    """The summary lines logged, from one source only (Airflow 2 also copies the task log to the output)."""
    found = [m.groups() for r in caplog.records for m in [SUMMARY.search(r.getMessage())] if m]
    return found or SUMMARY.findall(capfd.readouterr().out)


@pytest.mark.parametrize("deferrable", [True, False], ids=["deferred", "worker"])
def test_a_run_with_browsers_reports_its_figures_once(gated_kernel, caplog, capfd, monkeypatch, deferrable):
    metrics = Metrics(monkeypatch)
    gate = gated_kernel.gate()
    # Open the gate a second after the wait listed the run's browsers twice (at its start, and for the log line).
    listed = seen(gated_kernel, LISTS, at_least=2)
    opened = gate.open_when(lambda: listed() and time.sleep(1.0) is None, "the wait to list the run's browsers")
    with make_dag("usage") as dag:
        KernelInvokeOperator(
            task_id="invoke",
            app_name="gate",
            action_name="wait",
            payload=gate.payload(browsers=2, say=["opened the browser"], result={"ok": True}),
            deferrable=deferrable,
            live_view="off",
            poll_interval=0.1,
        )
    before = time.time_ns()
    dr = run_dag(dag)
    after = time.time_ns()
    opened()
    assert states(dr) == {"invoke": "success"}
    duration, created = emulator_run(gated_kernel)
    usage = xcom(dr, "invoke", key=XCOM_USAGE)
    (inv,) = gated_kernel.invocations()
    assert usage["invocation_id"] == inv["id"] and usage["status"] == "succeeded"
    assert (usage["app"], usage["action"]) == ("gate", "wait")
    assert usage["duration_seconds"] == pytest.approx(duration, abs=0.002)
    assert (usage["browsers"], usage["browser_seconds_source"]) == (2, "kernel_uptime")
    # Kernel's uptime of each browser, read after the run ended and before the task did (they outlive the run).
    lowest = sum(parse_timestamp_ns(inv["finished_at"]) - c for c in created) / 1e9
    assert lowest - 0.01 <= usage["browser_seconds"] <= sum(after - c for c in created) / 1e9
    assert usage["browser_seconds"] >= 2 * 1.0  # each browser lived at least the second before the gate opened
    assert before < min(created)
    # One lookup per browser after the run; no live-view request (live_view off).
    assert count_requests(gated_kernel, LOOKUPS) == 2
    assert count_requests(gated_kernel, "/browsers/{id}/live_view", "POST") == 0
    # One summary line, with the same figures.
    ((inv_id, what, status, took, count, seconds),) = summary_of(caplog, capfd)
    assert (inv_id, status, count) == (inv["id"], "succeeded", "2") and what.startswith("gate/wait@")
    assert float(took) == pytest.approx(usage["duration_seconds"], abs=0.05)
    assert float(seconds) == pytest.approx(usage["browser_seconds"], abs=0.05)
    # The metrics, tagged by app and action.
    tags = {"app": "gate", "action": "wait"}
    ((kind, dt, got),) = metrics.of("kernel.invocation.duration")
    assert (kind, got) == ("timing", tags) and dt.total_seconds() == pytest.approx(usage["duration_seconds"])
    ((kind, dt, got),) = metrics.of("kernel.invocation.browser_seconds")
    assert (kind, got) == ("timing", tags) and dt.total_seconds() == pytest.approx(usage["browser_seconds"])
    assert metrics.of("kernel.invocation.browsers") == [("incr", 2, tags)]
    assert metrics.of("kernel.invocation.succeeded") == [("incr", 1, tags)]
    assert asset_event_extra(None) == {}


def test_without_usage_tracking_and_live_view_no_browser_request_is_sent(gated_kernel, caplog, capfd):
    gate = gated_kernel.gate()
    gate.open()
    with make_dag("usage") as dag:
        KernelInvokeOperator(
            task_id="invoke",
            app_name="gate",
            action_name="wait",
            payload=gate.payload(browsers=1),
            live_view="off",
            track_usage=False,
            poll_interval=0.1,
        )
    dr = run_dag(dag)
    assert states(dr) == {"invoke": "success"}
    assert count_requests(gated_kernel, LISTS) == count_requests(gated_kernel, LOOKUPS) == 0
    usage = xcom(dr, "invoke", key=XCOM_USAGE)
    assert (usage["browsers"], usage["browser_seconds_source"]) == (0, "untracked")
    logs = all_logs(caplog, capfd)
    assert "browsers not tracked" in logs
    assert "Could not send the Kernel usage metrics" not in logs  # Airflow's own Stats took them


def test_a_failed_run_and_the_decorator_report_too(gated_kernel, caplog, capfd, monkeypatch):
    metrics = Metrics(monkeypatch)
    gate = gated_kernel.gate()
    opened = gate.open_when(seen(gated_kernel, LISTS, at_least=2), "the wait to list the run's browsers")
    with make_dag("usage") as dag:

        @kernel_task(app_name="gate", action_name="wait", live_view="off", poll_interval=0.1)
        def buy() -> dict:
            return gate.payload(browsers=1, say=["browser up"], fail="selector #buy not found")

        buy()
    dr = run_dag(dag)
    opened()
    assert states(dr) == {"buy": "failed"}
    usage = xcom(dr, "buy", key=XCOM_USAGE)
    assert (usage["status"], usage["browsers"]) == ("failed", 1)
    assert usage["browser_seconds"] > 0
    assert [status for _, _, status, *_ in summary_of(caplog, capfd)] == ["failed"]
    assert metrics.of("kernel.invocation.failed") == [("incr", 1, {"app": "gate", "action": "wait"})]


def test_the_sensor_reports_the_run_it_watched(gated_kernel, caplog, capfd):
    gate = gated_kernel.gate()
    opened = gate.open_when(seen(gated_kernel, LISTS, at_least=2), "the sensor's wait to list the run's browsers")
    with make_dag("usage") as dag:
        submit = KernelInvokeOperator(
            task_id="submit",
            app_name="gate",
            action_name="wait",
            payload=gate.payload(browsers=1, say=["browser up"]),
            wait_for_completion=False,
        )
        KernelInvocationSensor(
            task_id="wait",
            invocation_id=submit.output,
            deferrable=True,
            start_from_trigger=False,
            live_view="off",
            poke_interval=0.1,
        )
    dr = run_dag(dag)
    opened()
    assert states(dr) == {"submit": "success", "wait": "success"}
    assert xcom(dr, "submit", key=XCOM_USAGE) is None  # submit only: the run had not ended
    usage = xcom(dr, "wait", key=XCOM_USAGE)
    assert (usage["status"], usage["browsers"], usage["browser_seconds_source"]) == ("succeeded", 1, "kernel_uptime")
    assert len(summary_of(caplog, capfd)) == 1
