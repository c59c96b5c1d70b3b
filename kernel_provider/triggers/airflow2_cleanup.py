"""Airflow 2's stand-in for a trigger's ``on_kill``: a :class:`~kernel_provider.triggers.kernel.KernelInvocationTrigger`
whose ``cleanup()`` runs after the task was stopped from outside cancels the run (see its ``cleanup``)."""

from __future__ import annotations

from typing import Any

from kernel_provider.triggers.task_instance import TiKey, in_db_thread, task_was_stopped, ti_key, ti_state_airflow2

#: Seconds ``cleanup()`` may spend cancelling on Airflow 2 (after the task-instance lookup).
CLEANUP_CANCEL_BUDGET = 20.0


async def cancel_if_task_was_stopped(trigger: Any) -> None:
    """Cancel ``trigger``'s invocation when its task instance was stopped from outside (marked, cleared, removed,
    or failed by the scheduler's deferral timeout; see :func:`task_was_stopped`); a task instance still ``deferred``
    means a triggerer shutdown or hand-over, and the run goes on. Reads the metadata DB in a worker thread."""
    key = ti_key(getattr(trigger, "task_instance", None))
    if key is None:
        return  # not run by a triggerer (or its task instance is unreadable): nothing to decide from
    try:
        row = await in_db_thread(ti_state_airflow2, key)
    except Exception as exc:
        trigger.log.warning(
            "Could not read the state of task instance %s, so Kernel invocation %s is left running: %s",
            key.label,
            trigger.invocation_id,
            exc,
        )
        return
    state = None if row is None else row[0]
    if not task_was_stopped(row):
        trigger.log.info(
            "Task instance %s is still %s (the triggerer is stopping or handing the trigger over); "
            "Kernel invocation %s keeps running.",
            key.label,
            state,
            trigger.invocation_id,
        )
        return
    why = "was removed" if row is None else f"is {state or 'cleared'}"
    trigger.log.info("Task instance %s %s; cancelling Kernel invocation %s.", key.label, why, trigger.invocation_id)
    if await trigger._cancel(f"Airflow task instance {why}", CLEANUP_CANCEL_BUDGET):
        # The run has an outcome (cancelled): its record would otherwise stay as an Airflow Variable for ever.
        await forget_record(trigger, key)


async def forget_record(trigger: Any, key: TiKey) -> None:
    """Remove the task instance's record Variable once this trigger gave the run its outcome (Airflow 2)."""
    from kernel_provider.utils.run_record import forget_airflow2_record

    try:
        await in_db_thread(
            forget_airflow2_record, key.dag_id, key.task_id, key.run_id, key.map_index, trigger.invocation_id
        )
    except Exception as exc:
        trigger.log.warning("Could not remove the run record of task instance %s: %s", key.label, exc)
