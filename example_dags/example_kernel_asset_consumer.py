"""Kernel example (assets, 2 of 2): a DAG scheduled on a Kernel asset, using the run that updated it.

``schedule=[PRICES]``: Airflow starts this DAG when ``example_kernel_asset_producer`` has updated
``kernel://demo-shop/scrape_prices``, and gives it the asset events that triggered the run. Their ``extra`` holds
the Kernel run's figures (``kernel_invocation_id``, ``app_name``, ``version``, ``action_name``, ``status``,
``duration_seconds``, ``browser_seconds``); ``fetch_prices`` reads the run's output from Kernel by its id, so no
data passes between the DAGs through XCom.

A run not started by the asset (triggered by hand, or ``airflow dags test``) has no triggering event: it reads the
asset's latest event instead (``inlets=[PRICES]``), and is skipped when there is none yet.
"""

from __future__ import annotations

import logging
from typing import Any

import pendulum

from kernel_provider.assets.kernel import kernel_asset
from kernel_provider.sensors.kernel import KernelInvocationSensor

try:  # Airflow 3
    from airflow.sdk import DAG, task
    from airflow.sdk.exceptions import AirflowSkipException
except ImportError:  # Airflow 2.x
    from airflow import DAG
    from airflow.decorators import task
    from airflow.exceptions import AirflowSkipException

log = logging.getLogger(__name__)
#: The producer's asset (kernel://demo-shop/scrape_prices), built the same way.
PRICES = kernel_asset(app_name="demo-shop", action_name="scrape_prices")

with DAG(
    dag_id="example_kernel_asset_consumer",
    schedule=[PRICES],  # runs after each update of the asset
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    tags=["kernel", "example"],
    doc_md=__doc__,
):

    @task(inlets=[PRICES])
    def read_event(**context: Any) -> dict[str, Any]:
        """The extra of the asset event this run is for: the one that triggered it, else the asset's latest."""
        # Airflow 3: triggering_asset_events, keyed by asset; Airflow 2: triggering_dataset_events, keyed by URI.
        triggering = context.get("triggering_asset_events") or context.get("triggering_dataset_events") or {}
        events = [e for key, found in triggering.items() if getattr(key, "uri", key) == PRICES.uri for e in found]
        source = "the event that triggered this run"
        if not events:
            latest = context["inlet_events"][PRICES]
            events = [latest[-1]] if len(latest) else []
            source = "the asset's latest event (this run was not started by the asset)"
        if not events:
            raise AirflowSkipException(f"{PRICES.uri} has no event yet: run example_kernel_asset_producer first.")
        extra = dict(events[-1].extra)
        log.info("Kernel run from %s: %s", source, extra)
        return extra

    event = read_event()
    fetch_prices = KernelInvocationSensor(
        task_id="fetch_prices",
        # The run is finished (the event says so): the sensor's first check returns its output.
        invocation_id="{{ ti.xcom_pull(task_ids='read_event')['kernel_invocation_id'] }}",
        poke_interval=5,
        timeout=10 * 60,
    )

    @task
    def report(extra: dict[str, Any], scraped: dict[str, Any]) -> str:
        """Use the figures and the output: a line for the log (and the task's return value)."""
        cheapest = min(scraped["prices"], key=lambda p: p["price"])
        line = (
            f"{extra['app_name']}/{extra['action_name']}@{extra['version']} run {extra['kernel_invocation_id']} "
            f"{extra['status']} in {extra['duration_seconds']} s: {len(scraped['prices'])} prices of store "
            f"{scraped['store']} on {scraped['date']}, cheapest {cheapest['sku']} at {cheapest['price']}"
        )
        log.info("%s", line)
        return line

    event >> fetch_prices
    report(event, fetch_prices.output)
