"""The end of a Kernel task's run: what it cost, pushed as XCom, logged in one line and sent as Airflow metrics.

Shared by ``KernelInvokeOperator`` (and ``@task.kernel``) and ``KernelInvocationSensor``. The figures are
computed by :func:`kernel_provider.client.usage.compute_usage` from the invocation and the browsers the wait
reported in its event (key ``browsers``); a run whose browsers were not watched reports them as ``untracked``.

Metrics (Airflow's ``Stats``, tagged ``app`` and ``action``; tags reach backends that take them, such as
Datadog or OpenTelemetry):

* ``kernel.invocation.duration``: timer, the invocation's ``finished_at`` - ``started_at``;
* ``kernel.invocation.browser_seconds``: timer, the run's browser-seconds;
* ``kernel.invocation.browsers``: counter, incremented by the number of the run's browsers;
* ``kernel.invocation.<status>``: counter (``succeeded``, ``failed``, ``other`` for a run not finished).

Reporting never fails a task: a problem is logged as a warning.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from kernel_provider.client.browser_usage import BROWSERS_EVENT_KEY, BUDGET_EVENT_KEY
from kernel_provider.client.events import TIMEOUT
from kernel_provider.client.models import Invocation
from kernel_provider.client.usage import RunUsage, browsers_from_event, compute_usage
from kernel_provider.links import XCOM_USAGE

log = logging.getLogger(__name__)
METRIC_PREFIX = "kernel.invocation"
#: The statuses with a counter of their own; any other is counted as ``other``.
COUNTED_STATUSES = ("succeeded", "failed")
#: Key of the figures in an asset event's extra (:func:`asset_event_extra`).
ASSET_EXTRA_KEY = "kernel_usage"


def report_usage(
    task: Any, context: Any, invocation: Invocation, event: Mapping[str, Any] | None = None
) -> RunUsage | None:
    """Report the cost of ``invocation``'s run: XCom ``kernel_usage``, one INFO line, metrics. Never raises.

    :param task: the running operator or sensor; its ``log`` gets the line and ``run_usage`` the figures.
    :param context: the task's context (its ``ti`` pushes the XCom).
    :param invocation: the invocation as last read.
    :param event: the wait's final event (its ``browsers``); None when no wait watched the run's browsers.
    :returns: the figures, or None when they could not be computed.
    """
    try:
        browsers = browsers_from_event((event or {}).get(BROWSERS_EVENT_KEY))
        usage = compute_usage(invocation, browsers)
    except Exception as exc:
        task.log.warning("Could not compute the usage of Kernel invocation %s: %s", invocation.id, exc)
        return None
    task.run_usage = usage
    task.log.info("%s", usage.summary())
    try:
        context["ti"].xcom_push(key=XCOM_USAGE, value=usage.as_dict())
    except Exception as exc:
        task.log.warning("Could not push the usage of Kernel invocation %s: %s", invocation.id, exc)
    send_metrics(usage)
    return usage


def report_ended_by_wait(task: Any, context: Any, event: Mapping[str, Any]) -> RunUsage | None:
    """:func:`report_usage` for a run the wait itself ended: a ``timeout`` event (the run was cancelled at the
    deadline) or the ``error`` event of a run past ``max_browser_seconds``. One ``GET`` of the invocation first,
    only when the task tracks usage. Any other ``error`` event is not a run's end (it may still be going; a retry
    re-attaches and reports it): nothing. Never raises."""
    ended = event.get("status") == TIMEOUT or BUDGET_EVENT_KEY in event
    if not ended or not getattr(task, "track_usage", False):
        return None
    invocation_id = str(event.get("invocation_id"))
    try:
        invocation = task.hook.get_invocation(invocation_id)
    except Exception as exc:
        task.log.warning("Could not read Kernel invocation %s for its usage: %s", invocation_id, exc)
        return None
    return report_usage(task, context, invocation, event)


def send_metrics(usage: RunUsage) -> None:
    """Send ``usage`` as Airflow metrics (see the module docstring). Never raises."""
    try:
        from airflow.providers.common.compat.sdk import Stats

        tags = {"app": usage.app, "action": usage.action}
        if usage.duration_seconds is not None:
            Stats.timing(f"{METRIC_PREFIX}.duration", timedelta(seconds=usage.duration_seconds), tags=tags)
        Stats.timing(f"{METRIC_PREFIX}.browser_seconds", timedelta(seconds=usage.browser_seconds), tags=tags)
        Stats.incr(f"{METRIC_PREFIX}.browsers", count=usage.browsers, tags=tags)
        status = usage.status if usage.status in COUNTED_STATUSES else "other"
        Stats.incr(f"{METRIC_PREFIX}.{status}", tags=tags)
    except Exception as exc:  # a metrics backend's trouble is no reason to fail a finished run
        log.warning("Could not send the Kernel usage metrics of %s: %s", usage.invocation_id, exc)


def asset_event_extra(usage: RunUsage | None) -> dict[str, Any]:
    """The part of an asset event's ``extra`` that describes the run's cost: ``{"kernel_usage": {...}}``, or
    ``{}`` when there are no figures (merge it with the rest of the extra).

    :param usage: the figures (a task's ``run_usage`` once its run ended).
    """
    return {} if usage is None else {ASSET_EXTRA_KEY: usage.as_dict()}
