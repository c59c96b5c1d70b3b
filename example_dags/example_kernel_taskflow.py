"""Kernel example: TaskFlow with ``@task.kernel``.

A function decorated with ``@task.kernel(app_name=..., action_name=..., ...)`` returns the action's **payload**;
the task's return value is the action's **output**. Its arguments may be other tasks' outputs and templates (such
as ``RUN_DATE`` below), and it maps like any ``@task`` (``.partial()`` / ``.expand()``). Every ``KernelInvokeOperator``
parameter is a keyword of the decorator: here the scrape waits deferred, in the triggerer, for at most 10 minutes.

While a run is going, the task log shows each of its browsers' live-view URLs and the task's **Kernel live view**
button opens the first one; a failed run logs the view URLs of its browsers' replays.
"""

from __future__ import annotations

from typing import Any

import pendulum

try:  # Airflow 3
    from airflow.sdk import DAG, task
except ImportError:  # Airflow 2.x
    from airflow import DAG
    from airflow.decorators import task

# The run's logical date (YYYY-MM-DD), or, for an Airflow 3 run that has none (triggered from the UI, CLI or REST
# API without one), the date it was queued for. A bare {{ ds }} fails such runs: 'ds' is undefined.
RUN_DATE = "{{ (logical_date if logical_date is defined else dag_run.run_after) | ds }}"

with DAG(
    dag_id="example_kernel_taskflow",
    schedule=None,
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    tags=["kernel", "example"],
    doc_md=__doc__,
):

    @task.kernel(app_name="demo-shop", action_name="scrape_prices", deferrable=True, timeout=600)
    def scrape_prices(store: str, day: str) -> dict[str, Any]:
        """The payload: the store to read and the date (the template below, rendered before this runs)."""
        return {"store": store, "date": day}

    @task.kernel(app_name="demo-shop", action_name="summarize")
    def summarize(scraped: dict[str, Any]) -> dict[str, Any]:
        """The first action's output is this one's payload, passed as is."""
        return scraped

    @task.kernel(app_name="demo-shop", action_name="check_stock")
    def check_stock(sku: str) -> dict[str, Any]:
        return {"sku": sku}

    @task
    def report(summary: dict[str, Any], stock: Any) -> str:
        """Plain TaskFlow again: ``stock`` holds every mapped check's output, in map-index order."""
        # stock[:] reads every output in one request (iterating would read until a miss: an ERROR line on Airflow 3).
        levels = ", ".join(f"{s['sku']}: {s['quantity']}" for s in stock[:])
        return f"{summary['store']} on {summary['date']}: average {summary['average']}; stock {levels}"

    summary = summarize(scrape_prices("east", RUN_DATE))
    stock = check_stock.expand(sku=["A-100", "B-300"])
    report(summary, stock)
