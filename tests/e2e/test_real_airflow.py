"""End-to-end tests on a real Airflow 3.x (3.0+): scheduler, dag-processor, triggerer and api-server as separate
processes (LocalExecutor, SQLite), the provider installed as a package, Kernel played by the emulator.

Everything is observed from the outside: task states and XComs through the REST API, trigger rows through
Airflow's ORM, and what reached "Kernel" (requests, their User-Agent, invocation states, browsers) through the
emulator's introspection API. No mocks.

Run: ``python -m pytest tests/e2e -m e2e -x`` (about 1.5 minutes on 2 cores; skipped below Airflow 3.0,
and what needs the trigger's ``on_kill`` below 3.3).
"""

from __future__ import annotations

import json
import time
from importlib.metadata import version
from typing import Any

import pytest

from kernel_provider.links import XCOM_USAGE
from tests.harness.airflow3 import NEEDS_ON_KILL, AirflowE2E
from tests.harness.base import from_triggerer
from tests.harness.processes import AIRFLOW_VERSION

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        AIRFLOW_VERSION < (3, 0),
        reason=f"needs Airflow >= 3.0 (separate dag-processor, REST API v2); installed {version('apache-airflow')}",
    ),
]

CRASH_TASKS = 20


def _wait_deferred(
    e2e: AirflowE2E, dag_id: str, run_id: str, task_id: str, count: int = 1, timeout: float = 120
) -> dict[tuple[str, int], str | None]:
    def probe() -> dict[tuple[str, int], str | None] | None:
        states = e2e.states(dag_id, run_id, task_id)
        bad = {k: v for k, v in states.items() if v in ("failed", "upstream_failed", "success")}
        if bad:
            raise AssertionError(f"{dag_id}.{task_id} ended before deferring: {bad}\n{e2e.diagnostics()}")
        deferred = [k for k, v in states.items() if v == "deferred"]
        return states if len(deferred) >= count else None

    return e2e.wait_until(f"{count} deferred {dag_id}.{task_id} task(s)", probe, timeout, interval=1.0)


