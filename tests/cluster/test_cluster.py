"""The provider on Airflow's production shape: PostgreSQL, CeleryExecutor on Redis, two triggerers, two workers.

All tests share ONE cluster (``airflow_cluster``, see ``conftest.py``) and run in file order. Every check counts
what reached Kernel (the emulator's request log and invocations), so "exactly one create per task instance" is
measured, not assumed. Timings (makespan, failover) are printed, never asserted: numbers go to docs/scale.md.
"""

from __future__ import annotations

import signal
import time
from typing import Any

import pytest

from tests.harness.airflow3 import epoch
from tests.harness.airflow_cluster import TRIGGERERS, ClusterAirflow
from tests.harness.base import from_triggerer
from tests.harness.error_audit import TWO_TRIGGERERS_ONE_XCOM, WORKER_KILLED

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.timeout(900),
    pytest.mark.expect_error_lines(*TWO_TRIGGERERS_ONE_XCOM),
]

#: As in ``dags/cluster_dags.py`` (not imported: a DAG file, copied into the cluster's DAGs folder).
FAN_OUT_TASKS, WAIT_TASKS, RESTART_TASKS, HANDOVER_TASKS = 60, 100, 12, 6


def _count_states(c: ClusterAirflow, dag_id: str, run_id: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for state in c.states(dag_id, run_id).values():
        counts[str(state)] = counts.get(str(state), 0) + 1
    return counts


def _wait_all_deferred(c: ClusterAirflow, dag_id: str, run_id: str, count: int, timeout: float) -> None:
    def probe() -> bool:
        counts = _count_states(c, dag_id, run_id)
        bad = {s: n for s, n in counts.items() if s in ("failed", "up_for_retry", "upstream_failed")}
        assert not bad, f"tasks failed before deferring: {counts}"
        return counts.get("deferred", 0) == count

    c.wait_until(f"{count} tasks of {dag_id} to defer", probe, timeout, interval=2.0)


def _run_until_all_deferred(c: ClusterAirflow, dag_id: str, count: int, timeout: float) -> tuple[str, str, int]:
    """Trigger ``dag_id`` behind a new gate and wait until its ``count`` tasks are deferred: (gate, run id, the
    emulator's request mark from which any POST /invocations would be a duplicate)."""
    c.wait_for_dag(dag_id)
    gate = c.new_gate()
    run_id = c.trigger(dag_id, {"gate": gate})
    _wait_all_deferred(c, dag_id, run_id, count, timeout=timeout)
    return gate, run_id, c.last_seq()


def _posts_after(c: ClusterAirflow, seq: int) -> list[dict[str, Any]]:
    return [r for r in c.emulator.client.requests(path="/invocations", method="POST") if r["seq"] > seq]


def _trigger_rows(c: ClusterAirflow, dag_id: str, run_id: str) -> dict[int, tuple[int, int | None]]:
    """map_index -> (trigger id, triggerer job id) of a run's deferred tasks."""
    rows = c.sql(
        "SELECT ti.map_index, t.id, t.triggerer_id FROM task_instance ti JOIN trigger t ON ti.trigger_id = t.id "
        "WHERE ti.dag_id = %s AND ti.run_id = %s",
        dag_id,
        run_id,
    )
    return {m: (t, j) for m, t, j in rows}


def _check_outputs(c: ClusterAirflow, dag_id: str, run_id: str, gate: str, count: int) -> None:
    """``count`` invocations for ``gate``, all succeeded, each output in exactly one task instance."""
    mine = c.gate_invocations(gate)
    assert len(mine) == count, f"{len(mine)} invocations for {count} task instances"
    assert {i["status"] for i in mine} == {"succeeded"}
    ids = {i["id"] for i in mine}
    seen = set()
    for index in range(count):
        value = c.xcom(dag_id, run_id, "invoke", map_index=index)
        assert value["result"] == {"index": index}, value
        seen.add(value["id"])
    assert seen == ids, "a task instance reports another task's invocation"


def test_fan_out_over_kernel_concurrency_creates_once_per_task(airflow_cluster: ClusterAirflow) -> None:
    """60 mapped deferrable invokes over Kernel concurrency 5 (pool ``kernel_cluster``: 5 slots, deferred tasks
    counted) on two Celery workers: all succeed, one create per task instance, no 429 ever reaches Kernel."""
    c = airflow_cluster
    dag_id = "cluster_fan_out"
    c.wait_for_dag(dag_id)
    c.emulator.client.configure(org_concurrency=5)
    try:
        gate = c.new_gate()
        c.open_gate(gate)
        mark = c.last_seq()
        started = time.monotonic()
        run_id = c.trigger(dag_id, {"gate": gate})
        state = c.wait_run_done(dag_id, run_id, timeout=600)
        makespan = time.monotonic() - started
    finally:
        c.emulator.client.configure(org_concurrency=None)
    assert state == "success", _count_states(c, dag_id, run_id)
    posts = _posts_after(c, mark)
    rejected = [r for r in posts if not 200 <= (r["status"] or 0) < 300]
    assert len(posts) - len(rejected) == FAN_OUT_TASKS, f"{len(posts)} POSTs, {len(rejected)} rejected"
    assert not rejected, f"Kernel refused creates despite the pool: {[r['status'] for r in rejected]}"
    _check_outputs(c, dag_id, run_id, gate, FAN_OUT_TASKS)
    tries = {ti["try_number"] for ti in c.task_instances(dag_id, run_id)}
    assert tries == {1}, f"a task ran more than one try: {tries}"
    print(f"\n[cluster] fan-out {FAN_OUT_TASKS} over concurrency 5: {makespan:.0f}s, {len(posts)} creates")


def test_triggerer_failover_moves_every_wait_and_reposts_nothing(airflow_cluster: ClusterAirflow) -> None:
    """100 deferred waits spread over both triggerers; SIGKILL one: the other resumes each orphaned wait with
    the stored, absolute deadline; no POST /invocations after the tasks deferred; every task gets its output."""
    c = airflow_cluster
    dag_id = "cluster_waits"
    gate, run_id, deferred_mark = _run_until_all_deferred(c, dag_id, WAIT_TASKS, timeout=480)

    ids = {i: str(c.xcom(dag_id, run_id, "invoke", key="kernel_invocation_id", map_index=i)) for i in range(WAIT_TASKS)}
    assert len(set(ids.values())) == WAIT_TASKS
    c.wait_until(
        "every trigger to be assigned to a triggerer",
        lambda: all(j is not None for _, j in _trigger_rows(c, dag_id, run_id).values()),
        timeout=60,
    )
    before = _trigger_rows(c, dag_id, run_id)
    by_triggerer: dict[int | None, list[int]] = {}
    for index, (_, job) in before.items():
        by_triggerer.setdefault(job, []).append(index)
    assert len(by_triggerer) == len(TRIGGERERS), f"waits not spread over both triggerers: {by_triggerer.keys()}"
    deadlines = {t["map_index"]: t["kwargs"]["end_time"] for t in c.triggers(dag_id, run_id)}

    # The triggerer of triggerer1 is the job whose triggers number at most its capacity; find it by elimination:
    # kill triggerer1 and see whose heartbeat stops.
    live_before = set(c.live_triggerers())
    kill_wall = time.time()
    c.kill("triggerer1")  # SIGKILL to its process group and every descendant: no cleanup, no goodbye
    killed_mark = c.last_seq()
    c.wait_until("the dead triggerer's heartbeat to go stale", lambda: len(c.live_triggerers()) == 1, timeout=30)
    dead_job = (live_before - set(c.live_triggerers())).pop()
    orphans = {index: ids[index] for index in by_triggerer[dead_job]}

    def resumed() -> dict[str, float] | None:
        first: dict[str, float] = {}
        for r in c.emulator.client.requests(method="GET"):
            if r["seq"] <= killed_mark or not from_triggerer(r):
                continue
            parts = r["path"].split("/")
            if len(parts) > 2 and parts[1] == "invocations" and parts[2] in orphans.values():
                first.setdefault(parts[2], epoch(r["time"]))
        return first if set(first) == set(orphans.values()) else None

    first_seen = c.wait_until(f"the {len(orphans)} orphaned waits to resume", resumed, timeout=180, interval=1.0)
    failover = max(first_seen.values()) - kill_wall
    after = _trigger_rows(c, dag_id, run_id)
    for index in orphans:
        assert after[index][0] == before[index][0], "the trigger row was replaced"
        assert after[index][1] not in (None, dead_job), "the orphaned trigger did not move"
    assert {t["map_index"]: t["kwargs"]["end_time"] for t in c.triggers(dag_id, run_id)} == deadlines
    c.start("triggerer1")  # back to two triggerers for the next tests

    c.open_gate(gate)
    assert c.wait_run_done(dag_id, run_id, timeout=480) == "success", _count_states(c, dag_id, run_id)
    assert not _posts_after(c, deferred_mark), "an invocation was created again after the tasks deferred"
    _check_outputs(c, dag_id, run_id, gate, WAIT_TASKS)
    settings = {
        k: c.env.get(k)
        for k in (
            "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC",
            "AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD",
        )
    }
    print(
        f"\n[cluster] failover: {len(orphans)} of {WAIT_TASKS} waits orphaned by SIGKILL; last one running again "
        f"{failover:.1f}s after the kill; 0 re-POSTs; settings {settings}"
    )


def _log_lines_with(c: ClusterAirflow, text: str) -> int:
    """How many lines of the task and trigger logs hold ``text``."""
    count = 0
    for path in (c.home / "logs").rglob("*"):
        if path.is_file():
            count += sum(1 for line in path.read_text(errors="replace").splitlines() if text in line)
    return count


def test_a_triggerer_that_stalls_and_comes_back_cancels_nothing(airflow_cluster: ClusterAirflow) -> None:
    """A triggerer stops (SIGSTOP) for longer than the health-check threshold, so its waits move to the other one;
    when it comes back, Airflow 3.3 cancels them there as if a user had stopped the tasks, and so calls the
    trigger's ``on_kill``. The tasks are still deferred: no run is cancelled, none is created again, and every task
    gets its own run's output."""
    c = airflow_cluster
    dag_id = "cluster_handover"
    gate, run_id, deferred_mark = _run_until_all_deferred(c, dag_id, HANDOVER_TASKS, timeout=300)
    c.wait_until(
        "every trigger to be assigned to a triggerer",
        lambda: all(j is not None for _, j in _trigger_rows(c, dag_id, run_id).values()),
        timeout=60,
    )
    before = _trigger_rows(c, dag_id, run_id)
    moved: list[int] = []
    for name in TRIGGERERS:  # stall the triggerer that holds some of the waits (found by whose heartbeat stops)
        live_before = set(c.live_triggerers())
        stalled_service = c.services[name]
        stalled_service.send(signal.SIGSTOP)
        c.wait_until(f"{name}'s heartbeat to go stale", lambda: len(c.live_triggerers()) == 1, timeout=30)
        stalled = (live_before - set(c.live_triggerers())).pop()
        moved = [index for index, (_, job) in before.items() if job == stalled]
        if moved:
            break
        stalled_service.send(signal.SIGCONT)
        c.wait_until(f"{name} to heartbeat again", lambda: len(c.live_triggerers()) == 2, timeout=60)
    assert moved, f"no wait on either triggerer: {before}"
    c.wait_until(
        f"the stalled triggerer's {len(moved)} waits to move",
        lambda: all(_trigger_rows(c, dag_id, run_id)[i][1] not in (None, stalled) for i in moved),
        timeout=120,
    )
    stalled_service.send(signal.SIGCONT)

    def cancels() -> list[dict[str, Any]]:
        return [r for r in c.emulator.client.requests(method="PATCH") if r["seq"] > deferred_mark]

    c.wait_until(
        "the returned triggerer to run on_kill for each wait it lost",
        lambda: cancels() or _log_lines_with(c, "gave the wait up to another one") >= len(moved),
        timeout=120,
    )
    assert not cancels(), "a wait moved to another triggerer was cancelled by the one that lost it"
    c.open_gate(gate)
    assert c.wait_run_done(dag_id, run_id, timeout=300) == "success", _count_states(c, dag_id, run_id)
    assert not _posts_after(c, deferred_mark), "an invocation was created again"
    assert not cancels()
    _check_outputs(c, dag_id, run_id, gate, HANDOVER_TASKS)
    print(f"\n[cluster] handover: {len(moved)} of {HANDOVER_TASKS} waits moved off a stalled triggerer; 0 cancelled")


@pytest.mark.expect_error_lines(*WORKER_KILLED)
def test_worker_killed_inside_create_is_reconciled_without_a_duplicate(airflow_cluster: ClusterAirflow) -> None:
    """A Celery worker is SIGKILLed while its task's POST /invocations is in flight (Kernel created the run; the
    answer is held back by the harness's proxy). The retry, on the other worker, finds the run by its per-try
    token and adopts it: exactly one create."""
    c = airflow_cluster
    assert c.proxy is not None
    dag_id = "cluster_crash_create"
    c.wait_for_dag(dag_id)
    gate = c.new_gate()
    c.proxy.hold_creates(1, max_hold=120)
    try:
        run_id = c.trigger(dag_id, {"gate": gate})
        created = c.wait_until("the create to reach Kernel", lambda: c.gate_invocations(gate), timeout=180)[0]
        c.wait_until(
            "the create's answer to be held back",
            lambda: c.proxy.held and c.proxy.held[-1]["outcome"] is None,
            timeout=10,
        )
        ti = c.ti(dag_id, run_id, "invoke")
        assert (ti["state"], ti["try_number"]) == ("running", 1), ti
        worker = c.wait_until("the worker running the task", lambda: c.worker_of(str(ti["id"])), timeout=30)
        c.kill(worker)  # the Celery parent, its pool processes, the supervisor and the task: a dead node
    finally:
        c.proxy.stop_holding()
    c.wait_until("the proxy to see the client gone", lambda: c.proxy.held[-1]["outcome"] == "dropped", timeout=15)
    c.start(worker)  # a replacement node, for the next tests

    def retried_and_deferred() -> dict[str, Any] | None:
        now = c.ti(dag_id, run_id, "invoke")
        assert now["state"] not in ("failed", "success"), now
        return now if now["try_number"] >= 2 and now["state"] == "deferred" else None

    c.wait_until("the retry to adopt the run and defer", retried_and_deferred, timeout=240, interval=1.0)
    assert str(c.xcom(dag_id, run_id, "invoke", key="kernel_invocation_id")) == created["id"]
    c.wait_until(
        "the executor's report on try 2 deferring",
        lambda: c.executor_reported(dag_id, run_id, "invoke", try_number=2),
        timeout=60,
    )
    c.open_gate(gate)
    assert c.wait_run_done(dag_id, run_id, timeout=180) == "success", c.task_instances(dag_id, run_id)
    assert c.xcom(dag_id, run_id, "invoke") == {"id": created["id"], "result": {"gate": gate}}
    assert len(c.gate_invocations(gate)) == 1, "invoked twice"
    print(f"\n[cluster] {worker} SIGKILLed inside POST /invocations; try 2 adopted {created['id']}: 1 create")


def test_scheduler_restart_mid_run_loses_nothing_and_runs_nothing_twice(airflow_cluster: ClusterAirflow) -> None:
    """SIGKILL the scheduler while a run's tasks are partly deferred, partly queued/running; start a new one:
    every task defers once, ends with its own invocation's output, and Kernel saw one create per task."""
    c = airflow_cluster
    dag_id = "cluster_restart"
    c.wait_for_dag(dag_id)
    gate = c.new_gate()
    mark = c.last_seq()
    run_id = c.trigger(dag_id, {"gate": gate})
    c.wait_until(
        "some tasks to defer",
        lambda: _count_states(c, dag_id, run_id).get("deferred", 0) >= 3,
        timeout=240,
        interval=1.0,
    )
    at_kill = _count_states(c, dag_id, run_id)
    c.kill("scheduler")
    time.sleep(3)  # the cluster without a scheduler: workers and triggerers keep going
    c.start("scheduler")
    c.wait_until("the new scheduler to be healthy", c.healthy, timeout=120, interval=1.0)
    _wait_all_deferred(c, dag_id, run_id, RESTART_TASKS, timeout=300)
    c.open_gate(gate)
    assert c.wait_run_done(dag_id, run_id, timeout=300) == "success", _count_states(c, dag_id, run_id)
    _check_outputs(c, dag_id, run_id, gate, RESTART_TASKS)
    assert len(_posts_after(c, mark)) == RESTART_TASKS, "a create was repeated"
    tries = {ti["try_number"] for ti in c.task_instances(dag_id, run_id)}
    assert tries == {1}, f"a task ran twice: try numbers {tries}"
    print(f"\n[cluster] scheduler SIGKILLed at {at_kill}; restarted; {RESTART_TASKS} creates, all try 1")
