"""Live view and replays (kernel_provider/client/browser_watch.py) in real DAG runs against the emulator: each browser's
read-only live-view URL minted, logged once and linked (never the listed control URL), its TTL, ``live_view``'s
"control" and off, the fallback where Kernel lacks the route, the request cost, and a failed run's replays."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import httpx
import pytest

from kernel_provider.links import XCOM_LIVE_VIEW_URL, KernelLiveViewLink
from kernel_provider.operators.kernel import KernelInvokeOperator
from kernel_provider.sensors.kernel import KernelInvocationSensor
from kernel_provider.testing.timeutil import parse_timestamp_ns
from tests.airflow_helpers import (
    AF2,
    all_logs,
    make_dag,
    run_dag,
    states,
    ti_map,
    xcom,
)
from tests.helpers import EVENTS, count_requests, seen, wait_until
from tests.kernel_browsers import LIVE_VIEW_ROUTE, grant_of

pytestmark = pytest.mark.usefixtures("airflow_db")

BROWSERS = "/invocations/{id}/browsers"
REPLAYS = "/browsers/{id}/replays"
LIVE_LINE = re.compile(r"Kernel live view of browser (\w+): (\S+)")
#: What Airflow 3's task log does to anything that looks like a JWT; the live-view URLs of Kernel and of the
#: emulator carry one (``?jwt=``), so their logged form is redacted.
JWT = re.compile(r"eyJ[.A-Za-z0-9_-]+")


def as_logged(url: str) -> str:
    """A URL as it may appear in a task log: its JWT redacted (Airflow 3) or whole (Airflow 2)."""
    return JWT.sub("eyJ***", url)


def refuses_input(url: str) -> bool:
    """Whether the page behind ``url`` refuses input (403), whatever its query says."""
    return httpx.post(f"{url}/input", params={"readOnly": "false"}, data={"text": "x"}).status_code == 403


def live_lines(caplog: Any, capfd: Any) -> list[tuple[str, str]]:
    """The (session, URL) pairs logged, from one source only (see ``kernel_lines``): none counted twice."""
    found = [m.groups() for r in caplog.records for m in [LIVE_LINE.search(r.getMessage())] if m]
    return [(session, as_logged(url)) for session, url in found or LIVE_LINE.findall(capfd.readouterr().out)]


def browsers_of(emulator: Any) -> list[dict[str, Any]]:
    (inv,) = emulator.invocations()
    return list(inv["_emulator"]["browsers"])


def assert_link(dr: Any, task_id: str, url: str) -> None:
    """The "Kernel live view" button of the task opens ``url``."""
    link = KernelLiveViewLink()
    if AF2:
        ti = ti_map(dr)[task_id]
        assert link.get_link(ti.task if getattr(ti, "task", None) else None, ti_key=ti.key) == url
    else:
        # Airflow 3's UI reads the link's XCom: pushed by the wait, and by Airflow itself when the task ends.
        assert xcom(dr, task_id, key=link.xcom_key) == url
    assert link.get_link(None) == ""


def gate_dag(gate: Any, **op_kwargs: Any) -> Any:
    op_kwargs.setdefault("poll_interval", 0.1)
    with make_dag("live_view") as dag:
        KernelInvokeOperator(task_id="invoke", app_name="gate", action_name="wait", **op_kwargs)
    return dag


@pytest.mark.parametrize("deferrable", [True, False], ids=["deferred", "worker"])
def test_each_browser_logged_once_and_the_link_opens_the_first(gated_kernel, caplog, capfd, deferrable):
    gate = gated_kernel.gate()
    # The action opens two browsers and says so in its log; the wait lists once at its start and once for the line.
    opened = gate.open_when(seen(gated_kernel, BROWSERS, at_least=2), "the wait to list the run's browsers twice")
    payload = gate.payload(browsers=2, say=["opened the browser"], result={"ok": True})
    dr = run_dag(gate_dag(gate, payload=payload, deferrable=deferrable))
    opened()
    assert states(dr) == {"invoke": "success"}
    browsers = browsers_of(gated_kernel)
    logged = live_lines(caplog, capfd)
    assert sorted({session for session, _ in logged}) == sorted(b["session_id"] for b in browsers)
    assert len(logged) == len(set(logged)), "a live-view URL was logged twice"
    for session, url in logged:  # each a read-only URL Kernel minted for that browser: it takes no input
        assert (grant_of(gated_kernel, url).session_id, grant_of(gated_kernel, url).access) == (session, "read")
        assert refuses_input(url)
    logs = all_logs(caplog, capfd)
    assert not [b for b in browsers if b["browser_live_view_url"] in logs], "a control URL reached the log"
    first = xcom(dr, "invoke", key=XCOM_LIVE_VIEW_URL)
    assert (grant_of(gated_kernel, first).session_id, grant_of(gated_kernel, first).access) == (
        browsers[0]["session_id"],
        "read",
    )
    assert_link(dr, "invoke", first)
    # The cost: one list at the start and one for the log line (a third only if the first came before the browsers
    # existed and the line took over FIRST_INTERVAL to arrive), one URL per browser; no replay lookups for a run
    # that succeeded.
    assert 2 <= count_requests(gated_kernel, BROWSERS) <= 3
    assert count_requests(gated_kernel, LIVE_VIEW_ROUTE, "POST") == 2
    assert count_requests(gated_kernel, REPLAYS) == 0


@pytest.mark.parametrize("off", [False, "off"])
def test_live_view_off_publishes_nothing_and_sends_no_browser_request(gated_kernel, caplog, capfd, off):
    gate = gated_kernel.gate()
    opened = gate.open_when(seen(gated_kernel, EVENTS), "the trigger to follow the stream")
    payload = gate.payload(browsers=1, say=["browser"])
    dr = run_dag(gate_dag(gate, payload=payload, deferrable=True, live_view=off, track_usage=False))
    opened()
    assert states(dr) == {"invoke": "success"}
    assert count_requests(gated_kernel, BROWSERS) == 0
    assert count_requests(gated_kernel, LIVE_VIEW_ROUTE, "POST") == 0
    assert xcom(dr, "invoke", key=XCOM_LIVE_VIEW_URL) is None
    assert "Kernel live view" not in all_logs(caplog, capfd)


@pytest.mark.parametrize(("timeout", "ttl_at_most"), [(30, 30), (None, 3600)], ids=["timeout", "no-deadline"])
def test_the_url_lasts_no_longer_than_the_task_may_wait(gated_kernel, timeout, ttl_at_most):
    import time

    gate = gated_kernel.gate()
    opened = gate.open_when(seen(gated_kernel, LIVE_VIEW_ROUTE, method="POST"), "the wait to mint a live view")
    started = time.time()
    dr = run_dag(gate_dag(gate, payload=gate.payload(browsers=1), deferrable=True, timeout=timeout))
    opened()
    assert states(dr) == {"invoke": "success"}
    grant = grant_of(gated_kernel, xcom(dr, "invoke", key=XCOM_LIVE_VIEW_URL))
    assert grant.expires_ns is not None
    # The deadline (or the cap) bounds ttl_seconds, counted from when the URL was minted (a slow dag.test() start,
    # as on Airflow 3.1, comes before it and before the deadline is set).
    (mint,) = gated_kernel.requests(route=LIVE_VIEW_ROUTE, method="POST")
    assert grant.expires_ns <= parse_timestamp_ns(mint["time"]) + (ttl_at_most + 1) * 10**9
    assert grant.expires_ns / 1e9 > started + min(ttl_at_most, 30) - 10


def test_an_expired_url_is_refused(gated_kernel):
    """A task with 10 s to wait mints a URL that works for at most 10 s: afterwards Kernel refuses it. (10 s, not
    less: on a loaded machine the wait may reach its first browser listing seconds after the create, and with no
    time left it mints nothing.)"""
    gate = gated_kernel.gate()
    opened = gate.open_when(seen(gated_kernel, LIVE_VIEW_ROUTE, method="POST"), "the wait to mint a live view")
    dr = run_dag(gate_dag(gate, payload=gate.payload(browsers=1, max_seconds=30), deferrable=False, timeout=10))
    opened()
    url = xcom(dr, "invoke", key=XCOM_LIVE_VIEW_URL)
    assert grant_of(gated_kernel, url).access == "read"
    assert grant_of(gated_kernel, url).expires_ns is not None
    wait_until(lambda: httpx.get(url).status_code == 410, "the URL to expire", timeout=30)


@pytest.mark.parametrize("deferrable", [True, False], ids=["deferred", "worker"])
def test_control_opts_into_a_control_url_that_is_masked_and_never_logged(gated_kernel, caplog, capfd, deferrable):
    from airflow.providers.common.compat.sdk import redact

    gate = gated_kernel.gate()
    opened = gate.open_when(seen(gated_kernel, LIVE_VIEW_ROUTE, method="POST"), "the wait to mint a live view")
    dr = run_dag(gate_dag(gate, payload=gate.payload(browsers=1), deferrable=deferrable, live_view="control"))
    opened()
    assert states(dr) == {"invoke": "success"}
    url = xcom(dr, "invoke", key=XCOM_LIVE_VIEW_URL)
    logs = all_logs(caplog, capfd)  # the run's, before this test's own request below is logged
    assert url not in logs and "Kernel live view (control) of browser" in logs
    assert grant_of(gated_kernel, url).access == "control"
    assert httpx.post(f"{url}/input", data={"text": "x"}).status_code == 204  # it does steer the browser
    assert redact(f"see {url}") == "see ***"  # registered with the secret masker


def test_where_kernel_lacks_the_route_the_listed_url_gets_read_only_and_one_warning(gated_kernel, caplog, capfd):
    import logging

    gated_kernel.set_faults([{"route": "POST /browsers/{id}/live_view", "fault": {"status": 404}}])
    gate = gated_kernel.gate()
    opened = gate.open_when(seen(gated_kernel, BROWSERS, at_least=2), "the wait to list the run's browsers twice")
    payload = gate.payload(browsers=2, say=["opened the browser"])
    with caplog.at_level(logging.WARNING):
        dr = run_dag(gate_dag(gate, payload=payload, deferrable=True))
    opened()
    assert states(dr) == {"invoke": "success"}
    browsers = browsers_of(gated_kernel)
    assert count_requests(gated_kernel, LIVE_VIEW_ROUTE, "POST", status=404) == 2  # one per browser
    listed = browsers[0]["browser_live_view_url"]  # it carries its signed token: readOnly joins the query
    assert xcom(dr, "invoke", key=XCOM_LIVE_VIEW_URL) == listed + ("&" if "?" in listed else "?") + "readOnly=true"
    warned = [r for r in caplog.records if "NOT a credential-safe read-only URL" in r.getMessage()]
    count = len(warned) or capfd.readouterr().out.count("NOT a credential-safe read-only URL")
    assert count == 1 and all(r.levelno == logging.WARNING for r in warned)


def test_a_headless_browser_publishes_nothing_and_logs_no_error(gated_kernel, caplog, capfd):
    import logging

    gate = gated_kernel.gate()
    opened = gate.open_when(seen(gated_kernel, BROWSERS, at_least=2), "the wait to list the run's browsers twice")
    payload = gate.payload(browsers=1, headless=True, say=["opened the browser"])
    with caplog.at_level(logging.INFO):
        dr = run_dag(gate_dag(gate, payload=payload, deferrable=True))
    opened()
    assert states(dr) == {"invoke": "success"}
    assert count_requests(gated_kernel, LIVE_VIEW_ROUTE, "POST") == 0  # Kernel serves it for headful ones only
    assert xcom(dr, "invoke", key=XCOM_LIVE_VIEW_URL) is None
    assert "has no live view (headless)" in all_logs(caplog, capfd)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


@pytest.mark.parametrize("deferrable", [True, False], ids=["deferred", "worker"])
def test_failed_run_logs_its_replays(gated_kernel, caplog, capfd, deferrable):
    gate = gated_kernel.gate()
    opened = gate.open_when(seen(gated_kernel, BROWSERS, at_least=2), "the wait to list the run's browsers")
    payload = gate.payload(browsers=1, record=True, say=["browser up"], fail="selector #buy not found")
    dr = run_dag(gate_dag(gate, payload=payload, deferrable=deferrable, retries=0))
    opened()
    assert states(dr) == {"invoke": "failed"}
    (browser,) = browsers_of(gated_kernel)
    assert count_requests(gated_kernel, REPLAYS) == 1  # one lookup per browser seen, only because the run failed
    (replay,) = httpx.get(
        f"{gated_kernel.url}/browsers/{browser['session_id']}/replays",
        headers={"Authorization": f"Bearer {gated_kernel.token}"},
    ).json()
    logs = all_logs(caplog, capfd)
    assert f"Kernel replay {replay['replay_id']} of browser {browser['session_id']}" in logs
    assert as_logged(replay["replay_view_url"]) in as_logged(logs)
    assert "selector #buy not found" in logs  # the failure itself is still what fails the task


def test_sensor_sets_the_live_view_link(gated_kernel, caplog, capfd):
    gate = gated_kernel.gate()
    opened = gate.open_when(seen(gated_kernel, BROWSERS, at_least=2), "the sensor's wait to list browsers twice")
    with make_dag("live_view_sensor") as dag:
        invoke = KernelInvokeOperator(
            task_id="invoke",
            app_name="gate",
            action_name="wait",
            payload=gate.payload(browsers=1, say=["browser up"]),
            wait_for_completion=False,
        )
        KernelInvocationSensor(
            task_id="watch", invocation_id=invoke.output, deferrable=True, start_from_trigger=False, poke_interval=0.1
        )
    dr = run_dag(dag)
    opened()
    assert states(dr) == {"invoke": "success", "watch": "success"}
    (browser,) = browsers_of(gated_kernel)
    url = xcom(dr, "watch", key=XCOM_LIVE_VIEW_URL)
    assert (grant_of(gated_kernel, url).session_id, grant_of(gated_kernel, url).access) == (
        browser["session_id"],
        "read",
    )
    assert refuses_input(url)
    assert_link(dr, "watch", url)
    assert (browser["session_id"], url) in live_lines(caplog, capfd)


def client_hook(emulator: Any) -> Any:
    """The hook's two async methods the watch uses, straight to a client of the emulator (no Airflow connection)."""
    from kernel_provider.client.browsers import BrowserApi
    from kernel_provider.client.client import KernelClient
    from kernel_provider.client.settings import KernelSettings

    client = KernelClient(KernelSettings.from_mapping(host=emulator.url, password=emulator.token))

    class Hook:
        alist_invocation_browsers = client.alist_invocation_browsers
        alist_replays = client.alist_replays
        acreate_live_view = BrowserApi(client).alive_view

    return Hook()


