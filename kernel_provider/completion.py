"""What the operator and the sensor share about a finished wait: the trigger's events and the final step.

Trigger events are small (status, invocation id, reason, message) because Airflow stores them in its metadata
DB; the output itself is fetched by the worker once the wait is over.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from kernel_provider.client.errors import KernelError, KernelInvocationFailed
from kernel_provider.client.models import Invocation, InvocationStatus

SUCCEEDED = "succeeded"
FAILED = "failed"
TIMEOUT = "timeout"
ERROR = "error"
#: How a wait follows an invocation: Kernel's event stream (default) or plain polling.
WAIT_MODES = ("stream", "poll")
#: The only statuses a trigger event may carry. Anything else (or no event) is an error, never a success.
EVENT_STATUSES = frozenset({SUCCEEDED, FAILED, TIMEOUT, ERROR})


def make_event(
    status: str, invocation_id: str, *, status_reason: str | None = None, message: str = "", cancelled: bool = False
) -> dict[str, Any]:
    """The payload of a trigger event (small: Airflow stores it in its metadata DB).

    :param status: one of :data:`EVENT_STATUSES`.
    :param invocation_id: the invocation the event is about.
    :param status_reason: Kernel's reason for a final state, if any.
    :param message: a human-readable summary, cut to 2,000 characters.
    :param cancelled: the trigger itself cancelled the invocation (at the deadline, ``cancel_on_timeout``), so the
        task need not; False says nothing was cancelled by the trigger, not that the run is still going.
    """
    return {
        "status": status,
        "invocation_id": invocation_id,
        "status_reason": status_reason,
        "message": message[:2000],
        "cancelled": bool(cancelled),
    }


def event_for_invocation(invocation: Invocation) -> dict[str, Any]:
    """The event of a finished invocation."""
    status = SUCCEEDED if invocation.status is InvocationStatus.SUCCEEDED else FAILED
    return make_event(
        status, invocation.id, status_reason=invocation.status_reason, message=f"Invocation {invocation.id} {status}."
    )


def validate_event(event: Any) -> dict[str, Any]:
    """Check an event from the trigger against the allow-list; raise on anything unexpected."""
    if not isinstance(event, Mapping):
        raise KernelError(f"The Kernel trigger returned no usable event ({event!r}); the wait did not complete.")
    status = event.get("status")
    if status not in EVENT_STATUSES:
        raise KernelError(f"The Kernel trigger returned an unknown status {status!r}: {dict(event)!r}")
    if not isinstance(event.get("invocation_id"), str) or not event["invocation_id"]:
        raise KernelError(f"The Kernel trigger returned an event without invocation id: {dict(event)!r}")
    return dict(event)


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
        if deferred and _airflow2():
            budget -= min(AIRFLOW2_DEFERRAL_LEAD, budget / 4)
        limits.append(start + budget)
    return min(limits) if limits else None


def _airflow2() -> bool:
    from airflow import __version__

    return __version__.startswith("2.")
