"""The figures of a Kernel run, attached to the asset events a successful task emits.

When a Kernel task (``KernelInvokeOperator``, ``@task.kernel``, ``KernelInvocationSensor``) succeeds, Airflow
records one asset event per asset in its ``outlets``; :func:`attach_run_to_outlets` gives each event's ``extra``
the run's figures (:data:`EXTRA_KEYS`), JSON primitives only:

- ``kernel_invocation_id``: the invocation (a checked Kernel id).
- ``app_name``, ``version``, ``action_name``: what ran, as Kernel reports it; where Kernel's answer lacks a name
  (the answer to a synchronous create has no app or version) or holds one the client would refuse, the task's
  own (checked) argument, else null.
- ``status``: ``succeeded``; ``failed`` for a task with ``fail_on_failure=False``; ``queued`` or ``running`` for a
  submit-only task (``wait_for_completion=False``: put the outlet on the sensor that waits for the run to get
  the finished run's figures). ``unknown`` for a status this provider does not know.
- ``duration_seconds``: ``finished_at - started_at`` of the invocation (3 decimals); null while it runs or when
  Kernel did not say (its answer to a synchronous create, ``invoke_async=False``, has no timestamps).
- ``browser_seconds``: the browser time the run used, from ``usage`` when the caller has the figure; null when
  not (the key is always there, so a consumer reads ``extra["browser_seconds"]`` without guessing).

Nothing else from Kernel (no output, payload or status reason) goes into the extra: it is shown in Airflow's UI
and read by every consumer DAG. Outlets that are not assets (an asset alias, an asset reference by name, a
lineage object on Airflow 2) get nothing, and a task without outlets costs nothing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from kernel_provider.client.errors import KernelInputError
from kernel_provider.client.text import safe_text
from kernel_provider.client.trust import MAX_NAME_LENGTH
from kernel_provider.client.validation import require_name

if TYPE_CHECKING:
    from kernel_provider.client.models import Invocation

#: The keys of the extra :func:`attach_run_to_outlets` writes, in order.
EXTRA_KEYS = (
    "kernel_invocation_id",
    "app_name",
    "version",
    "action_name",
    "status",
    "duration_seconds",
    "browser_seconds",
)
_NAMES = ("app_name", "version", "action_name")


def _name(value: Any) -> str | None:
    """``value`` when it is a name the client would accept and prints as it is; else None."""
    try:
        name = require_name("name", value)
    except KernelInputError:
        return None
    return name if len(name) <= MAX_NAME_LENGTH and safe_text(name) == name else None


def _seconds(value: Any) -> float | None:
    """A finite, non-negative number of seconds as a float; anything else (a bool included) as None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        return None
    return float(value)


def _browser_seconds(usage: Any) -> float | None:
    # A mapping (the usage figures as a task returns them) or an object with the attribute (their dataclass).
    raw = usage.get("browser_seconds") if isinstance(usage, Mapping) else getattr(usage, "browser_seconds", None)
    return _seconds(raw)


def run_extra(
    *, invocation: Invocation, usage: Mapping[str, Any] | None = None, requested: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The extra of a run's asset events (see the module's description for each key).

    :param invocation: the run, as the task last read it.
    :param usage: the run's usage figures (``browser_seconds``), or None when not known.
    :param requested: the task's checked request (``app_name``, ``version``, ``action_name``), used where Kernel's
        answer lacks a name.
    """
    duration = None
    if invocation.started_at is not None and invocation.finished_at is not None:
        duration = _seconds(round((invocation.finished_at - invocation.started_at).total_seconds(), 3))
    names = {key: _name(getattr(invocation, key)) or _name((requested or {}).get(key)) for key in _NAMES}
    return {
        "kernel_invocation_id": invocation.id,
        **names,
        "status": invocation.status.value,
        "duration_seconds": duration,
        "browser_seconds": None if usage is None else _browser_seconds(usage),
    }


def attach_run_to_outlets(
    context: Any,
    *,
    invocation: Invocation,
    usage: Mapping[str, Any] | None = None,
    requested: Mapping[str, Any] | None = None,
) -> int:
    """Give the asset event of each asset in the running task's ``outlets`` the run's figures (:func:`run_extra`).

    Call it when the task is about to succeed: Airflow records the events only then. Keys already in an event's
    extra (set by the user's own code) that are not among :data:`EXTRA_KEYS` are kept.

    :param context: the task's context (with ``task`` and ``outlet_events``); without them nothing is done.
    :param invocation: the run.
    :param usage: the run's usage figures (``browser_seconds``), or None when not known.
    :param requested: the task's checked request, for the names Kernel's answer lacks.
    :returns: how many asset events got the extra.
    """
    from airflow.providers.common.compat.sdk import Asset

    task = context.get("task") if isinstance(context, Mapping) else None
    assets = [outlet for outlet in getattr(task, "outlets", None) or () if isinstance(outlet, Asset)]
    events = context.get("outlet_events") if assets else None
    if events is None:
        return 0
    extra = run_extra(invocation=invocation, usage=usage, requested=requested)
    for asset in assets:
        events[asset].extra.update(extra)
    return len(assets)
