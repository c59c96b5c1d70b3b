"""``@task.kernel_browser`` on real Airflow (``dag.test()``) against the emulator, each browser a real Chromium:
what the function receives, the live-view XCom and link, and bad options failing before any request. How the
browser ends when the task fails, times out, is killed or its worker dies: ``tests/test_browser_leak_audit.py``."""

from __future__ import annotations

import logging
from typing import Any

import httpx
import pytest

from kernel_provider.decorators import kernel_browser as decorator_module
from kernel_provider.decorators.kernel_browser import kernel_browser_task
from kernel_provider.links import XCOM_BROWSER_LIVE_VIEW_URL, XCOM_BROWSER_SESSION_ID, KernelBrowserLiveViewLink
from tests.airflow_helpers import all_logs, make_dag, run_dag, states, task, ti_map, xcom
from tests.kernel_browsers import LIVE_VIEW_ROUTE, SITE_PRODUCTS, grant_of, live_browsers, needs_chromium

pytestmark = [*needs_chromium, pytest.mark.usefixtures("airflow_db")]


def error_lines(caplog: pytest.LogCaptureFixture, capfd: Any) -> list[str]:
    """Every ERROR line of the run: Python log records and the lines Airflow 3's structlog printed."""
    printed = capfd.readouterr()
    lines = [line for text in (printed.out, printed.err) for line in text.splitlines() if "[error" in line]
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] + lines


def test_the_function_gets_a_connected_page_and_its_result_is_the_tasks(
    kernel_conn_env: Any, site_url: str, caplog: pytest.LogCaptureFixture, capfd: Any
) -> None:
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

    with caplog.at_level(logging.INFO):
        run = run_dag(dag)
    assert states(run) == {"scrape": "success"}
    assert error_lines(caplog, capfd) == []  # the README's example logs no ERROR (no "XCom not found" for a link)
    assert xcom(run, "scrape") == SITE_PRODUCTS  # rendered by the page's script: a real browser read it
    session_id = xcom(run, "scrape", XCOM_BROWSER_SESSION_ID)
    # Headless: Kernel lists no live view and serves the route only for headful browsers; nothing is published.
    assert xcom(run, "scrape", XCOM_BROWSER_LIVE_VIEW_URL) is None
    assert kernel_conn_env.requests(route=LIVE_VIEW_ROUTE) == []
    assert live_browsers(kernel_conn_env) == 0
    assert kernel_conn_env.stats()["browser_sessions"]["ended"] == {"deleted": 1}
    assert [r["path"] for r in kernel_conn_env.requests(method="DELETE")] == [f"/browsers/{session_id}"]


def test_a_headful_browser_publishes_a_read_only_url_for_the_tasks_time(
    kernel_conn_env: Any, caplog: pytest.LogCaptureFixture, capfd: Any
) -> None:
    from datetime import timedelta

    import httpx

    with make_dag("kb_read") as dag:

        @task.kernel_browser(timeout_seconds=30, execution_timeout=timedelta(seconds=90))
        def watched(kernel_browser: Any) -> str:
            return str(kernel_browser.browser_live_view_url)

        watched()

    run = run_dag(dag)
    assert states(run) == {"watched": "success"}
    listed, url = xcom(run, "watched"), xcom(run, "watched", XCOM_BROWSER_LIVE_VIEW_URL)
    grant = grant_of(kernel_conn_env, url)
    assert (grant.session_id, grant.access) == (xcom(run, "watched", XCOM_BROWSER_SESSION_ID), "read")
    # No longer than execution_timeout, counted from the mint request at the latest (the task starts after it).
    from kernel_provider.testing.timeutil import parse_timestamp_ns

    (mint,) = kernel_conn_env.requests(route=LIVE_VIEW_ROUTE)
    assert grant.expires_ns <= parse_timestamp_ns(mint["time"]) + 91 * 10**9
    link_key = getattr(KernelBrowserLiveViewLink(), "xcom_key", None)  # Airflow 3 shows the link from this XCom
    if link_key:
        assert xcom(run, "watched", link_key) == url
    logs = all_logs(caplog, capfd)
    assert f"Kernel live view of browser {grant.session_id}: {url}" in logs
    assert listed not in logs  # the listed URL steers the browser: never logged
    assert len(kernel_conn_env.requests(route=LIVE_VIEW_ROUTE)) == 1
    # Before the browser is deleted the read URL takes no input; after, it is refused altogether.
    assert httpx.post(f"{url}/input", data={"text": "x"}).status_code in (403, 410)


