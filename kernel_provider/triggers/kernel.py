"""``KernelInvocationTrigger``: waits in the triggerer for an invocation to finish, streaming its logs.

Every (re)start begins with one ``GET /invocations/{id}``, so a run that ended while the triggerer was down is
seen at once. Then, in ``stream`` mode (default), it follows ``GET /invocations/{id}/events``: ``log`` events
become log lines of the trigger (they reach the task log) and a terminal ``invocation_state`` ends the wait.
A stream that ends early, errors, or stays silent past ``silence_timeout`` is checked with one ``GET`` and
resumed with ``since`` = the last event's timestamp, so no line is lost or printed twice; after
``max_stream_failures`` consecutive broken streams it falls back to polling. ``poll`` mode ``GET``s every
``poll_interval`` seconds (with jitter).

The trigger only reads: it never creates an invocation, so a restart cannot start a second run.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from kernel_provider.completion import ERROR, TIMEOUT, WAIT_MODES, event_for_invocation, make_event
from kernel_provider.exceptions import KernelApiError, KernelAuthError, KernelError, KernelNotFoundError
from kernel_provider.hooks import api
from kernel_provider.hooks.kernel import KernelHook
from kernel_provider.models import Invocation, InvocationStatus

STREAM, POLL = WAIT_MODES
MODES = WAIT_MODES
#: Errors no retry can fix: the wait ends at once.
FATAL_ERRORS: tuple[type[KernelApiError], ...] = (KernelAuthError, KernelNotFoundError)


class KernelInvocationTrigger(BaseTrigger):
    """Fires one event when the invocation ends, the deadline passes, or Kernel cannot be reached.

    All arguments are primitives, so the trigger survives serialization and triggerer restarts.

    :param invocation_id: the invocation to wait for.
    :param kernel_conn_id: Airflow connection of type ``kernel``.
    :param end_time: absolute wall-clock deadline (``time.time()`` seconds). When it passes, a ``timeout`` event
        fires; the trigger itself does not cancel anything (the task decides). None: wait forever.
    :param poll_interval: seconds between ``GET``s in poll mode (and the pause before retrying a broken stream).
    :param mode: ``"stream"`` (follow the event stream) or ``"poll"``.
    :param stream_logs: write the action's log lines into the trigger/task log (stream mode).
    :param max_consecutive_failures: failed checks in a row (each already retried by the hook's policy) before
        giving up with an ``error`` event.
    :param silence_timeout: seconds without any event (Kernel sends heartbeats) before a stream counts as broken.
    :param max_stream_failures: broken streams in a row before falling back to polling.
    :param cancel_on_kill: cancel the invocation when a user marks or clears the deferred task (Airflow 3.3+).
    """

    def __init__(
        self,
        invocation_id: str,
        kernel_conn_id: str = KernelHook.default_conn_name,
        end_time: float | None = None,
        poll_interval: float = 5.0,
        mode: str = STREAM,
        stream_logs: bool = True,
        max_consecutive_failures: int = 5,
        silence_timeout: float = 60.0,
        max_stream_failures: int = 5,
        cancel_on_kill: bool = True,
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.invocation_id = invocation_id
        self.kernel_conn_id = kernel_conn_id
        self.end_time = None if end_time is None else float(end_time)
        self.poll_interval = float(poll_interval)
        self.mode = mode
        self.stream_logs = bool(stream_logs)
        self.max_consecutive_failures = int(max_consecutive_failures)
        self.silence_timeout = float(silence_timeout)
        self.max_stream_failures = int(max_stream_failures)
        self.cancel_on_kill = bool(cancel_on_kill)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "invocation_id": self.invocation_id,
                "kernel_conn_id": self.kernel_conn_id,
                "end_time": self.end_time,
                "poll_interval": self.poll_interval,
                "mode": self.mode,
                "stream_logs": self.stream_logs,
                "max_consecutive_failures": self.max_consecutive_failures,
                "silence_timeout": self.silence_timeout,
                "max_stream_failures": self.max_stream_failures,
                "cancel_on_kill": self.cancel_on_kill,
            },
        )

    @property
    def hook(self) -> KernelHook:
        """The hook shared by every wait on this event loop for the connection (called from async code only)."""
        return KernelHook.shared(self.kernel_conn_id, getattr(self, "_component", None))

    async def run(self) -> AsyncIterator[TriggerEvent]:
        # Only the triggerer calls run() (workers call wait()): mark its requests in the User-Agent.
        self._component = "triggerer"
        yield TriggerEvent(await self.wait())

    async def wait(self) -> dict[str, Any]:
        """The whole wait; returns the event payload. Also used by workers that wait without deferring."""
        try:
            remaining = self._remaining()
            if remaining is not None and remaining <= 0:
                return self._timeout_event()
            waiter = _Waiter(self)
            if remaining is None:
                return await waiter.run()
            try:
                return await asyncio.wait_for(waiter.run(), timeout=remaining)
            except asyncio.TimeoutError:
                return self._timeout_event()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # never let the triggerer see a raw exception: the task gets an error event
            self.log.exception("Waiting for Kernel invocation %s failed.", self.invocation_id)
            return make_event(ERROR, self.invocation_id, message=f"{type(exc).__name__}: {exc}")

    async def on_kill(self) -> None:
        """Called by Airflow 3.3+ only when a user marks or clears the deferred task: stop the run."""
        if not self.cancel_on_kill:
            return
        self.log.info("Task was killed while waiting; cancelling Kernel invocation %s.", self.invocation_id)
        try:
            await self.hook.aexecute(api.cancel_invocation(self.invocation_id, "Airflow task was stopped"))
        except Exception as exc:
            self.log.warning("Could not cancel Kernel invocation %s: %s", self.invocation_id, exc)

    async def cleanup(self) -> None:
        """Runs on every exit, triggerer shutdown included, so it must never cancel the invocation."""

    def _remaining(self) -> float | None:
        return None if self.end_time is None else self.end_time - time.time()

    def _timeout_event(self) -> dict[str, Any]:
        return make_event(TIMEOUT, self.invocation_id,
                          message=f"Invocation {self.invocation_id} did not finish before the deadline.")


class _Waiter:
    """The state of one wait: failure counters and the position in the log stream."""

    def __init__(self, trigger: KernelInvocationTrigger) -> None:
        self.t = trigger
        self.log = trigger.log
        self.failures = 0
        self.last_error: str = ""
        self.last_ts: str | None = None  # timestamp of the newest log line seen, sent as ``since`` on resume
        self.last_key: str | None = None
        self.seen_at_last: Counter[str] = Counter()  # lines logged at ``last_ts``
        self.replay: Counter[str] = Counter()  # of those, the ones a resumed stream may send again

    async def run(self) -> dict[str, Any]:
        done = await self.check()
        if done is not None:
            if self.t.mode == STREAM and self.t.stream_logs and done["status"] != ERROR:
                await self.replay_logs()
            return done
        if self.t.mode == STREAM:
            done = await self.follow_stream()
            if done is not None:
                return done
            self.log.warning("The event stream of %s kept breaking; polling every %.1fs instead.",
                             self.t.invocation_id, self.t.poll_interval)
        while True:
            await asyncio.sleep(_jitter(self.t.poll_interval))
            done = await self.check()
            if done is not None:
                return done

    async def replay_logs(self) -> None:
        """The run ended before the wait began (or while the triggerer was down): Kernel replays a finished
        invocation's log lines on its event stream, so read it once to put them in the task log too."""
        try:
            await asyncio.wait_for(self.read_stream_once(), timeout=min(30.0, self.t.silence_timeout))
        except (asyncio.TimeoutError, KernelError) as exc:
            self.log.info("Could not replay the log of invocation %s: %s", self.t.invocation_id, exc)

    async def check(self) -> dict[str, Any] | None:
        """One GET. Returns the final event when the wait is over (finished, or failed beyond recovery)."""
        try:
            invocation = await self.t.hook.aexecute(api.get_invocation(self.t.invocation_id))
        except FATAL_ERRORS as exc:
            return make_event(ERROR, self.t.invocation_id, message=str(exc))
        except KernelError as exc:
            return self.count_failure(exc)
        self.failures = 0
        return self.final(invocation)

    def count_failure(self, exc: BaseException) -> dict[str, Any] | None:
        self.failures += 1
        self.last_error = f"{type(exc).__name__}: {exc}"
        self.log.warning("Checking Kernel invocation %s failed (%d/%d): %s", self.t.invocation_id,
                         self.failures, self.t.max_consecutive_failures, exc)
        if self.failures >= self.t.max_consecutive_failures:
            return make_event(ERROR, self.t.invocation_id,
                              message=f"Gave up after {self.failures} failed checks in a row: {self.last_error}")
        return None

    def final(self, invocation: Invocation) -> dict[str, Any] | None:
        if invocation.status is InvocationStatus.UNKNOWN:
            self.log.info("Invocation %s has status %r (unknown to this provider); still waiting.",
                          invocation.id, invocation.raw_status)
        return event_for_invocation(invocation) if invocation.is_terminal else None

    async def follow_stream(self) -> dict[str, Any] | None:
        broken = 0
        while broken < self.t.max_stream_failures:
            progressed, done, problem = await self.read_stream_once()
            if done is not None:
                return done
            broken = 0 if progressed else broken + 1
            self.log.info("Event stream of %s ended before the invocation finished (%s); checking and resuming.",
                          self.t.invocation_id, problem)
            done = await self.check()
            if done is not None:
                return done
            await asyncio.sleep(_jitter(min(self.t.poll_interval, 0.5 * 2 ** broken)))
        return None

    async def read_stream_once(self) -> tuple[bool, dict[str, Any] | None, str]:
        """Read one connection of the stream. Returns (delivered new log lines?, final event, why it ended)."""
        progressed = False
        self.replay = Counter(self.seen_at_last)
        events = self.t.hook.stream_events(self.t.invocation_id, since=self.last_ts,
                                           silence_timeout=self.t.silence_timeout)
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
                        return progressed, None, f"error event {error.get('code')}: {error.get('message')}"
        except FATAL_ERRORS as exc:
            return progressed, make_event(ERROR, self.t.invocation_id, message=str(exc)), ""
        except KernelError as exc:
            return progressed, None, str(exc)
        return progressed, None, "stream closed"

    def on_log(self, event: dict[str, Any]) -> bool:
        """Log a line once, even when a resumed stream re-sends lines that share the resume timestamp."""
        stamp = str(event.get("timestamp") or "")
        message = str(event.get("message") or "")
        if stamp:
            key = _timestamp_key(stamp)
            if self.last_key is not None and key < self.last_key:
                return False
            if key == self.last_key and self.replay[message] > 0:
                self.replay[message] -= 1
                return False
            if key != self.last_key:
                self.last_key, self.last_ts = key, stamp
                self.seen_at_last = Counter()
                self.replay = Counter()
            self.seen_at_last[message] += 1
        if self.t.stream_logs:
            for line in message.rstrip("\n").split("\n"):
                self.log.info("[kernel %s] %s", self.t.invocation_id, line)
        return True


def _timestamp_key(stamp: str) -> str:
    """Sortable form of an RFC 3339 UTC timestamp with any number of fractional digits."""
    text = stamp.strip().rstrip("Zz")
    if text.endswith("+00:00"):
        text = text[:-6]
    head, _, fraction = text.partition(".")
    return f"{head}.{fraction.ljust(9, '0')[:9]}"


def _jitter(seconds: float) -> float:
    return max(0.05, seconds * random.uniform(0.8, 1.2))
