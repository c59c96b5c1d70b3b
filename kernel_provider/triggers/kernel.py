"""``KernelInvocationTrigger``: waits in the triggerer for an invocation to finish, streaming its logs.

In ``stream`` mode (default) every (re)start opens ``GET /invocations/{id}/events`` at once, with no ``GET`` of
the invocation first: Kernel sends the current ``invocation_state`` as the first event on connect (so a run that
ended while the triggerer was down is seen at once), and a finished invocation's stream replays its log lines,
then its final state. ``log`` events become log lines of the trigger (they reach the task log) and a terminal
``invocation_state`` ends the wait. ``poll`` mode starts with one ``GET``.
A stream that ends early, errors, or stays silent past ``silence_timeout`` is checked with one ``GET`` and
resumed with ``since`` = the last event's timestamp, so no line is lost or printed twice; after
``max_stream_failures`` consecutive broken streams it falls back to polling. ``poll`` mode ``GET``s every
``poll_interval`` seconds (with jitter).

The trigger never creates an invocation, so a restart cannot start a second run. It stops one (PATCH ``failed``
and DELETE of its browsers, sent at once, each within a time budget) in three cases:

* **on_kill** (Airflow 3.3+, when a user marks or clears the deferred task): within
  ``[triggerer] on_kill_timeout`` (80% of it, at least 1 s), after which the triggerer gives up on ``on_kill``.
* **at the deadline**, when ``cancel_on_timeout`` is set: Airflow 2 may fail a deferred task whose
  ``execution_timeout`` passed without ever resuming it (and on 3.x the resume may never come), so the trigger
  stops the run itself before it fires its ``timeout`` event (``"cancelled": true`` says it did).
* **cleanup() on Airflow 2**, which has no trigger ``on_kill``: when the task was marked, cleared or timed out
  by the scheduler, the triggerer just cancels the trigger and calls ``cleanup()``. ``cleanup()`` also runs when
  the triggerer shuts down or hands the trigger over, when the run must go on, so it looks the task instance up
  in the metadata DB (in a worker thread) and cancels only when it is no longer ``deferred`` (and not resuming
  with an event). On Airflow 3 ``cleanup()`` never cancels: ``on_kill`` does.

**Log position across restarts.** A trigger with a task instance (the triggerer sets ``task_instance``) keeps
its position in the event stream (the last line's timestamp, plus short digests of the lines sharing it) as the
XCom ``kernel_log_cursor`` of that task instance. It is written from a worker thread whenever it moves (one
write at a time, at most one per ``CURSOR_MIN_WRITE_INTERVAL`` seconds, the newest position each time) and in
``cleanup()``; a trigger started again on the same task instance try (triggerer restart or failover) reads it
first and resumes the stream there, so no line reaches the task log twice. Reading or writing it never fails
the wait: the worst case is lines logged twice. A wait on a worker (no task instance) keeps nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import random
import threading
import time
import weakref
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, NamedTuple, TypeVar

from airflow import __version__ as AIRFLOW_VERSION
from airflow.triggers.base import BaseTrigger, TriggerEvent

from kernel_provider.client.errors import KernelApiError, KernelAuthError, KernelError, KernelNotFoundError
from kernel_provider.client.models import Invocation, InvocationStatus
from kernel_provider.client.text import safe_log_lines, safe_text
from kernel_provider.completion import ERROR, FAILED, TIMEOUT, WAIT_MODES, event_for_invocation, make_event
from kernel_provider.hooks.kernel import KernelHook
from kernel_provider.live_view import (
    LIVE_VIEW_EVENT_KEY,
    OFF,
    BrowserWatch,
    LiveViewPublisher,
    check_live_view,
    mask_url,
)

try:  # Airflow 3: the standard provider's timer; Airflow 2: core's
    from airflow.providers.standard.triggers.temporal import DateTimeTrigger
except ImportError:  # pragma: no cover - depends on the Airflow version
    from airflow.triggers.temporal import DateTimeTrigger  # type: ignore[no-redef]

STREAM, POLL = WAIT_MODES
MODES = WAIT_MODES
#: Errors no retry can fix: the wait ends at once.
FATAL_ERRORS: tuple[type[KernelApiError], ...] = (KernelAuthError, KernelNotFoundError)
#: Seconds the trigger may spend cancelling the invocation when its deadline passes (``cancel_on_timeout``).
TIMEOUT_CANCEL_BUDGET = 20.0
#: Seconds ``cleanup()`` may spend cancelling on Airflow 2 (after the task-instance lookup).
CLEANUP_CANCEL_BUDGET = 20.0
#: Share of ``[triggerer] on_kill_timeout`` that ``on_kill`` spends cancelling (the rest is margin), and its floor.
ON_KILL_BUDGET_SHARE = 0.8
MIN_ON_KILL_BUDGET = 1.0
#: Seconds after a task deferred before its wait may report (see ``resume_not_before``). Not Kernel's: when a
#: trigger fires before the deferring worker's process has exited (seconds on a busy machine), Airflow's scheduler
#: can see the executor report that exit while the resumed task is already queued, and fail it ("state changed
#: externally"; seen on 3.0 with an action that failed at once, and on 3.3 with 1 s timers).
MIN_DEFERRAL = 5.0
#: XCom key (on the trigger's task instance) of the log cursor.
LOG_CURSOR_XCOM_KEY = "kernel_log_cursor"
#: Shortest pause between two cursor writes of one trigger: a chatty action moves the cursor on every line.
CURSOR_MIN_WRITE_INTERVAL = 1.0
#: Longest a metadata-DB call (cursor write, task-instance lookup) is waited for.
DB_CALL_TIMEOUT = 10.0
#: Longest the saved log position is waited for when a trigger starts. Longer than other calls: the answer is
#: what keeps lines from being logged twice, and it is asked while a triggerer that has just (re)started is busiest
#: (on a loaded machine its supervisor took over 10 s to answer). The stream starts after it.
CURSOR_READ_TIMEOUT = 60.0
#: Pause before writing the cursor again after a failed write.
CURSOR_RETRY_AFTER_FAILURE = 30.0
#: Digests of lines sharing the cursor's timestamp kept in the cursor (lines rarely share a nanosecond).
CURSOR_MAX_DIGESTS = 256
AIRFLOW_2 = AIRFLOW_VERSION.startswith("2.")
T = TypeVar("T")
log = logging.getLogger(__name__)


class KernelInvocationTrigger(BaseTrigger):
    """Fires one event when the invocation ends, the deadline passes, or Kernel cannot be reached.

    All arguments are primitives, so the trigger survives serialization and triggerer restarts.

    Stopping the run from outside: Airflow 3.3+ calls :meth:`on_kill` when a user marks or clears the deferred
    task. Airflow 2 has no trigger ``on_kill``: marking, clearing or the scheduler's deferral timeout only cancel
    the trigger and call :meth:`cleanup`, which also runs at triggerer shutdown. So on Airflow 2 ``cleanup()``
    reads the task instance's current state from the metadata DB (in a worker thread) and cancels the invocation
    only when the task is no longer ``deferred`` (and not resuming with an event); at a shutdown or handover the
    task instance is still ``deferred`` and the run goes on. Lookup or cancel errors are logged, never raised.

    :param invocation_id: the invocation to wait for.
    :param kernel_conn_id: Airflow connection of type ``kernel``.
    :param end_time: absolute wall-clock deadline (``time.time()`` seconds). When it passes, a ``timeout`` event
        fires (after cancelling the invocation when ``cancel_on_timeout`` is set). None: wait forever.
    :param poll_interval: seconds between ``GET``s in poll mode (and the pause before retrying a broken stream).
    :param mode: ``"stream"`` (follow the event stream) or ``"poll"``.
    :param stream_logs: write the action's log lines into the trigger/task log (stream mode).
    :param max_consecutive_failures: failed checks in a row (each already retried by the hook's policy) before
        giving up with an ``error`` event.
    :param silence_timeout: seconds without any event (Kernel sends heartbeats) before a stream counts as broken.
    :param max_stream_failures: broken streams in a row before falling back to polling.
    :param cancel_on_kill: cancel the invocation when the deferred task is stopped from outside: on Airflow 3.3+
        in ``on_kill`` (a user marked or cleared the task); on Airflow 2 in ``cleanup()`` when the task instance is
        no longer deferred (marked, cleared, or failed by the scheduler's deferral timeout). Never at a triggerer
        shutdown or restart, and never for a wait that already fired its event.
    :param cancel_on_timeout: when ``end_time`` passes, cancel the invocation (within ``TIMEOUT_CANCEL_BUDGET``
        seconds) before firing the ``timeout`` event, whose ``cancelled`` says whether that worked. For waits
        whose task might never resume to cancel (Airflow 2's deferral timeout); a sensor that only watches
        leaves it False. It does not change when the deadline is.
    :param live_view: ``"read"``: learn the run's browsers while waiting, mint a read-only live-view URL of each
        headful one (``POST /browsers/{id}/live_view``, ``ttl_seconds`` = the time to ``end_time``, at most an
        hour), log it once and set the task's "Kernel live view" link to the first; when the run failed, log its
        browsers' replays (see :mod:`kernel_provider.live_view` for when it lists, what that costs in requests,
        and the fallback where Kernel lacks the route). ``"control"``: the same with control URLs, masked and not
        logged. ``"off"`` (False, the default here, so a trigger serialized by an older provider version keeps its
        old requests; the operator and the sensor pass ``"read"`` by default): none of it. True means ``"read"``.
    :param try_number: the try of the task instance that deferred, echoed in the event (``try_number``) so the
        resumed task can tell a previous try's result from its own (see
        :func:`kernel_provider.completion.from_an_earlier_try`). None: not echoed.
    :param log_cursor_seeded: the deferring task pushed the empty log position (:func:`seed_log_cursor`) before
        the trigger first ran, so reading it can never miss. False (a sensor that starts in the triggerer, with no
        worker to seed it): the position is not read, since reading an XCom that was never written logs an
        "XCom not found" ERROR in Airflow 3's triggerer; a restarted trigger may then log lines again.
    :param resume_not_before: absolute wall-clock time (``time.time()`` seconds) before which a wait run by the
        triggerer does not report its event, even when the invocation finished sooner: the deferring task sets it
        :data:`MIN_DEFERRAL` seconds after it deferred. Ignored for waits without a task instance (a worker's
        wait, ``dag.test()``'s in-line trigger). None: report at once.
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
        cancel_on_timeout: bool = False,
        live_view: bool | str = False,
        try_number: int | None = None,
        resume_not_before: float | None = None,
        log_cursor_seeded: bool = True,
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
        self.cancel_on_timeout = bool(cancel_on_timeout)
        self.live_view = check_live_view(live_view)
        self.log_cursor_seeded = bool(log_cursor_seeded)
        self.try_number = None if try_number is None else int(try_number)
        self.resume_not_before = None if resume_not_before is None else float(resume_not_before)
        #: The task instance whose link a wait on a worker (no ``task_instance``) sets; see :meth:`link_to`.
        self._link_key: _TiKey | None = None
        self._finished = False  # wait() produced its event: nothing left to cancel from cleanup()
        self._cursor: _LogCursor | None = None

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """The classpath and the constructor's keyword arguments (primitives only), as Airflow stores them."""
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
                "cancel_on_timeout": self.cancel_on_timeout,
                "live_view": self.live_view,
                "try_number": self.try_number,
                "resume_not_before": self.resume_not_before,
                "log_cursor_seeded": self.log_cursor_seeded,
            },
        )

    def link_to(self, ti: Any) -> None:
        """For a wait on a worker: the task instance whose "Kernel live view" link the wait sets (a trigger run
        by the triggerer uses its own ``task_instance``). Outside Airflow's task runner (``execute()`` called
        directly) there is no XCom to write, and Airflow 3.0-3.2 would block the write rather than refuse it."""
        if _under_task_runner():
            self._link_key = _ti_key(ti)

    async def publish_live_view(self, url: str) -> None:
        """Push the first browser's live-view URL as the task instance's XCom (the link reads it), off the loop."""
        key = _ti_key(getattr(self, "task_instance", None)) or self._link_key
        if key is not None:
            await _in_db_thread(_write_live_view, key, url)

    async def mask_live_view(self, url: str) -> None:
        """Register a control URL with the secret masker, off the loop (Airflow 3 asks the supervisor)."""
        await _in_db_thread(mask_url, url)

    @property
    def hook(self) -> KernelHook:
        """The hook shared by every wait on this event loop for the connection (called from async code only)."""
        return KernelHook.shared(self.kernel_conn_id, getattr(self, "_component", None))

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Yields exactly one event: the payload of :meth:`wait`."""
        # Only the triggerer calls run() (workers call wait()): mark its requests in the User-Agent.
        self._component = "triggerer"
        yield TriggerEvent(await self.wait())

    async def wait(self) -> dict[str, Any]:
        """The whole wait; returns the event payload. Also used by workers that wait without deferring.

        Never raises (except when cancelled): any failure becomes an ``error`` event.
        """
        try:
            event = await self._wait_until_deadline()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # never let the triggerer see a raw exception: the task gets an error event
            self.log.exception("Waiting for Kernel invocation %s failed.", self.invocation_id)
            event = make_event(ERROR, self.invocation_id, message=f"{type(exc).__name__}: {exc}")
        self._finished = True
        if self.try_number is not None:
            event["try_number"] = self.try_number
        if self.resume_not_before is not None and getattr(self, "task_instance", None) is not None:
            early = self.resume_not_before - time.time()
            if early > 0:
                await asyncio.sleep(early)
        return event

    async def _wait_until_deadline(self) -> dict[str, Any]:
        remaining = self._remaining()
        if remaining is not None and remaining <= 0:
            return await self._deadline_passed()
        self._cursor = _LogCursor.for_trigger(self)
        waiter = _Waiter(self)
        if remaining is None:
            return await waiter.run()
        try:
            return await asyncio.wait_for(waiter.run(), timeout=remaining)
        except asyncio.TimeoutError:
            return await self._deadline_passed()

    async def on_kill(self) -> None:
        """Called by Airflow 3.3+ only when a user marks or clears the deferred task: stop the run.

        Bounded by ``[triggerer] on_kill_timeout`` (read now): the cancel gets 80% of it (at least 1 s), so it
        ends, and says how it went, before the triggerer gives up on ``on_kill``. Never raises.
        """
        if not self.cancel_on_kill:
            return
        budget = _on_kill_budget()
        self.log.info(
            "Task was stopped while waiting; cancelling Kernel invocation %s (within %.1fs).",
            self.invocation_id,
            budget,
        )
        await self._cancel("the Airflow task was stopped", budget)

    async def cleanup(self) -> None:
        """Runs on every exit of the trigger, triggerer shutdown included. Never raises.

        Always: writes the log cursor's latest position (see the module docstring). On Airflow 2 only, with
        ``cancel_on_kill`` and a wait that had not finished: looks up the task instance's state in the metadata DB
        (in a worker thread) and cancels the invocation when the task was stopped from outside (see
        :func:`_task_was_stopped`); a task instance still ``deferred`` means the triggerer is shutting down or
        handing the trigger over, and the run goes on. On Airflow 3 this never cancels (``on_kill`` does).
        """
        if self._cursor is not None:
            await self._cursor.flush()
        if AIRFLOW_2 and self.cancel_on_kill and not self._finished:
            try:
                await self._cancel_if_task_was_stopped()
            except Exception as exc:
                self.log.warning("Could not decide whether to cancel Kernel invocation %s: %s", self.invocation_id, exc)

    async def _cancel_if_task_was_stopped(self) -> None:
        key = _ti_key(getattr(self, "task_instance", None))
        if key is None:
            return  # not run by a triggerer (or its task instance is unreadable): nothing to decide from
        try:
            row = await _in_db_thread(_ti_state_airflow2, key)
        except Exception as exc:
            self.log.warning(
                "Could not read the state of task instance %s, so Kernel invocation %s is left running: %s",
                key.label,
                self.invocation_id,
                exc,
            )
            return
        state = None if row is None else row[0]
        if not _task_was_stopped(row):
            self.log.info(
                "Task instance %s is still %s (the triggerer is stopping or handing the trigger over); "
                "Kernel invocation %s keeps running.",
                key.label,
                state,
                self.invocation_id,
            )
            return
        why = "was removed" if row is None else f"is {state or 'cleared'}"
        self.log.info("Task instance %s %s; cancelling Kernel invocation %s.", key.label, why, self.invocation_id)
        if await self._cancel(f"Airflow task instance {why}", CLEANUP_CANCEL_BUDGET):
            # The run has an outcome (cancelled): its record would otherwise stay as an Airflow Variable for ever.
            await self._forget_airflow2_record(key)

    async def _forget_airflow2_record(self, key: _TiKey) -> None:
        """Remove the task instance's record Variable once this trigger gave the run its outcome (Airflow 2)."""
        from kernel_provider.run_record import forget_airflow2_record

        try:
            await _in_db_thread(
                forget_airflow2_record, key.dag_id, key.task_id, key.run_id, key.map_index, self.invocation_id
            )
        except Exception as exc:
            self.log.warning("Could not remove the run record of task instance %s: %s", key.label, exc)

    async def _deadline_passed(self) -> dict[str, Any]:
        message = f"Invocation {self.invocation_id} did not finish before the deadline."
        cancelled = False
        if self.cancel_on_timeout:
            cancelled = await self._cancel("the Airflow task's timeout passed", TIMEOUT_CANCEL_BUDGET)
            message += " The trigger cancelled it." if cancelled else " The trigger could not cancel it."
        key = _ti_key(getattr(self, "task_instance", None))
        if cancelled and AIRFLOW_2 and key is not None:
            # Airflow 2 resumes a try whose execution_timeout has passed by failing it at once, before
            # execute_complete (which would remove the record) runs: the trigger that ended the run removes it.
            await self._forget_airflow2_record(key)
        return make_event(TIMEOUT, self.invocation_id, message=message, cancelled=cancelled)

    async def _cancel(self, why: str, budget: float) -> bool:
        """Cancel the invocation within ``budget`` seconds; True when Kernel confirmed it (or no longer knows it)."""
        try:
            # Worded like the operator's own cancels, so the invocation's output reads the same whoever stopped it.
            await self.hook.acancel_invocation(self.invocation_id, f"Cancelled by Airflow: {why}", budget=budget)
        except Exception as exc:
            self.log.warning("Could not cancel Kernel invocation %s: %s", self.invocation_id, exc)
            return False
        self.log.info("Cancelled Kernel invocation %s (%s).", self.invocation_id, why)
        return True

    def _remaining(self) -> float | None:
        return None if self.end_time is None else self.end_time - time.time()


