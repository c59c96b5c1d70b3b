"""``KernelBrowserHook.browser()`` against the emulator over HTTP, each browser a real Chromium: sync and async
blocks end their browser on success, error, kill and interrupted creates; never two browsers for one create;
bad options cost no request."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from kernel_provider.client.errors import KernelAmbiguousBrowserCreateError, KernelInputError
from kernel_provider.hooks.kernel_browser import KernelBrowserHook
from kernel_provider.testing import KernelEmulator
from tests.kernel_browsers import live_browsers, needs_chromium

pytestmark = needs_chromium


class Interrupted(BaseException):
    """What Airflow's execution_timeout (SIGALRM) or a kill raises in the task: not a Kernel error."""


def calls(emulator: KernelEmulator, method: str, route: str) -> int:
    return len(emulator.requests(path=route, method=method))


def cdp_answers(browser: Any) -> bool:
    """The browser's DevTools endpoint answers (``/json/version`` on the CDP host)."""
    host = browser.cdp_ws_url.split("/")[2]
    return httpx.get(f"http://{host}/json/version", timeout=5).status_code == 200


@pytest.fixture
def hook(kernel_conn_env: KernelEmulator) -> Iterator[KernelBrowserHook]:
    yield KernelBrowserHook()


def test_the_block_gets_a_connected_browser_and_deletes_it(hook: KernelBrowserHook, kernel_conn_env: Any) -> None:
    with hook.browser(headless=True, timeout_seconds=60, viewport=(1280, 800)) as browser:
        assert cdp_answers(browser)
        assert browser.timeout_seconds == 60 and browser.headless
        assert browser.browser_live_view_url == ""  # Kernel lists no live view for a headless browser
        assert live_browsers(kernel_conn_env) == 1
        assert hook.open_session_ids == [browser.session_id]
    assert live_browsers(kernel_conn_env) == 0
    assert hook.open_session_ids == []
    assert (calls(kernel_conn_env, "POST", "/browsers"), calls(kernel_conn_env, "DELETE", "/browsers/{id}")) == (1, 1)


