"""Exactly one Kernel run per task instance, through Airflow 3.x's lifecycle (3.0+) on real services (scheduler,
dag-processor, triggerer, api-server; LocalExecutor; SQLite) with the Kernel emulator.

One test per row of the contract: a person's clear (finished or deferred) starts a fresh invocation and cancels
a running one; marking a deferred task cancels its run; ``execution_timeout`` while deferred cancels it; an
automatic retry invokes again only after a failed run, adopts (or refuses to guess) after a worker died during
the create, re-attaches after a worker died while waiting; a triggerer restart neither re-POSTs nor repeats a
log line. Counted on the emulator per gate (one gate per DAG run), states read through the REST API.

Run: ``AIRFLOW_HOME=$PWD/.airflow/af3 .venv/bin/python -m pytest -q -m e2e tests/e2e/test_lifecycle.py -x``.
The Airflow 2.11 rows are in ``test_lifecycle_af2.py`` (marker ``e2e_af2``, ``.venv-af2``).
"""

from __future__ import annotations

import json
import signal
from importlib.metadata import version
from typing import Any

import pytest

from tests.e2e.lifecycle_scenarios import (
    RESTART_LINES,
    clear_deferred_task,
    clear_finished_submit_only_run,
    clear_task_waiting_on_a_worker,
    creates_summary,
    execution_timeout_while_deferred,
    kernel_line_counts,
    mark_deferred_task,
    retry_store,
    wait_deferral_reported,
    wait_deferred,
    wait_gate_invocations,
    wait_rerun_done,
    wait_ti,
)
from tests.harness.airflow3 import NEEDS_ON_KILL, AirflowE2E
from tests.harness.base import from_triggerer
from tests.harness.error_audit import RUNNING_TASK_CLEARED, WORKER_KILLED, task_failed
from tests.harness.processes import AIRFLOW_VERSION

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        AIRFLOW_VERSION < (3, 0),
        reason=(
            f"needs Airflow >= 3.0 (separate dag-processor, REST API v2); installed {version('apache-airflow')}; "
            "the 2.11 rows are in test_lifecycle_af2.py"
        ),
    ),
]
#: A SIGKILLed worker is failed by the scheduler after [scheduler] task_instance_heartbeat_timeout (20 s in
#: the harness), then retried after retry_delay (1 s): the retry's wait budget.
RETRY_AFTER_CRASH = 120


def _kill_task(e2e: AirflowE2E, dag_id: str, run_id: str, task_id: str) -> list[int]:
    """SIGKILL every process of the task instance's running try (the LocalExecutor worker supervising it and
    the task process), as if the worker's machine died: no cleanup, no on_kill, no final state reported."""
    import psutil

    ti_id = str(e2e.ti(dag_id, run_id, task_id)["id"])
    procs = e2e.wait_until(
        f"the worker processes of {dag_id}.{task_id} ({ti_id})", lambda: e2e.processes_with(ti_id), timeout=30
    )
    for proc in procs:
        try:
            proc.send_signal(signal.SIGKILL)
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=10)
    assert not alive, f"still alive after SIGKILL: {alive}"
    return [p.pid for p in procs]


# --- row 1 ------------------------------------------------------------------------------------------------------


@pytest.mark.timeout(360)
def test_clear_finished_submit_only_run_invokes_afresh_and_sensor_reports_the_new_run(airflow_e2e: AirflowE2E) -> None:
    """Row 1: wait_for_completion=False + KernelInvocationSensor, "Clear" on the finished run."""
    clear_finished_submit_only_run(airflow_e2e)


# --- row 2 ------------------------------------------------------------------------------------------------------


