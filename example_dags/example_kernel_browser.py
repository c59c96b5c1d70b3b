"""Kernel example: scrape a page with ``@task.kernel_browser``, no Kernel app needed.

The task gets a Kernel browser (``POST /browsers``) with a Playwright ``page`` connected to it over CDP, runs the
function, and deletes the browser whatever happens (success, error, ``execution_timeout``, kill). The live-view
link shows on the task while it runs. Needs Playwright on the worker:
``pip install "airflow-provider-kernel[browser]"``.

The catalog page is rendered by JavaScript, so only a real browser sees its products. The tests
serve ``example_dags/site/`` on 127.0.0.1 and pass its URL as the ``site_url`` param (trigger with that conf).
"""

from __future__ import annotations

from typing import Any

import pendulum

try:  # Airflow 3
    from airflow.sdk import DAG, Param, task
except ImportError:  # Airflow 2.x
    from airflow import DAG
    from airflow.decorators import task
    from airflow.models.param import Param

with DAG(
    dag_id="example_kernel_browser",
    schedule=None,
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    tags=["kernel", "example"],
    doc_md=__doc__,
    params={"site_url": Param("http://127.0.0.1:8000/", type="string", description="the catalog page to scrape")},
):

    @task.kernel_browser(headless=True, timeout_seconds=120, execution_timeout=pendulum.duration(minutes=5))
    def scrape_catalog(page: Any, params: Any = None) -> list[dict[str, Any]]:
        """Open the catalog in the Kernel browser and read every product the page's script rendered."""
        page.goto(params["site_url"])
        page.wait_for_selector(".product")
        return [
            {
                "sku": item.get_attribute("data-sku"),
                "name": item.locator(".name").inner_text(),
                "price": float(item.locator(".price").inner_text()),
            }
            for item in page.locator(".product").all()
        ]

    @task
    def cheapest(products: list[dict[str, Any]]) -> dict[str, Any]:
        """The cheapest product scraped."""
        return min(products, key=lambda p: p["price"])

    cheapest(scrape_catalog())
