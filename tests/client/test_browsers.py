"""The browser options and operations of ``kernel_provider.client.browsers`` as pure logic: options checked before
any request, and the never-twice rules of ``POST /browsers`` and a pool's acquire, driven with canned responses
(a lost answer cannot be provoked on demand between a real server and its answer). The same operations against
the emulator over HTTP: ``tests/hooks/test_kernel_browser.py``."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from kernel_provider.client import browsers
from kernel_provider.client.errors import (
    KernelAmbiguousBrowserCreateError,
    KernelBadRequestError,
    KernelInputError,
    KernelServerError,
    KernelTransportError,
)
from kernel_provider.client.models import Browser
from kernel_provider.client.validation import MARKER_PREFIX, build_browser_request
from kernel_provider.client.wire import drive
from tests.helpers import answer, canned


def browser_json(session_id: str = "b-1", **fields: Any) -> dict[str, Any]:
    return {
        "session_id": session_id,
        "created_at": datetime.now(timezone.utc).isoformat().replace("+00:00", "Z"),
        "cdp_ws_url": f"ws://127.0.0.1:9/devtools/browser/{session_id}",
        "webdriver_ws_url": "ws://127.0.0.1:9/session",
        "browser_live_view_url": f"https://live.example/{session_id}",
        "headless": False,
        "stealth": False,
        "timeout_seconds": 60,
        **fields,
    }


def lost(after_sent: bool = True) -> KernelTransportError:
    return KernelTransportError("read timed out", request_sent=after_sent, method="POST", path="/browsers")


def server_error() -> KernelServerError:
    return KernelServerError(500, "internal_error", "boom", method="POST", path="/browsers")


# --- options -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"timeout_seconds": 5}, "timeout_seconds"),
        ({"timeout_seconds": 300_000}, "timeout_seconds"),
        ({"timeout_seconds": "60"}, "timeout_seconds"),
        ({"headless": "yes"}, "headless"),
        ({"stealth": 1}, "stealth"),
        ({"viewport": (100, 800)}, "viewport['width']"),
        ({"viewport": {"width": 1280}}, "viewport"),
        ({"start_url": "example.com"}, "start_url"),
        ({"proxy_id": " p"}, "proxy_id"),
        ({"profile": "bad name!"}, "profile"),
        ({"profile": {"id": "a", "name": "b"}}, "profile"),
        ({"save_profile_changes": True}, "save_profile_changes"),
        ({"pool": "scrapers", "headless": True}, "headless"),
        ({"acquire_timeout_seconds": 5}, "acquire_timeout_seconds"),
        ({"pool": "scrapers", "acquire_timeout_seconds": 0}, "acquire_timeout_seconds"),
        ({"pool": ""}, "pool"),
    ],
)
def test_bad_options_fail_naming_the_field(options: dict[str, Any], field: str) -> None:
    with pytest.raises(KernelInputError) as info:
        build_browser_request(**options)
    assert info.value.field == field


def test_an_unknown_option_is_refused_by_name() -> None:
    """The options are named parameters: a misspelt one is Python's TypeError naming it, before any request."""
    with pytest.raises(TypeError, match="'timeout'"):
        build_browser_request(timeout=60)  # type: ignore[call-arg]


def test_options_become_kernels_browser_request() -> None:
    request = build_browser_request(
        headless=True,
        stealth=True,
        timeout_seconds=120,
        profile="shop-login",
        save_profile_changes=True,
        proxy_id="proxy-1",
        viewport=(1280, 800),
        start_url="https://example.com/",
        kiosk_mode=False,
    )
    assert dict(request.body) == {
        "headless": True,
        "stealth": True,
        "kiosk_mode": False,
        "timeout_seconds": 120,
        "proxy_id": "proxy-1",
        "profile": {"name": "shop-login", "save_changes": True},
        "viewport": {"width": 1280, "height": 800},
        "start_url": "https://example.com/",
    }
    assert request.marker == "" and request.pool is None


def test_without_a_start_url_each_request_carries_its_own_marker() -> None:
    first, second = build_browser_request(), build_browser_request()
    assert first.marker.startswith(MARKER_PREFIX) and first.body["start_url"] == first.marker
    assert first.marker != second.marker


def test_a_pool_request_sends_no_browser_options() -> None:
    request = build_browser_request(pool="scrapers", acquire_timeout_seconds=30, reuse=False)
    assert (request.pool, request.acquire_timeout_seconds, request.reuse, dict(request.body)) == (
        "scrapers",
        30,
        False,
        {},
    )


# --- never twice ---------------------------------------------------------------------------------------------


def test_a_create_whose_answer_was_lost_adopts_the_browser_carrying_its_marker() -> None:
    request = build_browser_request(headless=True)
    twin = browser_json("twin", start_url=MARKER_PREFIX + "someone-else", headless=True)
    ours = browser_json("ours", start_url=request.marker, headless=True)
    send, calls = canned(lost(), answer(200, [twin, ours]))
    found = drive(browsers.create_browser(request), send)
    assert isinstance(found, Browser) and found.session_id == "ours"
    assert [(c.endpoint.method, c.path) for c in calls] == [("POST", "/browsers"), ("GET", "/browsers")]
    assert calls[1].query["status"] == "active"


def test_a_lost_create_that_kernel_lists_nothing_for_is_not_resent() -> None:
    request = build_browser_request()
    send, calls = canned(server_error(), answer(200, [browser_json("other", start_url="https://x.example/")]))
    with pytest.raises(KernelAmbiguousBrowserCreateError, match="none is running") as info:
        drive(browsers.create_browser(request), send)
    assert info.value.candidates == []
    assert [c.endpoint.method for c in calls] == ["POST", "GET"]  # one POST only