@pytest.mark.timeout(360)
def test_clear_finished_waiting_run_invokes_afresh(airflow_e2e: AirflowE2E) -> None:
    """Row 2: a waiting (deferrable) invoke, "Clear" on the finished run: a fresh invocation, 2 creates in all,
    and the task returns the new run's output."""
    e2e = airflow_e2e
    dag_id, task_id = "lc_clear_wait", "invoke"
    e2e.wait_for_dag(dag_id)
    gate = e2e.new_gate()
    e2e.open_gate(gate)
    run_id = e2e.trigger(dag_id, {"gate": gate})
    assert e2e.wait_run_done(dag_id, run_id, timeout=150) == "success", e2e.states(dag_id, run_id)
    [first] = e2e.gate_invocations(gate)
    assert e2e.xcom(dag_id, run_id, task_id) == {"id": first["id"], "result": {"gate": gate}}
    record = retry_store(e2e, dag_id, run_id, task_id)
    if AIRFLOW_VERSION >= (3, 3):
        # The triggerer ended the task (end_in_triggerer) and cannot reach the state store: the record stays, as
        # Airflow keeps task state after success (30 days by default), naming the finished run. The clear below
        # must still start afresh.
        assert record is not None and json.loads(record)["invocation_id"] == first["id"], record
    else:
        assert record is None, "the record outlived the invocation's outcome"

    e2e.clear_run(dag_id, run_id)
    assert wait_rerun_done(e2e, dag_id, run_id, [task_id], min_try=2, timeout=150) == "success"
    invocations = e2e.gate_invocations(gate)
    assert len(invocations) == 2, f"expected 2 creates (one per run of the task): {creates_summary(e2e, gate)}"
    second = invocations[1]
    assert second["id"] != first["id"] and second["status"] == "succeeded"
    assert e2e.xcom(dag_id, run_id, task_id) == {"id": second["id"], "result": {"gate": gate}}


# --- row 3 ------------------------------------------------------------------------------------------------------


@pytest.mark.timeout(420)
def test_clear_deferred_task_cancels_its_run_and_invokes_once_more(airflow_e2e: AirflowE2E) -> None:
    """Row 3: "Clear" on a deferred task: the triggerer's on_kill (or the new try) cancels the old invocation
    and deletes its browsers; the new try creates exactly one new invocation."""
    clear_deferred_task(airflow_e2e)


# --- row 4 ------------------------------------------------------------------------------------------------------


@NEEDS_ON_KILL
@pytest.mark.timeout(300)
def test_mark_deferred_task_success_cancels_its_run_and_invokes_nothing(airflow_e2e: AirflowE2E) -> None:
    """Row 4 (success; "mark failed" is test_real_airflow.py's
    test_marking_a_deferred_task_failed_cancels_the_invocation, which also checks nothing is invoked again)."""
    mark_deferred_task(airflow_e2e, "success")


# --- row 5 ------------------------------------------------------------------------------------------------------


@pytest.mark.timeout(300)
@pytest.mark.expect_error_lines(task_failed())
def test_execution_timeout_while_deferred_fails_the_task_and_cancels_the_run(airflow_e2e: AirflowE2E) -> None:
    """Row 5: execution_timeout (30 s) passes while deferred. Airflow 3.3 does not enforce it while deferred:
    the trigger's own deadline must end the wait and cancel the invocation."""
    facts = execution_timeout_while_deferred(airflow_e2e)
    assert facts["ti"]["state"] == "failed"


# --- row 6 ------------------------------------------------------------------------------------------------------


@pytest.mark.timeout(300)
@pytest.mark.expect_error_lines(task_failed("KernelInvocationFailed"))
def test_retry_after_the_action_failed_invokes_again(airflow_e2e: AirflowE2E) -> None:
    """Row 6: the first run of the action fails (gate app ``fail_times=1``): the automatic retry invokes again,
    once, and succeeds with the second run's output."""
    e2e = airflow_e2e
    dag_id, task_id = "lc_action_fails", "invoke"
    e2e.wait_for_dag(dag_id)
    gate = e2e.new_gate()
    e2e.open_gate(gate)
    run_id = e2e.trigger(dag_id, {"gate": gate})
    assert e2e.wait_run_done(dag_id, run_id, timeout=180) == "success", e2e.task_instances(dag_id, run_id)
    ti = e2e.ti(dag_id, run_id, task_id)
    assert ti["try_number"] == 2, ti
    invocations = e2e.gate_invocations(gate)
    assert [i["status"] for i in invocations] == ["failed", "succeeded"], creates_summary(e2e, gate)
    assert e2e.xcom(dag_id, run_id, task_id) == {"id": invocations[1]["id"], "result": {"gate": gate}}


