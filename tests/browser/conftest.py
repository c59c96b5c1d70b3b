"""Harness of the browser tests: a real Airflow 3.3 api-server (plus scheduler, dag-processor, triggerer) with the
Kernel emulator, and Debian's Chromium driven by Playwright.

The Airflow side is ``BrowserAirflow`` (``tests/harness/airflow_browser.py``): the end-to-end harness with the
example DAG ``example_kernel_async_sensor``, the demo app gated in front of ``crawl_catalog``, connection testing
enabled, and the "Kernel invocation" link pointing at the emulator's ``/_emulator/invocations/{id}`` page.

Screenshots (and, for a failing test, the page's HTML) go to ``test-artifacts/browser/`` at the repository root.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness.airflow_browser import EXAMPLE_DAG_ID, BrowserAirflow
from tests.harness.base import running
from tests.harness.processes import AIRFLOW, AIRFLOW_VERSION

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "browser"
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
#: Flags for a closed network: no first-run UI, no background fetches (component updates, sync, safe browsing...).
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
CHROMIUM_INSTALL_HINT = "install it as root with: apt-get update && apt-get install -y chromium"
AIRFLOW_SKIP_REASON = (
    "browser tests need the Airflow 3.3 UI (React SPA served by the api-server, REST API v2); installed: "
    + ".".join(map(str, AIRFLOW_VERSION))
)


def chromium_candidates() -> list[str]:
    """``$KERNEL_BROWSER_CHROMIUM`` when set (only it), else Debian's paths."""
    override = os.environ.get("KERNEL_BROWSER_CHROMIUM")
    return [override] if override else list(CHROMIUM_CANDIDATES)


def find_chromium() -> str | None:
    for candidate in chromium_candidates():
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def save_screenshot(page: Any, name: str, *, full_page: bool = True) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    # animations="disabled": dialogs, accordions and toasts are captured in their final state, not mid-fade.
    page.screenshot(path=str(path), full_page=full_page, animations="disabled")
    return path


@pytest.fixture(scope="session")
def chromium_executable() -> str:
    """The Chromium to drive; the tests are skipped (with the reason in the summary) only when there is none."""
    if AIRFLOW_VERSION < (3, 3):
        pytest.skip(AIRFLOW_SKIP_REASON)
    chromium = find_chromium()
    if chromium is None:
        pytest.skip(f"Chromium not found at {' or '.join(chromium_candidates())}; {CHROMIUM_INSTALL_HINT}")
    return chromium


@pytest.fixture(scope="module")
def airflow_ui(chromium_executable: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrowserAirflow]:
    """Airflow 3.3 services + the Kernel emulator (demo app), the example DAG unpaused and one run triggered.

    The run is started here so it proceeds while the connection-form test drives the browser. (Depends on
    ``chromium_executable`` so that a missing browser skips before minutes are spent starting Airflow.)
    """
    if not AIRFLOW.exists():
        pytest.skip(f"no airflow executable next to {sys.executable}")
    with running(BrowserAirflow(tmp_path_factory.mktemp("airflow-browser")), audit=False) as af:
        af.wait_for_dag(EXAMPLE_DAG_ID, timeout=120)
        af.example_run_id = af.trigger(EXAMPLE_DAG_ID)
        yield af


# --- Chromium ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser_context(chromium_executable: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Debian's Chromium with a fresh profile (a persistent context: the user-data dir is ours, not a temp one
    Playwright picks)."""
    chromium = chromium_executable
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(
            "the browser tests need Playwright for Python: pip install playwright (in the test extras); "
            "never 'playwright install': the system Chromium is used",
            pytrace=False,
        )
    if ARTIFACTS.is_dir():  # stale screenshots of an earlier run would mislead
        for old in ARTIFACTS.iterdir():
            if old.is_file() and old.suffix in (".png", ".html", ".txt"):
                old.unlink()
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(profile),
            executable_path=chromium,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1440, "height": 1000},
            locale="en-US",
            timezone_id="UTC",
        )
        context.set_default_timeout(30_000)
        context.set_default_navigation_timeout(60_000)
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def screenshot() -> Any:
    """``screenshot(page, name)`` saves ``test-artifacts/browser/<name>.png`` and returns its path."""
    return save_screenshot


@pytest.fixture
def page(browser_context: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A fresh tab; when the test fails its screenshot and HTML are kept as ``FAILED-<test>.png/.html``."""
    tab = browser_context.new_page()
    console: list[str] = []
    tab.on("console", lambda msg: console.append(f"{msg.type}: {msg.text}"))
    tab.on("pageerror", lambda exc: console.append(f"pageerror: {exc}"))
    yield tab
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        try:
            name = f"FAILED-{request.node.name}"
            save_screenshot(tab, name)
            (ARTIFACTS / f"{name}.html").write_text(tab.content())
            (ARTIFACTS / f"{name}.console.txt").write_text("\n".join(console))
        except Exception as exc:  # the page may be gone; the failure itself matters more
            print(f"[browser] could not save the failure artifacts: {exc}")
    tab.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    """Keep each phase's report on the item (the ``page`` fixture saves artifacts of failed tests), and add the
    Airflow service log tails to a failing browser test's report."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)
    if report.failed and call.when == "call":
        af = getattr(item, "funcargs", {}).get("airflow_ui")
        if af is not None and hasattr(af, "diagnostics"):
            try:
                report.sections.append(("Airflow service logs (tails)", af.diagnostics()))
            except Exception as exc:
                report.sections.append(("Airflow service logs", f"could not collect: {exc}"))
