"""Kernel example: start an invocation, do something else, then wait for it with a sensor.

``wait_for_completion=False`` makes the operator return the invocation id as soon as Kernel has accepted the
run. ``KernelInvocationSensor`` waits for that id (deferrable: in the triggerer, no worker slot) and returns the
action's output, which downstream tasks read like any other XCom.
"""

from __future__ import annotations

from typing import Any

import pendulum

from kernel_provider.operators.kernel import KernelInvokeOperator
from kernel_provider.sensors.kernel import KernelInvocationSensor

try:  # Airflow 3
    from airflow.sdk import DAG, task
except ImportError:  # Airflow 2.x
    from airflow import DAG
    from airflow.decorators import task

with DAG(
    dag_id="example_kernel_async_sensor",
    schedule=None,
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    tags=["kernel", "example"],
    doc_md=__doc__,
):
    start_crawl = KernelInvokeOperator(
        task_id="start_crawl",
        app_name="demo-shop",
        action_name="crawl_catalog",
        payload={"category": "office", "pages": 3},
        invoke_async=True,
        wait_for_completion=False,  # returns the invocation id at once
    )

    wait_for_crawl = KernelInvocationSensor(
        task_id="wait_for_crawl",
        invocation_id=start_crawl.output,  # the id returned by start_crawl
        deferrable=True,
        timeout=30 * 60,  # give up waiting after 30 minutes (the invocation itself is not cancelled)
    )

    @task
    def report(crawl: dict[str, Any]) -> str:
        """Use the action's output: {"category": ..., "pages": ..., "products": [...]}."""
        line = f"{len(crawl['products'])} product(s) in {crawl['category']}: {', '.join(crawl['products'])}"
        print(line)
        return line

    report(wait_for_crawl.output)
