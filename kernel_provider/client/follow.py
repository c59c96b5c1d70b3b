"""Following one invocation until it ends: its event stream (or polling), its log lines, and the final event.

Airflow-free: the triggerer runs it through ``KernelInvocationTrigger``, and a worker that waits without
deferring runs the very same trigger. How a stream is resumed so no line is lost or logged twice: see
:meth:`InvocationFollower.on_log`; the position can be kept across restarts by a :class:`LogPosition` store.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
from collections import Counter
from collections.abc import AsyncGenerator, Callable, Mapping
from typing import Any, Protocol

from kernel_provider.client.browser_usage import BROWSERS_EVENT_KEY, BrowserBudget, final_browsers
from kernel_provider.client.browser_watch import LIVE_VIEW_EVENT_KEY, OFF, BrowserWatch
from kernel_provider.client.errors import KernelApiError, KernelAuthError, KernelError, KernelNotFoundError
from kernel_provider.client.events import ERROR, FAILED, WAIT_MODES, event_for_invocation, make_event
from kernel_provider.client.models import Invocation, InvocationStatus
from kernel_provider.client.text import safe_log_lines, safe_text

STREAM, POLL = WAIT_MODES
#: Errors no retry can fix: the wait ends at once.
FATAL_ERRORS: tuple[type[KernelApiError], ...] = (KernelAuthError, KernelNotFoundError)
#: Digests of lines sharing the saved position's timestamp that are kept (lines rarely share a nanosecond).
CURSOR_MAX_DIGESTS = 256


class InvocationSource(Protocol):
    """What following needs from Kernel (``KernelHook`` provides it)."""

    async def aget_invocation(self, invocation_id: str) -> Invocation:
        """One read of the invocation."""

    def astream_events(
        self, invocation_id: str, *, since: str | None = None, silence_timeout: float = 60.0
    ) -> AsyncGenerator[dict[str, Any], None]:
        """The invocation's event stream from ``since`` (one connection)."""


class LogPosition(Protocol):
    """Where the position in the log stream is kept across restarts (the trigger's log cursor)."""

    #: Returns the position to save; set by the follower once it has restored the saved one.
    source: Callable[[], dict[str, Any]] | None

    async def load(self) -> Mapping[str, Any] | None:
        """The saved position, or None."""

    def moved(self) -> None:
        """The position advanced: save it soon."""


