"""Kernel example (assets, 1 of 2): a Kernel run that updates an Airflow asset, on a cron schedule.

``kernel_asset("demo-shop", "scrape_prices")`` is the asset ``kernel://demo-shop/scrape_prices``: what that action
produces. Named in the task's ``outlets``, it gets an asset event each time the task succeeds, and the provider
puts the run's figures in the event's ``extra``: ``kernel_invocation_id``, ``app_name``, ``version``,
``action_name``, ``status``, ``duration_seconds`` and ``browser_seconds``. ``example_kernel_asset_consumer`` is
scheduled on the asset: Airflow starts it after each event and hands it the event.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum

from kernel_provider.assets.kernel import kernel_asset
from kernel_provider.operators.kernel import KernelInvokeOperator

try:  # Airflow 3
    from airflow.sdk import DAG
except ImportError:  # Airflow 2.x
    from airflow import DAG

#: The asset both example DAGs name (Airflow 2.11: a Dataset).
PRICES = kernel_asset(app_name="demo-shop", action_name="scrape_prices")
# The run's logical date (YYYY-MM-DD), or, for an Airflow 3 run that has none, the date it was queued for.
RUN_DATE = "{{ (logical_date if logical_date is defined else dag_run.run_after) | ds }}"

with DAG(
    dag_id="example_kernel_asset_producer",
    schedule="0 6 * * *",  # every day at 06:00 UTC
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    tags=["kernel", "example"],
    doc_md=__doc__,
):
    KernelInvokeOperator(
        task_id="scrape_prices",
        app_name="demo-shop",
        action_name="scrape_prices",
        payload={"date": RUN_DATE, "store": "north"},
        timeout=timedelta(minutes=10),
        outlets=[PRICES],  # an asset event with the run's figures when the task succeeds
    )
