"""DAGs of the cluster tests (``../test_cluster.py``), copied into the DAGs folder of the test cluster.

Every action is ``gate``/``wait`` (``tests/apps/gate_app.py``): it runs until the test opens the gate named in the
run's conf, so nothing depends on how fast the machine is; ``with_id`` makes each run return its own id.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import DAG

from kernel_provider.operators.kernel import KernelInvokeOperator

START = pendulum.datetime(2025, 1, 1, tz="UTC")
GATE = "{{ dag_run.conf['gate'] }}"
#: Mapped tasks of ``cluster_fan_out`` (over Kernel concurrency 5, through the pool ``kernel_cluster``).
FAN_OUT_TASKS = 60
#: Deferred waits held at once by ``cluster_waits`` (the triggerer failover test).
WAIT_TASKS = 100
#: Mapped tasks of ``cluster_restart`` (the scheduler restart test).
RESTART_TASKS = 12
#: Deferred waits of ``cluster_handover`` (a triggerer that stalls and comes back).
HANDOVER_TASKS = 6
RETRY = {"retries": 1, "retry_delay": timedelta(seconds=1)}


def _dag(dag_id: str, max_active_tasks: int = 16) -> DAG:
    return DAG(
        dag_id=dag_id,
        schedule=None,
        start_date=START,
        catchup=False,
        tags=["cluster"],
        max_active_tasks=max_active_tasks,
    )


# 1. Fan-out over Kernel's concurrency: the pool (5 slots, deferred tasks counted) keeps the 6th create from
#    ever reaching Kernel. Each action prints a few lines (~1 s) once its gate is open.
with _dag("cluster_fan_out", max_active_tasks=FAN_OUT_TASKS):
    KernelInvokeOperator.partial(
        task_id="invoke",
        app_name="gate",
        action_name="wait",
        deferrable=True,
        timeout=900,
        pool="kernel_cluster",
        **RETRY,
    ).expand(
        payload=[
            {"gate": GATE, "with_id": True, "result": {"index": i}, "after": 4, "interval": 0.25}
            for i in range(FAN_OUT_TASKS)
        ]
    )

# 2. Many deferred waits at once, spread over both triggerers (triggerer failover).
with _dag("cluster_waits", max_active_tasks=WAIT_TASKS + 4):
    KernelInvokeOperator.partial(
        task_id="invoke", app_name="gate", action_name="wait", deferrable=True, timeout=900, **RETRY
    ).expand(payload=[{"gate": GATE, "with_id": True, "result": {"index": i}} for i in range(WAIT_TASKS)])

# 3. A Celery worker dies while POST /invocations is in flight: ``kernel_slow`` goes through the harness's proxy,
#    which forwards the request at once (Kernel creates the run) but holds the answer back; the per-try token
#    lets the retry find and adopt that run.
with _dag("cluster_crash_create"):
    KernelInvokeOperator(
        task_id="invoke",
        app_name="gate",
        action_name="wait",
        payload={"gate": GATE, "with_id": True, "result": {"gate": GATE}},
        kernel_conn_id="kernel_slow",
        deferrable=True,
        timeout=600,
        reconcile_token=True,
        **RETRY,
    )

# 4. The scheduler restarts mid-run (some tasks deferred, some still queued or running).
with _dag("cluster_restart", max_active_tasks=RESTART_TASKS):
    KernelInvokeOperator.partial(
        task_id="invoke", app_name="gate", action_name="wait", deferrable=True, timeout=900, **RETRY
    ).expand(payload=[{"gate": GATE, "with_id": True, "result": {"index": i}} for i in range(RESTART_TASKS)])

# 5. A triggerer stalls (SIGSTOP) past the health-check threshold and comes back: its waits move to the other one.
with _dag("cluster_handover", max_active_tasks=HANDOVER_TASKS):
    KernelInvokeOperator.partial(
        task_id="invoke", app_name="gate", action_name="wait", deferrable=True, timeout=900, **RETRY
    ).expand(payload=[{"gate": GATE, "with_id": True, "result": {"index": i}} for i in range(HANDOVER_TASKS)])
