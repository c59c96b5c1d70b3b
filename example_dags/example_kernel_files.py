"""Kernel example: download a CSV in a Kernel browser, land it in object storage, and emit an asset event for it.

The ``@task.kernel_browser`` task opens the example site, clicks its "price list (CSV)" link, waits for the download
in the browser's ``/tmp/downloads`` (``kernel_files.wait_for``) and lands it (``kernel_files.land``): streamed from
the browser's filesystem (``GET /browsers/{id}/fs/read_file``) into a temporary object beside the final name, which
it takes only once the file is whole, with a size cap and its sha256. Then it emits an asset event for the landed
file with ``{"sha256", "size"}`` as extra. All of it while the browser lives: Kernel deletes a browser's files with it.

The landing directory is ``KERNEL_EXAMPLE_LANDING_DIR`` (default ``/tmp/kernel-example-landing``; read when the DAG
is parsed, as the asset's URI depends on it). Any ``ObjectStoragePath`` works the same (``s3://...`` with a
``conn_id``). Needs Playwright on the worker: ``pip install "airflow-provider-kernel[browser]"``.

Downloads: Playwright points a browser's downloads at a directory of its own when it connects; the task gives them
back to the browser's default directory (CDP ``Browser.setDownloadBehavior``, ``behavior: "default"``), which is
``/tmp/downloads`` in the emulator. Kernel's docs set ``behavior: "allow"`` with ``downloadPath: "/tmp/downloads"``
instead: use that on Kernel if its browsers' default directory differs.

The tests serve ``example_dags/site/`` on 127.0.0.1 and pass its URL as the ``site_url`` param.
"""

from __future__ import annotations

import os
from typing import Any

import pendulum

try:  # Airflow 3
    from airflow.sdk import DAG, Asset, Param, task
except ImportError:  # Airflow 2.x
    from airflow import DAG
    from airflow.datasets import Dataset as Asset
    from airflow.decorators import task
    from airflow.models.param import Param

LANDING_DIR = os.environ.get("KERNEL_EXAMPLE_LANDING_DIR", "/tmp/kernel-example-landing").rstrip("/")
PRICES = Asset(f"file://{LANDING_DIR}/prices.csv")

with DAG(
    dag_id="example_kernel_files",
    schedule=None,
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    tags=["kernel", "example"],
    doc_md=__doc__,
    params={"site_url": Param("http://127.0.0.1:8000/", type="string", description="the page offering the CSV")},
):

    @task.kernel_browser(
        headless=True, timeout_seconds=120, outlets=[PRICES], execution_timeout=pendulum.duration(minutes=5)
    )
    def download_prices(page: Any, kernel_files: Any, params: Any = None, outlet_events: Any = None) -> dict[str, Any]:
        """Download the site's price list in the Kernel browser and land it next to the asset's URI."""
        page.context.browser.new_browser_cdp_session().send("Browser.setDownloadBehavior", {"behavior": "default"})
        page.goto(params["site_url"])
        page.click("#prices-csv")
        kernel_files.wait_for(pattern="prices.csv", timeout=60)
        (landed,) = kernel_files.land(f"file://{LANDING_DIR}", pattern="prices.csv", max_bytes=1_000_000)
        outlet_events[PRICES].extra = {"sha256": landed["sha256"], "size": landed["size"]}
        return landed  # type: ignore[no-any-return]

    download_prices()
