"""Scenarios of the lifecycle end-to-end tests, shared by ``test_lifecycle.py`` (Airflow 3.3) and
``test_lifecycle_af2.py`` (Airflow 2.11).

Each takes the harness (``AirflowE2E`` or ``Airflow2E2E`` from ``tests/harness``: the same methods, REST API v2 on
3.3, Airflow's ORM on 2.11) and asserts on what reached "Kernel" (the emulator: invocations created per gate,
their states and browsers, requests) and on Airflow's task states. No mocks, every wait bounded.

Invocations are counted per gate: every run gets a fresh gate name in its conf, the DAG puts it in the payload,
so ``gate_invocations(gate)`` is exactly the set of invocations that run's task instance created.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from typing import Any

from tests.harness.base import from_triggerer

#: Keep in sync with ``dags/e2e_lifecycle_dags.py`` (copied into a temporary DAGs folder, so not importable).
EXEC_TIMEOUT_SECONDS = 30
RESTART_LINES = {
    "say": [f"lc-line-before-{i:02d}-end" for i in range(1, 4)],
    "say_between": [f"lc-line-between-{i:02d}-end" for i in range(1, 4)],
    "say_after": [f"lc-line-after-{i:02d}-end" for i in range(1, 4)],
}
#: The retry-safety record of the operator: task_state_store key (3.3) / Variable name prefix (2.11).
STORE_KEY = "kernel_invocation"
VARIABLE_PREFIX = "kernel_provider.invocation."
TERMINAL = ("success", "failed", "upstream_failed", "skipped", "removed")

Harness = Any  # AirflowE2E or Airflow2E2E (tests/harness/airflow3.py, airflow2.py): the same methods


# --- helpers ---------------------------------------------------------------------------------------------------


def wait_ti(
    h: Harness,
    dag_id: str,
    run_id: str,
    task_id: str,
    states: tuple[str, ...],
    timeout: float,
    min_try: int = 1,
    what: str = "",
) -> dict[str, Any]:
    """Wait until the task instance is in one of ``states`` with ``try_number >= min_try``."""

    def probe() -> dict[str, Any] | None:
        ti = h.ti(dag_id, run_id, task_id)
        if (ti.get("try_number") or 0) >= min_try and ti.get("state") in states:
            return ti
        return None

    label = what or f"{dag_id}.{task_id} to be {'/'.join(states)} (try >= {min_try})"
    return dict(h.wait_until(label, probe, timeout, interval=1.0))


def wait_deferred(
    h: Harness, dag_id: str, run_id: str, task_id: str, timeout: float = 120, min_try: int = 1
) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        ti = h.ti(dag_id, run_id, task_id)
        if (ti.get("try_number") or 0) >= min_try and ti.get("state") in ("success", "failed", "upstream_failed"):
            raise AssertionError(f"{dag_id}.{task_id} ended ({ti['state']}) instead of deferring:\n{h.diagnostics()}")
        if (ti.get("try_number") or 0) >= min_try and ti.get("state") == "deferred":
            return ti
        return None

    return dict(h.wait_until(f"{dag_id}.{task_id} try {min_try} to defer", probe, timeout, interval=1.0))


def wait_deferral_reported(
    h: Harness, dag_id: str, run_id: str, task_id: str, try_number: int, timeout: float = 30
) -> None:
    """Wait until the scheduler has processed the executor's report on the deferring workload of a try.

    Airflow (3.3, LocalExecutor) race, not the provider's: the worker's supervisor reports a deferred task's
    workload as finished only up to ``[workers] min_heartbeat_interval`` seconds after the task deferred. If the
    trigger fires sooner, the scheduler meets "executor says success, task instance is queued" and marks the
    resumed try UP_FOR_RETRY (seen here: try 2 resumed 2 s after deferring, failed, try 3 returned the output).
    So a test lets that report land before it opens the gate.
    """
    h.wait_until(
        f"the executor's report on {dag_id}.{task_id} try {try_number} deferring",
        lambda: h.executor_reported(dag_id, run_id, task_id, try_number),
        timeout,
    )


def wait_gate_invocations(h: Harness, gate: str, count: int, timeout: float) -> list[dict[str, Any]]:
    return list(
        h.wait_until(
            f"{count} invocation(s) for gate {gate}",
            lambda: found if len(found := h.gate_invocations(gate)) >= count else None,
            timeout,
        )
    )


def wait_browsers(h: Harness, invocation_id: str, count: int, timeout: float = 30) -> None:
    h.wait_until(
        f"invocation {invocation_id} to hold {count} browsers",
        lambda: len(h.invocation(invocation_id)["_emulator"]["browsers"]) >= count,
        timeout,
    )


def wait_triggerer_follows(h: Harness, invocation_id: str, timeout: float = 60) -> None:
    """Wait until the triggerer has started the trigger's wait (its requests carry the triggerer mark). Until
    then there is no running trigger for Airflow to stop (3.3 calls on_kill only on a running trigger)."""
    h.wait_until(
        f"the triggerer to follow invocation {invocation_id}",
        lambda: any(from_triggerer(r) for r in h.kernel_requests(invocation_id)),
        timeout,
    )


def wait_rerun_done(h: Harness, dag_id: str, run_id: str, task_ids: list[str], min_try: int, timeout: float) -> str:
    """After a clear: wait until the run is finished again and every task ran try ``min_try`` (or later)."""

    def probe() -> str | None:
        state = h.run_state(dag_id, run_id)
        if state not in ("success", "failed"):
            return None
        tis = {t["task_id"]: t for t in h.task_instances(dag_id, run_id)}
        ok = all((tis[t].get("try_number") or 0) >= min_try and tis[t].get("state") in TERMINAL for t in task_ids)
        return state if ok else None

    return str(
        h.wait_until(f"run {run_id} of {dag_id} to finish again (tries >= {min_try})", probe, timeout, interval=1.0)
    )


def creates_summary(h: Harness, gate: str) -> str:
    return ", ".join(f"{i['id']} ({i['status']}, started {i['started_at']})" for i in h.gate_invocations(gate))


def cancelled(h: Harness, invocation_id: str, timeout: float) -> dict[str, Any]:
    """Wait for the invocation to be cancelled (PATCHed ``failed``); check its browsers went with it."""
    final = h.wait_invocation(invocation_id, ("failed", "succeeded"), timeout)
    assert final["status"] == "failed", f"invocation {invocation_id} was not cancelled: {final}"
    patches = [r for r in h.kernel_requests(invocation_id) if r["method"] == "PATCH"]
    assert patches, f"invocation {invocation_id} ended {final['status']} without a cancel (PATCH): {final}"
    assert final["_emulator"]["browsers"] == [], f"browsers left behind: {final['_emulator']['browsers']}"
    return final


def kernel_line_counts(
    h: Harness, dag_id: str, run_id: str, task_id: str, invocation_id: str
) -> tuple[Counter[str], dict[str, int]]:
    """How often each ``[kernel <id>] <line>`` occurs across all log files of the task instance (every attempt,
    every triggerer's ``.trigger.<job>.log``); and how many such lines each file holds."""
    pattern = re.compile(r"\[kernel " + re.escape(invocation_id) + r"\] ([^\"\n\\]*)")
    counts: Counter[str] = Counter()
    per_file: dict[str, int] = {}
    for name, text in h.task_logs(dag_id, run_id, task_id).items():
        found = [m.strip() for m in pattern.findall(text)]
        counts.update(found)
        per_file[name] = len(found)
    return counts, per_file


def retry_store(h: Harness, dag_id: str, run_id: str, task_id: str) -> Any:
    """The operator's retry-safety record for a task instance, or None when there is none (removed or empty)."""
    if h.records_in_variables:  # below Airflow 3.3: a Variable per task instance
        names = [n for n in h.variables(VARIABLE_PREFIX) if n.startswith(f"{VARIABLE_PREFIX}{dag_id}.{task_id}.")]
        return names or None
    body = h.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/state-store")
    values = {e["key"]: e["value"] for e in body.get("task_state_store", [])}
    value = values.get(STORE_KEY)
    return value if value not in (None, "", {}, []) else None


# --- rows shared by both Airflow versions --------------------------------------------------------------------


def clear_finished_submit_only_run(h: Harness) -> None:
    """Row 1. Submit-only invoke + sensor; "Clear" on the finished run: the invoke starts a NEW invocation and
    the sensor reports that one's output (not the first run's)."""
    dag_id = "lc_clear_submit"
    h.wait_for_dag(dag_id)
    gate = h.new_gate()
    h.open_gate(gate)  # both runs finish at once
    run_id = h.trigger(dag_id, {"gate": gate})
    assert h.wait_run_done(dag_id, run_id, timeout=150) == "success", h.states(dag_id, run_id)
    first = str(h.xcom(dag_id, run_id, "start"))
    assert [i["id"] for i in h.gate_invocations(gate)] == [first]
    assert h.xcom(dag_id, run_id, "wait") == {"id": first, "result": {"gate": gate}}
    assert retry_store(h, dag_id, run_id, "start") is None, (
        "the retry-safety record of 'start' outlived the hand-off (wait_for_completion=False returned the id): "
        f"{retry_store(h, dag_id, run_id, 'start')}"
    )

    h.clear_run(dag_id, run_id)
    state = wait_rerun_done(h, dag_id, run_id, ["start", "wait"], min_try=2, timeout=150)
    assert state == "success", h.task_instances(dag_id, run_id)
    second = str(h.xcom(dag_id, run_id, "start"))
    invocations = h.gate_invocations(gate)
    assert len(invocations) == 2 and second != first, (
        f"clearing the run did not start a fresh invocation: 'start' returned {second} (first run: {first}); "
        f"invocations for the gate: {creates_summary(h, gate)}"
    )
    assert second == invocations[1]["id"]
    reported = h.xcom(dag_id, run_id, "wait")
    assert reported == {"id": second, "result": {"gate": gate}}, (
        f"the sensor reported {reported}, not the output of the new invocation {second}"
    )
    assert retry_store(h, dag_id, run_id, "start") is None


def clear_deferred_task(h: Harness) -> None:
    """Row 3. "Clear" on a task that is deferred (waiting on a running invocation with browsers): the old
    invocation is cancelled with its browsers, and the new try creates exactly one new invocation."""
    dag_id, task_id = "lc_clear_deferred", "invoke"
    h.wait_for_dag(dag_id)
    gate = h.new_gate()
    run_id = h.trigger(dag_id, {"gate": gate})
    wait_deferred(h, dag_id, run_id, task_id)
    [old] = wait_gate_invocations(h, gate, 1, timeout=30)
    wait_browsers(h, old["id"], 2)
    wait_triggerer_follows(h, old["id"])
    assert h.invocation(old["id"])["status"] == "running"

    h.clear_tasks(dag_id, run_id, [task_id])
    cancelled(h, old["id"], timeout=90)
    wait_deferred(h, dag_id, run_id, task_id, timeout=150, min_try=2)
    invocations = wait_gate_invocations(h, gate, 2, timeout=30)
    new = invocations[1]
    assert str(h.xcom(dag_id, run_id, task_id, key="kernel_invocation_id")) == new["id"]
    assert h.invocation(new["id"])["status"] == "running"
    wait_deferral_reported(h, dag_id, run_id, task_id, try_number=2)

    h.open_gate(gate)
    assert h.wait_run_done(dag_id, run_id, timeout=120) == "success", h.task_instances(dag_id, run_id)
    assert h.xcom(dag_id, run_id, task_id) == {"id": new["id"], "result": {"gate": gate}}
    invocations = h.gate_invocations(gate)
    assert len(invocations) == 2, f"expected 2 creates (one per try), got: {creates_summary(h, gate)}"
    assert [i["status"] for i in invocations] == ["failed", "succeeded"], creates_summary(h, gate)
    ti = h.ti(dag_id, run_id, task_id)
    assert ti["try_number"] == 2, ti


def clear_task_waiting_on_a_worker(h: Harness, cancel_on_kill: bool) -> str:
    """A person clears a task that waits on a worker. Airflow moves it to ``restarting``, kills it and gives it a
    new try. Airflow 3.3 raises ``max_tries`` (as a clear does) when the killed try ended cleanly and keeps it
    when that try ended failed, so the new try is a clear or a retry to the provider. With ``cancel_on_kill=True``
    the kill cancelled the run either way and the try invokes anew. With False the try either re-attaches to the
    run that kept going (``max_tries`` kept) or starts afresh after stopping it (raised): never two runs at once."""
    dag_id, task_id = ("lc_clear_running" if cancel_on_kill else "lc_clear_running_keep"), "invoke"
    h.wait_for_dag(dag_id)
    gate = h.new_gate()
    run_id = h.trigger(dag_id, {"gate": gate})
    [created] = wait_gate_invocations(h, gate, 1, timeout=120)

    def streams(after: int) -> Any:
        return lambda: [
            r
            for r in h.kernel_requests(created["id"])
            if r["seq"] > after and r["route"] == "/invocations/{id}/events" and not from_triggerer(r)
        ]

    h.wait_until("the worker to follow the invocation's event stream", streams(0), timeout=60)
    assert h.ti(dag_id, run_id, task_id)["state"] == "running"
    cleared = h.last_seq()
    h.clear_tasks(dag_id, run_id, [task_id])
    ti = wait_ti(h, dag_id, run_id, task_id, ("running",), timeout=120, min_try=2)
    # The gate stays shut until try 2 has decided: a second run, or the first one followed again.
    h.wait_until(
        "try 2 to invoke anew or follow the first run",
        lambda: len(h.gate_invocations(gate)) == 2 or streams(cleared)(),
        timeout=60,
    )
    invocations = h.gate_invocations(gate)
    if cancel_on_kill:
        assert len(invocations) == 2, creates_summary(h, gate)
    if len(invocations) == 2:
        assert h.invocation(created["id"])["status"] == "failed", "the first run was left going next to a new one"
        expected = next(i["id"] for i in invocations if i["id"] != created["id"])
    else:
        expected = created["id"]  # re-attached: the clear reached the provider as a retry
    h.open_gate(gate)
    assert h.wait_run_done(dag_id, run_id, timeout=120) == "success", h.task_instances(dag_id, run_id)
    assert h.xcom(dag_id, run_id, task_id) == {"id": expected, "result": {"gate": gate}}
    assert len(h.gate_invocations(gate)) == len(invocations), creates_summary(h, gate)
    assert ti["try_number"] == 2
    return "re-attached" if expected == created["id"] else "started afresh"


def mark_deferred_task(h: Harness, state: str) -> None:
    """Row 4. Mark a deferred task success/failed: its invocation is cancelled with its browsers, and nothing is
    invoked again (the DAG has retries=1: marking must not turn into a retry)."""
    dag_id, task_id = "lc_mark", "invoke"
    h.wait_for_dag(dag_id)
    gate = h.new_gate()
    run_id = h.trigger(dag_id, {"gate": gate})
    wait_deferred(h, dag_id, run_id, task_id)
    [invocation] = wait_gate_invocations(h, gate, 1, timeout=30)
    wait_browsers(h, invocation["id"], 2)
    wait_triggerer_follows(h, invocation["id"])
    assert h.invocation(invocation["id"])["status"] == "running"
    # While the task is deferred, its trigger (a real triggerer's) points the "Kernel live view" link at a
    # read-only URL it minted for the run's first browser (never the listed URL, which steers the browser).
    import httpx

    first_browser = h.invocation(invocation["id"])["_emulator"]["browsers"][0]
    live = h.wait_until(
        "the trigger to publish the live-view link",
        lambda: h.xcom(dag_id, run_id, task_id, key="kernel_live_view_url"),
        timeout=60,
    )
    assert live != first_browser["browser_live_view_url"] and "/live/t/" in live, (live, first_browser)
    assert '<dd id="access">read</dd>' in httpx.get(live, timeout=10).text
    assert httpx.post(f"{live}/input", data={"text": "x"}, timeout=10).status_code == 403
    assert h.ti(dag_id, run_id, task_id)["state"] == "deferred"

    started = time.monotonic()
    h.mark(dag_id, run_id, task_id, state)
    cancelled(h, invocation["id"], timeout=90)
    took = time.monotonic() - started
    assert h.wait_run_done(dag_id, run_id, timeout=60) == state, h.task_instances(dag_id, run_id)
    time.sleep(5)  # room for a wrong retry or re-run to show up
    ti = h.ti(dag_id, run_id, task_id)
    assert (ti["state"], ti["try_number"]) == (state, 1), ti
    assert len(h.gate_invocations(gate)) == 1, f"marking {state} invoked again: {creates_summary(h, gate)}"
    print(f"\n[e2e] marked {state}: {invocation['id']} cancelled {took:.1f}s later, browsers deleted")


def execution_timeout_while_deferred(h: Harness) -> dict[str, Any]:
    """Row 5. ``execution_timeout`` passes while the task is deferred (gate never opened): the task fails and
    the invocation is cancelled, by the trigger itself (its deadline), with its browser. Returns facts for the
    version-specific checks."""
    dag_id, task_id = "lc_exec_timeout", "invoke"
    h.wait_for_dag(dag_id)
    gate = h.new_gate()
    run_id = h.trigger(dag_id, {"gate": gate})
    wait_deferred(h, dag_id, run_id, task_id)
    [invocation] = wait_gate_invocations(h, gate, 1, timeout=30)
    wait_browsers(h, invocation["id"], 1)
    wait_triggerer_follows(h, invocation["id"])

    ti = wait_ti(
        h,
        dag_id,
        run_id,
        task_id,
        ("failed",),
        timeout=EXEC_TIMEOUT_SECONDS + 90,
        what=f"{dag_id}.{task_id} to fail on its execution_timeout ({EXEC_TIMEOUT_SECONDS}s)",
    )
    final = cancelled(h, invocation["id"], timeout=30)
    patches = [r for r in h.kernel_requests(invocation["id"]) if r["method"] == "PATCH"]
    assert any(from_triggerer(r) for r in patches), (
        f"the invocation was not cancelled by the trigger (triggerer User-Agent) at its deadline: {patches}"
    )
    assert len(h.gate_invocations(gate)) == 1, creates_summary(h, gate)
    assert h.wait_run_done(dag_id, run_id, timeout=30) == "failed"
    logs = h.task_logs(dag_id, run_id, task_id)
    print(
        f"\n[e2e] execution_timeout: {invocation['id']} cancelled; ti {ti.get('start_date')} -> "
        f"{ti.get('end_date')}; finished at {final.get('finished_at')}"
    )
    return {"ti": ti, "invocation": final, "logs": logs, "run_id": run_id}
