"""What the operator and the sensor share about ending a task: its wait's deadline, whether an event is from an
earlier try, and the task's result from a finished invocation.

The events themselves are defined in :mod:`kernel_provider.client.events`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from kernel_provider.client.errors import KernelError, KernelInvocationFailed
from kernel_provider.client.models import Invocation
from kernel_provider.version_compat import AIRFLOW_2


def running_try(context: Any) -> int | None:
    """The try number of the task instance in ``context``; None outside a task run (a bare ``execute({})``)."""
    task_instance = context.get("ti") if isinstance(context, Mapping) else None
    number = getattr(task_instance, "try_number", None)
    return number if isinstance(number, int) else None


def from_an_earlier_try(event: Mapping[str, Any], context: Any) -> int | None:
    """The try whose wait produced ``event`` when that is not the running try; else None.

    Airflow 3.0 keeps a deferred task's resume point (method and event) when the task goes up for retry, so its
    retry resumes with the previous try's event instead of starting again (3.1 clears it). A trigger echoes the
    try that deferred (``try_number``); an event without it (a trigger serialized by an older provider version,
    a sensor started from the triggerer) is taken as the running try's.
    """
    event_try = event.get("try_number")
    current = running_try(context)
    if isinstance(event_try, int) and current is not None and event_try < current:
        return event_try
    return None


def finish(invocation: Invocation, *, fail_on_failure: bool = True, url: str | None = None) -> Any:
    """Turn a finished invocation into the task's result: its decoded output, or an error when it failed.

    With ``fail_on_failure=False`` a failed invocation is returned as a dict (id, status, status_reason,
    output) instead of raising.
    """
    if not invocation.is_terminal:
        raise KernelError(f"Invocation {invocation.id} is {invocation.raw_status or 'not finished'}, not finished.")
    if invocation.succeeded:
        return invocation.result
    if fail_on_failure:
        raise KernelInvocationFailed(invocation, url)
    return {
        "id": invocation.id,
        "status": invocation.raw_status,
        "status_reason": invocation.status_reason,
        "output": invocation.result,
    }


#: Airflow 2 fails a deferred task at ``start_date + execution_timeout`` from its scheduler (without resuming it):
#: a wait bounded by ``execution_timeout`` ends this much earlier there (at most a quarter of the timeout), so the
#: trigger, which cancels the run, gets there first.
AIRFLOW2_DEFERRAL_LEAD = 30.0


def wait_deadline(
    context: Any, execution_timeout: timedelta | None, timeout: float | None, *, deferred: bool
) -> float | None:
    """The absolute deadline (epoch seconds) of a wait: the sooner of ``now + timeout`` and the task's
    ``start_date + execution_timeout``; None when neither is set.

    Airflow 3 does not enforce ``execution_timeout`` while a task is deferred, so the wait enforces it itself.
    """
    now = time.time()
    limits = []
    if timeout is not None:
        limits.append(now + timeout)
    if execution_timeout is not None:
        ti = context.get("ti") if hasattr(context, "get") else None
        started = getattr(getattr(ti, "start_date", None), "timestamp", None)
        start = started() if callable(started) else now
        budget = execution_timeout.total_seconds()
        if deferred and AIRFLOW_2:
            budget -= min(AIRFLOW2_DEFERRAL_LEAD, budget / 4)
        limits.append(start + budget)
    return min(limits) if limits else None
