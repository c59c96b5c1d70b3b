"""A trigger's task instance: who it is, and reaching Airflow's metadata DB (or, on Airflow 3, the triggerer's
supervisor) from async code without blocking the event loop.

Every call here runs in a worker thread of its own through :func:`in_db_thread`; nothing in this module may be
called on the triggerer's event loop directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import weakref
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar

from kernel_provider.links import XCOM_LIVE_VIEW_URL, KernelLiveViewLink

#: Longest a metadata-DB call (cursor write, task-instance lookup) is waited for.
DB_CALL_TIMEOUT = 10.0
T = TypeVar("T")


class TiKey(NamedTuple):
    """Which task instance (and try) a trigger belongs to: the XCom and DB address of its state."""

    dag_id: str
    task_id: str
    run_id: str
    map_index: int
    try_number: int

    @property
    def label(self) -> str:
        """The task instance as people read it in messages."""
        suffix = f"[{self.map_index}]" if self.map_index >= 0 else ""
        return f"{self.dag_id}.{self.task_id}{suffix} of run {self.run_id}"


def under_task_runner() -> bool:
    """Whether XComs can be written from here: Airflow 2 (metadata DB), or an Airflow 3 process whose task runner
    set up its channel to the supervisor."""
    try:
        from airflow.sdk.execution_time import task_runner
    except ImportError:
        return True
    return getattr(task_runner, "SUPERVISOR_COMMS", None) is not None


def ti_key(ti: Any) -> TiKey | None:
    """The identity of the trigger's task instance, or None when there is none (a wait on a worker)."""
    if ti is None:
        return None
    try:
        map_index = getattr(ti, "map_index", -1)
        return TiKey(
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


async def in_db_thread(fn: Callable[..., T], *args: Any, timeout: float = DB_CALL_TIMEOUT) -> T:
    """Run a blocking metadata-DB (or supervisor) call off the event loop, waited for ``timeout`` seconds.

    Each call gets a daemon thread of its own rather than a pool thread: on Airflow 3 the call waits for the
    triggerer's supervisor to answer, and if that never happens (the triggerer is going down) a pool thread would
    hang the process at exit, which joins pool threads. At most ``MAX_DB_CALLS_IN_FLIGHT`` calls run at once.
    """
    if supervisor_channel() == "InProcessSupervisorComms":
        # dag.test()'s in-process channel answers at once, and it is not safe from threads: a call from another
        # thread drops SUPERVISOR_COMMS for whichever call overlaps it, and the task then fails to report its end.
        return fn(*args)
    loop = asyncio.get_running_loop()
    slots = _DB_SLOTS.get(loop)
    if slots is None:
        # In an Airflow 3 task (a wait on a worker) one call at a time: one task's wait gains nothing from more.
        in_task = supervisor_channel() not in ("", "TriggerCommsDecoder")
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
            serve_loop_from_this_thread(loop)
            try:
                outcome: tuple[bool, Any] = (True, fn(*args))
            except Exception as exc:  # handed to the awaiting coroutine
                outcome = (False, exc)
            with contextlib.suppress(RuntimeError):  # the loop closed while this call was out
                loop.call_soon_threadsafe(settle, *outcome)

        threading.Thread(target=work, name="kernel-trigger-db", daemon=True).start()
        return await asyncio.wait_for(answer, timeout)


def supervisor_channel() -> str:
    """The class name of this process's channel to its Airflow 3 supervisor ("" on Airflow 2 or without one).

    By name: importing the triggerer's module into a worker just to compare would be heavy.
    """
    try:
        from airflow.sdk.execution_time import task_runner
    except ImportError:  # Airflow 2: no Task SDK
        return ""
    channel = getattr(task_runner, "SUPERVISOR_COMMS", None)
    return "" if channel is None else type(channel).__name__


def in_triggerer() -> bool:
    """Whether this process is an Airflow 3 triggerer (its supervisor channel is the triggerer's)."""
    return supervisor_channel() == "TriggerCommsDecoder"


def serve_loop_from_this_thread(loop: asyncio.AbstractEventLoop) -> None:
    """Tell asgiref that this thread works for ``loop``, as its own ``sync_to_async`` threads do.

    Airflow 3.0-3.2's triggerer sends a trigger's supervisor calls (XCom reads and writes) with asgiref's
    ``async_to_sync``, which, in a thread it does not know, runs them on a new event loop of its own: two calls at
    once (this one and the triggerer's own heartbeat) then interleave on the one socket to the supervisor
    ("Response read out of order!") and the whole triggerer dies. Marked, the call runs on the triggerer's loop,
    under its lock. Airflow 3.3's comms are thread-safe by themselves and do not use asgiref there. Only in a
    triggerer (whose loop runs until the process ends): a wait on a worker (``wait_in_worker``) has its own short
    loop, which could close with such a call still scheduled on it.
    """
    if not in_triggerer():
        return
    from asgiref.sync import SyncToAsync

    SyncToAsync.threadlocal.main_event_loop = loop
    SyncToAsync.threadlocal.main_event_loop_pid = os.getpid()


def ti_state_airflow2(key: TiKey) -> tuple[Any, str | None] | None:
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


def ti_state_airflow3(key: TiKey) -> str | None:
    """The task instance's state as Airflow's API server has it, asked through the triggerer's supervisor (Airflow
    3.3+, where a trigger's ``on_kill`` runs; a blocking call: run it with :func:`in_db_thread`). None when the
    task instance has no row, or no state (cleared)."""
    from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

    states = RuntimeTaskInstance.get_task_states(
        dag_id=key.dag_id,
        task_ids=[key.task_id],
        run_ids=[key.run_id],
        map_index=key.map_index if key.map_index >= 0 else None,
    )
    # The API names a mapped task instance "<task_id>_<map_index>".
    name = key.task_id if key.map_index < 0 else f"{key.task_id}_{key.map_index}"
    state = (states.get(key.run_id) or {}).get(name)
    return None if state is None else str(getattr(state, "value", state))


#: States in which a task instance resumes with the event a trigger submitted (``next_method`` set).
_RESUMING = frozenset({"scheduled", "queued", "running"})


def task_was_stopped(row: tuple[Any, str | None] | None) -> bool:
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


def xcom_class() -> Any:
    """The XCom model of this Airflow version (Task SDK on 3, ORM model on 2)."""
    from airflow.providers.common.compat.sdk import XCom

    return XCom


def write_live_view(key: TiKey, url: str) -> None:
    """Push the live-view URL of ``key``'s task instance, and the link's own XCom where Airflow 3 reads one."""
    xcom, where = xcom_class(), {"dag_id": key.dag_id, "task_id": key.task_id, "run_id": key.run_id}
    xcom.set(XCOM_LIVE_VIEW_URL, url, map_index=key.map_index, **where)
    link_key = getattr(KernelLiveViewLink(), "xcom_key", None)
    if link_key:  # Airflow 3's UI reads a link from this XCom (written by Airflow itself only when the task ends)
        xcom.set(link_key, url, map_index=key.map_index, **where)


def push_xcoms(key: TiKey, values: dict[str, Any]) -> None:
    """Push each of ``values`` (key: value) as an XCom of ``key``'s task instance (a blocking call: run it with
    :func:`in_db_thread`). Through the XCom class, so a custom XCom backend stores them as a worker's push would."""
    xcom, where = xcom_class(), {"dag_id": key.dag_id, "task_id": key.task_id, "run_id": key.run_id}
    for name, value in values.items():
        xcom.set(name, value, map_index=key.map_index, **where)
