"""The trigger a ``KernelInvokeOperator`` (or ``@task.kernel``) waits with, and whether it may end the task.

On Airflow 3.3+ a deferred wait ends the task in the triggerer when the invocation ``succeeded`` or ``failed``
(:mod:`kernel_provider.triggers.task_end`), so no worker process resumes it: the create is the task's only worker
run. Whatever only a worker can do keeps the resume there (see :func:`ends_in_triggerer`).
"""

from __future__ import annotations

import time
from typing import Any

from kernel_provider.client.browser_watch import check_live_view
from kernel_provider.client.validation import check_seconds
from kernel_provider.links import XCOM_SCHEME
from kernel_provider.utils.completion import running_try
from kernel_provider.utils.lineage import lineage_wanted
from kernel_provider.version_compat import AIRFLOW_V_3_3_PLUS


def ends_in_triggerer(task: Any) -> bool:
    """Whether ``task``'s deferred wait may end the task in the triggerer: Airflow 3.3+, ``end_in_triggerer``
    (default True), and nothing that needs a worker's end: no ``outlets`` (asset events), no OpenLineage to
    report (:func:`~kernel_provider.utils.lineage.lineage_wanted`), a return value pushed as one XCom
    (``do_xcom_push``, no ``multiple_outputs``) that no mapped task expands over (Airflow learns how many map
    indexes to create only from a worker's push)."""
    if not (AIRFLOW_V_3_3_PLUS and getattr(task, "deferrable", False) and getattr(task, "end_in_triggerer", False)):
        return False
    if task.outlets or lineage_wanted(task) or getattr(task, "multiple_outputs", False) or not task.do_xcom_push:
        return False
    try:
        return next(iter(task.iter_mapped_dependants()), None) is None
    except Exception:  # not in a DAG (a bare execute()): nothing downstream to care about
        return getattr(task, "dag", None) is None


def wait_trigger(task: Any, invocation_id: str, context: Any, deadline: float | None) -> Any:
    """The :class:`~kernel_provider.triggers.kernel.KernelInvocationTrigger` of ``task``'s wait for
    ``invocation_id`` (deferred, or run on the worker with ``wait_in_worker``).

    :param deadline: the wait's absolute deadline (epoch seconds), None for none.
    """
    from kernel_provider.triggers.kernel import MIN_DEFERRAL, KernelInvocationTrigger

    return KernelInvocationTrigger(
        invocation_id=invocation_id,
        kernel_conn_id=task.kernel_conn_id,
        end_time=deadline,
        poll_interval=float(task.poll_interval),
        mode=task.wait_mode,
        stream_logs=task.stream_logs,
        cancel_on_kill=task.cancel_on_kill,
        cancel_on_timeout=True,
        live_view=check_live_view(task.live_view),
        try_number=running_try(context),
        resume_not_before=time.time() + MIN_DEFERRAL if task.deferrable else None,
        xcom_scheme=XCOM_SCHEME,
        track_usage=bool(task.track_usage),
        max_browser_seconds=check_seconds("max_browser_seconds", task.max_browser_seconds, exclusive=True),
        end_task=ends_in_triggerer(task),
        fail_on_failure=bool(task.fail_on_failure),
    )
