"""DAGs of the end-to-end tests (copied into the temporary DAGs folder of the test Airflow).

Their Kernel actions wait on a gate the test opens (``gate``/``wait``, see ``tests/apps/gate_app.py``),
or run far longer than the test (``demo``/``browse``), so deferrals are observed without timing races.
The gate name comes from the run's conf.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pendulum
from airflow.sdk import DAG, task

from kernel_provider.operators.kernel import KernelInvokeOperator
from kernel_provider.sensors.kernel import KernelInvocationSensor

START = pendulum.datetime(2025, 1, 1, tz="UTC")
GATE = "{{ dag_run.conf['gate'] }}"
CRASH_TASKS = 20

# 1. Same shape as example_kernel_async_sensor: async invoke, deferrable sensor, a task using the output.
with DAG(dag_id="e2e_kernel_async_sensor", schedule=None, start_date=START, catchup=False, tags=["e2e"]):
    start = KernelInvokeOperator(
        task_id="start",
        app_name="gate",
        action_name="wait",
        payload={"gate": GATE, "result": {"gate": GATE, "answer": 42}},
        invoke_async=True,
        wait_for_completion=False,
    )
    wait = KernelInvocationSensor(task_id="wait", invocation_id=start.output, deferrable=True, timeout=600)

    @task
    def use(result: dict[str, Any]) -> str:
        return f"{result['gate']}={result['answer']}"

    use(wait.output)

# 1b. A failed run watched by two sensors that end in the triggerer (Airflow 3.3+): one skips, one succeeds with the
# failure's details.
with DAG(dag_id="e2e_kernel_sensor_failed", schedule=None, start_date=START, catchup=False, tags=["e2e"]):
    doomed = KernelInvokeOperator(
        task_id="start",
        app_name="gate",
        action_name="wait",
        payload={"gate": GATE, "fail": "the shop was closed"},
        wait_for_completion=False,
    )
    KernelInvocationSensor(task_id="skip", invocation_id=doomed.output, deferrable=True, timeout=600, soft_fail=True)
    KernelInvocationSensor(
        task_id="lenient", invocation_id=doomed.output, deferrable=True, timeout=600, fail_on_failure=False
    )

# 2. Many deferred waits at once, for the triggerer crash test.
with DAG(
    dag_id="e2e_kernel_crash",
    schedule=None,
    start_date=START,
    catchup=False,
    tags=["e2e"],
    max_active_tasks=CRASH_TASKS + 4,
):
    KernelInvokeOperator.partial(
        task_id="invoke",
        app_name="gate",
        action_name="wait",
        deferrable=True,
        timeout=900,
        # Airflow 3.0 can start a task (or resume it) before the scheduler's "queued" is committed; that try then
        # fails without having run (apache/airflow#52754), more often when 20 start at once. Retries run it again;
        # the exactly-once counts still hold: a try that never ran created nothing, and a retry after the create
        # adopts the run its task instance recorded.
        retries=3,
        retry_delay=timedelta(seconds=1),
    ).expand(payload=[{"gate": GATE, "result": {"index": i}} for i in range(CRASH_TASKS)])

# 3. A long run with browsers, for the kill test (demo/browse sleeps 600 s holding two browsers).
with DAG(dag_id="e2e_kernel_kill", schedule=None, start_date=START, catchup=False, tags=["e2e"]):
    KernelInvokeOperator(
        task_id="browse",
        app_name="demo",
        action_name="browse",
        payload={"count": 2, "seconds": 600},
        deferrable=True,
        timeout=900,
        retries=0,
    )
