"""Kernel example: run a browser action every day and wait for it without holding a worker slot.

``deferrable=True`` hands the wait to Airflow's triggerer, which follows Kernel's event stream: the worker slot
is free while the browser works, and the action's log lines still show up in the task log.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum

from kernel_provider.operators.kernel import KernelInvokeOperator

try:  # Airflow 3
    from airflow.sdk import DAG
except ImportError:  # Airflow 2.x
    from airflow import DAG

# The run's logical date (YYYY-MM-DD), or, for an Airflow 3 run that has none (triggered from the UI, CLI or REST
# API without one), the date it was queued for. A bare {{ ds }} fails such runs: 'ds' is undefined.
RUN_DATE = "{{ (logical_date if logical_date is defined else dag_run.run_after) | ds }}"

with DAG(
    dag_id="example_kernel_scheduled",
    schedule="@daily",
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    tags=["kernel", "example"],
    doc_md=__doc__,
):
    scrape = KernelInvokeOperator(
        task_id="scrape_prices",
        app_name="demo-shop",
        action_name="scrape_prices",
        # payload is templated, nested values included (RUN_DATE above).
        payload={"date": RUN_DATE, "store": "north"},
        deferrable=True,
        # Fail (and cancel the invocation) if it has not finished after 10 minutes.
        timeout=timedelta(minutes=10),
        # Kernel's own limit for the run (10..3600 s); it fails the invocation on Kernel's side.
        async_timeout_seconds=900,
    )
