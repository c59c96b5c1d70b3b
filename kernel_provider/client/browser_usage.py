"""A run's browsers, for its cost: the final figures after the wait, and the ``max_browser_seconds`` budget during it.

Both build on the :class:`~kernel_provider.client.browser_watch.BrowserWatch` of the wait, which lists the run's
active browsers (``GET /invocations/{id}/browsers``) while it runs; Kernel lists no deleted session there, so the
browsers must be seen while they are alive.

**Request cost.** With usage tracked (``track_usage``, the operator's default) and ``live_view`` off, the watch
lists as it does for the live view (1 list at the start, at most 4 more on a schedule while no browser is known,
at most 20 more prompted by log lines that mention a browser), but mints no URL. After the run: one
``GET /browsers/{id}?include_deleted=true`` per browser seen (Kernel answers a deleted session with its
``deleted_at`` and ``usage.uptime_ms``), at most :data:`MAX_USAGE_BROWSERS`, within :data:`USAGE_BUDGET` seconds.
``max_browser_seconds`` adds no periodic request: the figure so far is computed from what the watch listed
(:class:`~kernel_provider.client.usage.BrowserLedger`) every :data:`BUDGET_CHECK_INTERVAL` seconds, and only when
it passes the budget is the run's list read again (at most once per :data:`BUDGET_CONFIRM_GAP` seconds), so a
browser deleted meanwhile stops counting before the run is cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from kernel_provider.client.errors import KernelError
from kernel_provider.client.events import ERROR, make_event
from kernel_provider.client.usage import browser_to_event

#: Key of the run's browsers in the wait's event (see :func:`kernel_provider.client.usage.browser_to_event`);
#: absent when they were not tracked.
BROWSERS_EVENT_KEY = "browsers"
#: Key of the budget a wait stopped the run for (with ``browser_seconds``, the figure it passed with).
BUDGET_EVENT_KEY = "max_browser_seconds"
MAX_USAGE_BROWSERS = 20
USAGE_BUDGET = 10.0
BUDGET_CHECK_INTERVAL = 1.0
BUDGET_CONFIRM_GAP = 10.0


async def final_browsers(watch: Any, budget: float = USAGE_BUDGET) -> list[dict[str, Any]]:
    """The run's browsers as Kernel reports them now, as event primitives; never raises.

    One ``GET /browsers/{id}?include_deleted=true`` per browser the watch saw (at most :data:`MAX_USAGE_BROWSERS`),
    all within ``budget`` seconds; a browser whose lookup failed is reported as the watch last listed it.

    :param watch: the wait's :class:`~kernel_provider.client.browser_watch.BrowserWatch`.
    :param budget: seconds the lookups may take together.
    """
    listed = {session_id: entry[0] for session_id, entry in watch.ledger.listed.items()}
    found = dict(listed)

    async def lookup(session_id: str) -> None:
        try:
            found[session_id] = await watch.hook.aget_browser(session_id, include_deleted=True)
        except KernelError as exc:
            watch.log.info("Kernel browser %s: no usage figures (%s); its listed times are used.", session_id, exc)

    try:
        await asyncio.wait_for(asyncio.gather(*(lookup(s) for s in list(listed)[:MAX_USAGE_BROWSERS])), budget)
    except (asyncio.TimeoutError, Exception) as exc:  # the figures are worth less than the task's outcome
        why = str(exc) or "timed out"
        watch.log.info("Looking up the browsers of Kernel invocation %s: %s", watch.invocation_id, why)
    return [browser_to_event(browser) for browser in found.values()]


class BrowserBudget:
    """Stops a run whose browser-seconds pass ``limit`` (the task's ``max_browser_seconds``).

    :param watch: the wait's browser watch (its ledger gives the figure so far).
    :param limit: the budget, in browser-seconds (> 0).
    :param cancel: awaited with the reason to cancel the invocation; returns whether Kernel confirmed it.
    :param log: where the decision is logged.
    """

    def __init__(self, watch: Any, limit: float, cancel: Callable[[str], Awaitable[bool]], log: Any) -> None:
        self.watch = watch
        self.limit = float(limit)
        self.cancel = cancel
        self.log: logging.Logger | Any = log
        self.confirmed_at = float("-inf")

    async def race(self, follow: Awaitable[dict[str, Any]]) -> dict[str, Any]:
        """The event of ``follow`` (the wait), unless the budget is passed first: then the run is cancelled and the
        event is an ``error`` naming ``max_browser_seconds``, the figure and the invocation."""
        waiting = asyncio.ensure_future(follow)
        guard = asyncio.ensure_future(self.passed())
        try:
            await asyncio.wait({waiting, guard}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (waiting, guard):
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
        if waiting.done() and not waiting.cancelled():
            return waiting.result()
        return await self.stop(guard.result())

    async def passed(self) -> float:
        """Returns the browser-seconds once they pass the budget (confirmed by a fresh list of the run's browsers)."""
        while True:
            await asyncio.sleep(BUDGET_CHECK_INTERVAL)
            used = self.watch.ledger.seconds(time.time())
            if used <= self.limit:
                continue
            if time.monotonic() - self.confirmed_at < BUDGET_CONFIRM_GAP:
                return used
            self.confirmed_at = time.monotonic()
            await self.watch.refresh()  # a browser deleted since the last list stops counting
            used = self.watch.ledger.seconds(time.time())
            if used > self.limit:
                return used

    async def stop(self, used: float) -> dict[str, Any]:
        """Cancel the run for passing the budget; the ``error`` event saying so."""
        invocation_id = self.watch.invocation_id
        why = f"max_browser_seconds={self.limit:g} passed ({used:.1f} browser-seconds)"
        self.log.warning("Kernel invocation %s: %s; cancelling it.", invocation_id, why)
        cancelled = await self.cancel(why)
        outcome = "It was cancelled." if cancelled else "Cancelling it failed: it may still be running."
        message = (
            f"Kernel invocation {invocation_id} passed the task's max_browser_seconds={self.limit:g}: its browsers "
            f"had run {used:.1f} browser-seconds. {outcome} Raise max_browser_seconds (or leave it None) to let "
            "such runs finish."
        )
        event = make_event(ERROR, invocation_id, message=message, cancelled=cancelled)
        return {**event, BUDGET_EVENT_KEY: self.limit, "browser_seconds": round(used, 3)}
