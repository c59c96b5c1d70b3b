"""The log position of a deferred wait, kept across triggerer restarts as an XCom of its task instance.

A trigger with a task instance (the triggerer sets ``task_instance``) keeps its position in the event stream
(the last line's timestamp, plus short digests of the lines sharing it) as the XCom ``kernel_log_cursor``. It is
written from a worker thread whenever it moves (one write at a time, at most one per
``CURSOR_MIN_WRITE_INTERVAL`` seconds, the newest position each time) and when the trigger exits; a trigger
started again on the same try (triggerer restart or failover) reads it first and resumes the stream there, so no
line reaches the task log twice. Reading or writing it never fails the wait: the worst case is lines logged
twice. A wait on a worker (no task instance) keeps nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

from kernel_provider.links import LOG_CURSOR_XCOM_KEY
from kernel_provider.triggers.task_instance import DB_CALL_TIMEOUT, TiKey, in_db_thread, xcom_class

#: Shortest pause between two cursor writes of one trigger: a chatty action moves the cursor on every line.
CURSOR_MIN_WRITE_INTERVAL = 1.0
#: Longest the saved log position is waited for when a trigger starts. Longer than other calls: the answer is
#: what keeps lines from being logged twice, and it is asked while a triggerer that has just (re)started is busiest
#: (on a loaded machine its supervisor took over 10 s to answer). The stream starts after it.
CURSOR_READ_TIMEOUT = 60.0
#: Longest one cursor write is waited for (the call itself may go on in its thread: see ``LogCursor``).
CURSOR_WRITE_TIMEOUT = DB_CALL_TIMEOUT
#: Pause before writing the cursor again after a failed write.
CURSOR_RETRY_AFTER_FAILURE = 30.0
log = logging.getLogger(__name__)


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


def read_cursor(key: TiKey) -> Any:
    """The saved position of ``key``'s task instance (blocking: run it in :func:`in_db_thread`)."""
    return xcom_class().get_one(
        key=LOG_CURSOR_XCOM_KEY, dag_id=key.dag_id, task_id=key.task_id, run_id=key.run_id, map_index=key.map_index
    )


def write_cursor(key: TiKey, value: dict[str, Any]) -> None:
    """Save the position of ``key``'s task instance (blocking: run it in :func:`in_db_thread`)."""
    xcom_class().set(
        LOG_CURSOR_XCOM_KEY, value, dag_id=key.dag_id, task_id=key.task_id, run_id=key.run_id, map_index=key.map_index
    )


class LogCursor:
    """The log position of one trigger, kept as the XCom ``kernel_log_cursor`` of its task instance.

    Airflow 3 reaches XComs from the triggerer through its supervisor (``XCom.set``/``get_one`` send a message
    and wait for the answer, so they must run off the event loop); Airflow 2 writes the metadata DB directly. Both
    run in :func:`in_db_thread`. Writes are coalesced: one at a time, the newest position each time, at most one
    per ``CURSOR_MIN_WRITE_INTERVAL`` seconds; :meth:`flush` writes the last one at once.

    :param key: the task instance (and try) whose XCom holds the position.
    :param invocation_id: the invocation followed (for messages).
    :param log: where problems are reported (warnings, never raised).
    :param seeded: the deferring task pushed the empty position before the trigger first ran, so reading it can
        never miss (see ``KernelInvocationTrigger``'s ``log_cursor_seeded``); False: it is not read at all.
    """

    def __init__(self, *, key: TiKey, invocation_id: str, log: logging.Logger | Any, seeded: bool = True) -> None:
        self.key = key
        self.invocation_id = invocation_id
        self.log = log
        self.seeded = seeded
        #: Returns the position to save (set by the follower once it has restored the saved one).
        self.source: Callable[[], dict[str, Any]] | None = None
        self._dirty = False
        self._writer: asyncio.Task[None] | None = None
        self._next_write = 0.0
        self._flushing = False
        self._failing = False
        self._wake = asyncio.Event()
        #: Set when the last write's call has returned. A write that timed out here is still out in its thread:
        #: another write of the same XCom beside it would race it in the API server (Airflow's XCom set is a
        #: delete then an insert: one of two at once is refused with a unique-constraint ERROR).
        self._call_done = threading.Event()
        self._call_done.set()

    async def load(self) -> Mapping[str, Any] | None:
        """The saved position of this task instance's try, or None (none saved, another try's, unreadable; or
        never seeded by the deferring task, when it is not read at all: see ``log_cursor_seeded``)."""
        if not self.seeded:
            return None
        try:
            value = await in_db_thread(read_cursor, self.key, timeout=CURSOR_READ_TIMEOUT)
        except Exception as exc:
            self.log.warning(
                "Could not read the saved log position of Kernel invocation %s (%s: %s); lines "
                "already in the task log may appear again.",
                self.invocation_id,
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
                await self._previous_call_returned(DB_CALL_TIMEOUT)
                await self._write_now()
        except Exception as exc:
            self.log.warning("Could not save the log position of Kernel invocation %s: %s", self.invocation_id, exc)

    async def _write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while self._dirty:
            delay = self._next_write - loop.time()
            if delay > 0 and not self._flushing:
                self._wake.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)
            await self._write_now()

    async def _previous_call_returned(self, patience: float) -> bool:
        """Wait up to ``patience`` seconds for the last write's call to return; whether it has."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + patience
        while not self._call_done.is_set() and loop.time() < deadline:
            await asyncio.sleep(0.1)
        return self._call_done.is_set()

    async def _write_now(self) -> None:
        if self.source is None:
            return
        loop = asyncio.get_running_loop()
        if not self._call_done.is_set() and not await self._previous_call_returned(0.5):
            # The last write timed out here but is still out: never two at once. A flush gives up (that write
            # carries a recent position); otherwise the loop tries again later.
            self._dirty = not self._flushing
            self._next_write = loop.time() + CURSOR_MIN_WRITE_INTERVAL
            return
        self._dirty = False
        value = {**self.source(), "try_number": self.key.try_number}
        self._next_write = loop.time() + CURSOR_MIN_WRITE_INTERVAL
        self._call_done.clear()
        done = self._call_done

        def write() -> None:
            try:
                write_cursor(self.key, value)
            finally:
                done.set()

        try:
            await in_db_thread(write, timeout=CURSOR_WRITE_TIMEOUT)
        except Exception as exc:
            if not self._flushing:
                self._dirty = True  # try again later with whatever is newest then
                self._next_write = loop.time() + CURSOR_RETRY_AFTER_FAILURE
            if not self._failing:
                self._failing = True
                self.log.warning(
                    "Could not save the log position of Kernel invocation %s (%s: %s); if the trigger "
                    "restarts, lines already in the task log may appear again.",
                    self.invocation_id,
                    type(exc).__name__,
                    exc,
                )
            return
        if self._failing:
            self._failing = False
            self.log.info("Saving the log position of Kernel invocation %s works again.", self.invocation_id)