# --- row 7a -----------------------------------------------------------------------------------------------------


def _crash_during_create(e2e: AirflowE2E, dag_id: str, gate: str) -> tuple[str, dict[str, Any]]:
    """Trigger ``dag_id``; when its POST /invocations has reached Kernel (the emulator created the invocation)
    but the answer is still held back by the harness's proxy, SIGKILL the task's processes."""
    assert e2e.proxy is not None
    e2e.proxy.hold_creates(1, max_hold=120)
    try:
        run_id = e2e.trigger(dag_id, {"gate": gate})
        [created] = wait_gate_invocations(e2e, gate, 1, timeout=120)
        e2e.wait_until(
            "the create's answer to be held back",
            lambda: e2e.proxy.held and e2e.proxy.held[-1]["outcome"] is None,
            timeout=10,
        )
        ti = e2e.ti(dag_id, run_id, "invoke")
        assert (ti["state"], ti["try_number"]) == ("running", 1), ti
        pids = _kill_task(e2e, dag_id, run_id, "invoke")
    finally:
        e2e.proxy.stop_holding()
    e2e.wait_until("the proxy to see the worker gone", lambda: e2e.proxy.held[-1]["outcome"] == "dropped", timeout=10)
    print(f"\n[e2e] {dag_id}: killed pids {pids} while POST /invocations for {created['id']} was in flight")
    return run_id, created


@pytest.mark.timeout(360)
@pytest.mark.expect_error_lines(*WORKER_KILLED)
def test_worker_killed_during_create_with_reconcile_token_retry_adopts_the_run(airflow_e2e: AirflowE2E) -> None:
    """Row 7a with ``reconcile_token=True``: the worker dies while POST /invocations is in flight (Kernel created
    the run, the worker never heard back). The retry finds the run by its token and adopts it: 1 create."""
    e2e = airflow_e2e
    dag_id = "lc_crash_create_token"
    e2e.wait_for_dag("lc_crash_create")  # same DAG file: once it is parsed, so is this one, if it exists
    if e2e.http.get(f"/api/v2/dags/{dag_id}").status_code == 404:
        pytest.fail(
            f"DAG {dag_id} is not defined: the deployed KernelInvokeOperator has no reconcile_token "
            "parameter (see HAS_RECONCILE_TOKEN in dags/e2e_lifecycle_dags.py)"
        )
    e2e.wait_for_dag(dag_id)
    gate = e2e.new_gate()
    run_id, created = _crash_during_create(e2e, dag_id, gate)
    assert "_airflow_kernel_token" in (created.get("payload") or ""), created.get("payload")

    wait_deferred(e2e, dag_id, run_id, "invoke", timeout=RETRY_AFTER_CRASH, min_try=2)
    assert str(e2e.xcom(dag_id, run_id, "invoke", key="kernel_invocation_id")) == created["id"]
    wait_deferral_reported(e2e, dag_id, run_id, "invoke", try_number=2)
    e2e.open_gate(gate)
    assert e2e.wait_run_done(dag_id, run_id, timeout=120) == "success", e2e.task_instances(dag_id, run_id)
    assert e2e.xcom(dag_id, run_id, "invoke") == {"id": created["id"], "result": {"gate": gate}}
    assert len(e2e.gate_invocations(gate)) == 1, f"invoked twice: {creates_summary(e2e, gate)}"
    assert e2e.ti(dag_id, run_id, "invoke")["try_number"] == 2


