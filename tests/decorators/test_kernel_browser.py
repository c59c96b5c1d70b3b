"""``@task.kernel_browser`` on real Airflow (``dag.test()``) against the emulator, each browser a real Chromium:
what the function receives, the live-view XCom and link, and bad options failing before any request. How the
browser ends when the task fails, times out, is killed or its worker dies: ``tests/test_browser_leak_audit.py``."""

from __future__ import annotations

import logging
from typing import Any

import httpx
import pytest

from kernel_provider.decorators import kernel_browser as decorator_module
from kernel_provider.decorators.kernel_browser import (
    XCOM_LIVE_VIEW_URL,
    XCOM_SESSION_ID,
    KernelBrowserLiveViewLink,
    kernel_browser_task,
)
from tests.airflow_helpers import all_logs, make_dag, run_dag, states, task, ti_map, xcom
from tests.helpers import live_page
from tests.kernel_browsers import SITE_PRODUCTS, live_browsers, needs_chromium, site_url

pytestmark = [*needs_chromium, pytest.mark.usefixtures("airflow_db")]
__all__ = ["site_url"]  # the fixture, imported for the tests below


def test_the_function_gets_a_connected_page_and_its_result_is_the_tasks(kernel_conn_env: Any, site_url: str) -> None:
    with make_dag("kb_page") as dag:

        @task.kernel_browser(headless=True, timeout_seconds=60)
        def scrape(url: str, page: Any) -> list[dict[str, Any]]:
            page.goto(url)
            page.wait_for_selector(".product")
            return [
                {
                    "sku": item.get_attribute("data-sku"),
                    "name": item.locator(".name").inner_text(),
                    "price": float(item.locator(".price").inner_text()),
                }
                for item in page.locator(".product").all()
            ]

        scrape(site_url)

    run = run_dag(dag)
    assert states(run) == {"scrape": "success"}
    assert xcom(run, "scrape") == SITE_PRODUCTS  # rendered by the page's script: a real browser read it
    session_id = xcom(run, "scrape", XCOM_SESSION_ID)
    live_view = xcom(run, "scrape", XCOM_LIVE_VIEW_URL)
    assert live_page(live_view) == f"{kernel_conn_env.url}/live/{session_id}"
    link_key = getattr(KernelBrowserLiveViewLink(), "xcom_key", None)  # Airflow 3 shows the link from this XCom
    if link_key:
        assert xcom(run, "scrape", link_key) == live_view
    assert live_browsers(kernel_conn_env) == 0
    assert kernel_conn_env.stats()["browser_sessions"]["ended"] == {"deleted": 1}
    assert [r["path"] for r in kernel_conn_env.requests(method="DELETE")] == [f"/browsers/{session_id}"]


def test_browser_model_cdp_url_and_async_functions(kernel_conn_env: Any) -> None:
    with make_dag("kb_inject") as dag:

        @task.kernel_browser(timeout_seconds=30)
        def described(kernel_browser: Any, cdp_url: str) -> list[Any]:
            return [kernel_browser.session_id, kernel_browser.cdp_ws_url == cdp_url, kernel_browser.timeout_seconds]

        @task.kernel_browser
        async def titled(page: Any) -> str:
            await page.set_content("<title>async works</title>")
            return str(await page.title())

        described()
        titled()

    run = run_dag(dag)
    assert states(run) == {"described": "success", "titled": "success"}
    session_id, same_url, timeout = xcom(run, "described")
    assert (session_id, same_url, timeout) == (xcom(run, "described", XCOM_SESSION_ID), True, 30)
    assert xcom(run, "titled") == "async works"
    assert live_browsers(kernel_conn_env) == 0


def test_without_playwright_the_function_gets_the_cdp_url_and_the_log_says_so(
    kernel_conn_env: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, capfd: Any
) -> None:
    monkeypatch.setattr(decorator_module, "playwright_available", lambda: False)
    with make_dag("kb_no_pw") as dag:

        @task.kernel_browser()
        def raw(page: Any) -> str:
            return str(page)

        raw()

    with caplog.at_level(logging.WARNING):
        run = run_dag(dag)
    assert states(run) == {"raw": "success"}
    assert xcom(run, "raw").startswith("ws://127.0.0.1:")
    logs = all_logs(caplog, capfd)
    assert "Playwright is not installed" in logs and "[browser]" in logs
    assert live_browsers(kernel_conn_env) == 0


def test_bad_options_fail_the_task_before_any_request(kernel_conn_env: Any) -> None:
    with make_dag("kb_bad") as dag:

        @task.kernel_browser(timeout_seconds=5)
        def never(page: Any) -> None:
            raise AssertionError("must not run")

        never()

    run = run_dag(dag)
    assert states(run) == {"never": "failed"}
    assert kernel_conn_env.requests() == []


def test_pool_is_the_airflow_pool_and_browser_pool_the_kernel_pool(kernel_conn_env: Any) -> None:
    from airflow.models.pool import Pool

    Pool.create_or_update_pool(name="kernel", slots=4, description="Kernel tasks", include_deferred=False)
    with httpx.Client(base_url=kernel_conn_env.url, headers={"Authorization": f"Bearer {kernel_conn_env.token}"}) as h:
        assert h.post("/browser_pools", json={"name": "scrapers", "size": 1}).status_code == 200
    with make_dag("kb_pools") as dag:

        @task.kernel_browser(pool="kernel", browser_pool="scrapers", acquire_timeout_seconds=10)
        def pooled(kernel_browser: Any) -> str | None:
            return kernel_browser.pool_name  # type: ignore[no-any-return]

        pooled()

    run = run_dag(dag)
    assert states(run) == {"pooled": "success"}
    assert {ti.pool for ti in ti_map(run).values()} == {"kernel"}  # ran in the Airflow pool
    assert xcom(run, "pooled") == "scrapers"  # the browser came from the Kernel pool
    assert [r["path"] for r in kernel_conn_env.requests(method="POST") if "/acquire" in r["path"]] == [
        "/browser_pools/scrapers/acquire"
    ]
    assert kernel_conn_env.stats()["browser_sessions"]["ended"] == {"released": 1}


@pytest.mark.parametrize("option", ["acquire_timeout_seconds", "reuse"])
def test_pool_options_without_browser_pool_are_refused_at_parse_time(option: str) -> None:
    with pytest.raises(TypeError, match=f"{option} applies only to a Kernel browser pool: pass browser_pool="):
        kernel_browser_task(lambda page: None, task_id="orphan", pool="kernel", **{option: 10})


def test_the_live_view_link_is_registered_and_named() -> None:
    decorated = kernel_browser_task(lambda page: None, task_id="linked")
    assert decorated.operator_class.operator_extra_links[0].name == "Kernel browser live view"
    assert KernelBrowserLiveViewLink().get_link(None, ti_key=None) == ""


def test_the_decorator_is_found_through_the_provider_info() -> None:
    from kernel_provider.get_provider_info import get_provider_info

    entries = {d["name"]: d["class-name"] for d in get_provider_info()["task-decorators"]}
    assert entries["kernel_browser"] == "kernel_provider.decorators.kernel_browser.kernel_browser_task"
    assert task.kernel_browser  # Airflow resolved it from the entry above