def start_browse(emulator: Any, **payload: Any) -> str:
    import json

    created = httpx.post(
        f"{emulator.url}/invocations",
        headers={"Authorization": f"Bearer {emulator.token}"},
        json={
            "app_name": "demo",
            "action_name": "browse",
            "version": "latest",
            "async": True,
            "payload": json.dumps(payload),
        },
    ).json()
    return str(created["id"])


async def watch_for(watch: Any, seconds: float) -> None:
    watch.start()
    await asyncio.sleep(seconds)
    await watch.stop()


def test_the_schedule_backs_off_and_ends_while_no_browser_is_known(kernel_emulator, monkeypatch):
    """No browser: lists at 0, then after 0.1, 0.2, 0.4 s, then none (intervals shrunk for the test): a long run
    without browsers costs 1 + MAX_SCHEDULED_LISTS lists. Exact: the watch runs well past its last scheduled list."""
    import logging

    from kernel_provider.client import browser_watch as live_view

    monkeypatch.setattr(live_view, "FIRST_INTERVAL", 0.1)
    monkeypatch.setattr(live_view, "BACKOFF", 2.0)
    monkeypatch.setattr(live_view, "MAX_SCHEDULED_LISTS", 3)
    monkeypatch.setattr(live_view, "HINT_MIN_GAP", 0.0)
    inv_id = start_browse(kernel_emulator, count=0, seconds=30)
    watch = live_view.BrowserWatch(client_hook(kernel_emulator), inv_id, logging.getLogger("test.live_view"))
    asyncio.run(watch_for(watch, 3.0))  # the last scheduled list is due 0.7 s in
    lists = count_requests(kernel_emulator, BROWSERS)
    assert lists == watch.lists == 4


