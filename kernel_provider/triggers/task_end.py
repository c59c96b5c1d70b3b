"""Ending a task from its trigger (Airflow 3.3+): a wait that started in the triggerer finishes there too, so no
worker process ever runs the task.

Once the wait is over, the trigger reads the invocation once (as the resumed task would), pushes the task's XComs
(``return_value``, ``kernel_usage``) through the triggerer's supervisor, logs the usage line, sends the metrics and
yields Airflow's ``TaskSuccessEvent`` / ``TaskFailedEvent`` / ``TaskSkippedEvent``: the scheduler ends the task with
that state, and no worker resumes it.

Only the two ordinary endings are handled here: the invocation ``succeeded`` or ``failed``. Anything else (the wait
timed out, Kernel could not be reached, the output is wanted by a mapped downstream task, the invocation cannot be
read) returns None, and the trigger fires its plain event, so a worker resumes the task as before and raises the
same errors it always did (``AirflowSensorTimeout`` among them, which Airflow never retries).
"""

from __future__ import annotations

import logging
from typing import Any

from kernel_provider.client.browser_usage import BROWSERS_EVENT_KEY
from kernel_provider.client.errors import KernelInvocationFailed
from kernel_provider.client.events import FAILED, SUCCEEDED
from kernel_provider.client.models import Invocation
from kernel_provider.client.usage import browsers_from_event, compute_usage
from kernel_provider.links import XCOM_USAGE
from kernel_provider.triggers.task_instance import TiKey, in_db_thread, in_triggerer, push_xcoms, ti_key
from kernel_provider.utils.completion import finish

#: The XCom key of a task's return value (Airflow's own).
RETURN_VALUE = "return_value"


def can_end_task(trigger: Any) -> bool:
    """Whether ``trigger`` may end its task itself: asked to (``end_task``) and run by an Airflow 3.3+ triggerer
    with a task instance. For a task that started there the triggerer also has the task: then no mapped task may
    expand over its output (Airflow learns how many map indexes to create only from a worker's push). A task that
    deferred from a worker checked that itself before asking (see ``operators/wait_trigger.py``)."""
    ti = getattr(trigger, "task_instance", None)
    if not getattr(trigger, "end_task", False) or ti is None or not in_triggerer():
        return False
    task = getattr(ti, "task", None)
    if task is None:
        return True
    try:
        return next(iter(task.iter_mapped_dependants()), None) is None
    except Exception:  # an Airflow without the method: the worker, which knows
        return False


async def end_task_event(trigger: Any, event: dict[str, Any]) -> Any | None:
    """The event that ends ``trigger``'s task, given the wait's ``event``; None when a worker must resume it.

    :param trigger: the :class:`~kernel_provider.triggers.kernel.KernelInvocationTrigger` whose wait ended (its
        ``fail_on_failure`` and ``soft_fail`` decide what a failed invocation does to the task).
    :param event: the wait's payload (``status``, ``invocation_id``, the run's ``browsers`` when usage is tracked).
    """
    if event.get("status") not in (SUCCEEDED, FAILED) or not can_end_task(trigger):
        return None
    from airflow.triggers.base import TaskFailedEvent, TaskSkippedEvent, TaskSuccessEvent

    key = ti_key(trigger.task_instance)
    if key is None:
        return None
    log: logging.Logger = trigger.log
    try:
        invocation = await trigger.hook.aget_invocation(trigger.invocation_id)
    except Exception as exc:
        log.warning("Could not read Kernel invocation %s (%s); a worker ends the task.", trigger.invocation_id, exc)
        return None
    if not invocation.is_terminal:  # the stream and the read disagree: let the worker's own read decide
        return None
    url = trigger.hook.invocation_url(invocation.id)
    log.info("Invocation %s %s. %s", invocation.id, invocation.raw_status, url)
    xcoms = _usage_xcom(trigger, invocation, event)
    try:
        result = finish(invocation, fail_on_failure=trigger.fail_on_failure, url=url)
    except KernelInvocationFailed as exc:
        await _push(trigger, key, xcoms)
        if trigger.soft_fail:
            log.info("soft_fail: %s The task is skipped.", exc)
            return TaskSkippedEvent()
        log.error("The task fails in the triggerer: %s: %s", type(exc).__name__, exc)
        return TaskFailedEvent()
    if getattr(getattr(trigger.task_instance, "task", None), "do_xcom_push", True):
        xcoms[RETURN_VALUE] = result
    if not await _push(trigger, key, xcoms):
        return None  # the task's result could not be stored: a worker reads the invocation again and pushes it
    log.info("The task ends in the triggerer: no worker resumes it.")
    return TaskSuccessEvent()


def _usage_xcom(trigger: Any, invocation: Invocation, event: dict[str, Any]) -> dict[str, Any]:
    """The run's usage (see :mod:`kernel_provider.utils.usage_report`): logged, sent as metrics, and returned as the
    ``kernel_usage`` XCom to push. Never raises."""
    from kernel_provider.utils.usage_report import send_metrics

    try:
        usage = compute_usage(invocation, browsers_from_event(event.get(BROWSERS_EVENT_KEY)))
    except Exception as exc:
        trigger.log.warning("Could not compute the usage of Kernel invocation %s: %s", invocation.id, exc)
        return {}
    trigger.log.info("%s", usage.summary())
    send_metrics(usage)
    return {XCOM_USAGE: usage.as_dict()}


async def _push(trigger: Any, key: TiKey, xcoms: dict[str, Any]) -> bool:
    """Push ``xcoms`` as the task instance's, off the loop; False (logged) when that failed."""
    if not xcoms:
        return True
    try:
        await in_db_thread(push_xcoms, key, xcoms)
    except Exception as exc:
        trigger.log.warning("Could not store the XComs of %s: %s", key.label, exc)
        return False
    return True
