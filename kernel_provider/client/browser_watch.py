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

Request cost per wait (``live_view`` not off): one list at the start, plus at most ``MAX_SCHEDULED_LISTS`` on the
schedule, plus at most ``MAX_HINTED_LISTS`` from log lines: a run that never opens a browser and never logs the
word costs at most 5 lists however long it runs. An action that opens its browser right away costs 1-2 lists,
plus one ``POST /browsers/{id}/live_view`` per headful browser seen.
When the run **failed**: one ``GET /browsers/{id}/replays`` per browser seen (at most
``MAX_REPLAY_BROWSERS``; one more browser list first if none was seen), all within ``REPLAY_BUDGET`` seconds.
Nothing after a run that succeeded.

**What is published.** The ``browser_live_view_url`` Kernel lists gives *control* of the browser (which may be
logged in through a saved profile), so it is never published as such. For each headful browser a
:class:`LiveViewPublisher` mints a URL with ``POST /browsers/{id}/live_view``:

* ``live_view="read"`` (the default; ``True`` means the same): an ``access: read`` URL, which cannot send input
  whatever its query says, valid ``ttl_seconds`` = the task's remaining time (its deadline), at most
  :data:`MAX_TTL_SECONDS` (1 hour; also the TTL when the task has no deadline). It is logged and published.
* ``live_view="control"``: an ``access: control`` URL, same TTL, registered with Airflow's secret masker
  (through the ``mask`` callback the task hands in) and never logged (the log says where to find it);
  published to XCom and the link for the people allowed to see them.
* ``live_view=False`` (or ``"off"``): no browser is listed, nothing is minted, logged or published.

Headless browsers have no live view: nothing is asked for them. Where Kernel answers 404 or 405 to the route (an
older deployment), the listed URL is used with ``readOnly=true`` added (a client-side hint a reader can drop) and
the task logs ONE warning that the link is not a credential-safe read-only URL. Any other failure publishes nothing
for that browser (a warning), never the listed URL.

Each browser's URL is minted and reported once per wait; the first one is also handed to ``publish`` (the task's
"Kernel live view" link) and carried in the wait's event (key ``live_view_url``), from which the resumed task
sets the link too. Listing problems are logged, never raised: a wait must not fail because of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from kernel_provider.client.errors import KernelApiError, KernelError, KernelInputError, KernelNotFoundError
from kernel_provider.client.usage import BrowserLedger

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
#: Seconds :meth:`BrowserWatch.stop` lets a list (and the live views it is minting) finish before cancelling it:
#: a URL Kernel has already minted is then reported, not dropped because the run ended at that moment.
STOP_GRACE = 5.0
#: Key of the first live-view URL in the wait's event (absent when the run showed no browser with a live view).
LIVE_VIEW_EVENT_KEY = "live_view_url"
#: The values of ``live_view``: mint read-only URLs (default), control URLs, or nothing.
READ, CONTROL, OFF = "read", "control", "off"
LIVE_VIEW_MODES = (READ, CONTROL, OFF)
#: Longest life of a published live-view URL, in seconds: the TTL of a task without a deadline, and the cap of
#: one with a later one. A link in a log outlives the task; an hour covers watching a run, not reusing its link.
MAX_TTL_SECONDS = 3600
#: Statuses with which Kernel says it does not know the live-view route (an older deployment): fall back.
ROUTE_MISSING = (404, 405)
NOT_CREDENTIAL_SAFE = (
    "Kernel does not offer POST /browsers/{id}/live_view here (HTTP %s): the Kernel live view link of %s is the "
    "browser's listed URL with readOnly=true added, which is NOT a credential-safe read-only URL (readOnly is a "
    "hint a reader can drop; the URL can steer the browser). Share it only with people allowed to control it."
)


def check_live_view(value: Any) -> str:
    """``live_view`` as one of :data:`LIVE_VIEW_MODES`: True and "read" are ``read``; False, None and "off" are
    ``off``; "control" is ``control``.

    :raises KernelInputError: anything else, naming the field and the values it takes.
    """
    if value is True or value == READ:
        return READ
    if value is False or value is None or value == OFF:
        return OFF
    if value == CONTROL:
        return CONTROL
    raise KernelInputError(
        "live_view", f"must be 'read', 'control', 'off', True or False, got {value!r}.", "The default is 'read'."
    )


