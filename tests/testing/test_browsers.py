"""The emulator's standalone browsers and pools over real HTTP, each browser a real Chromium: Kernel's routes and
checks, CDP that Playwright really connects to, the idle timeout, the ``browser_launch`` faults and the stats."""

from __future__ import annotations

import os
import time
from typing import Any

import httpx
import pytest

from kernel_provider.testing import KernelEmulator
from tests.kernel_browsers import chromium_running, live_browsers, needs_chromium

pytestmark = needs_chromium


def wait_for(predicate: Any, what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.1)
    return value


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def chromium_pids(emulator: KernelEmulator) -> list[int]:
    return [s.process.pid for s in emulator.store.browser_sessions.live.values()]


def test_create_list_get_delete_and_cdp_really_connects(http: httpx.Client, kernel_emulator: KernelEmulator) -> None:
    from playwright.sync_api import sync_playwright

    created = http.post("/browsers", json={"headless": True, "timeout_seconds": 30})
    assert created.status_code == 200, created.text
    browser = created.json()
    assert {"session_id", "created_at", "cdp_ws_url", "webdriver_ws_url", "headless", "stealth"} <= set(browser)
    assert browser["browser_live_view_url"] is None  # Kernel lists no live view for a headless browser
    session_id = browser["session_id"]
    assert [b["session_id"] for b in http.get("/browsers").json()] == [session_id]
    assert http.get(f"/browsers/{session_id}").json()["timeout_seconds"] == 30
    assert live_browsers(kernel_emulator) == 1 and kernel_emulator.stats()["browsers_live"] == 1

    with sync_playwright() as pw:
        connected = pw.chromium.connect_over_cdp(browser["cdp_ws_url"])
        page = connected.contexts[0].new_page()
        page.set_content("<p id='x'>from a real Chromium</p>")
        assert page.inner_text("#x") == "from a real Chromium"
        connected.close()

    (pid,) = chromium_pids(kernel_emulator)
    assert http.delete(f"/browsers/{session_id}").status_code == 204
    assert not pid_alive(pid) or wait_for(lambda: not pid_alive(pid), "Chromium to exit")
    assert http.delete(f"/browsers/{session_id}").status_code == 404
    assert http.get(f"/browsers/{session_id}").status_code == 404
    assert http.get(f"/browsers/{session_id}", params={"include_deleted": "true"}).json()["deleted_at"]
    assert http.get("/browsers").json() == []
    assert [b["session_id"] for b in http.get("/browsers", params={"status": "deleted"}).json()] == [session_id]
    stats = kernel_emulator.stats()["browser_sessions"]
    assert (stats["live"], stats["created"], stats["ended"]) == (0, 1, {"deleted": 1})


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"timeout_seconds": 5}, "timeout_seconds"),
        ({"headless": "yes"}, "headless"),
        ({"viewport": {"width": 100, "height": 800}}, "width"),
        ({"profile": {}}, "profile"),
    ],
)
def test_bad_requests_are_refused_like_kernel_does(
    http: httpx.Client, kernel_emulator: KernelEmulator, body: dict[str, Any], problem: str
) -> None:
    refused = http.post("/browsers", json=body)
    assert refused.status_code == 400 and refused.json()["code"] == "bad_request"
    assert problem in refused.json()["message"]
    assert kernel_emulator.stats()["browser_sessions"]["created"] == 0


def test_a_browser_without_a_cdp_connection_ends_after_its_timeout(
    http: httpx.Client, kernel_emulator: KernelEmulator
) -> None:
    from playwright.sync_api import sync_playwright

    # 20 s: the connect below must come within the timeout, and a loaded CI machine has taken over 10 s for it.
    browser = http.post("/browsers", json={"headless": True, "timeout_seconds": 20}).json()
    with sync_playwright() as pw:
        connected = pw.chromium.connect_over_cdp(browser["cdp_ws_url"])
        time.sleep(22)  # longer than the timeout: a connected browser is active, so it lives on
        assert live_browsers(kernel_emulator) == 1
        connected.close()
    wait_for(lambda: live_browsers(kernel_emulator) == 0, "the idle browser to end", timeout=30)
    assert kernel_emulator.stats()["browser_sessions"]["ended"] == {"timeout": 1}
    assert chromium_running(kernel_emulator) == 0


def test_pool_acquire_waits_for_a_release_and_answers_204_meanwhile(
    http: httpx.Client, kernel_emulator: KernelEmulator
) -> None:
    pool = http.post("/browser_pools", json={"name": "scrapers", "size": 1, "timeout_seconds": 60}).json()
    first = http.post("/browser_pools/scrapers/acquire", json={"acquire_timeout_seconds": 5})
    assert first.status_code == 200 and first.json()["pool"] == {"id": pool["id"], "name": "scrapers"}
    assert http.post("/browser_pools/scrapers/acquire", json={"acquire_timeout_seconds": 1}).status_code == 204
    assert http.get("/browser_pools/scrapers").json()["acquired_count"] == 1
    released = http.post("/browser_pools/scrapers/release", json={"session_id": first.json()["session_id"]})
    assert released.status_code == 204
    assert live_browsers(kernel_emulator) == 0
    second = http.post(f"/browser_pools/{pool['id']}/acquire", json={"acquire_timeout_seconds": 5})
    assert second.status_code == 200 and second.json()["session_id"] != first.json()["session_id"]
    assert http.post("/browser_pools/nope/acquire", json={}).status_code == 404


def test_launch_faults_fail_or_crash_the_browser(http: httpx.Client, kernel_emulator: KernelEmulator) -> None:
    kernel_emulator.set_faults({"rules": [{"route": "POST /browsers", "sequence": [{"browser_launch": "fail"}]}]})
    failed = http.post("/browsers", json={})
    assert (failed.status_code, failed.json()["code"]) == (500, "browser_launch_failed")
    assert kernel_emulator.stats()["browser_sessions"]["created"] == 0

    kernel_emulator.set_faults({"rules": [{"route": "POST /browsers", "sequence": [{"browser_launch": "crash"}]}]})
    crashed = http.post("/browsers", json={})
    assert crashed.status_code == 200
    wait_for(lambda: live_browsers(kernel_emulator) == 0, "the crashed browser to be noticed")
    assert kernel_emulator.stats()["browser_sessions"]["ended"] == {"crashed": 1}
    assert http.get(f"/browsers/{crashed.json()['session_id']}").status_code == 404


def test_stopping_the_emulator_kills_every_chromium(kernel_emulator_factory: Any) -> None:
    emulator = kernel_emulator_factory()
    with httpx.Client(base_url=emulator.url, headers={"Authorization": f"Bearer {emulator.token}"}) as http:
        for _ in range(2):
            assert http.post("/browsers", json={"headless": True}).status_code == 200
    pids = chromium_pids(emulator)
    assert len(pids) == 2 and all(pid_alive(p) for p in pids)
    emulator.stop()
    assert not [p for p in pids if pid_alive(p)]


def test_beyond_the_browser_limit_a_create_is_refused_with_429(
    http: httpx.Client, kernel_emulator: KernelEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KERNEL_EMULATOR_MAX_BROWSERS", "1")
    assert http.post("/browsers", json={}).status_code == 200
    refused = http.post("/browsers", json={})
    assert (refused.status_code, refused.json()["code"]) == (429, "rate_limited")
    assert "concurrent browser limit" in refused.json()["message"]
    assert kernel_emulator.stats()["browser_sessions"]["created"] == 1