class InvocationFollower:
    """One wait for one invocation: stream (or poll) until it ends, logging its lines once each.

    :param source: where invocations and their event streams are read (the hook).
    :param invocation_id: the invocation to follow.
    :param log: where the action's log lines and the wait's own messages go.
    :param mode: ``"stream"`` (follow the event stream; fall back to polling after ``max_stream_failures``
        broken streams in a row) or ``"poll"``.
    :param poll_interval: seconds between reads when polling (with jitter), and the longest pause before
        resuming a broken stream.
    :param stream_logs: write the action's log lines to ``log``.
    :param max_consecutive_failures: failed reads in a row (each already retried by the client's policy) before
        the wait ends with an ``error`` event.
    :param silence_timeout: seconds without any event before a stream counts as broken.
    :param max_stream_failures: broken streams in a row (none delivering a new line) before polling instead.
    :param position: where the log position is kept across restarts; None: nowhere.
    :param watch: the run's browsers, watched beside the wait (live view, replays, usage); None: not watched.
    :param track_usage: with a ``watch``: after the wait, look the browsers it saw up for their usage and carry
        them in the event (key ``browsers``; see :mod:`kernel_provider.client.browser_usage`).
    :param budget: with a ``watch``: cancel the run once its browser-seconds pass this budget; None: no budget.
    """

    def __init__(
        self,
        *,
        source: InvocationSource,
        invocation_id: str,
        log: logging.Logger | Any,
        mode: str = STREAM,
        poll_interval: float = 5.0,
        stream_logs: bool = True,
        max_consecutive_failures: int = 5,
        silence_timeout: float = 60.0,
        max_stream_failures: int = 5,
        position: LogPosition | None = None,
        watch: BrowserWatch | None = None,
        track_usage: bool = False,
        budget: BrowserBudget | None = None,
    ) -> None:
        if mode not in WAIT_MODES:
            raise ValueError(f"mode must be one of {WAIT_MODES}, got {mode!r}")
        self.source = source
        self.invocation_id = invocation_id
        self.log = log
        self.mode = mode
        self.poll_interval = poll_interval
        self.stream_logs = stream_logs
        self.max_consecutive_failures = max_consecutive_failures
        self.silence_timeout = silence_timeout
        self.max_stream_failures = max_stream_failures
        self.cursor = position
        self.watch = watch
        self.track_usage = track_usage
        self.budget = budget
        self.failures = 0
        self.last_error: str = ""
        self.last_ts: str | None = None  # timestamp of the newest log line seen, sent as ``since`` on resume
        self.last_key: str | None = None
        self.seen_at_last: Counter[str] = Counter()  # digests of the lines logged at ``last_ts``
        self.replay: Counter[str] = Counter()  # of those, the ones a resumed stream may send again

    async def run(self) -> dict[str, Any]:
        """The wait, with the run's browsers watched beside it (and their replays reported if it failed)."""
        if self.watch is None:
            return await self.follow()
        self.watch.start()
        try:
            done = await (self.follow() if self.budget is None else self.budget.race(self.follow()))
        finally:
            await self.watch.stop()
        if done.get("status") == FAILED and self.watch.publisher.mode != OFF:
            await self.watch.report_replays()
        if self.track_usage:
            done = {**done, BROWSERS_EVENT_KEY: await final_browsers(self.watch)}
        if self.watch.first_url:
            # The task sets its link from the event too: a trigger run without a task instance (dag.test) cannot.
            done = {**done, LIVE_VIEW_EVENT_KEY: self.watch.first_url}
        return done

    async def follow(self) -> dict[str, Any]:
        """Stream (or poll) until the wait is over; returns the event."""
        if self.cursor is not None:
            # Read before any stream is opened: a restarted trigger resumes where the previous instance stopped
            # logging.
            self.restore(await self.cursor.load())
            self.cursor.source = self.position
        if self.mode == STREAM:
            # No GET first: Kernel sends the current state as the stream's first event, and a finished
            # invocation's stream replays its log lines, then its final state. A stream that cannot be opened is
            # checked with one GET (see follow_stream).
            done = await self.follow_stream()
            if done is not None:
                return done
            self.log.warning(
                "The event stream of %s kept breaking; polling every %.1fs instead.",
                self.invocation_id,
                self.poll_interval,
            )
        else:
            done = await self.check()
            if done is not None:
                return done
        while True:
            await asyncio.sleep(jitter(self.poll_interval))
            done = await self.check()
            if done is not None:
                return done

    async def check(self) -> dict[str, Any] | None:
        """One GET. Returns the final event when the wait is over (finished, or failed beyond recovery)."""
        try:
            invocation = await self.source.aget_invocation(self.invocation_id)
        except FATAL_ERRORS as exc:
            return make_event(ERROR, self.invocation_id, message=str(exc))
        except KernelError as exc:
            return self.count_failure(exc)
        self.failures = 0
        return self.final(invocation)

    def count_failure(self, exc: BaseException) -> dict[str, Any] | None:
        """Count a failed read; the ``error`` event once ``max_consecutive_failures`` are reached in a row."""
        self.failures += 1
        self.last_error = f"{type(exc).__name__}: {exc}"
        self.log.warning(
            "Checking Kernel invocation %s failed (%d/%d): %s",
            self.invocation_id,
            self.failures,
            self.max_consecutive_failures,
            exc,
        )
        if self.failures >= self.max_consecutive_failures:
            return make_event(
                ERROR,
                self.invocation_id,
                message=f"Gave up after {self.failures} failed checks in a row: {self.last_error}",
            )
        return None

    def final(self, invocation: Invocation) -> dict[str, Any] | None:
        """The event of a finished invocation; None while it runs (an unknown status counts as running)."""
        if invocation.status is InvocationStatus.UNKNOWN:
            self.log.info(
                "Invocation %s has status %r (unknown to this provider); still waiting.",
                invocation.id,
                invocation.raw_status,
            )
        return event_for_invocation(invocation) if invocation.is_terminal else None

    async def follow_stream(self) -> dict[str, Any] | None:
        """Read the stream, resuming it when it breaks; None after ``max_stream_failures`` fruitless tries."""
        broken = 0
        while broken < self.max_stream_failures:
            progressed, done, problem = await self.read_stream_once()
            if done is not None:
                return done
            broken = 0 if progressed else broken + 1
            self.log.info(
                "Event stream of %s ended before the invocation finished (%s); checking and resuming.",
                self.invocation_id,
                problem,
            )
            done = await self.check()
            if done is not None:
                return done
            await asyncio.sleep(jitter(min(self.poll_interval, 0.5 * 2**broken)))
        return None

    async def read_stream_once(self) -> tuple[bool, dict[str, Any] | None, str]:
        """Read one connection of the stream. Returns (delivered new log lines?, final event, why it ended)."""
        progressed = False
        self.replay = Counter(self.seen_at_last)
        events = self.source.astream_events(
            self.invocation_id, since=self.last_ts, silence_timeout=self.silence_timeout
        )
        try:
            # aclosing: leaving the loop early (terminal state) must close the stream's response now, not
            # whenever the generator is garbage-collected (possibly after its event loop is gone).
            async with contextlib.aclosing(events):
                async for event in events:
                    kind = event.get("event")
                    if kind == "log":
                        progressed = self.on_log(event) or progressed
                    elif kind == "invocation_state":
                        data = event.get("invocation")
                        if isinstance(data, dict):
                            done = self.final(Invocation.from_api(data))
                            if done is not None:
                                return progressed, done, ""
                    elif kind == "error":
                        error = event.get("error") or {}
                        return progressed, None, safe_text(f"error event {error.get('code')}: {error.get('message')}")
        except FATAL_ERRORS as exc:
            return progressed, make_event(ERROR, self.invocation_id, message=str(exc)), ""
        except KernelError as exc:
            return progressed, None, str(exc)
        return progressed, None, "stream closed"

    def on_log(self, event: dict[str, Any]) -> bool:
        """Log a line once, even when a resumed stream re-sends lines that share the resume timestamp."""
        stamp = str(event.get("timestamp") or "")
        message = str(event.get("message") or "")
        if stamp:
            key = timestamp_key(stamp)
            digest = line_digest(message)
            if self.last_key is not None and key < self.last_key:
                return False
            if key == self.last_key and self.replay[digest] > 0:
                self.replay[digest] -= 1
                return False
            if key != self.last_key:
                self.last_key, self.last_ts = key, stamp
                self.seen_at_last = Counter()
                self.replay = Counter()
            self.seen_at_last[digest] += 1
        if self.watch is not None:
            self.watch.hint(message)
        if self.stream_logs:
            for line in safe_log_lines(message):
                self.log.info("[kernel %s] %s", self.invocation_id, line)
        if stamp and self.cursor is not None:
            self.cursor.moved()  # after logging: the saved position never runs ahead of the task log
        return True

    def position(self) -> dict[str, Any]:
        """The position to save: where to resume and which lines at that instant are already logged."""
        return {
            "invocation_id": self.invocation_id,
            "since": self.last_ts,
            "seen": dict(self.seen_at_last.most_common(CURSOR_MAX_DIGESTS)),
        }

    def restore(self, cursor: Mapping[str, Any] | None) -> None:
        """Resume after a saved position (see :meth:`position`); anything unusable is ignored."""
        if not cursor or cursor.get("invocation_id") != self.invocation_id:
            return
        since, seen = cursor.get("since"), cursor.get("seen")
        if not isinstance(since, str) or not since:
            return
        self.last_ts, self.last_key = since, timestamp_key(since)
        self.seen_at_last = Counter(
            {
                str(k): v
                for k, v in (seen if isinstance(seen, Mapping) else {}).items()
                if isinstance(v, int) and not isinstance(v, bool) and v > 0
            }
        )
        self.log.info(
            "Resuming the log of Kernel invocation %s after %s (lines before were logged by an earlier "
            "run of this trigger).",
            self.invocation_id,
            since,
        )


def timestamp_key(stamp: str) -> str:
    """Sortable form of an RFC 3339 UTC timestamp with any number of fractional digits."""
    text = stamp.strip().rstrip("Zz")
    if text.endswith("+00:00"):
        text = text[:-6]
    head, _, fraction = text.partition(".")
    return f"{head}.{fraction.ljust(9, '0')[:9]}"


def jitter(seconds: float) -> float:
    """``seconds`` give or take 20 % (at least 50 ms), so many waits do not poll in step."""
    return max(0.05, seconds * random.uniform(0.8, 1.2))


def line_digest(message: str) -> str:
    """A short stand-in for a log line in the saved position (which stays small however long the lines are)."""
    return hashlib.blake2b(message.encode("utf-8", "replace"), digest_size=8).hexdigest()
