"""The events a wait ends with: what the trigger sends the task (small, since Airflow stores them in its
metadata DB) and the allow-list the task checks them against. The output itself is fetched once the wait is over.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kernel_provider.client.errors import KernelError
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
