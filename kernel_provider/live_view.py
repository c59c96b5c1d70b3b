"""The browsers behind a run, seen from a wait: their live-view URLs while it runs, their replays when it failed.

A :class:`BrowserWatch` runs beside a wait (in the triggerer, or on a worker that waits without deferring) as a
task of its own on the wait's event loop, so listing browsers never holds up the event stream. It lists the
invocation's browsers (``GET /invocations/{id}/browsers``):

* once when the wait starts;
* again when a new log line of the run mentions a browser (``BROWSER_HINT``), at most one list per
  ``HINT_MIN_GAP`` seconds and ``MAX_HINTED_LISTS`` per wait;
* on a schedule while no browser is known yet: after ``FIRST_INTERVAL`` seconds, each pause ``BACKOFF`` times the
  last, at most ``MAX_SCHEDULED_LISTS`` times (after 5, 20, 80 and 320 s). Once a browser is known, or the schedule
  is spent, only log lines trigger lists.

Request cost per wait (``live_view=True``): one list at the start, plus at most ``MAX_SCHEDULED_LISTS`` on the
schedule, plus at most ``MAX_HINTED_LISTS`` from log lines: a run that never opens a browser and never logs the
word costs at most 5 lists however long it runs. An action that opens its browser right away costs 1-2 lists.
When the run **failed**: one ``GET /browsers/{id}/replays`` per browser seen (at most
``MAX_REPLAY_BROWSERS``; one more browser list first if none was seen), all within ``REPLAY_BUDGET`` seconds.
Nothing after a run that succeeded.

Each browser's live-view URL is logged once per wait; the first one is also handed to ``publish`` (the task's
"Kernel live view" link) and carried in the wait's event (key ``live_view_url``), from which the resumed task
sets the link too. Listing problems are logged, never raised: a wait must not fail because of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

from kernel_provider.client.errors import KernelError, KernelNotFoundError

#: A log line matching this may announce a new browser: list the run's browsers again.
BROWSER_HINT = re.compile(r"browser", re.IGNORECASE)
FIRST_INTERVAL = 5.0
BACKOFF = 4.0
#: Scheduled lists per wait while no browser is known: bounded, so an hour-long run without browsers costs no
#: more than a short one (a browser opened later is still found through the log lines that mention it).
MAX_SCHEDULED_LISTS = 4
HINT_MIN_GAP = 2.0
MAX_HINTED_LISTS = 20
MAX_REPLAY_BROWSERS = 10
REPLAY_BUDGET = 15.0
#: Key of the first live-view URL in the wait's event (absent when the run showed no browser with a live view).
LIVE_VIEW_EVENT_KEY = "live_view_url"


class BrowserWatch:
    """Learns an invocation's browsers during one wait; see the module docstring for when and at what cost.

    :param hook: the :class:`~kernel_provider.hooks.kernel.KernelHook` of the wait (its ``a``-methods are used).
    :param invocation_id: the run.
    :param log: where the URLs are logged (the trigger's logger: the task log).
    :param publish: awaited with the first live-view URL (e.g. to push the link's XCom); its errors are logged.
    """

    def __init__(
        self,
        hook: Any,
        invocation_id: str,
        log: logging.Logger | Any,
        publish: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self.hook = hook
        self.invocation_id = invocation_id
        self.log = log
        self.publish = publish
        #: session id -> live-view URL ("" for a browser without one), in the order they were first seen.
        self.seen: dict[str, str] = {}
        self.lists = 0
        self.hinted = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        #: The first live-view URL seen ("" until then).
        self.first_url = ""
        self._published = False
        self._failing = False

    def start(self) -> None:
        """Start watching on the running loop (the first list is sent at once)."""
        if self._task is None:
            self._task = asyncio.ensure_future(self._loop())

    def hint(self, message: str) -> None:
        """A new log line of the run: when it mentions a browser, list again soon (within the bounds)."""
        if self.hinted < MAX_HINTED_LISTS and BROWSER_HINT.search(message):
            self._wake.set()

    async def stop(self) -> None:
        """Stop watching (the wait is over). Never raises."""
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        interval, scheduled = FIRST_INTERVAL, 0
        while True:
            last = loop.time()
            await self.refresh()
            timeout = None if self.seen or scheduled >= MAX_SCHEDULED_LISTS else interval
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
                self.hinted += 1
            except asyncio.TimeoutError:
                scheduled += 1
                interval *= BACKOFF
            self._wake.clear()
            gap = last + HINT_MIN_GAP - loop.time()
            if gap > 0:
                await asyncio.sleep(gap)

    async def refresh(self) -> None:
        """One ``GET /invocations/{id}/browsers``; logs each browser not seen before. Never raises."""
        self.lists += 1
        try:
            browsers = await self.hook.ainvocation_browsers(self.invocation_id)
        except KernelError as exc:
            if not self._failing:
                self._failing = True
                self.log.warning("Could not list the browsers of Kernel invocation %s: %s", self.invocation_id, exc)
            return
        self._failing = False
        for browser in browsers:
            if browser.session_id in self.seen:
                continue
            url = browser.browser_live_view_url
            self.seen[browser.session_id] = url
            if not url:
                self.log.info(
                    "Kernel browser %s of invocation %s has no live view.", browser.session_id, self.invocation_id
                )
                continue
            self.log.info("Kernel live view of browser %s: %s", browser.session_id, url)
            self.first_url = self.first_url or url
            if not self._published and self.publish is not None:
                self._published = True
                try:
                    await self.publish(url)
                except Exception as exc:
                    self.log.warning("Could not publish the live-view link of %s: %s", self.invocation_id, exc)

    async def report_replays(self, budget: float = REPLAY_BUDGET) -> list[Any]:
        """After a failed run: log the view URL of every replay its browsers recorded. Never raises.

        :param budget: seconds all the lookups may take together (the task is waiting to fail).
        :returns: the :class:`~kernel_provider.client.models.Replay` objects found.
        """
        found: list[Any] = []
        try:
            await asyncio.wait_for(self._collect_replays(found), budget)
        except asyncio.TimeoutError:
            self.log.warning(
                "Looking up the replays of Kernel invocation %s took over %gs.", self.invocation_id, budget
            )
        except Exception as exc:  # never let a lookup turn a failed run into a different error
            self.log.warning("Could not look up the replays of Kernel invocation %s: %s", self.invocation_id, exc)
        return found

    async def _collect_replays(self, found: list[Any]) -> None:
        if not self.seen:
            await self.refresh()
        for session_id in list(self.seen)[:MAX_REPLAY_BROWSERS]:
            try:
                replays = await self.hook.alist_replays(session_id)
            except KernelNotFoundError:
                self.log.info("Kernel no longer knows browser %s; no replays to show for it.", session_id)
                continue
            except KernelError as exc:
                self.log.warning("Could not list the replays of Kernel browser %s: %s", session_id, exc)
                continue
            for replay in replays:
                found.append(replay)
                state = " (still recording)" if replay.recording else ""
                self.log.info(
                    "Kernel replay %s of browser %s%s: %s",
                    replay.replay_id,
                    session_id,
                    state,
                    replay.replay_view_url or "(no view URL)",
                )
        if self.seen and not found:
            self.log.info("The browsers of failed Kernel invocation %s recorded no replays.", self.invocation_id)