def test_without_a_marker_a_lost_create_fails_naming_the_browsers_that_could_be_it() -> None:
    request = build_browser_request(start_url="https://shop.example/", headless=True)
    same = browser_json("same", start_url="https://shop.example/", headless=True)
    older = browser_json(
        "older",
        start_url="https://shop.example/",
        headless=True,
        created_at=(datetime.now(timezone.utc) - timedelta(hours=1)).isoformat().replace("+00:00", "Z"),
    )
    different = browser_json("different", start_url="https://other.example/", headless=True)
    send, _ = canned(lost(), answer(200, [same, older, different]))
    with pytest.raises(KernelAmbiguousBrowserCreateError) as info:
        drive(browsers.create_browser(request), send)
    assert info.value.candidates == ["same"]
    assert "None was deleted" in str(info.value)


def test_a_refused_create_is_raised_as_is_without_a_lookup() -> None:
    send, calls = canned(KernelBadRequestError(400, "bad_request", "invalid viewport", method="POST", path="/browsers"))
    with pytest.raises(KernelBadRequestError):
        drive(browsers.create_browser(build_browser_request()), send)
    assert len(calls) == 1


def test_a_create_that_never_left_is_raised_without_a_lookup() -> None:
    send, calls = canned(lost(after_sent=False))
    with pytest.raises(KernelTransportError):
        drive(browsers.create_browser(build_browser_request()), send)
    assert len(calls) == 1


def test_a_failed_lookup_still_says_nothing_was_resent() -> None:
    send, calls = canned(lost(), server_error())
    with pytest.raises(KernelAmbiguousBrowserCreateError, match="looking it up failed"):
        drive(browsers.create_browser(build_browser_request()), send)
    assert [c.endpoint.method for c in calls] == ["POST", "GET"]


def test_acquire_polls_again_after_no_browser_and_returns_the_one_acquired() -> None:
    send, calls = canned(answer(204), answer(200, browser_json("pooled", pool={"id": "p1", "name": "scrapers"})))
    found = drive(browsers.acquire_browser("scrapers", 30), send)
    assert (found.session_id, found.pool_name) == ("pooled", "scrapers")
    assert [c.path for c in calls] == ["/browser_pools/scrapers/acquire"] * 2
    assert all(c.body["acquire_timeout_seconds"] <= 30 for c in calls)


def test_a_lost_acquire_is_not_resent() -> None:
    send, calls = canned(lost())
    with pytest.raises(KernelAmbiguousBrowserCreateError, match="pool 'scrapers'"):
        drive(browsers.acquire_browser("scrapers", 30), send)
    assert len(calls) == 1


def test_deleting_a_browser_already_gone_is_not_an_error() -> None:
    from kernel_provider.client.errors import KernelNotFoundError

    send, _ = canned(KernelNotFoundError(404, "not_found", "gone", method="DELETE", path="/browsers/b-1"))
    assert drive(browsers.delete_browser("b-1"), send) is False
    send, _ = canned(answer(204))
    assert drive(browsers.delete_browser("b-1"), send) is True


def test_browser_model_reads_kernels_fields_and_keeps_unknown_ones() -> None:
    parsed = Browser.from_api(
        browser_json("b-9", pool={"id": "p1"}, profile={"name": "login"}, region="us-east", timeout_seconds=90)
    )
    assert (parsed.session_id, parsed.pool_name, parsed.profile_name, parsed.timeout_seconds) == (
        "b-9",
        "p1",
        "login",
        90,
    )
    assert parsed.created_at is not None and parsed.extra == {"region": "us-east"}


def test_a_live_view_request_is_kernels_body_and_its_answer_is_typed() -> None:
    send, calls = canned(
        answer(200, {"url": "https://k/browser/live?jwt=t", "access": "read", "expires_at": "2030-01-01T00:00:00Z"})
    )
    view = drive(browsers.create_live_view("b1", access="read", ttl_seconds=60), send)
    (call,) = calls
    assert (call.endpoint.method, call.path, call.body) == (
        "POST",
        "/browsers/b1/live_view",
        {"access": "read", "ttl_seconds": 60},
    )
    assert (view.url, view.access, view.expires_at) == (
        "https://k/browser/live?jwt=t",
        "read",
        datetime(2030, 1, 1, tzinfo=timezone.utc),
    )


@pytest.mark.parametrize(
    "body",
    [
        {"url": "javascript:alert(1)", "access": "read"},  # not a URL a link may open
        {"url": "/browser/live", "access": "read"},  # not absolute
        {"url": "https://k/live", "access": "control"},  # more than was asked: never published as read-only
        {"url": "https://k/live", "access": "admin"},
        ["https://k/live"],
    ],
)
def test_a_live_view_answer_that_is_not_what_was_asked_is_refused(body: Any) -> None:
    from kernel_provider.client.errors import KernelResponseError

    send, _ = canned(answer(200, body))
    with pytest.raises(KernelResponseError):
        drive(browsers.create_live_view("b1", access="read"), send)


@pytest.mark.parametrize(("access", "ttl", "field"), [("write", None, "access"), ("read", 0, "ttl_seconds")])
def test_a_wrong_live_view_request_fails_before_any_request(access: str, ttl: Any, field: str) -> None:
    send, calls = canned()
    with pytest.raises(KernelInputError, match=field):
        drive(browsers.create_live_view("b1", access=access, ttl_seconds=ttl), send)
    assert calls == []