def test_create_live_view_mints_read_and_control_urls_of_a_headful_browser(
    hook: KernelBrowserHook, kernel_conn_env: Any, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    from kernel_provider.client.errors import KernelBadRequestError, KernelInputError

    with caplog.at_level(logging.INFO), hook.browser(timeout_seconds=60) as browser:
        read = hook.create_live_view(session_id=browser.session_id, access="read", ttl_seconds=60)
        control = asyncio.run(hook.acreate_live_view(session_id=browser.session_id, access="control"))
        grants = kernel_conn_env.store.browser_sessions.live_views.by_token
        assert grants[read.url.rsplit("/", 1)[-1]].access == "read" and read.access == "read"
        assert read.expires_at is not None and control.expires_at is None
        assert grants[control.url.rsplit("/", 1)[-1]].access == "control"
        assert control.url not in repr(control)  # a credential stays out of reprs
        assert httpx.post(f"{read.url}/input", data={"text": "x"}).status_code == 403
        with pytest.raises(KernelInputError, match="ttl_seconds"):
            hook.create_live_view(session_id=browser.session_id, access="read", ttl_seconds=0)
        assert browser.browser_live_view_url not in caplog.text  # the listed (control) URL is never logged
    assert "headful (live view)" in caplog.text
    with hook.browser(headless=True) as headless, pytest.raises(KernelBadRequestError, match="headful"):
        hook.create_live_view(session_id=headless.session_id, access="read")


def test_an_exception_in_the_block_still_deletes_the_browser(hook: KernelBrowserHook, kernel_conn_env: Any) -> None:
    with pytest.raises(ZeroDivisionError), hook.browser() as browser:
        assert live_browsers(kernel_conn_env) == 1
        _ = 1 / 0
    assert live_browsers(kernel_conn_env) == 0
    assert kernel_conn_env.stats()["browser_sessions"]["ended"] == {"deleted": 1}
    assert browser.session_id


def test_async_blocks_create_and_delete_without_blocking(hook: KernelBrowserHook, kernel_conn_env: Any) -> None:
    async def main() -> list[str]:
        async def one() -> str:
            async with hook.browser(headless=True) as browser:
                await asyncio.sleep(0.2)
                return browser.session_id

        ids = await asyncio.gather(one(), one())
        with pytest.raises(RuntimeError):
            async with hook.browser():
                raise RuntimeError("the block fails")
        return list(ids)

    ids = asyncio.run(main())
    assert len(set(ids)) == 2
    assert live_browsers(kernel_conn_env) == 0
    assert kernel_conn_env.stats()["browser_sessions"]["ended"] == {"deleted": 3}


@pytest.mark.parametrize(
    ("options", "field"),
    [({"timeout_seconds": 3}, "timeout_seconds"), ({"pool": "p", "stealth": True}, "stealth")],
)
def test_bad_options_fail_before_any_request(
    hook: KernelBrowserHook, kernel_conn_env: Any, options: dict[str, Any], field: str
) -> None:
    with pytest.raises(KernelInputError) as info:
        hook.browser(**options)
    assert info.value.field == field
    assert kernel_conn_env.requests() == []


def test_an_unknown_option_fails_by_name_before_any_request(hook: KernelBrowserHook, kernel_conn_env: Any) -> None:
    with pytest.raises(TypeError, match="'gpu'"):
        hook.browser(gpu=True)  # type: ignore[call-arg]
    assert kernel_conn_env.requests() == []


def test_a_lost_create_answer_adopts_the_one_browser_created(hook: KernelBrowserHook, kernel_conn_env: Any) -> None:
    kernel_conn_env.set_faults({"rules": [{"route": "POST /browsers", "sequence": [{"drop": "after"}]}]})
    with hook.browser(headless=True) as browser:
        assert cdp_answers(browser)
    stats = kernel_conn_env.stats()["browser_sessions"]
    assert (stats["created"], stats["live"]) == (1, 0)  # created once, found by its marker, deleted
    assert calls(kernel_conn_env, "POST", "/browsers") == 1


def test_a_failed_launch_is_not_resent_and_leaves_nothing(hook: KernelBrowserHook, kernel_conn_env: Any) -> None:
    kernel_conn_env.set_faults({"rules": [{"route": "POST /browsers", "fault": {"browser_launch": "fail"}}]})
    with pytest.raises(KernelAmbiguousBrowserCreateError, match="none is running"), hook.browser():
        pytest.fail("the block must not run")
    assert calls(kernel_conn_env, "POST", "/browsers") == 1
    assert kernel_conn_env.stats()["browser_sessions"]["created"] == 0


def test_a_browser_that_died_meanwhile_ends_the_block_quietly(hook: KernelBrowserHook, kernel_conn_env: Any) -> None:
    kernel_conn_env.set_faults({"rules": [{"route": "POST /browsers", "sequence": [{"browser_launch": "crash"}]}]})
    with hook.browser():
        deadline = time.monotonic() + 20
        while live_browsers(kernel_conn_env) and time.monotonic() < deadline:
            time.sleep(0.1)
    assert kernel_conn_env.stats()["browser_sessions"]["ended"] == {"crashed": 1}


def test_close_all_from_a_kill_deletes_while_the_block_runs(hook: KernelBrowserHook, kernel_conn_env: Any) -> None:
    with hook.browser() as browser:
        killer = threading.Thread(target=hook.close_all)
        killer.start()
        killer.join()
        assert live_browsers(kernel_conn_env) == 0
    assert calls(kernel_conn_env, "DELETE", f"/browsers/{browser.session_id}") == 1  # the block's end sent none


def test_a_pool_browser_is_acquired_and_released(hook: KernelBrowserHook, kernel_conn_env: Any) -> None:
    with httpx.Client(base_url=kernel_conn_env.url, headers={"Authorization": f"Bearer {kernel_conn_env.token}"}) as h:
        assert h.post("/browser_pools", json={"name": "scrapers", "size": 1}).status_code == 200
    with hook.browser(pool="scrapers", acquire_timeout_seconds=10) as browser:
        assert browser.pool_name == "scrapers" and cdp_answers(browser)
    assert live_browsers(kernel_conn_env) == 0
    assert kernel_conn_env.stats()["browser_sessions"]["ended"] == {"released": 1}
    assert calls(kernel_conn_env, "POST", "/browser_pools/{id}/release") == 1


def test_a_create_interrupted_mid_request_is_found_and_deleted(hook: KernelBrowserHook, kernel_conn_env: Any) -> None:
    """An execution_timeout (SIGALRM) that lands while POST /browsers is out: Kernel creates the browser after
    the task stopped listening; the hook finds it by its marker and deletes it."""
    kernel_conn_env.set_faults({"rules": [{"route": "POST /browsers", "sequence": [{"browser_launch": "slow"}]}]})

    def interrupt(signum: int, frame: Any) -> None:
        raise Interrupted()

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 0.5)
    try:
        with pytest.raises(Interrupted), hook.browser():
            pytest.fail("the block must not run")
    finally:
        signal.signal(signal.SIGALRM, previous)
    stats = kernel_conn_env.stats()["browser_sessions"]
    assert (stats["created"], stats["live"], stats["ended"]) == (1, 0, {"deleted": 1})