@pytest.mark.timeout(360)
@pytest.mark.expect_error_lines(*WORKER_KILLED, task_failed("KernelReconcileError"))
def test_worker_killed_during_create_without_token_retry_fails_naming_the_candidate(airflow_e2e: AirflowE2E) -> None:
    """Row 7a without a token: the retry cannot tell the dead try's run from an identical one, so it invokes
    nothing and fails with KernelReconcileError naming the candidate (a person checks, then clears): 1 create."""
    e2e = airflow_e2e
    dag_id = "lc_crash_create"
    e2e.wait_for_dag(dag_id)
    gate = e2e.new_gate()
    run_id, created = _crash_during_create(e2e, dag_id, gate)
    try:
        ti = wait_ti(e2e, dag_id, run_id, "invoke", ("failed", "success"), timeout=RETRY_AFTER_CRASH, min_try=2)
        assert len(e2e.gate_invocations(gate)) == 1, f"the retry invoked again: {creates_summary(e2e, gate)}"
        assert ti["state"] == "failed", f"the retry did not fail loudly: {ti}"
        logs = e2e.task_logs(dag_id, run_id, "invoke")
        retry_log = "\n".join(text for name, text in logs.items() if name.startswith("attempt=2"))
        assert "KernelReconcileError" in retry_log, f"no KernelReconcileError in try 2's log:\n{retry_log[-3000:]}"
        assert created["id"] in retry_log, f"the error does not name candidate {created['id']}"
        assert e2e.invocation(created["id"])["status"] == "running", "the candidate must be left alone"
    finally:
        e2e.open_gate(gate)  # let the orphan finish


# --- row 7b -----------------------------------------------------------------------------------------------------


@pytest.mark.timeout(360)
@pytest.mark.expect_error_lines(*WORKER_KILLED)
def test_worker_killed_while_waiting_retry_reattaches_to_its_run(airflow_e2e: AirflowE2E) -> None:
    """Row 7b: a non-deferrable task waits on the worker (following the event stream); the worker is SIGKILLed.
    The retry re-attaches to the still-running invocation: 1 create, the task succeeds with its output."""
    e2e = airflow_e2e
    dag_id, task_id = "lc_crash_wait", "invoke"
    e2e.wait_for_dag(dag_id)
    gate = e2e.new_gate()
    run_id = e2e.trigger(dag_id, {"gate": gate})
    [created] = wait_gate_invocations(e2e, gate, 1, timeout=120)

    def worker_streams(after: int) -> Any:
        return lambda: [
            r
            for r in e2e.kernel_requests(created["id"])
            if r["seq"] > after and r["route"] == "/invocations/{id}/events" and not from_triggerer(r)
        ]

    e2e.wait_until("the worker to follow the invocation's event stream", worker_streams(0), timeout=60)
    assert e2e.ti(dag_id, run_id, task_id)["state"] == "running"
    _kill_task(e2e, dag_id, run_id, task_id)
    killed = e2e.last_seq()

    wait_ti(e2e, dag_id, run_id, task_id, ("running",), timeout=RETRY_AFTER_CRASH, min_try=2)
    e2e.wait_until("the retry to follow the same invocation", worker_streams(killed), timeout=60)
    assert len(e2e.gate_invocations(gate)) == 1, f"the retry invoked again: {creates_summary(e2e, gate)}"
    e2e.open_gate(gate)
    assert e2e.wait_run_done(dag_id, run_id, timeout=120) == "success", e2e.task_instances(dag_id, run_id)
    assert e2e.xcom(dag_id, run_id, task_id) == {"id": created["id"], "result": {"gate": gate}}
    assert len(e2e.gate_invocations(gate)) == 1, f"invoked twice: {creates_summary(e2e, gate)}"
    assert e2e.ti(dag_id, run_id, task_id)["try_number"] == 2