class _Waiter:
    """The state of one wait: failure counters and the position in the log stream."""

    def __init__(self, trigger: KernelInvocationTrigger) -> None:
        self.t = trigger
        self.log = trigger.log
        self.failures = 0
        self.last_error: str = ""
        self.last_ts: str | None = None  # timestamp of the newest log line seen, sent as ``since`` on resume
        self.last_key: str | None = None
        self.seen_at_last: Counter[str] = Counter()  # digests of the lines logged at ``last_ts``
        self.replay: Counter[str] = Counter()  # of those, the ones a resumed stream may send again
        self.cursor = trigger._cursor
        self.watch: BrowserWatch | None = None
        if trigger.live_view != OFF:
            publisher = LiveViewPublisher(trigger.live_view, trigger.end_time, trigger.log, trigger.mask_live_view)
            self.watch = BrowserWatch(
                trigger.hook, trigger.invocation_id, trigger.log, trigger.publish_live_view, publisher
            )

    async def run(self) -> dict[str, Any]:
        """The wait, with the run's browsers watched beside it (and their replays reported if it failed)."""
        if self.watch is None:
            return await self.follow()
        self.watch.start()
        try:
            done = await self.follow()
        finally:
            await self.watch.stop()
        if done.get("status") == FAILED:
            await self.watch.report_replays()
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
        if self.t.mode == STREAM:
            # No GET first: Kernel sends the current state as the stream's first event, and a finished
            # invocation's stream replays its log lines, then its final state. A stream that cannot be opened is
            # checked with one GET (see follow_stream).
            done = await self.follow_stream()
            if done is not None:
                return done
            self.log.warning(
                "The event stream of %s kept breaking; polling every %.1fs instead.",
                self.t.invocation_id,
                self.t.poll_interval,
            )
        else:
            done = await self.check()
            if done is not None:
                return done
        while True:
            await asyncio.sleep(_jitter(self.t.poll_interval))
            done = await self.check()
            if done is not None:
                return done

    async def check(self) -> dict[str, Any] | None:
        """One GET. Returns the final event when the wait is over (finished, or failed beyond recovery)."""
        try:
            invocation = await self.t.hook.aget_invocation(self.t.invocation_id)
        except FATAL_ERRORS as exc:
            return make_event(ERROR, self.t.invocation_id, message=str(exc))
        except KernelError as exc:
            return self.count_failure(exc)
        self.failures = 0
        return self.final(invocation)

    def count_failure(self, exc: BaseException) -> dict[str, Any] | None:
        self.failures += 1
        self.last_error = f"{type(exc).__name__}: {exc}"
        self.log.warning(
            "Checking Kernel invocation %s failed (%d/%d): %s",
            self.t.invocation_id,
            self.failures,
            self.t.max_consecutive_failures,
            exc,
        )
        if self.failures >= self.t.max_consecutive_failures:
            return make_event(
                ERROR,
                self.t.invocation_id,
                message=f"Gave up after {self.failures} failed checks in a row: {self.last_error}",
            )
        return None

    def final(self, invocation: Invocation) -> dict[str, Any] | None:
        if invocation.status is InvocationStatus.UNKNOWN:
            self.log.info(
                "Invocation %s has status %r (unknown to this provider); still waiting.",
                invocation.id,
                invocation.raw_status,
            )
        return event_for_invocation(invocation) if invocation.is_terminal else None

    async def follow_stream(self) -> dict[str, Any] | None:
        broken = 0
        while broken < self.t.max_stream_failures:
            progressed, done, problem = await self.read_stream_once()
            if done is not None:
                return done
            broken = 0 if progressed else broken + 1
            self.log.info(
                "Event stream of %s ended before the invocation finished (%s); checking and resuming.",
                self.t.invocation_id,
                problem,
            )
            done = await self.check()
            if done is not None:
                return done
            await asyncio.sleep(_jitter(min(self.t.poll_interval, 0.5 * 2**broken)))
        return None

    async def read_stream_once(self) -> tuple[bool, dict[str, Any] | None, str]:
        """Read one connection of the stream. Returns (delivered new log lines?, final event, why it ended)."""
        progressed = False
        self.replay = Counter(self.seen_at_last)
        events = self.t.hook.stream_events(
            self.t.invocation_id, since=self.last_ts, silence_timeout=self.t.silence_timeout
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
            digest = _digest(message)
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
        if self.t.stream_logs:
            for line in safe_log_lines(message):
                self.log.info("[kernel %s] %s", self.t.invocation_id, line)
        if stamp and self.cursor is not None:
            self.cursor.moved()  # after logging: the saved position never runs ahead of the task log
        return True

    def position(self) -> dict[str, Any]:
        """The cursor to save: where to resume and which lines at that instant are already logged."""
        return {
            "invocation_id": self.t.invocation_id,
            "since": self.last_ts,
            "seen": dict(self.seen_at_last.most_common(CURSOR_MAX_DIGESTS)),
        }

    def restore(self, cursor: Mapping[str, Any] | None) -> None:
        """Resume after a saved position (see :meth:`position`); anything unusable is ignored."""
        if not cursor or cursor.get("invocation_id") != self.t.invocation_id:
            return
        since, seen = cursor.get("since"), cursor.get("seen")
        if not isinstance(since, str) or not since:
            return
        self.last_ts, self.last_key = since, _timestamp_key(since)
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
            self.t.invocation_id,
            since,
        )


