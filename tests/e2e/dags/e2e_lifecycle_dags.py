"""DAGs of the lifecycle end-to-end tests (``../test_lifecycle.py``, ``../test_lifecycle_af2.py``): exactly one
Kernel run per task instance through clears, marks, retries, worker crashes and triggerer restarts.

Copied into the temporary DAGs folder of the test Airflow (3.3 and 2.11: the imports below work on both). Every
action is ``gate``/``wait`` (``tests/apps/gate_app.py``): it runs until the test opens the gate named in
the run's conf, so no wait depends on how fast the machine is. ``with_id`` makes each run return its own id,
so a test sees *which* invocation's output reached Airflow.
"""

from __future__ import annotations

import inspect
from datetime import timedelta

import pendulum

try:  # Airflow 3
    from airflow.sdk import DAG
except ImportError:  # Airflow 2.11
    from airflow import DAG  # type: ignore[no-redef,attr-defined]

from kernel_provider.operators.kernel import KernelInvokeOperator
from kernel_provider.sensors.kernel import KernelInvocationSensor

START = pendulum.datetime(2025, 1, 1, tz="UTC")
GATE = "{{ dag_run.conf['gate'] }}"
THEN_GATE = "{{ dag_run.conf['then_gate'] }}"
#: execution_timeout of ``lc_exec_timeout`` (the test waits for it, so keep it short but well above the time
#: the task needs to create its invocation and defer on a busy machine).
EXEC_TIMEOUT_SECONDS = 30
#: Lines ``lc_triggerer_restart``'s action prints before its first gate, between its gates, after the second.
RESTART_LINES = {
    "say": [f"lc-line-before-{i:02d}-end" for i in range(1, 4)],
    "say_between": [f"lc-line-between-{i:02d}-end" for i in range(1, 4)],
    "say_after": [f"lc-line-after-{i:02d}-end" for i in range(1, 4)],
}
#: The operator's opt-in exact reconciliation (``reconcile_token``); its DAG exists only once the operator has it.
HAS_RECONCILE_TOKEN = "reconcile_token" in inspect.signature(KernelInvokeOperator.__init__).parameters
RETRY = {"retries": 1, "retry_delay": timedelta(seconds=1)}


def _dag(dag_id: str) -> DAG:
    return DAG(dag_id=dag_id, schedule=None, start_date=START, catchup=False, tags=["e2e", "lifecycle"])


def _payload(**extra: object) -> dict[str, object]:
    return {"gate": GATE, "with_id": True, "result": {"gate": GATE}, **extra}


# Row 1: submit-only invoke + deferrable sensor; the run is cleared after it finished.
with _dag("lc_clear_submit"):
    start = KernelInvokeOperator(
        task_id="start",
        app_name="gate",
        action_name="wait",
        payload=_payload(),
        invoke_async=True,
        wait_for_completion=False,
        **RETRY,
    )
    KernelInvocationSensor(task_id="wait", invocation_id=start.output, deferrable=True, timeout=300, poke_interval=2)

# Row 2: a waiting (deferrable) invoke; the run is cleared after it finished.
with _dag("lc_clear_wait"):
    KernelInvokeOperator(
        task_id="invoke",
        app_name="gate",
        action_name="wait",
        payload=_payload(),
        deferrable=True,
        timeout=300,
        **RETRY,
    )

# Rows 3 and 4: a deferred task holding two browsers, cleared / marked success / marked failed while it waits.
for _dag_id in ("lc_clear_deferred", "lc_mark"):
    with _dag(_dag_id):
        KernelInvokeOperator(
            task_id="invoke",
            app_name="gate",
            action_name="wait",
            payload=_payload(browsers=2),
            deferrable=True,
            timeout=600,
            **RETRY,
        )

# Row 5: execution_timeout while deferred (the gate is never opened).
with _dag("lc_exec_timeout"):
    KernelInvokeOperator(
        task_id="invoke",
        app_name="gate",
        action_name="wait",
        payload=_payload(browsers=1),
        deferrable=True,
        retries=0,
        execution_timeout=timedelta(seconds=EXEC_TIMEOUT_SECONDS),
    )

# Row 6: the action fails on its first run; the automatic retry must invoke again (and succeed).
with _dag("lc_action_fails"):
    KernelInvokeOperator(
        task_id="invoke",
        app_name="gate",
        action_name="wait",
        payload=_payload(fail_times=1),
        deferrable=True,
        timeout=300,
        **RETRY,
    )

# Row 7a: the worker dies while POST /invocations is in flight. ``kernel_slow`` goes through the harness's
# proxy, which forwards the request to the emulator at once but holds the answer back.
with _dag("lc_crash_create"):
    KernelInvokeOperator(
        task_id="invoke",
        app_name="gate",
        action_name="wait",
        payload=_payload(),
        kernel_conn_id="kernel_slow",
        deferrable=True,
        timeout=600,
        **RETRY,
    )

if HAS_RECONCILE_TOKEN:
    with _dag("lc_crash_create_token"):
        KernelInvokeOperator(
            task_id="invoke",
            app_name="gate",
            action_name="wait",
            payload=_payload(),
            kernel_conn_id="kernel_slow",
            deferrable=True,
            timeout=600,
            reconcile_token=True,
            **RETRY,
        )

# Row 7b: the worker dies while it waits (not deferrable) for a created invocation.
with _dag("lc_crash_wait"):
    KernelInvokeOperator(
        task_id="invoke",
        app_name="gate",
        action_name="wait",
        payload=_payload(),
        deferrable=False,
        wait_mode="stream",
        poll_interval=2,
        timeout=600,
        **RETRY,
    )

# A person clears a task that waits on a worker: Airflow kills it and retries it (``restarting``, max_tries kept).
for _dag_id, _cancel in (("lc_clear_running", True), ("lc_clear_running_keep", False)):
    with _dag(_dag_id):
        KernelInvokeOperator(
            task_id="invoke",
            app_name="gate",
            action_name="wait",
            payload=_payload(),
            deferrable=False,
            wait_mode="stream",
            poll_interval=2,
            timeout=600,
            cancel_on_kill=_cancel,
            **RETRY,
        )

# Row 8: a streaming deferred wait whose action logs before, during and after a triggerer restart.
with _dag("lc_triggerer_restart"):
    KernelInvokeOperator(
        task_id="invoke",
        app_name="gate",
        action_name="wait",
        payload=_payload(then_gate=THEN_GATE, **RESTART_LINES),
        deferrable=True,
        wait_mode="stream",
        stream_logs=True,
        timeout=600,
        retries=0,
    )