def live_view_ttl(end_time: float | None, now: float | None = None) -> int:
    """The ``ttl_seconds`` of a URL minted now for a task whose wait ends at ``end_time`` (epoch seconds; None:
    no deadline): the time left, rounded up, at least 1 and at most :data:`MAX_TTL_SECONDS`."""
    if end_time is None:
        return MAX_TTL_SECONDS
    left = end_time - (time.time() if now is None else now)
    return max(1, min(MAX_TTL_SECONDS, math.ceil(left)))


def with_read_only(url: str) -> str:
    """``url`` with ``readOnly=true`` in its query (replacing any ``readOnly`` it had)."""
    parts = urlsplit(url)
    # Raw segments, not decoded and re-encoded: a token must reach Kernel byte for byte.
    kept = [p for p in parts.query.split("&") if p and p.split("=", 1)[0] != "readOnly"]
    return urlunsplit(parts._replace(query="&".join([*kept, "readOnly=true"])))


class LiveViewPublisher:
    """Decides, for one task, which live-view URL of a browser is published (see the module docstring).

    :param mode: ``read``, ``control`` or ``off`` (see :func:`check_live_view`).
    :param end_time: the task's deadline (epoch seconds; None: none): bounds each URL's ``ttl_seconds``.
    :param log: where the single fallback warning goes.
    :param mask: registers a control URL with the secret masker (the client knows no Airflow: a task passes
        :func:`kernel_provider.utils.secrets.mask_url`, a trigger one that runs it off its loop). None: no masking.
    """

    def __init__(
        self,
        mode: str,
        end_time: float | None,
        log: logging.Logger | Any,
        mask: Callable[[str], Any] | None = None,
    ) -> None:
        self.mode = check_live_view(mode)
        self.end_time = end_time
        self.log = log
        self.mask = mask
        self.warned = False

    def request(self, browser: Any) -> dict[str, Any] | None:
        """The keywords of the hook's ``create_live_view`` for ``browser``; None when nothing is to be minted
        (``off``, or a headless browser: Kernel lists no live view for it and refuses the route)."""
        if self.mode == OFF or not browser.browser_live_view_url:
            return None
        return {
            "session_id": browser.session_id,
            "access": self.mode,
            "ttl_seconds": live_view_ttl(self.end_time),
        }

    def settle(self, browser: Any, minted: Any) -> str:
        """The URL to publish from what the route answered (a ``LiveView`` or the ``KernelError`` raised); ""
        when there is none. Logs the fallback warning once per publisher."""
        if isinstance(minted, KernelApiError) and minted.status_code in ROUTE_MISSING:
            if not self.warned:
                self.warned = True
                self.log.warning(NOT_CREDENTIAL_SAFE, minted.status_code, browser.session_id)
            url = browser.browser_live_view_url
            url = with_read_only(url) if self.mode == READ else url
        elif isinstance(minted, KernelError):
            self.log.warning(
                "Could not create a %s live-view URL of Kernel browser %s: %s. No link is published for it.",
                self.mode,
                browser.session_id,
                minted,
            )
            return ""
        else:
            url = minted.url
        return url

    def publish_line(self, browser: Any, url: str) -> str:
        """The log line announcing ``url`` (a control URL is not written out: it is a credential)."""
        if self.mode == CONTROL:
            return (
                f"Kernel live view (control) of browser {browser.session_id}: in the task's Kernel live view link "
                "and XCom (not logged: it steers the browser)."
            )
        return f"Kernel live view of browser {browser.session_id}: {url}"

    def url(self, hook: Any, browser: Any) -> str:
        """Mint (or fall back to) the URL to publish for ``browser`` on this thread; "" for none. Never raises."""
        request = self.request(browser)
        if request is None:
            return ""
        try:
            minted: Any = hook.create_live_view(**request)
        except KernelError as exc:
            minted = exc
        return self._masked(self.settle(browser, minted))

    async def aurl(self, hook: Any, browser: Any) -> str:
        """:meth:`url` without blocking the event loop."""
        request = self.request(browser)
        if request is None:
            return ""
        try:
            minted: Any = await hook.acreate_live_view(**request)
        except KernelError as exc:
            minted = exc
        url = self.settle(browser, minted)
        if url and self.mode == CONTROL and self.mask is not None:
            masked = self.mask(url)
            if asyncio.iscoroutine(masked):
                await masked
        return url

    def _masked(self, url: str) -> str:
        if url and self.mode == CONTROL and self.mask is not None:
            self.mask(url)
        return url


