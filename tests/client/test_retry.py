"""The retry policy as pure logic: which failures are retried, how long it waits, when it stops."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import pytest

from kernel_provider.client.errors import KernelTransportError
from kernel_provider.client.retry import RetryPolicy, is_retryable, retry_after_seconds
from tests.helpers import api_error


@pytest.mark.parametrize(
    ("exc", "idempotent", "expected"),
    [
        (KernelTransportError("refused", request_sent=False), False, True),
        (KernelTransportError("read timeout", request_sent=True), False, False),
        (KernelTransportError("read timeout", request_sent=True), True, True),
        (api_error(429), False, True),
        (api_error(503), False, False),
        (api_error(503), True, True),
        (api_error(408), True, True),
        (api_error(408), False, False),
        (api_error(500, **{"x-should-retry": "true"}), False, True),
        (api_error(500, **{"x-should-retry": "false"}), True, False),
        (api_error(429, **{"x-should-retry": "false"}), False, False),
        (api_error(400), True, False),
        (api_error(401), True, False),
        (api_error(404), True, False),
        (api_error(409), True, False),
        (ValueError("not ours"), True, False),
        (api_error(307), True, False),
        (api_error(301, **{"x-should-retry": "true"}), True, False),  # a redirect is never retried
    ],
)
def test_what_is_retried(exc: BaseException, idempotent: bool, expected: bool) -> None:
    assert is_retryable(exc, idempotent=idempotent) is expected


def test_retry_after_forms() -> None:
    assert retry_after_seconds(api_error(429, **{"retry-after": "3"})) == 3.0
    assert retry_after_seconds(api_error(429, **{"retry-after-ms": "250"})) == 0.25
    # retry-after-ms wins over Retry-After, as in Kernel's SDK
    assert retry_after_seconds(api_error(429, **{"retry-after-ms": "100", "retry-after": "9"})) == 0.1
    when = datetime.now(timezone.utc) + timedelta(seconds=30)
    hinted = retry_after_seconds(api_error(429, **{"retry-after": format_datetime(when, usegmt=True)}))
    assert hinted is not None and 25 <= hinted <= 31
    assert retry_after_seconds(api_error(429, **{"retry-after": "soon"})) is None
    assert retry_after_seconds(api_error(429)) is None


def test_wait_honours_hint_with_cap_and_backs_off_otherwise() -> None:
    policy = RetryPolicy(backoff_initial=1, backoff_max=8, retry_after_cap=5)
    assert policy.wait_seconds(1, api_error(429, **{"retry-after": "2"})) == 2
    assert policy.wait_seconds(1, api_error(429, **{"retry-after": "600"})) == 5
    for attempt, ceiling in [(1, 1), (2, 2), (3, 4), (4, 8), (9, 8)]:
        wait = policy.wait_seconds(attempt, api_error(503))
        assert ceiling / 2 <= wait <= ceiling


def test_stop_bounds_attempts_time_and_gives_429_its_own_budget() -> None:
    policy = RetryPolicy(max_attempts=3, max_elapsed=10, rate_limit_budget=100)
    assert not policy.should_stop(2, 1.0, api_error(503))
    assert policy.should_stop(3, 1.0, api_error(503))
    assert policy.should_stop(1, 11.0, api_error(503))
    assert not policy.should_stop(50, 60.0, api_error(429))
    assert policy.should_stop(50, 100.0, api_error(429))


def test_a_policy_fitted_into_a_budget_keeps_its_attempts_and_shrinks_its_waits() -> None:
    policy = RetryPolicy(
        max_attempts=6, max_elapsed=120, backoff_initial=0.5, backoff_max=16, retry_after_cap=60, rate_limit_budget=900
    )
    fitted = policy.within(8.0)
    assert fitted.max_attempts == 6
    assert (fitted.max_elapsed, fitted.rate_limit_budget) == (8.0, 8.0)
    assert (fitted.backoff_initial, fitted.backoff_max, fitted.retry_after_cap) == (0.5, 2.0, 2.0)
    assert policy.within(1000) == RetryPolicy(
        max_attempts=6, max_elapsed=120, backoff_initial=0.5, backoff_max=16, retry_after_cap=60, rate_limit_budget=900
    )
    assert policy.within(-1).max_elapsed == 0.05  # never zero: zero means "no limit" to the clients


def test_retry_after_of_something_that_is_not_an_api_error_is_none() -> None:
    assert retry_after_seconds(KernelTransportError("refused", request_sent=False)) is None
    assert retry_after_seconds(None) is None
    past = datetime.now(timezone.utc) - timedelta(seconds=30)
    assert retry_after_seconds(api_error(503, **{"retry-after": format_datetime(past, usegmt=True)})) == 0.0