def test_the_schedule_stops_once_a_browser_is_known(kernel_emulator, monkeypatch):
    import logging

    from kernel_provider.client import browser_watch as live_view

    monkeypatch.setattr(live_view, "FIRST_INTERVAL", 0.1)
    inv_id = start_browse(kernel_emulator, count=1, seconds=30)
    wait_until(lambda: kernel_emulator.invocation(inv_id)["_emulator"]["browsers"], "the action's browser")
    watch = live_view.BrowserWatch(client_hook(kernel_emulator), inv_id, logging.getLogger("test.live_view"))
    asyncio.run(watch_for(watch, 1.0))
    assert count_requests(kernel_emulator, BROWSERS) == 1
    assert list(watch.seen) == [kernel_emulator.invocation(inv_id)["_emulator"]["browsers"][0]["session_id"]]


def test_a_live_view_being_minted_when_the_wait_ends_is_still_reported(kernel_emulator):
    """The run ends while ``POST /browsers/{id}/live_view`` is out (Kernel answers in 1 s): the watch lets it
    finish (within ``STOP_GRACE``) and reports the URL Kernel minted, instead of dropping it."""
    import logging

    from kernel_provider.client.browser_watch import BrowserWatch, LiveViewPublisher

    kernel_emulator.set_faults([{"route": "POST /browsers/{id}/live_view", "fault": {"delay": 1.0}}])
    inv_id = start_browse(kernel_emulator, count=1, seconds=30)
    wait_until(lambda: kernel_emulator.invocation(inv_id)["_emulator"]["browsers"], "the action's browser")
    log = logging.getLogger("test.live_view")
    watch = BrowserWatch(client_hook(kernel_emulator), inv_id, log, publisher=LiveViewPublisher("read", None, log))

    async def end_while_minting() -> None:
        watch.start()
        await asyncio.to_thread(
            wait_until, lambda: count_requests(kernel_emulator, LIVE_VIEW_ROUTE, "POST"), "the mint to be sent"
        )
        await watch.stop()

    asyncio.run(end_while_minting())
    assert watch.first_url and grant_of(kernel_emulator, watch.first_url).access == "read"


def test_a_browser_kernel_no_longer_knows_is_not_fatal(kernel_emulator, caplog):
    """A replay lookup for a browser that is gone (404) is logged and skipped; the others are still reported."""
    import logging

    from kernel_provider.client.browser_watch import BrowserWatch

    log = logging.getLogger("test.live_view")
    watch = BrowserWatch(client_hook(kernel_emulator), "no-such-invocation", log)
    watch.seen = {"gone-browser": ""}
    with caplog.at_level(logging.INFO, logger="test.live_view"):
        found = asyncio.run(watch.report_replays())
    assert found == []
    assert "Kernel no longer knows browser gone-browser" in caplog.text
