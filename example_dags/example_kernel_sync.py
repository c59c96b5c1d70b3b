"""Kernel example: a short synchronous invocation.

With ``invoke_async=False`` Kernel runs the action inside the ``POST /invocations`` request and answers with
its result, so there is nothing to wait for afterwards. Kernel caps synchronous invocations at about 100 s:
use this only for quick actions, and the default ``invoke_async=True`` for anything longer.
"""

from __future__ import annotations

import pendulum

from kernel_provider.operators.kernel import KernelInvokeOperator

try:  # Airflow 3
    from airflow.sdk import DAG
except ImportError:  # Airflow 2.x
    from airflow import DAG

with DAG(
    dag_id="example_kernel_sync",
    schedule=None,
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    tags=["kernel", "example"],
    doc_md=__doc__,
):
    # The task's return value (XCom "return_value") is the action's decoded JSON output:
    # {"sku": "A-100", "name": "Espresso cup", "list_price": 4.5}
    lookup = KernelInvokeOperator(
        task_id="lookup_product",
        app_name="demo-shop",
        action_name="lookup_product",
        payload={"sku": "A-100"},  # a dict is JSON-encoded for you
        invoke_async=False,
    )
