"""URLs from Kernel or the connection: absolute http(s) (ws/wss for sockets) or dropped/refused; the URLs that
control a browser stay out of reprs and are registered with Airflow's secret masker (issue 25, findings 5 and 8).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from kernel_provider.client import KernelClient, KernelSettings
from kernel_provider.client.errors import KernelConnectionConfigError
from kernel_provider.client.models import Browser, Replay
from kernel_provider.client.transport import close_loop_resources
from tests.helpers import FAST_RETRY, conn_json
from tests.security.wire_servers import Answer, Seen, scripted

SESSION = "b" * 24
CDP = "wss://proxy.kernel.example/browser/cdp?jwt=control-token-1"
WEBDRIVER = "wss://proxy.kernel.example/browser/webdriver?jwt=control-token-2"
LIVE = "https://live.kernel.example/browser/live?jwt=control-token-3"
HOSTILE = [
    "javascript:alert(document.cookie)",
    "data:text/html,<script>x</script>",
    "/relative/path",
    "//no-scheme.x",
    "vbscript:x",
    "https://",
    "https://evil.example/\nMarking task as SUCCESS",
    "file:///etc/passwd",
    7,
]


@pytest.mark.parametrize("hostile", HOSTILE)
def test_hostile_urls_from_kernel_are_dropped_with_a_warning(hostile: Any, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        browser = Browser.from_api(
            {
                "session_id": SESSION,
                "browser_live_view_url": hostile,
                "cdp_ws_url": hostile,
                "webdriver_ws_url": hostile,
            }
        )
        replay = Replay.from_api({"replay_id": "r" * 24, "replay_view_url": hostile})
    assert (browser.browser_live_view_url, browser.cdp_ws_url, browser.webdriver_ws_url) == ("", "", "")
    assert replay.replay_view_url == ""
    assert caplog.text.count("is ignored") == 4
    assert str(hostile) not in caplog.text  # named by its key only


def test_each_url_takes_only_its_own_schemes() -> None:
    good = Browser.from_api(
        {"session_id": SESSION, "browser_live_view_url": LIVE, "cdp_ws_url": CDP, "webdriver_ws_url": WEBDRIVER}
    )
    assert (good.browser_live_view_url, good.cdp_ws_url, good.webdriver_ws_url) == (LIVE, CDP, WEBDRIVER)
    swapped = Browser.from_api({"session_id": SESSION, "browser_live_view_url": CDP, "cdp_ws_url": LIVE})
    assert (swapped.browser_live_view_url, swapped.cdp_ws_url) == ("", "")


def test_urls_that_control_a_browser_are_out_of_its_repr() -> None:
    browser = Browser.from_api(
        {"session_id": SESSION, "browser_live_view_url": LIVE, "cdp_ws_url": CDP, "webdriver_ws_url": WEBDRIVER}
    )
    text = repr(browser) + str(browser)
    assert SESSION in text and "control-token" not in text and "jwt" not in text


def _browser_kernel(seen: Seen) -> Answer:
    """A Kernel whose browsers carry one good control URL and one hostile live view."""
    item = {
        "session_id": SESSION,
        "cdp_ws_url": CDP,
        "webdriver_ws_url": WEBDRIVER,
        "browser_live_view_url": "javascript:alert(1)",
    }
    if seen.path.endswith("/replays"):
        return Answer(200, [{"replay_id": "r" * 24, "replay_view_url": "data:text/html,x"}])
    if seen.path.startswith("/invocations/"):
        return Answer(200, {"browsers": [item]})
    return Answer(200, item)


def test_over_the_wire_on_both_transports() -> None:
    with scripted(_browser_kernel) as server:
        client = KernelClient(KernelSettings.from_mapping(host=server.url, password="k"), retry=FAST_RETRY)

        async def run() -> tuple[list[Browser], list[Replay]]:
            try:
                return await client.alist_invocation_browsers("a" * 24), await client.alist_replays(SESSION)
            finally:
                await close_loop_resources()

        (browser,), (replay,) = asyncio.run(run())
        assert (browser.cdp_ws_url, browser.browser_live_view_url, replay.replay_view_url) == (CDP, "", "")
        (replay,) = client.list_replays(SESSION)
        assert replay.replay_view_url == ""


def _redact(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Airflow's ``redact``, its masker emptied for this test: earlier tests mask short keys (Airflow 2 masks even
    one letter), which would redact parts of the URLs below whatever the hook does."""
    try:
        from airflow.sdk._shared.secrets_masker import _secrets_masker, redact  # Airflow 3.1+
    except ImportError:
        try:
            from airflow.sdk.execution_time.secrets_masker import _secrets_masker, redact  # 3.0
        except ImportError:
            from airflow.utils.log.secrets_masker import _secrets_masker, redact  # Airflow 2
    masker = _secrets_masker()
    monkeypatch.setattr(masker, "patterns", set())
    monkeypatch.setattr(masker, "replacer", None)
    return redact


def test_the_hooks_register_control_urls_with_the_secret_masker(monkeypatch: pytest.MonkeyPatch) -> None:
    from kernel_provider.hooks.kernel_browser import KernelBrowserHook

    redact = _redact(monkeypatch)
    with scripted(_browser_kernel) as server:
        monkeypatch.setenv("AIRFLOW_CONN_KERNEL_DEFAULT", conn_json(server.url, "k-masked-test"))
        assert redact(f"connect to {CDP}") == f"connect to {CDP}"  # not known yet
        KernelBrowserHook(retry_policy=FAST_RETRY).get_browser(SESSION)
    assert CDP not in str(redact(f"connect to {CDP}")) and WEBDRIVER not in str(redact(WEBDRIVER))


@pytest.mark.parametrize("dashboard_url", ["javascript:alert(1)", "data:text/html,x", "dash.example.com", "/dash"])
def test_a_connection_with_a_hostile_dashboard_url_is_refused(
    dashboard_url: str, kernel_emulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kernel_provider.hooks.kernel import KernelHook

    monkeypatch.setenv(
        "AIRFLOW_CONN_KERNEL_DEFAULT",
        conn_json(kernel_emulator.url, kernel_emulator.token, dashboard_url=dashboard_url),
    )
    with pytest.raises(KernelConnectionConfigError, match=r"extra\.dashboard_url"):
        KernelHook().invocation_url("a" * 24)
    assert kernel_emulator.requests() == []
