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

**Log position across restarts**: see :mod:`kernel_provider.triggers.log_cursor`. The wait loop itself is
Airflow-free (:class:`kernel_provider.client.follow.InvocationFollower`); this module is the Airflow side of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from kernel_provider.client.browser_watch import check_live_view
from kernel_provider.client.events import ERROR, TIMEOUT, WAIT_MODES, make_event
from kernel_provider.client.follow import InvocationFollower
from kernel_provider.hooks.kernel import KernelHook
from kernel_provider.links import LOG_CURSOR_XCOM_KEY
from kernel_provider.triggers.airflow2_cleanup import cancel_if_task_was_stopped, forget_record
from kernel_provider.triggers.follower import build_follower, with_final_browsers
from kernel_provider.triggers.log_cursor import LogCursor, seed_log_cursor
from kernel_provider.triggers.rate_limit import KernelRateLimitTimer
from kernel_provider.triggers.task_end import end_task_event
from kernel_provider.triggers.task_instance import (
    TiKey,
    in_db_thread,
    ti_key,
    ti_state_airflow3,
    under_task_runner,
    write_live_view,
)
from kernel_provider.utils.secrets import mask_url
from kernel_provider.version_compat import AIRFLOW_2

STREAM, POLL = WAIT_MODES
MODES = WAIT_MODES
#: Seconds the trigger may spend cancelling the invocation when its deadline passes (``cancel_on_timeout``).
TIMEOUT_CANCEL_BUDGET = 20.0
#: Share of ``[triggerer] on_kill_timeout`` that ``on_kill`` spends (the rest is margin), its floor, and the share of
#: that which the task-state read may take (the rest is the cancel's).
ON_KILL_BUDGET_SHARE, MIN_ON_KILL_BUDGET, STATE_READ_SHARE = 0.8, 1.0, 0.25
#: Seconds after a task deferred before its wait may report (see ``resume_not_before``). Not Kernel's: when a
#: trigger fires before the deferring worker's process has exited (seconds on a busy machine), Airflow's scheduler
#: can see the executor report that exit while the resumed task is already queued, and fail it ("state changed
#: externally"; seen on 3.0 with an action that failed at once, and on 3.3 with 1 s timers).
MIN_DEFERRAL = 5.0
log = logging.getLogger(__name__)