def _invocation_id(e2e: AirflowE2E, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> str:
    return str(
        e2e.wait_until(
            f"the invocation id XCom of {dag_id}.{task_id}[{map_index}]",
            lambda: e2e.xcom(dag_id, run_id, task_id, key="kernel_invocation_id", map_index=map_index),
            timeout=30,
        )
    )


@pytest.mark.timeout(330)
def test_async_invoke_then_deferrable_sensor_waits_in_the_triggerer(airflow_e2e: AirflowE2E) -> None:
    """invoke_async + wait_for_completion=False, then a deferrable sensor: the sensor defers, the triggerer (not a
    worker) does the waiting against Kernel, and the output reaches the downstream task as XCom."""
    e2e = airflow_e2e
    dag_id = "e2e_kernel_async_sensor"
    e2e.wait_for_dag(dag_id)
    gate = e2e.new_gate()
    run_id = e2e.trigger(dag_id, {"gate": gate})

    _wait_deferred(e2e, dag_id, run_id, "wait")
    invocation_id = str(e2e.xcom(dag_id, run_id, "start"))  # wait_for_completion=False returns the id
    assert e2e.emulator.client.invocation(invocation_id)["status"] in ("queued", "running")

    # While deferred, the triggerer follows the event stream of this invocation.
    def stream_from_triggerer() -> list[dict[str, Any]] | None:
        events = [r for r in e2e.kernel_requests(invocation_id) if r["route"] == "/invocations/{id}/events"]
        return events if any(from_triggerer(r) for r in events) else None

    streams = e2e.wait_until("the triggerer to open the event stream", stream_from_triggerer, timeout=30)
    assert all(from_triggerer(r) for r in streams), f"event streams not all from the triggerer: {streams}"

    e2e.open_gate(gate)
    assert e2e.wait_run_done(dag_id, run_id, timeout=120) == "success", e2e.states(dag_id, run_id)
    assert set(e2e.states(dag_id, run_id).values()) == {"success"}

    expected = {"gate": gate, "answer": 42}
    assert e2e.xcom(dag_id, run_id, "wait") == expected  # the sensor returns the action's output
    assert e2e.xcom(dag_id, run_id, "use") == f"{gate}=42"
    assert e2e.xcom(dag_id, run_id, "wait", key=XCOM_USAGE)["invocation_id"] == invocation_id
    assert e2e.emulator.client.invocation(invocation_id)["status"] == "succeeded"
    # Airflow 3.3+: the sensor started and ended in the triggerer; no executor ever got it (while the downstream
    # task, which ran after it, was queued for one: the check can see a worker's task).
    assert e2e.executor_saw(dag_id, run_id, "use"), "the check below would pass for any task"
    assert bool(e2e.executor_saw(dag_id, run_id, "wait")) == (AIRFLOW_VERSION < (3, 3))

    # Who sent what. Worker: the create. The sensor starts in the triggerer (Airflow 3.3+: start_from_trigger,
    # invocation_id rendered there), which opens the event stream at once (no GET before it: its first event is
    # the current state), then reads the output once and ends the task. Below 3.3 the sensor starts on a worker,
    # which reads the invocation once before it defers, and a worker resumes it for the final read.
    requests = e2e.kernel_requests(invocation_id)
    creates = e2e.emulator.client.requests(path="/invocations", method="POST")
    create = [r for r in creates if r["seq"] < requests[0]["seq"]][-1]
    assert not from_triggerer(create), create
    summary = [(r["method"], r["route"], from_triggerer(r)) for r in requests]
    # The live view's browser lookups (one at the start, then 5 s, 10 s... apart while the run shows no browser) run
    # beside the stream, so they may reach Kernel before or after the stream's request: counted on their own.
    lookups = [s for s in summary if s[1] == "/invocations/{id}/browsers"]
    assert lookups and set(lookups) == {("GET", "/invocations/{id}/browsers", True)}, summary
    summary = [s for s in summary if s not in lookups]
    if AIRFLOW_VERSION < (3, 3):
        worker_check, *summary = summary
        assert worker_check == ("GET", "/invocations/{id}", False), worker_check
    first, *during, last = summary
    assert first == ("GET", "/invocations/{id}/events", True), summary  # the triggerer, first after the POST
    assert last == ("GET", "/invocations/{id}", AIRFLOW_VERSION >= (3, 3)), summary  # the read of the output
    assert all(marked for _, _, marked in during), f"not all from the triggerer: {summary}"
    assert len(summary) == 2, summary  # POST + stream + one GET: three requests in all (+ the browser lookup)
    assert all(r["user_agent"].startswith("airflow-provider-kernel/") for r in requests)
    print(f"\n[e2e] {invocation_id}: requests (method, route, from triggerer): {summary}")


@pytest.mark.timeout(240)
def test_sensors_of_a_failed_run_skip_or_report_it(airflow_e2e: AirflowE2E) -> None:
    """A failed run: the sensor with ``soft_fail`` is skipped, the one with ``fail_on_failure=False`` succeeds with
    the failure's details. On Airflow 3.3+ both start and end in the triggerer: no worker ever runs them."""
    e2e = airflow_e2e
    dag_id = "e2e_kernel_sensor_failed"
    e2e.wait_for_dag(dag_id)
    gate = e2e.new_gate()
    e2e.open_gate(gate)
    run_id = e2e.trigger(dag_id, {"gate": gate})
    e2e.wait_run_done(dag_id, run_id, timeout=150)
    states = e2e.states(dag_id, run_id)
    assert states == {("start", -1): "success", ("skip", -1): "skipped", ("lenient", -1): "success"}, states
    invocation_id = str(e2e.xcom(dag_id, run_id, "start"))
    report = e2e.xcom(dag_id, run_id, "lenient")
    assert (report["id"], report["status"]) == (invocation_id, "failed"), report
    assert "the shop was closed" in str(report["status_reason"]) + str(report["output"]), report
    assert e2e.executor_saw(dag_id, run_id, "start"), "the check below would pass for any task"
    for task_id in ("skip", "lenient"):
        assert bool(e2e.executor_saw(dag_id, run_id, task_id)) == (AIRFLOW_VERSION < (3, 3)), task_id
        assert e2e.xcom(dag_id, run_id, task_id, key=XCOM_USAGE)["status"] == "failed"


@pytest.mark.timeout(240)
def test_example_async_sensor_dag_succeeds(airflow_e2e: AirflowE2E) -> None:
    """The shipped example DAG (async invoke, deferrable sensor, a task using the output) runs green."""
    e2e = airflow_e2e
    dag_id = "example_kernel_async_sensor"
    if not (e2e.dags / f"{dag_id}.py").exists():
        pytest.skip("example_dags/example_kernel_async_sensor.py is not there yet")
    e2e.wait_for_dag(dag_id)
    operators = {t["task_id"]: t["operator_name"] for t in e2e.api("GET", f"/dags/{dag_id}/tasks")["tasks"]}
    invoke = next(t for t, op in operators.items() if op == "KernelInvokeOperator")
    sensor = next(t for t, op in operators.items() if op == "KernelInvocationSensor")

    run_id = e2e.trigger(dag_id)
    assert e2e.wait_run_done(dag_id, run_id, timeout=150) == "success", e2e.states(dag_id, run_id)
    assert set(e2e.states(dag_id, run_id).values()) == {"success"}

    invocation = e2e.emulator.client.invocation(str(e2e.xcom(dag_id, run_id, invoke)))
    assert invocation["status"] == "succeeded"
    assert e2e.xcom(dag_id, run_id, sensor) == json.loads(invocation["output"])


@pytest.mark.timeout(330)
def test_triggerer_crash_loses_no_wait_and_repeats_no_invoke(airflow_e2e: AirflowE2E) -> None:
    """SIGKILL the triggerer while 20 tasks are deferred: a new triggerer resumes every wait with the stored,
    absolute deadlines; nothing is invoked twice and every task ends with its own invocation's output."""
    e2e = airflow_e2e
    dag_id = "e2e_kernel_crash"
    e2e.wait_for_dag(dag_id)
    gate = e2e.new_gate()
    created_before = e2e.emulator.client.created_count(app="gate", action="wait")
    run_id = e2e.trigger(dag_id, {"gate": gate})

    _wait_deferred(e2e, dag_id, run_id, "invoke", count=CRASH_TASKS, timeout=180)
    deferred_mark = e2e.last_seq()  # from here on, any POST /invocations would be a duplicate
    ids = {i: _invocation_id(e2e, dag_id, run_id, "invoke", i) for i in range(CRASH_TASKS)}
    assert len(set(ids.values())) == CRASH_TASKS

    def followed_by_triggerer(after_seq: int) -> Any:
        def probe() -> bool:
            seen = {
                r["path"].split("/")[2]
                for r in e2e.emulator.client.requests(method="GET")
                if r["seq"] > after_seq and from_triggerer(r) and r["path"].startswith("/invocations/")
            }
            return set(ids.values()) <= seen

        return probe

    e2e.wait_until("the triggerer to follow all 20 invocations", followed_by_triggerer(0), timeout=60)
    before = {t["map_index"]: t for t in e2e.triggers(dag_id, run_id)}
    assert sorted(before) == list(range(CRASH_TASKS)), before
    assert all(t["kwargs"]["end_time"] for t in before.values())
    assert {t["kwargs"]["invocation_id"] for t in before.values()} == set(ids.values())
    old_triggerer = {t["triggerer_id"] for t in before.values()}
    assert len(old_triggerer) == 1 and None not in old_triggerer, old_triggerer

    old = e2e.services["triggerer"]
    e2e.kill("triggerer")  # SIGKILL to its process group and every descendant: no cleanup, no goodbye
    assert not old.alive()
    killed_mark = e2e.last_seq()  # the old triggerer is dead: later requests come from the new one
    e2e.start("triggerer")

    e2e.wait_until(
        "a new triggerer to resume all 20 waits (the first request of each after the crash)",
        followed_by_triggerer(killed_mark),
        timeout=120,
    )
    after = {t["map_index"]: t for t in e2e.triggers(dag_id, run_id)}
    assert sorted(after) == list(range(CRASH_TASKS))
    for index, trigger in after.items():
        assert trigger["trigger_id"] == before[index]["trigger_id"]
        assert trigger["triggerer_id"] not in old_triggerer, "the trigger was not moved to the new triggerer"
        assert trigger["kwargs"]["end_time"] == before[index]["kwargs"]["end_time"], "deadline moved"
    assert set(e2e.states(dag_id, run_id, "invoke").values()) == {"deferred"}

    e2e.open_gate(gate)
    assert e2e.wait_run_done(dag_id, run_id, timeout=150) == "success", e2e.states(dag_id, run_id)
    assert set(e2e.states(dag_id, run_id).values()) == {"success"}
    for index in range(CRASH_TASKS):
        assert e2e.xcom(dag_id, run_id, "invoke", map_index=index) == {"index": index}
    # Airflow 3.3+: the triggerer ended each task (end_in_triggerer): its create was its only worker process.
    wanted = 1 if AIRFLOW_VERSION >= (3, 3) else 2
    e2e.wait_until(  # the executor's reports of the last processes may come after the run has ended
        "the executor to report each task's worker processes",
        lambda: all(e2e.worker_runs(dag_id, run_id, "invoke", index) >= wanted for index in range(CRASH_TASKS)),
        timeout=60,
    )
    time.sleep(3)  # a report that should not exist (a resume's) would come as late
    runs = [e2e.worker_runs(dag_id, run_id, "invoke", index) for index in range(CRASH_TASKS)]
    if AIRFLOW_VERSION >= (3, 3):
        assert runs == [1] * CRASH_TASKS, runs
    else:
        assert all(n >= 2 for n in runs), runs  # the create, then the resume

    mine = [i for i in e2e.emulator.client.invocations() if gate in json.dumps(i.get("payload"))]
    assert len(mine) == CRASH_TASKS, f"expected exactly {CRASH_TASKS} invocations, got {len(mine)}"
    created = e2e.emulator.client.created_count(app="gate", action="wait") - created_before
    assert created == CRASH_TASKS, f"the emulator created {created} invocations for {CRASH_TASKS} tasks"
    assert {i["status"] for i in mine} == {"succeeded"}
    assert not [
        r for r in e2e.emulator.client.requests(path="/invocations", method="POST") if r["seq"] > deferred_mark
    ], "an invocation was created again after the tasks deferred"
    print(
        f"\n[e2e] {CRASH_TASKS} triggers moved from triggerer {old_triggerer} to "
        f"{sorted({t['triggerer_id'] for t in after.values()})}; end_time unchanged; created {len(mine)}"
    )


@NEEDS_ON_KILL
@pytest.mark.timeout(240)
def test_marking_a_deferred_task_failed_cancels_the_invocation(airflow_e2e: AirflowE2E) -> None:
    """Airflow 3.3 calls the trigger's on_kill when a user marks the deferred task failed: the invocation is
    PATCHed failed and its browsers are deleted, by the triggerer; nothing is invoked again. (Mark success, and
    the other lifecycle rows, are in test_lifecycle.py.)"""
    e2e = airflow_e2e
    dag_id, task_id = "e2e_kernel_kill", "browse"
    e2e.wait_for_dag(dag_id)
    created_before = e2e.emulator.client.created_count(app="demo", action="browse")
    run_id = e2e.trigger(dag_id)
    _wait_deferred(e2e, dag_id, run_id, task_id)
    invocation_id = _invocation_id(e2e, dag_id, run_id, task_id)
    e2e.wait_until(
        "the triggerer to follow the invocation",
        lambda: any(from_triggerer(r) for r in e2e.kernel_requests(invocation_id)),
        timeout=60,
    )
    e2e.wait_until(
        "the action to create its 2 browsers",
        lambda: len(e2e.emulator.client.invocation(invocation_id)["_emulator"]["browsers"]) == 2,
        timeout=30,
    )
    assert e2e.emulator.client.invocation(invocation_id)["status"] == "running"
    # Other tests on this shared harness may keep runs (and their browsers) alive on purpose (cancel_on_kill=False).
    live_before = e2e.emulator.client.stats()["browsers_live"]

    started = time.monotonic()
    e2e.api("PATCH", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}", json={"new_state": "failed"})
    invocation = e2e.wait_until(
        "the invocation to be cancelled",
        lambda: i if (i := e2e.emulator.client.invocation(invocation_id))["status"] == "failed" else None,
        timeout=60,
    )
    assert time.monotonic() - started < 60
    assert invocation["_emulator"]["browsers"] == []
    assert e2e.emulator.client.stats()["browsers_live"] <= live_before - 2  # both gone from Kernel, not only the run

    requests = e2e.kernel_requests(invocation_id)
    patches = [r for r in requests if r["method"] == "PATCH"]
    deletes = [r for r in requests if r["method"] == "DELETE" and r["path"].endswith("/browsers")]
    assert patches and all(from_triggerer(r) for r in patches), f"cancel not sent by the triggerer: {patches}"
    assert deletes and all(from_triggerer(r) for r in deletes), f"browsers not deleted by the triggerer: {deletes}"
    assert e2e.states(dag_id, run_id, task_id) == {(task_id, -1): "failed"}
    time.sleep(3)  # room for a wrong re-run to show up
    assert e2e.states(dag_id, run_id, task_id) == {(task_id, -1): "failed"}
    created = e2e.emulator.client.created_count(app="demo", action="browse") - created_before
    assert created == 1, f"marking the task failed was followed by {created - 1} more invocation(s)"
    print(
        f"\n[e2e] {invocation_id} cancelled by the triggerer {time.monotonic() - started:.1f}s after the "
        f"task was marked failed; browsers left: {len(invocation['_emulator']['browsers'])}"
    )