class KernelRateLimitTimer(DateTimeTrigger):  # type: ignore[misc]
    """Airflow's ``DateTimeTrigger``, for a create that Kernel refused with 429: waits until ``moment`` in the
    triggerer, then fires an event carrying the 429 budget's deadline and the attempt count.

    The event (not the defer's ``kwargs``) carries them because ``dag.test()`` resumes a task with the event alone;
    the real triggerer and ``dag.test()`` then resume it the same way. Primitives only, so it survives restarts.

    :param moment: when to fire (a timezone-aware datetime).
    :param rate_limit_deadline: epoch seconds after which the task stops waiting out 429s (``rate_limit_wait``
        counted from the first attempt).
    :param attempt: creates refused so far.
    """

    def __init__(self, moment: Any, rate_limit_deadline: float, attempt: int) -> None:
        super().__init__(moment=moment)
        self.rate_limit_deadline = float(rate_limit_deadline)
        self.attempt = int(attempt)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """The classpath and the constructor's keyword arguments, as Airflow stores them."""
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {"moment": self.moment, "rate_limit_deadline": self.rate_limit_deadline, "attempt": self.attempt},
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Waits like ``DateTimeTrigger``, then yields ``{"rate_limit_deadline", "attempt"}``."""
        async for _ in super().run():
            break
        yield TriggerEvent({"rate_limit_deadline": self.rate_limit_deadline, "attempt": self.attempt})


def seed_log_cursor(ti: Any, invocation_id: str) -> None:
    """Push the empty log position a deferred wait starts from (XCom ``kernel_log_cursor``), from the worker.

    The trigger reads the position when it starts; finding one already there spares Airflow 3's triggerer an
    "XCom not found" error in the task log on every first start. Best effort: the trigger copes without it.
    """
    try:
        ti.xcom_push(
            key=LOG_CURSOR_XCOM_KEY,
            value={
                "invocation_id": invocation_id,
                "since": None,
                "seen": {},
                "try_number": int(getattr(ti, "try_number", 0) or 0),
            },
        )
    except Exception as exc:
        log.debug("Could not seed the log position of Kernel invocation %s: %s", invocation_id, exc)


def _timestamp_key(stamp: str) -> str:
    """Sortable form of an RFC 3339 UTC timestamp with any number of fractional digits."""
    text = stamp.strip().rstrip("Zz")
    if text.endswith("+00:00"):
        text = text[:-6]
    head, _, fraction = text.partition(".")
    return f"{head}.{fraction.ljust(9, '0')[:9]}"


def _jitter(seconds: float) -> float:
    return max(0.05, seconds * random.uniform(0.8, 1.2))


def _digest(message: str) -> str:
    """A short stand-in for a log line in the cursor (the cursor stays small however long the lines are)."""
    return hashlib.blake2b(message.encode("utf-8", "replace"), digest_size=8).hexdigest()


def _on_kill_budget() -> float:
    """Seconds ``on_kill`` may spend cancelling: a share of ``[triggerer] on_kill_timeout``, read now."""
    try:
        from airflow.providers.common.compat.sdk import conf

        timeout = conf.getfloat("triggerer", "on_kill_timeout", fallback=30.0)
    except Exception:  # an unreadable setting must not stop the cancel: Airflow's own default
        timeout = 30.0
    return max(MIN_ON_KILL_BUDGET, timeout * ON_KILL_BUDGET_SHARE)


# --- the trigger's task instance in the metadata DB (worker threads only) ------------------------------------


class _TiKey(NamedTuple):
    dag_id: str
    task_id: str
    run_id: str
    map_index: int
    try_number: int

    @property
    def label(self) -> str:
        suffix = f"[{self.map_index}]" if self.map_index >= 0 else ""
        return f"{self.dag_id}.{self.task_id}{suffix} of run {self.run_id}"


def _under_task_runner() -> bool:
    """Whether XComs can be written from here: Airflow 2 (metadata DB), or an Airflow 3 process whose task runner
    set up its channel to the supervisor."""
    try:
        from airflow.sdk.execution_time import task_runner
    except ImportError:
        return True
    return getattr(task_runner, "SUPERVISOR_COMMS", None) is not None


def _ti_key(ti: Any) -> _TiKey | None:
    """The identity of the trigger's task instance, or None when there is none (a wait on a worker)."""
    if ti is None:
        return None
    try:
        map_index = getattr(ti, "map_index", -1)
        return _TiKey(
            str(ti.dag_id),
            str(ti.task_id),
            str(ti.run_id),
            -1 if map_index is None else int(map_index),
            int(getattr(ti, "try_number", 0) or 0),
        )
    except Exception:  # e.g. a detached ORM object whose attributes expired
        return None