# Re-exported: serialized 429 deferrals of earlier versions name this module; the deferring task seeds the cursor.
__all__ = ["LOG_CURSOR_XCOM_KEY", "MIN_DEFERRAL", "KernelInvocationTrigger", "KernelRateLimitTimer", "seed_log_cursor"]


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
        browsers' replays (see :mod:`kernel_provider.client.browser_watch` for when it lists, what that costs in
        requests, and the fallback where Kernel lacks the route). ``"control"``: the same with control URLs,
        masked and not logged. ``"off"`` (False, the default here, so a trigger serialized by an older provider
        version keeps its old requests; the operator and the sensor pass ``"read"`` by default): none of it. True
        means ``"read"``.
    :param try_number: the try of the task instance that deferred, echoed in the event (``try_number``) so the
        resumed task can tell a previous try's result from its own (see
        :func:`kernel_provider.utils.completion.from_an_earlier_try`). None: not echoed.
    :param log_cursor_seeded: the deferring task pushed the empty log position (:func:`seed_log_cursor`) before
        the trigger first ran, so reading it can never miss. False (a sensor that starts in the triggerer, with no
        worker to seed it): the position is not read, since reading an XCom that was never written logs an
        "XCom not found" ERROR in Airflow 3's triggerer; a restarted trigger may then log lines again.
    :param resume_not_before: absolute wall-clock time (``time.time()`` seconds) before which a wait run by the
        triggerer does not report its event, even when the invocation finished sooner: the deferring task sets it
        :data:`MIN_DEFERRAL` seconds after it deferred. Ignored for waits without a task instance (a worker's
        wait, ``dag.test()``'s in-line trigger). None: report at once.
    :param xcom_scheme: the XCom scheme of the task that deferred (see :data:`kernel_provider.links.XCOM_SCHEME`),
        echoed in the event. 1, the default, is what a trigger serialized by provider 0.1 (which had no such
        argument) stands for; the task resumed by this version then pushes its invocation under today's keys.
    :param track_usage: watch the run's browsers (even with ``live_view`` off) and carry their usage in the event
        (see :mod:`kernel_provider.client.browser_usage` for the requests). False (default: an older trigger's).
    :param max_browser_seconds: cancel the run once its browsers have run this many browser-seconds in all, and
        fire an ``error`` event naming the budget. None (default): no budget.
    :param end_task: run by an Airflow 3.3+ triggerer (a task that started there, or one that deferred from a
        worker and checked it may, see ``operators/wait_trigger.py``): when the invocation ``succeeded`` or
        ``failed``, end the task here (XComs pushed, then Airflow's task-end event) instead of resuming it on a
        worker; see :mod:`kernel_provider.triggers.task_end`. Any other outcome still resumes it on a worker.
        False (default, and an older trigger's): always resume.
    :param fail_on_failure: with ``end_task``: a ``failed`` invocation fails the task (default); False: the task
        succeeds and returns ``{"id", "status", "status_reason", "output"}``.
    :param soft_fail: with ``end_task``: a ``failed`` invocation skips the task instead of failing it.
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
        xcom_scheme: int = 1,
        track_usage: bool = False,
        max_browser_seconds: float | None = None,
        end_task: bool = False,
        fail_on_failure: bool = True,
        soft_fail: bool = False,
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
        self.xcom_scheme = int(xcom_scheme)
        self.track_usage = bool(track_usage)
        self.max_browser_seconds = None if max_browser_seconds is None else float(max_browser_seconds)
        self.end_task = bool(end_task)
        self.fail_on_failure = bool(fail_on_failure)
        self.soft_fail = bool(soft_fail)
        #: The task instance whose link a wait on a worker (no ``task_instance``) sets; see :meth:`link_to`.
        self._link_key: TiKey | None = None
        self._finished = False  # wait() produced its event: nothing left to cancel from cleanup()
        self._cursor: LogCursor | None = None

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
                "xcom_scheme": self.xcom_scheme,
                "track_usage": self.track_usage,
                "max_browser_seconds": self.max_browser_seconds,
                "end_task": self.end_task,
                "fail_on_failure": self.fail_on_failure,
                "soft_fail": self.soft_fail,
            },
        )

    def link_to(self, ti: Any) -> None:
        """For a wait on a worker: the task instance whose "Kernel live view" link the wait sets (a trigger run
        by the triggerer uses its own ``task_instance``). Outside Airflow's task runner (``execute()`` called
        directly) there is no XCom to write, and Airflow 3.0-3.2 would block the write rather than refuse it."""
        if under_task_runner():
            self._link_key = ti_key(ti)

    async def publish_live_view(self, url: str) -> None:
        """Push the first browser's live-view URL as the task instance's XCom (the link reads it), off the loop."""
        key = ti_key(getattr(self, "task_instance", None)) or self._link_key
        if key is not None:
            await in_db_thread(write_live_view, key, url)

    async def mask_live_view(self, url: str) -> None:
        """Register a control URL with the secret masker, off the loop (Airflow 3 asks the supervisor)."""
        await in_db_thread(mask_url, url)

    @property
    def hook(self) -> KernelHook:
        """The hook shared by every wait on this event loop for the connection (called from async code only)."""
        return KernelHook.shared(self.kernel_conn_id, getattr(self, "_component", None))

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Yields exactly one event: the payload of :meth:`wait`.

        When the triggerer cancels the trigger, the cancellation it raised is the one re-raised, reason included:
        Airflow 3.3 reads that reason to tell a user's mark or clear (then it calls :meth:`on_kill`) from a
        shutdown or hand-over.
        """
        # Only the triggerer calls run() (workers call wait()): mark its requests in the User-Agent.
        self._component = "triggerer"
        waiting = asyncio.ensure_future(self.wait())
        try:
            # Awaited through a shield so that the CancelledError raised here is the triggerer's own: libraries
            # the wait awaits may re-raise a cancellation without its reason (asgiref's sync_to_async, behind
            # every connection lookup, does), and without it a user's mark would not stop the run.
            event = await asyncio.shield(waiting)
        except asyncio.CancelledError:
            waiting.cancel()
            await asyncio.wait({waiting})  # the wait's own cleanup ends before on_kill starts
            raise
        ended = await end_task_event(self, event) if self.end_task else None
        yield ended if ended is not None else TriggerEvent(event)

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
        event["xcom_scheme"] = self.xcom_scheme
        if self.resume_not_before is not None and getattr(self, "task_instance", None) is not None:
            early = self.resume_not_before - time.time()
            if early > 0:
                await asyncio.sleep(early)
        return event

    async def _wait_until_deadline(self) -> dict[str, Any]:
        remaining = self._remaining()
        if remaining is not None and remaining <= 0:
            return await self._deadline_passed()
        self._cursor = self._log_cursor()
        waiter = self._follower()
        if remaining is None:
            return await waiter.run()
        try:
            return await asyncio.wait_for(waiter.run(), timeout=remaining)
        except asyncio.TimeoutError:
            return await with_final_browsers(waiter, await self._deadline_passed())

    async def on_kill(self) -> None:
        """Called by Airflow 3.3+ when a user marks or clears the deferred task: stop the run.

        Also called on a triggerer that lost the trigger to another (it missed heartbeats, then came back): the
        task is then still ``deferred`` and the run goes on there. An unreadable state counts as a user's action.
        The state read and the cancel share 80% of ``[triggerer] on_kill_timeout`` (at least 1 s), so it ends, and
        says how it went, before the triggerer gives up on ``on_kill``. Never raises.
        """
        if not self.cancel_on_kill:
            return
        stopping = asyncio.ensure_future(self._stop_run())
        while not stopping.done():
            # Airflow 3.3's triggerer may cancel a trigger it is stopping once more while on_kill runs (the trigger
            # is still listed as one to cancel on its next pass): that must not cut the cancel short. The work
            # has a deadline of its own, within the triggerer's patience for on_kill.
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(stopping)

    async def _stop_run(self) -> None:
        deadline = time.monotonic() + _on_kill_budget()
        if await self._handed_over(timeout=(deadline - time.monotonic()) * STATE_READ_SHARE):
            self.log.info(
                "This triggerer gave the wait up to another one (the task is still deferred); Kernel invocation "
                "%s goes on there.",
                self.invocation_id,
            )
            return
        budget = max(MIN_ON_KILL_BUDGET, deadline - time.monotonic())
        self.log.info(
            "Task was stopped while waiting; cancelling Kernel invocation %s (within %.1fs).",
            self.invocation_id,
            budget,
        )
        await self._cancel("the Airflow task was stopped", budget)

    async def _handed_over(self, *, timeout: float) -> bool:
        """Whether the task instance is still ``deferred`` (read within ``timeout`` seconds): Airflow cancelled
        this wait only to move it to another triggerer."""
        key = ti_key(getattr(self, "task_instance", None))
        if key is None:
            return False
        try:
            state = await in_db_thread(ti_state_airflow3, key, timeout=timeout)
        except Exception as exc:
            self.log.warning("Could not read the state of %s (%s); the task counts as stopped.", key.label, exc)
            return False
        return state == "deferred"

    async def cleanup(self) -> None:
        """Runs on every exit of the trigger, triggerer shutdown included. Never raises.

        Always: writes the log cursor's latest position (see the module docstring). On Airflow 2 only, with
        ``cancel_on_kill`` and a wait that had not finished: looks up the task instance's state in the metadata DB
        (in a worker thread) and cancels the invocation when the task was stopped from outside (see
        :func:`task_was_stopped`); a task instance still ``deferred`` means the triggerer is shutting down or
        handing the trigger over, and the run goes on. On Airflow 3 this never cancels (``on_kill`` does).
        """
        if self._cursor is not None:
            await self._cursor.flush()
        if AIRFLOW_2 and self.cancel_on_kill and not self._finished:
            try:
                await cancel_if_task_was_stopped(self)
            except Exception as exc:
                self.log.warning("Could not decide whether to cancel Kernel invocation %s: %s", self.invocation_id, exc)

    async def _deadline_passed(self) -> dict[str, Any]:
        message = f"Invocation {self.invocation_id} did not finish before the deadline."
        cancelled = False
        if self.cancel_on_timeout:
            cancelled = await self._cancel("the Airflow task's timeout passed", TIMEOUT_CANCEL_BUDGET)
            message += " The trigger cancelled it." if cancelled else " The trigger could not cancel it."
        key = ti_key(getattr(self, "task_instance", None))
        if cancelled and AIRFLOW_2 and key is not None:
            # Airflow 2 resumes a try whose execution_timeout has passed by failing it at once, before
            # execute_complete (which would remove the record) runs: the trigger that ended the run removes it.
            await forget_record(self, key)
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

    def _log_cursor(self) -> LogCursor | None:
        """Where this wait keeps its log position, or None when nothing is to be kept: no task instance (a wait on
        a worker), or no log lines to position (poll mode, ``stream_logs=False``)."""
        ti = getattr(self, "task_instance", None)
        if self.mode != STREAM or not self.stream_logs or ti is None:
            return None
        key = ti_key(ti)
        if key is None:
            self.log.warning(
                "Cannot read the trigger's task instance; the log position of Kernel invocation %s "
                "is not kept across restarts.",
                self.invocation_id,
            )
            return None
        return LogCursor(key=key, invocation_id=self.invocation_id, log=self.log, seeded=self.log_cursor_seeded)

    def _follower(self) -> InvocationFollower:
        return build_follower(self)

    def _remaining(self) -> float | None:
        return None if self.end_time is None else self.end_time - time.time()


def _on_kill_budget() -> float:
    """Seconds ``on_kill`` may spend cancelling: a share of ``[triggerer] on_kill_timeout``, read now."""
    try:
        from airflow.providers.common.compat.sdk import conf

        timeout = conf.getfloat("triggerer", "on_kill_timeout", fallback=30.0)
    except Exception:  # an unreadable setting must not stop the cancel: Airflow's own default
        timeout = 30.0
    return max(MIN_ON_KILL_BUDGET, timeout * ON_KILL_BUDGET_SHARE)
