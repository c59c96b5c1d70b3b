"""The cost of a run (kernel_provider/client/usage.py): duration, browser-seconds and where they came from."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from kernel_provider.client.models import Browser, Invocation
from kernel_provider.client.usage import (
    SOURCE_MIXED,
    SOURCE_NO_BROWSERS,
    SOURCE_TIMES,
    SOURCE_UNTRACKED,
    SOURCE_UPTIME,
    BrowserLedger,
    browser_to_event,
    browsers_from_event,
    compute_usage,
)

T0 = "2026-12-06T10:00:00Z"
NOW = datetime(2026, 12, 6, 10, 5, tzinfo=timezone.utc)


def invocation(**fields: object) -> Invocation:
    data = {
        "id": "inv1",
        "app_name": "shop",
        "action_name": "buy",
        "version": "3",
        "status": "succeeded",
        "started_at": T0,
        "finished_at": "2026-12-06T10:00:12.300Z",
        **fields,
    }
    return Invocation.from_api(data)


def browser(session_id: str, **fields: object) -> Browser:
    return Browser.from_api({"session_id": session_id, "created_at": T0, **fields})


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        ({"uptime_ms": 1500}, 1500),
        ({"uptime_ms": 0}, 0),
        ({"uptime_ms": -3}, None),
        ({"uptime_ms": 1.5}, None),
        ({"uptime_ms": True}, None),
        ({"uptime_ms": "9"}, None),
        ("x", None),
        (None, None),
    ],
)
def test_the_browser_model_keeps_only_a_non_negative_integer_uptime(usage: object, expected: int | None) -> None:
    assert browser("b1", usage=usage).uptime_ms == expected
    assert "usage" not in browser("b1", usage=usage).extra


def test_kernel_uptime_is_summed_and_named_as_the_source() -> None:
    browsers = [browser("b1", usage={"uptime_ms": 12_000}), browser("b2", usage={"uptime_ms": 8_100})]
    usage = compute_usage(invocation(), browsers, now=NOW)
    assert usage.browser_seconds == pytest.approx(20.1)
    assert (usage.browsers, usage.browser_seconds_source) == (2, SOURCE_UPTIME)
    assert usage.duration_seconds == pytest.approx(12.3)
    assert usage.summary() == (
        "Kernel usage: invocation inv1 (shop/buy@3) succeeded in 12.3 s; 2 browsers, 20.1 browser-seconds "
        "(Kernel's uptime)"
    )


def test_without_uptime_the_create_and_delete_times_count_and_a_live_browser_runs_to_now() -> None:
    gone = browser("b1", deleted_at="2026-12-06T10:00:30Z")
    alive = browser("b2", created_at="2026-12-06T10:04:00Z")
    usage = compute_usage(invocation(), [gone, alive, gone], now=NOW)
    assert usage.browser_seconds == pytest.approx(30 + 60)  # the repeated one counted once
    assert (usage.browsers, usage.browser_seconds_source) == (2, SOURCE_TIMES)
    mixed = compute_usage(invocation(), [gone, browser("b3", usage={"uptime_ms": 500})], now=NOW)
    assert (mixed.browser_seconds, mixed.browser_seconds_source) == (30.5, SOURCE_MIXED)


def test_no_browser_untracked_and_a_run_without_times() -> None:
    assert compute_usage(invocation(), [], now=NOW).browser_seconds_source == SOURCE_NO_BROWSERS
    untracked = compute_usage(invocation(status="failed", finished_at=None), None, now=NOW)
    assert (untracked.browser_seconds, untracked.browsers, untracked.duration_seconds) == (0.0, 0, None)
    assert untracked.browser_seconds_source == SOURCE_UNTRACKED
    assert "failed in ?" in untracked.summary() and "browsers not tracked" in untracked.summary()


def test_as_dict_is_json_primitives() -> None:
    usage = compute_usage(invocation(), [browser("b1", usage={"uptime_ms": 1000})], now=NOW)
    data = usage.as_dict()
    assert json.loads(json.dumps(data)) == data
    assert data == {
        "invocation_id": "inv1",
        "app": "shop",
        "version": "3",
        "action": "buy",
        "status": "succeeded",
        "duration_seconds": 12.3,
        "browser_seconds": 1.0,
        "browsers": 1,
        "browser_seconds_source": SOURCE_UPTIME,
    }


def test_browsers_cross_the_event_as_primitives_without_their_urls() -> None:
    full = Browser.from_api(
        {
            "session_id": "b1",
            "created_at": T0,
            "deleted_at": "2026-12-06T10:00:05Z",
            "usage": {"uptime_ms": 4200},
            "cdp_ws_url": "wss://x.example/cdp?jwt=secret",
        }
    )
    item = browser_to_event(full)
    assert "secret" not in json.dumps(item)
    (back,) = browsers_from_event(json.loads(json.dumps([item])))  # type: ignore[misc]
    assert (back.session_id, back.created_at, back.deleted_at, back.uptime_ms) == (
        "b1",
        full.created_at,
        full.deleted_at,
        4200,
    )
    assert browsers_from_event(None) is None
    assert browsers_from_event([{"session_id": "../x"}, 7, {"no": "id"}]) == []


def test_the_ledger_counts_listed_browsers_until_they_vanish() -> None:
    ledger = BrowserLedger()
    start = datetime.fromisoformat("2026-12-06T10:00:00+00:00").timestamp()
    ledger.observe([browser("b1"), browser("b2", usage={"uptime_ms": 2000})], start + 2)
    assert ledger.seconds(start + 10) == pytest.approx(10 + (2 + 8))
    ledger.observe([browser("b2", usage={"uptime_ms": 9000})], start + 10)  # b1 gone by then
    assert ledger.seconds(start + 20) == pytest.approx(10 + (9 + 10))
    assert ledger.seconds(start + 10) == pytest.approx(10 + 9)