#: Metadata-DB (or supervisor) calls one event loop has in flight at once: a triggerer with many waits writing
#: cursors must not open a connection per wait.
MAX_DB_CALLS_IN_FLIGHT = 4
_DB_SLOTS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = weakref.WeakKeyDictionary()


async def _in_db_thread(fn: Callable[..., T], *args: Any, timeout: float = DB_CALL_TIMEOUT) -> T:
    """Run a blocking metadata-DB (or supervisor) call off the event loop, waited for ``timeout`` seconds.

    Each call gets a daemon thread of its own rather than a pool thread: on Airflow 3 the call waits for the
    triggerer's supervisor to answer, and if that never happens (the triggerer is going down) a pool thread would
    hang the process at exit, which joins pool threads. At most ``MAX_DB_CALLS_IN_FLIGHT`` calls run at once.
    """
    if _supervisor_channel() == "InProcessSupervisorComms":
        # dag.test()'s in-process channel answers at once, and it is not safe from threads: a call from another
        # thread drops SUPERVISOR_COMMS for whichever call overlaps it, and the task then fails to report its end.
        return fn(*args)
    loop = asyncio.get_running_loop()
    slots = _DB_SLOTS.get(loop)
    if slots is None:
        # In an Airflow 3 task (a wait on a worker) one call at a time: one task's wait gains nothing from more.
        in_task = _supervisor_channel() not in ("", "TriggerCommsDecoder")
        slots = _DB_SLOTS[loop] = asyncio.Semaphore(1 if in_task else MAX_DB_CALLS_IN_FLIGHT)
    async with slots:
        answer: asyncio.Future[T] = loop.create_future()

        def settle(ok: bool, value: Any) -> None:
            if answer.done():  # the waiter timed out (and cancelled it) meanwhile
                return
            if ok:
                answer.set_result(value)
            else:
                answer.set_exception(value)

        def work() -> None:
            _serve_loop_from_this_thread(loop)
            try:
                outcome: tuple[bool, Any] = (True, fn(*args))
            except Exception as exc:  # handed to the awaiting coroutine
                outcome = (False, exc)
            with contextlib.suppress(RuntimeError):  # the loop closed while this call was out
                loop.call_soon_threadsafe(settle, *outcome)

        threading.Thread(target=work, name="kernel-trigger-db", daemon=True).start()
        return await asyncio.wait_for(answer, timeout)


