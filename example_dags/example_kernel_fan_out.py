"""Kernel example: fan out over a list of inputs with dynamic task mapping, then reduce the results.

``.partial()`` holds the arguments every copy shares, ``.expand()`` the one that varies: Airflow creates one
mapped task instance (and one Kernel invocation) per payload. The ``kernel`` pool caps how many run at once;
size it to your Kernel plan's concurrency limit, so tasks queue in Airflow instead of getting 429s from Kernel:

    airflow pools set kernel 5 "Kernel concurrent invocations"

(the pool must exist: a task in a missing pool does not run. Use ``pool="default_pool"`` to skip this step.)
"""

from __future__ import annotations

from typing import Any

import pendulum

from kernel_provider.operators.kernel import KernelInvokeOperator

try:  # Airflow 3
    from airflow.sdk import DAG, task
except ImportError:  # Airflow 2.x
    from airflow import DAG
    from airflow.decorators import task

SKUS = ["A-100", "A-200", "B-300", "B-400"]

with DAG(
    dag_id="example_kernel_fan_out",
    schedule=None,
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    tags=["kernel", "example"],
    doc_md=__doc__,
):
    check_stock = KernelInvokeOperator.partial(
        task_id="check_stock",
        app_name="demo-shop",
        action_name="check_stock",
        pool="kernel",
    ).expand(payload=[{"sku": sku} for sku in SKUS])

    @task
    def stock_report(results: Any) -> dict[str, Any]:
        """Reduce: ``results`` holds every mapped task's output, in map-index order."""
        # A slice reads every output in one request; iterating reads one by one until a miss, which Airflow 3
        # logs as an ERROR ("XCom not found") although nothing is wrong.
        results = list(results[:])
        return {
            "checked": len(results),
            "total_quantity": sum(r["quantity"] for r in results),
            "out_of_stock": [r["sku"] for r in results if not r["in_stock"]],
        }

    stock_report(check_stock.output)
