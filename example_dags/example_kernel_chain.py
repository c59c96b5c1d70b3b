"""Kernel example: one action's output becomes the next action's payload.

Pass the upstream task's ``.output`` (an XComArg) as ``payload``: Airflow hands over the decoded JSON value
(here a dict) and the operator JSON-encodes it again. Avoid a plain Jinja string such as
``payload="{{ ti.xcom_pull(task_ids='scrape_prices') }}"``: it renders the Python repr of the dict
(single quotes), which is not JSON, so the task fails before invoking. If you need a template, add
``| tojson``: ``"{{ ti.xcom_pull(task_ids='scrape_prices') | tojson }}"``.
"""

from __future__ import annotations

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
    dag_id="example_kernel_chain",
    schedule=None,
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    tags=["kernel", "example"],
    doc_md=__doc__,
):
    scrape = KernelInvokeOperator(
        task_id="scrape_prices",
        app_name="demo-shop",
        action_name="scrape_prices",
        payload={"date": RUN_DATE, "store": "south"},
    )

    # Passing scrape.output also sets the dependency scrape >> summarize.
    summarize = KernelInvokeOperator(
        task_id="summarize",
        app_name="demo-shop",
        action_name="summarize",
        payload=scrape.output,
    )