def _supervisor_channel() -> str:
    """The class name of this process's channel to its Airflow 3 supervisor ("" on Airflow 2 or without one).

    By name: importing the triggerer's module into a worker just to compare would be heavy.
    """
    try:
        from airflow.sdk.execution_time import task_runner
    except ImportError:  # Airflow 2: no Task SDK
        return ""
    channel = getattr(task_runner, "SUPERVISOR_COMMS", None)
    return "" if channel is None else type(channel).__name__


def _in_triggerer() -> bool:
    """Whether this process is an Airflow 3 triggerer (its supervisor channel is the triggerer's)."""
    return _supervisor_channel() == "TriggerCommsDecoder"


def _serve_loop_from_this_thread(loop: asyncio.AbstractEventLoop) -> None:
    """Tell asgiref that this thread works for ``loop``, as its own ``sync_to_async`` threads do.

    Airflow 3.0-3.2's triggerer sends a trigger's supervisor calls (XCom reads and writes) with asgiref's
    ``async_to_sync``, which, in a thread it does not know, runs them on a new event loop of its own: two calls at
    once (this one and the triggerer's own heartbeat) then interleave on the one socket to the supervisor
    ("Response read out of order!") and the whole triggerer dies. Marked, the call runs on the triggerer's loop,
    under its lock. Airflow 3.3's comms are thread-safe by themselves and do not use asgiref there. Only in a
    triggerer (whose loop runs until the process ends): a wait on a worker (``wait_in_worker``) has its own short
    loop, which could close with such a call still scheduled on it.
    """
    if not _in_triggerer():
        return
    from asgiref.sync import SyncToAsync

    SyncToAsync.threadlocal.main_event_loop = loop
    SyncToAsync.threadlocal.main_event_loop_pid = os.getpid()


