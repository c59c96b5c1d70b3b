"""The one retry policy of the Kernel client, shared by its sync (requests) and async (httpx) transports.

What is retried:

* any request that Kernel certainly never acted on: connection refused / DNS / connect timeout, and 429
  (Kernel refuses at once when a rate or concurrency limit is hit);
* idempotent requests (everything but ``POST /invocations``) also on read timeouts, dropped connections,
  408 and 5xx;
* ``x-should-retry: true`` forces a retry and ``x-should-retry: false`` forbids it, as Kernel's own SDKs do.

A redirect (3xx) is never retried, whatever its headers say: Kernel does not send one, so the same request would
only meet the same redirect.

``POST /invocations`` is never repeated after it may have reached Kernel: there is no idempotency key, so a
repeat could start a second browser run. Such failures surface as ``KernelAmbiguousCreateError``.

Waits honour ``retry-after-ms`` and ``Retry-After`` (seconds or an HTTP date, capped at ``retry_after_cap``),
else exponential backoff with full jitter. Attempts and the total time are both bounded; 429s get their own,
longer time budget (``rate_limit_budget``) so a fan-out that meets Kernel's concurrency limit waits its turn.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

from kernel_provider.client.errors import (
    KernelApiError,
    KernelRateLimitError,
    KernelRedirectError,
    KernelServerError,
    KernelTransportError,
)

if TYPE_CHECKING:
    import tenacity

#: Shortest time a budget is cut to: a zero or negative timeout or window means "none" (or an error) to the clients.
MIN_BUDGET = 0.05

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetryPolicy:
    """Bounds of the retry loop. All values are plain numbers so they can travel in trigger kwargs.

    :param max_attempts: attempts in all, the first included, for errors other than 429.
    :param max_elapsed: seconds after which no new attempt starts (429s excepted).
    :param backoff_initial: first backoff in seconds; doubles per attempt, with jitter.
    :param backoff_max: ceiling of one backoff.
    :param retry_after_cap: longest wait honoured from a ``Retry-After`` header.
    :param rate_limit_budget: seconds a request may keep waiting out 429s before it gives up.
    """

    max_attempts: int = 6
    max_elapsed: float = 120.0
    backoff_initial: float = 0.5
    backoff_max: float = 16.0
    retry_after_cap: float = 60.0
    rate_limit_budget: float = 900.0

    def is_retryable(self, exc: BaseException, *, idempotent: bool) -> bool:
        """Whether the request that raised ``exc`` may be sent again (see :func:`is_retryable`).

        :param exc: the failure of the last attempt.
        :param idempotent: the request cannot start a second run when repeated (everything but a create).
        """
        return is_retryable(exc, idempotent=idempotent)

    def should_stop(self, attempt: int, elapsed: float, exc: BaseException | None) -> bool:
        """Whether no further attempt may start.

        :param attempt: attempts made so far, the first included.
        :param elapsed: seconds since the first attempt started.
        :param exc: the last failure; a 429 is bounded by ``rate_limit_budget`` alone, not by ``max_attempts``.
        """
        if isinstance(exc, KernelRateLimitError):
            return elapsed >= self.rate_limit_budget
        return attempt >= self.max_attempts or elapsed >= self.max_elapsed

    def wait_seconds(self, attempt: int, exc: BaseException | None) -> float:
        """Seconds to wait before the next attempt: the server's hint (capped), else jittered exponential backoff.

        :param attempt: attempts made so far, the first included.
        :param exc: the last failure, read for ``retry-after-ms`` / ``Retry-After``.
        """
        hinted = retry_after_seconds(exc)
        if hinted is not None:
            return min(hinted, self.retry_after_cap)
        ceiling = min(self.backoff_max, self.backoff_initial * (2 ** max(0, attempt - 1)))
        return random.uniform(ceiling / 2, ceiling)

    def within(self, budget: float) -> RetryPolicy:
        """This policy fitted into ``budget`` seconds: the same attempts, with the retry window, the backoffs and
        the honoured ``Retry-After`` shrunk so that several attempts fit (a 30 s cancel budget is not spent on one
        wait). It does not stop an attempt already running: the caller also cuts each request's timeouts.

        :param budget: seconds the whole call may still take; at least :data:`MIN_BUDGET` is used.
        """
        budget = max(MIN_BUDGET, budget)
        return RetryPolicy(
            max_attempts=self.max_attempts,
            max_elapsed=min(self.max_elapsed, budget),
            backoff_initial=min(self.backoff_initial, budget / 8),
            backoff_max=min(self.backoff_max, budget / 4),
            retry_after_cap=min(self.retry_after_cap, budget / 4),
            rate_limit_budget=min(self.rate_limit_budget, budget),
        )

    def tenacity_kwargs(self, *, idempotent: bool, describe: str = "") -> dict[str, Any]:
        """Arguments for ``tenacity.Retrying`` / ``tenacity.AsyncRetrying``: the same policy on both sides.

        :param idempotent: see :meth:`is_retryable`.
        :param describe: the request in words (``"GET /invocations/x"``), for the warning logged before each wait.
        """

        def _retry(state: tenacity.RetryCallState) -> bool:
            exc = state.outcome.exception() if state.outcome else None
            return exc is not None and self.is_retryable(exc, idempotent=idempotent)

        def _stop(state: tenacity.RetryCallState) -> bool:
            exc = state.outcome.exception() if state.outcome else None
            return self.should_stop(state.attempt_number, state.seconds_since_start or 0.0, exc)

        def _wait(state: tenacity.RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            return self.wait_seconds(state.attempt_number, exc)

        def _before_sleep(state: tenacity.RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            wait = state.next_action.sleep if state.next_action else 0.0
            log.warning(
                "Kernel %s failed (attempt %d): %s; retrying in %.1fs", describe, state.attempt_number, exc, wait
            )

        return {"retry": _retry, "stop": _stop, "wait": _wait, "before_sleep": _before_sleep, "reraise": True}


def is_retryable(exc: BaseException, *, idempotent: bool) -> bool:
    """Whether repeating the request that raised ``exc`` is safe and may help."""
    if isinstance(exc, KernelTransportError):
        return idempotent or not exc.request_sent
    if isinstance(exc, KernelRedirectError):
        return False
    if isinstance(exc, KernelApiError):
        hint = exc.headers.get("x-should-retry", "").lower()
        if hint == "true":
            return True
        if hint == "false":
            return False
        if isinstance(exc, KernelRateLimitError):
            return True
        return idempotent and isinstance(exc, KernelServerError)
    return False


def retry_after_seconds(exc: BaseException | None, *, now: float | None = None) -> float | None:
    """The server's requested delay in seconds, from ``retry-after-ms`` or ``Retry-After``; None if absent."""
    if not isinstance(exc, KernelApiError):
        return None
    headers = exc.headers
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(0.0, float(millis) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))
