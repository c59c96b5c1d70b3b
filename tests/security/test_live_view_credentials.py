"""Live-view URLs are credentials (issue 24 item 5, issue 25 finding 8): the pure rules that decide what the
provider publishes. The DAG runs that prove them end to end are in ``tests/test_live_view.py`` and
``tests/decorators/test_kernel_browser.py``."""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from types import SimpleNamespace

import pytest

from kernel_provider.client.browser_watch import (
    MAX_TTL_SECONDS,
    LiveViewPublisher,
    check_live_view,
    live_view_ttl,
    with_read_only,
)
from kernel_provider.client.browsers import LiveView
from kernel_provider.client.errors import KernelApiError, KernelInputError, KernelServerError

LISTED = "https://proxy.example/browser/live?jwt=abc"
HEADFUL = SimpleNamespace(session_id="s1", browser_live_view_url=LISTED)


@pytest.mark.parametrize(
    ("value", "mode"), [(True, "read"), ("read", "read"), ("control", "control"), (False, "off"), ("off", "off")]
)
def test_live_view_values(value, mode):
    assert check_live_view(value) == mode


@pytest.mark.parametrize("value", ["write", "READ", 1, "true"])
def test_a_wrong_live_view_names_the_field(value):
    with pytest.raises(KernelInputError, match="live_view"):
        check_live_view(value)


def test_the_ttl_is_the_time_left_capped_and_at_least_one_second():
    assert live_view_ttl(None) == MAX_TTL_SECONDS == 3600
    assert live_view_ttl(1000.0, now=900.2) == 100  # rounded up
    assert live_view_ttl(10_000.0, now=0.0) == MAX_TTL_SECONDS
    assert live_view_ttl(5.0, now=10.0) == 1


def test_read_only_is_added_and_replaces_any_given():
    assert with_read_only(LISTED) == LISTED + "&readOnly=true"
    assert with_read_only("https://h/live?readOnly=false&x=1") == "https://h/live?x=1&readOnly=true"
    assert with_read_only("https://h/live/t0k+n%2F==") == "https://h/live/t0k+n%2F==?readOnly=true"
    assert with_read_only("https://h/live?jwt=a+b%2Bc") == "https://h/live?jwt=a+b%2Bc&readOnly=true"


def test_a_control_url_stays_out_of_reprs():
    view = LiveView(url=LISTED, access="control", expires_at=datetime(2030, 1, 1, tzinfo=timezone.utc))
    assert LISTED not in repr(view) and "control" in repr(view)


def test_only_404_and_405_fall_back_to_the_listed_url_and_warn_once(caplog):
    log = logging.getLogger("test.live_view.security")
    publisher = LiveViewPublisher("read", None, log, mask=None)
    missing = KernelApiError(404, "not_found", "no such route")
    with caplog.at_level(logging.WARNING, logger=log.name):
        assert publisher.settle(HEADFUL, missing) == LISTED + "&readOnly=true"
        assert publisher.settle(HEADFUL, KernelApiError(405, None, "method not allowed")).endswith("readOnly=true")
        # Any other failure publishes nothing: never the listed (control) URL.
        assert publisher.settle(HEADFUL, KernelServerError(500, "internal_error", "boom")) == ""
    assert sum("NOT a credential-safe" in r.getMessage() for r in caplog.records) == 1


def test_nothing_is_asked_for_a_headless_browser_or_with_live_view_off():
    headless = SimpleNamespace(session_id="s2", browser_live_view_url="")
    assert LiveViewPublisher("read", None, logging.getLogger("t")).request(headless) is None
    assert LiveViewPublisher(False, None, logging.getLogger("t")).request(HEADFUL) is None
    asked = LiveViewPublisher("control", 2_000_000_000.0, logging.getLogger("t")).request(HEADFUL)
    assert asked is not None and asked["access"] == "control" and 1 <= asked["ttl_seconds"] <= MAX_TTL_SECONDS


def test_a_control_url_is_never_written_to_the_log_line():
    publisher = LiveViewPublisher("control", None, logging.getLogger("t"), mask=None)
    assert LISTED not in publisher.publish_line(HEADFUL, LISTED)
    assert LISTED in LiveViewPublisher("read", None, logging.getLogger("t")).publish_line(HEADFUL, LISTED)