class BrowserWatch:
    """Learns an invocation's browsers during one wait; see the module docstring for when and at what cost.

    :param hook: the :class:`~kernel_provider.hooks.kernel.KernelHook` of the wait (its ``a``-methods are used).
    :param invocation_id: the run.
    :param log: where the URLs are logged (the trigger's logger: the task log).
    :param publish: awaited with the first live-view URL (e.g. to push the link's XCom); its errors are logged.
    :param publisher: which URL of each browser is published (None: read-only URLs, TTL capped at
        :data:`MAX_TTL_SECONDS`).
    """

    def __init__(
        self,
        hook: Any,
        invocation_id: str,
        log: logging.Logger | Any,
        publish: Callable[[str], Awaitable[None]] | None = None,
        publisher: LiveViewPublisher | None = None,
    ) -> None:
        self.hook = hook
        self.invocation_id = invocation_id
        self.log = log
        self.publish = publish
        self.publisher = publisher or LiveViewPublisher(READ, None, log)
        #: session id -> live-view URL ("" for a browser without one), in the order they were first seen.
        self.seen: dict[str, str] = {}
        #: Every list's browsers and when it was taken: the run's browser-seconds so far (its usage and budget).
        self.ledger = BrowserLedger()
        self.lists = 0
        self.hinted = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        #: The first live-view URL seen ("" until then).
        self.first_url = ""
        self._published = False
        self._failing = False
        self._stopping = False

    def start(self) -> None:
        """Start watching on the running loop (the first list is sent at once)."""
        if self._task is None:
            self._task = asyncio.ensure_future(self._loop())

    def hint(self, message: str) -> None:
        """A new log line of the run: when it mentions a browser, list again soon (within the bounds)."""
        if self.hinted < MAX_HINTED_LISTS and BROWSER_HINT.search(message):
            self._wake.set()

    async def stop(self) -> None:
        """Stop watching (the wait is over): a list in progress gets :data:`STOP_GRACE` seconds to finish, then
        the watch is cancelled. Never raises."""
        task, self._task = self._task, None
        if task is None or task.done():
            return
        self._stopping = True
        self._wake.set()
        with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError, Exception):
            await asyncio.wait_for(asyncio.shield(task), STOP_GRACE)
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        interval, scheduled = FIRST_INTERVAL, 0
        while not self._stopping:
            last = loop.time()
            await self.refresh()
            if self._stopping:
                return
            timeout = None if self.seen or scheduled >= MAX_SCHEDULED_LISTS else interval
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
                self.hinted += 1
            except asyncio.TimeoutError:
                scheduled += 1
                interval *= BACKOFF
            if self._stopping:
                return
            self._wake.clear()
            gap = last + HINT_MIN_GAP - loop.time()
            if gap > 0:
                await asyncio.sleep(gap)

    async def refresh(self) -> None:
        """One ``GET /invocations/{id}/browsers``; logs each browser not seen before. Never raises."""
        self.lists += 1
        try:
            browsers = await self.hook.alist_invocation_browsers(self.invocation_id)
        except KernelError as exc:
            if not self._failing:
                self._failing = True
                self.log.warning("Could not list the browsers of Kernel invocation %s: %s", self.invocation_id, exc)
            return
        self._failing = False
        self.ledger.observe(browsers, time.time())
        for browser in browsers:
            if browser.session_id in self.seen:
                continue
            self.seen[browser.session_id] = ""
            if not browser.browser_live_view_url:
                if self.publisher.mode == OFF:
                    continue  # watched for its usage only: no word about live views
                self.log.info(
                    "Kernel browser %s of invocation %s has no live view (headless).",
                    browser.session_id,
                    self.invocation_id,
                )
                continue
            url = self.seen[browser.session_id] = await self.publisher.aurl(self.hook, browser)
            if not url:
                continue
            self.log.info("%s", self.publisher.publish_line(browser, url))
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