@pytest.mark.timeout(360)
@pytest.mark.skipif(
    AIRFLOW_VERSION[:2] == (3, 0),
    reason="Airflow 3.0 leaves a task cleared while running in 'restarting' for good, so no new try ever starts "
    "(apache/airflow#55045, fixed in 3.1.0): nothing a provider can act on",
)
@pytest.mark.parametrize("cancel_on_kill", [True, False])
# Airflow's own lines for a cleared running try, and the try's end when on_kill cancelled its run.
@pytest.mark.expect_error_lines(*RUNNING_TASK_CLEARED, task_failed("KernelInvocationFailed"))
def test_clear_of_a_task_waiting_on_a_worker_follows_cancel_on_kill(
    airflow_e2e: AirflowE2E, cancel_on_kill: bool
) -> None:
    """A person clears a task that waits on a worker (see ``clear_task_waiting_on_a_worker``): never two runs at
    once; with ``cancel_on_kill=True`` the new try always starts afresh."""
    outcome = clear_task_waiting_on_a_worker(airflow_e2e, cancel_on_kill)
    print(f"\n[e2e] cancel_on_kill={cancel_on_kill}: {outcome}")


# --- row 8 ------------------------------------------------------------------------------------------------------


@pytest.mark.timeout(420)
def test_triggerer_restart_repeats_no_log_line_and_no_create(airflow_e2e: AirflowE2E) -> None:
    """Row 8: a streaming deferred wait; its action logs lines before the triggerer restarts (graceful SIGTERM),
    while no triggerer runs, and after the new one took over. Every line is in the task's log files exactly
    once; nothing is POSTed again; the graceful shutdown did not cancel the run."""
    e2e = airflow_e2e
    dag_id, task_id = "lc_triggerer_restart", "invoke"
    e2e.wait_for_dag(dag_id)
    gate, then_gate = e2e.new_gate(), e2e.new_gate()
    run_id = e2e.trigger(dag_id, {"gate": gate, "then_gate": then_gate})
    wait_deferred(e2e, dag_id, run_id, task_id)
    [created] = wait_gate_invocations(e2e, gate, 1, timeout=30)
    inv = created["id"]

    def logged(lines: list[str]) -> Any:
        return lambda: all(kernel_line_counts(e2e, dag_id, run_id, task_id, inv)[0][line] for line in lines)

    e2e.wait_until("the 'before' lines in the task log", logged(RESTART_LINES["say"]), timeout=60)
    e2e.kill("triggerer", signal.SIGTERM)  # a graceful restart: cleanup() runs, on_kill must not
    e2e.open_gate(gate)  # the action logs the 'between' lines while no triggerer is running
    between_done = len(RESTART_LINES["say"]) + len(RESTART_LINES["say_between"])
    e2e.wait_until(
        "the action to log its 'between' lines",
        lambda: e2e.invocation(inv)["_emulator"]["log_lines"] >= between_done,
        timeout=30,
    )
    assert e2e.invocation(inv)["status"] == "running", "stopping the triggerer cancelled the invocation"
    restarted = e2e.last_seq()
    e2e.start("triggerer")
    e2e.wait_until("the new triggerer to log the 'between' lines", logged(RESTART_LINES["say_between"]), timeout=90)
    e2e.open_gate(then_gate)
    assert e2e.wait_run_done(dag_id, run_id, timeout=120) == "success", e2e.task_instances(dag_id, run_id)
    assert e2e.xcom(dag_id, run_id, task_id) == {"id": inv, "result": {"gate": gate}}

    counts, per_file = kernel_line_counts(e2e, dag_id, run_id, task_id, inv)
    expected = [*RESTART_LINES["say"], *RESTART_LINES["say_between"], *RESTART_LINES["say_after"]]
    missing = [line for line in expected if not counts[line]]
    repeated = {line: n for line, n in counts.items() if n > 1}
    assert not repeated, f"log lines repeated across the task's log files {per_file}: {repeated}"
    assert not missing, f"log lines missing from the task's log files {per_file}: {missing}"
    assert len(e2e.gate_invocations(gate)) == 1, f"invoked again: {creates_summary(e2e, gate)}"
    assert not [r for r in e2e.emulator.client.requests(path="/invocations", method="POST") if r["seq"] > restarted], (
        "a POST /invocations after the triggerer restart"
    )
    print(f"\n[e2e] triggerer restart: [kernel {inv}] lines per log file: {per_file}")