def _ti_state_airflow2(key: _TiKey) -> tuple[Any, str | None] | None:
    """``(state, next_method)`` of the task instance now (Airflow 2 metadata DB), or None when it has no row."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        row = session.execute(
            select(TaskInstance.state, TaskInstance.next_method).where(
                TaskInstance.dag_id == key.dag_id,
                TaskInstance.task_id == key.task_id,
                TaskInstance.run_id == key.run_id,
                TaskInstance.map_index == key.map_index,
            )
        ).first()
    return None if row is None else (row[0], row[1])


#: States in which a task instance resumes with the event a trigger submitted (``next_method`` set).
_RESUMING = frozenset({"scheduled", "queued", "running"})


def _task_was_stopped(row: tuple[Any, str | None] | None) -> bool:
    """Whether a task instance in this state was stopped from outside while its trigger waited.

    Still ``deferred``: no (the triggerer is shutting down, restarting or handing the trigger over). Resuming
    with a submitted event (scheduled/queued/running with a ``next_method``): no, the task handles the outcome.
    Marked success/failed, cleared (no state), removed, or resuming into ``__fail__`` (the scheduler's deferral
    timeout): yes.
    """
    if row is None:
        return True  # its DAG run was deleted: nobody will ever resume this wait
    state, next_method = row
    state = None if state is None else str(getattr(state, "value", state))
    if state == "deferred":
        return False
    if next_method == "__fail__":
        return True
    return not (state in _RESUMING and next_method)


def _xcom_class() -> Any:
    from airflow.providers.common.compat.sdk import XCom

    return XCom


def _read_cursor(key: _TiKey) -> Any:
    return _xcom_class().get_one(
        key=LOG_CURSOR_XCOM_KEY, dag_id=key.dag_id, task_id=key.task_id, run_id=key.run_id, map_index=key.map_index
    )


def _write_cursor(key: _TiKey, value: dict[str, Any]) -> None:
    _xcom_class().set(
        LOG_CURSOR_XCOM_KEY, value, dag_id=key.dag_id, task_id=key.task_id, run_id=key.run_id, map_index=key.map_index
    )


def _write_live_view(key: _TiKey, url: str) -> None:
    from kernel_provider.operators.kernel import XCOM_LIVE_VIEW_URL, KernelLiveViewLink

    xcom, where = _xcom_class(), {"dag_id": key.dag_id, "task_id": key.task_id, "run_id": key.run_id}
    xcom.set(XCOM_LIVE_VIEW_URL, url, map_index=key.map_index, **where)
    link_key = getattr(KernelLiveViewLink(), "xcom_key", None)
    if link_key:  # Airflow 3's UI reads a link from this XCom (written by Airflow itself only when the task ends)
        xcom.set(link_key, url, map_index=key.map_index, **where)


class _LogCursor:
    """The log position of one trigger, kept as the XCom ``kernel_log_cursor`` of its task instance.

    Airflow 3 reaches XComs from the triggerer through its supervisor (``XCom.set``/``get_one`` send a message
    and wait for the answer, so they must run off the event loop); Airflow 2 writes the metadata DB directly. Both
    run in :func:`_in_db_thread`. Writes are coalesced: one at a time, the newest position each time, at most one
    per ``CURSOR_MIN_WRITE_INTERVAL`` seconds; :meth:`flush` writes the last one at once.
    """

    def __init__(self, trigger: KernelInvocationTrigger, key: _TiKey) -> None:
        self.t = trigger
        self.key = key
        self.log = trigger.log
        #: Returns the position to save (set by the waiter once it has restored the saved one).
        self.source: Callable[[], dict[str, Any]] | None = None
        self._dirty = False
        self._writer: asyncio.Task[None] | None = None
        self._next_write = 0.0
        self._flushing = False
        self._failing = False
        self._wake = asyncio.Event()

    @classmethod
    def for_trigger(cls, trigger: KernelInvocationTrigger) -> _LogCursor | None:
        """A cursor for ``trigger``, or None when nothing is to be kept: no task instance (a wait on a worker), or
        no log lines to position (poll mode, ``stream_logs=False``)."""
        if trigger.mode != STREAM or not trigger.stream_logs:
            return None
        ti = getattr(trigger, "task_instance", None)
        if ti is None:
            return None
        key = _ti_key(ti)
        if key is None:
            trigger.log.warning(
                "Cannot read the trigger's task instance; the log position of Kernel invocation %s "
                "is not kept across restarts.",
                trigger.invocation_id,
            )
        return None if key is None else cls(trigger, key)

    async def load(self) -> Mapping[str, Any] | None:
        """The saved position of this task instance's try, or None (none saved, another try's, unreadable; or
        never seeded by the deferring task, when it is not read at all: see ``log_cursor_seeded``)."""
        if not self.t.log_cursor_seeded:
            return None
        try:
            value = await _in_db_thread(_read_cursor, self.key, timeout=CURSOR_READ_TIMEOUT)
        except Exception as exc:
            self.log.warning(
                "Could not read the saved log position of Kernel invocation %s (%s: %s); lines "
                "already in the task log may appear again.",
                self.t.invocation_id,
                type(exc).__name__,
                exc,
            )
            return None
        if not isinstance(value, Mapping) or value.get("try_number") != self.key.try_number:
            return None  # nothing saved yet, or a previous try's (a new try has a log file of its own)
        return value

    def moved(self) -> None:
        """The position advanced (called on the event loop for every logged line): schedule a write."""
        self._dirty = True
        if self._writer is None or self._writer.done():
            self._writer = asyncio.ensure_future(self._write_loop())

    async def flush(self) -> None:
        """Write the newest position now (waiting for a write in flight first). Never raises."""
        self._flushing = True
        self._wake.set()
        writer = self._writer
        try:
            if writer is not None and not writer.done():
                # shield: if cleanup() itself is cancelled, the write still completes on its own.
                await asyncio.wait_for(asyncio.shield(writer), DB_CALL_TIMEOUT + 1)
            elif self._dirty:
                await self._write_now()
        except Exception as exc:
            self.log.warning("Could not save the log position of Kernel invocation %s: %s", self.t.invocation_id, exc)

    async def _write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while self._dirty:
            delay = self._next_write - loop.time()
            if delay > 0 and not self._flushing:
                self._wake.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)
            await self._write_now()

    async def _write_now(self) -> None:
        if self.source is None:
            return
        loop = asyncio.get_running_loop()
        self._dirty = False
        value = {**self.source(), "try_number": self.key.try_number}
        self._next_write = loop.time() + CURSOR_MIN_WRITE_INTERVAL
        try:
            await _in_db_thread(_write_cursor, self.key, value)
        except Exception as exc:
            if not self._flushing:
                self._dirty = True  # try again later with whatever is newest then
                self._next_write = loop.time() + CURSOR_RETRY_AFTER_FAILURE
            if not self._failing:
                self._failing = True
                self.log.warning(
                    "Could not save the log position of Kernel invocation %s (%s: %s); if the trigger "
                    "restarts, lines already in the task log may appear again.",
                    self.t.invocation_id,
                    type(exc).__name__,
                    exc,
                )
            return
        if self._failing:
            self._failing = False
            self.log.info("Saving the log position of Kernel invocation %s works again.", self.t.invocation_id)