def test_control_publishes_a_masked_control_url_and_off_publishes_nothing(kernel_conn_env: Any) -> None:
    from airflow.providers.common.compat.sdk import redact

    with make_dag("kb_modes") as dag:

        @task.kernel_browser(timeout_seconds=30, live_view="control")
        def steered(kernel_browser: Any) -> None:
            return None

        @task.kernel_browser(timeout_seconds=30, live_view=False)
        def unseen(kernel_browser: Any) -> None:
            return None

        steered()
        unseen()

    run = run_dag(dag)
    assert states(run) == {"steered": "success", "unseen": "success"}
    url = xcom(run, "steered", XCOM_BROWSER_LIVE_VIEW_URL)
    assert grant_of(kernel_conn_env, url).access == "control"
    assert redact(f"see {url}") == "see ***"
    assert xcom(run, "unseen", XCOM_BROWSER_LIVE_VIEW_URL) is None
    assert len(kernel_conn_env.requests(route=LIVE_VIEW_ROUTE)) == 1  # the control one only


def test_a_failed_browser_create_logs_no_xcom_error(
    kernel_conn_env: Any, caplog: pytest.LogCaptureFixture, capfd: Any
) -> None:
    kernel_conn_env.set_faults([{"route": "POST /browsers", "fault": {"browser_launch": "fail"}}])
    with make_dag("kb_no_browser") as dag:

        @task.kernel_browser(headless=True, timeout_seconds=30, retries=0)
        def never(page: Any) -> None:
            raise AssertionError("must not run")

        never()

    with caplog.at_level(logging.INFO):
        run = run_dag(dag)
    assert states(run) == {"never": "failed"}
    errors = error_lines(caplog, capfd)
    assert errors, "the task's own failure is reported"
    assert [line for line in errors if "XCom not found" in line] == []


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
    assert (session_id, same_url, timeout) == (xcom(run, "described", XCOM_BROWSER_SESSION_ID), True, 30)
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


def test_kernel_files_lands_a_real_download_while_the_browser_lives(
    kernel_conn_env: Any, site_url: str, tmp_path: Any
) -> None:
    import hashlib
    from pathlib import Path

    with make_dag("kb_files") as dag:

        @task.kernel_browser(headless=True, timeout_seconds=60)
        def fetch(url: str, landing: str, page: Any, kernel_files: Any) -> list[dict[str, Any]]:
            page.context.browser.new_browser_cdp_session().send("Browser.setDownloadBehavior", {"behavior": "default"})
            page.goto(url)
            page.click("#prices-csv")
            assert [f.name for f in kernel_files.wait_for(pattern="*.csv")] == ["prices.csv"]
            return kernel_files.land(landing, pattern="*.csv")  # type: ignore[no-any-return]

        fetch(site_url, f"file://{tmp_path}")

    run = run_dag(dag)
    assert states(run) == {"fetch": "success"}
    expected = (Path(__file__).parents[2] / "example_dags/site/prices.csv").read_bytes()
    (landed,) = xcom(run, "fetch")
    assert landed["sha256"] == hashlib.sha256(expected).hexdigest() and landed["size"] == len(expected)
    assert (tmp_path / "prices.csv").read_bytes() == expected and len(list(tmp_path.iterdir())) == 1
    assert live_browsers(kernel_conn_env) == 0
