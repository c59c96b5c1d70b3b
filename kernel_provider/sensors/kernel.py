"""``KernelInvocationSensor``: waits for any invocation (e.g. one started with ``invoke_async=True``)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import (
    AirflowSensorTimeout,
    AirflowSkipException,
    BaseSensorOperator,
    PokeReturnValue,
    conf,
)

from kernel_provider.client.browser_watch import check_live_view
from kernel_provider.client.errors import (
    KernelError,
    KernelInvocationFailed,
    KernelRateLimitError,
    KernelServerError,
    KernelTransportError,
)
from kernel_provider.client.events import ERROR, TIMEOUT, WAIT_MODES, validate_event
from kernel_provider.client.validation import check_seconds
from kernel_provider.links import XCOM_SCHEME, KernelLiveViewLink, push_live_view_link
from kernel_provider.utils.asset_events import attach_run_to_outlets
from kernel_provider.utils.completion import finish, from_an_earlier_try, running_try, wait_deadline
from kernel_provider.utils.lineage import KernelLineageMixin, check_lineage_inputs, lineage_wanted
from kernel_provider.version_compat import AIRFLOW_V_3_3_PLUS

if TYPE_CHECKING:
    from kernel_provider.hooks.kernel import KernelHook

# The hook and the trigger are imported when the task runs: DAG parsing imports this module (see the operator).

#: The trigger a deferrable sensor waits with (its classpath, for ``start_trigger_args``).
TRIGGER_CLASSPATH = "kernel_provider.triggers.kernel.KernelInvocationTrigger"


#: Airflow 3.3+ renders a task's templated fields in the triggerer for a task that starts there.
STARTS_FROM_TRIGGER = AIRFLOW_V_3_3_PLUS


def _as_template(value: Any) -> str | None:
    """``value`` as text the triggerer can render, or None (then the sensor starts on a worker).

    A string as is, unless it pulls an XCom without ``map_indexes``: Airflow's triggerer cannot answer that
    (pulling "every map index" is a request it does not serve). A plain ``task.output`` of an unmapped task becomes
    the equivalent ``xcom_pull`` of map index -1, which it serves. Anything else (a mapped upstream, other XCom
    arguments) starts on a worker.
    """
    if isinstance(value, str):
        return None if "xcom_pull" in value and "map_indexes" not in value else value
    operator, key = getattr(value, "operator", None), getattr(value, "key", None)
    task_id = getattr(operator, "task_id", None)
    plain = type(value).__name__ == "PlainXComArg" and type(operator).__name__ != "MappedOperator"
    if plain and isinstance(task_id, str) and isinstance(key, str):
        return f"{{{{ ti.xcom_pull(task_ids={task_id!r}, key={key!r}, map_indexes=-1) }}}}"
    return None


class KernelInvocationSensor(KernelLineageMixin, BaseSensorOperator):
    """Waits until a Kernel invocation is ``succeeded`` or ``failed``; returns its output as XCom.

    :param invocation_id: the invocation to wait for (templated; ``invoke_task.output`` works).
    :param kernel_conn_id: Airflow connection of type ``kernel``.
    :param deferrable: wait in the triggerer instead of a worker slot (default: ``[operators]
        default_deferrable``). Deferrable waits follow Kernel's event stream and copy the action's log lines
        into the task log. A sensor that deferred from a worker resumes no sooner than 5 s after it deferred.
    :param fail_on_failure: a ``failed`` invocation fails the task (default). False: the sensor succeeds and
        returns ``{"id", "status", "status_reason", "output"}`` instead.
    :param wait_mode: ``"stream"`` (follow events, default) or ``"poll"`` (GET every ``poke_interval``) when
        deferrable.
    :param stream_logs: copy the action's log lines into the task log (deferrable, stream mode).
    :param poke_interval: seconds between checks in poke/reschedule mode and poll mode.
    :param timeout: seconds to wait before failing with ``AirflowSensorTimeout`` (or skipping, with
        ``soft_fail``). The invocation is NOT cancelled: the sensor only watches. A deferred wait also ends at
        ``start_date + execution_timeout``, which Airflow 3 does not enforce while a task is deferred.
    :param soft_fail: skip instead of failing when the wait times out or the invocation ``failed`` (the same
        in poke, reschedule and deferrable mode).
    :param start_from_trigger: on Airflow 3.3+, a deferrable sensor starts and ends in the triggerer, with no
        worker process at all (default True): the triggerer renders ``invocation_id`` and opens the event stream at
        once; when the invocation ``succeeded`` or ``failed`` it reads it once, pushes the task's XComs and ends the
        task. A worker still resumes it (one ``GET``) when the wait timed out or Kernel could not be reached, when
        the task has ``outlets`` or OpenLineage is configured (their events are sent from a worker), and when a
        mapped task expands over its output. ``timeout`` and ``execution_timeout`` then bound the wait through
        Airflow's trigger timeout. Ignored (the sensor starts on a worker, as before) on
        Airflow < 3.3, when not deferrable, or when ``invocation_id`` is neither text nor a plain ``task.output``.
        ``dag.test()`` runs no trigger for a task that starts there: pass False to test such a DAG with it.
    :param live_view: deferrable: ``"read"`` (default; True means the same) learns the run's browsers while
        waiting, mints a read-only live-view URL of each headful one (valid for the wait's remaining time, at most
        an hour; an hour when the sensor starts in the triggerer), logs it once and points the task's "Kernel
        live view" link at the first; logs the replays of a failed run. ``"control"``: control URLs instead
        (masked, never logged). False or ``"off"``: none of it. Poke and reschedule mode do not watch browsers.
    :param lineage_inputs: what the watched action reads, for OpenLineage (``[openlineage]`` extra): URIs with a
        scheme or Airflow assets, sent as input datasets; outputs are the task's ``outlets`` (docs/openlineage.md).
    :param track_usage: deferrable: watch the run's browsers for its cost (as ``KernelInvokeOperator`` does; see
        docs/usage.md). Whatever the mode, the sensor pushes XCom ``kernel_usage``, logs one ``Kernel usage:`` line
        and sends metrics when the run ended; poke and reschedule mode report its browsers as ``untracked``.
    """

    template_fields: Sequence[str] = ("invocation_id",)
    operator_extra_links = (KernelLiveViewLink(),)
    ui_color = "#e8f0ff"

    def __init__(
        self,
        *,
        invocation_id: str,
        kernel_conn_id: str = "kernel_default",
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        fail_on_failure: bool = True,
        wait_mode: str = "stream",
        stream_logs: bool = True,
        start_from_trigger: bool = True,
        live_view: bool | str = "read",
        lineage_inputs: Sequence[Any] | None = None,
        track_usage: bool = True,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("poke_interval", 5.0 if deferrable else 30.0)
        super().__init__(**kwargs)
        self.invocation_id = invocation_id
        self.kernel_conn_id = kernel_conn_id
        self.deferrable = deferrable
        self.fail_on_failure = fail_on_failure
        self.wait_mode = wait_mode
        self.stream_logs = stream_logs
        self.live_view = check_live_view(live_view)  # a wrong value fails at DAG parse, before any request
        self.lineage_inputs = check_lineage_inputs(lineage_inputs)
        #: The first browser's live-view URL once a wait has reported one (the "Kernel live view" link).
        self.live_view_url: str | None = None
        self.track_usage = bool(track_usage)
        #: The run's cost once it ended (:class:`~kernel_provider.client.usage.RunUsage`).
        self.run_usage: Any = None
        self.start_from_trigger = False
        template = _as_template(invocation_id)
        if start_from_trigger and deferrable and STARTS_FROM_TRIGGER and template is not None:
            self._start_in_triggerer(template)

    def _start_in_triggerer(self, invocation_id: str) -> None:
        """Start the wait in the triggerer (Airflow 3.3+): the trigger's kwargs, ``invocation_id`` rendered there."""
        from airflow.triggers.base import StartTriggerArgs

        self.start_from_trigger = True
        self.start_trigger_args = StartTriggerArgs(
            trigger_cls=TRIGGER_CLASSPATH,
            trigger_kwargs={
                "invocation_id": invocation_id,
                "kernel_conn_id": self.kernel_conn_id,
                "end_time": None,  # Airflow's trigger timeout (below) bounds the wait
                "poll_interval": float(self.poke_interval),
                "mode": self.wait_mode,
                "stream_logs": bool(self.stream_logs),
                "cancel_on_kill": False,
                "live_view": self.live_view,
                # No worker seeds the log position: the trigger must not read an XCom that may not exist.
                "log_cursor_seeded": False,
                "xcom_scheme": XCOM_SCHEME,
                "track_usage": self.track_usage,
                # The task ends there too, unless its end must run on a worker (asset events, OpenLineage).
                "end_task": not self.outlets and not lineage_wanted(self),
                "fail_on_failure": bool(self.fail_on_failure),
                "soft_fail": bool(self.soft_fail),
            },
            next_method="execute_complete",
            next_kwargs=None,
            timeout=timedelta(seconds=float(self.timeout)),
        )

    @cached_property
    def hook(self) -> KernelHook:
        """The hook of ``kernel_conn_id`` (created when the task runs, never at DAG parse)."""
        from kernel_provider.hooks.kernel import KernelHook

        return KernelHook(kernel_conn_id=self.kernel_conn_id)

    def _check_arguments(self) -> str:
        if not isinstance(self.invocation_id, str) or not self.invocation_id.strip():
            raise KernelError(
                f"invocation_id: must be a non-empty string, got {self.invocation_id!r}. Pass the "
                "id returned by KernelInvokeOperator (e.g. invoke_task.output)."
            )
        if self.wait_mode not in WAIT_MODES:
            raise KernelError(f"wait_mode: must be one of {', '.join(WAIT_MODES)}, got {self.wait_mode!r}.")
        check_seconds("poke_interval", self.poke_interval, allow_none=False, exclusive=True)
        return self.invocation_id.strip()

    def execute(self, context: Any) -> Any:
        """Poke or reschedule like any sensor, or (deferrable) check once and defer to the trigger.

        :returns: the invocation's decoded output when it is already finished; otherwise the wait continues.
        """
        invocation_id = self._check_arguments()
        if not self.deferrable:
            return super().execute(context)
        invocation = self.hook.get_invocation(invocation_id)
        if invocation.is_terminal:
            return self._complete(context, invocation_id, invocation)
        from kernel_provider.triggers.kernel import MIN_DEFERRAL, KernelInvocationTrigger
        from kernel_provider.triggers.log_cursor import seed_log_cursor

        seed_log_cursor(context["ti"], invocation_id)

        self.defer(
            trigger=KernelInvocationTrigger(
                invocation_id=invocation_id,
                kernel_conn_id=self.kernel_conn_id,
                end_time=wait_deadline(context, self.execution_timeout, float(self.timeout), deferred=True),
                poll_interval=float(self.poke_interval),
                mode=self.wait_mode,
                stream_logs=self.stream_logs,
                cancel_on_kill=False,
                live_view=self.live_view,
                try_number=running_try(context),
                resume_not_before=time.time() + MIN_DEFERRAL,
                xcom_scheme=XCOM_SCHEME,
                track_usage=self.track_usage,
            ),
            method_name="execute_complete",
        )

    def poke(self, context: Any) -> PokeReturnValue | bool:
        """One ``GET``: done (with the output as XCom) once the invocation finished. A Kernel hiccup (transport
        error, 5xx, 429, already retried by the client) is not the outcome: it returns False to try again."""
        try:
            invocation = self.hook.get_invocation(self._check_arguments())
        except (KernelTransportError, KernelServerError, KernelRateLimitError) as exc:
            # The hook already retried; a Kernel hiccup is not the invocation's outcome. Try again next poke,
            # within the sensor's timeout. Any other API error (bad key, unknown id) fails at once.
            self.log.warning("Could not check invocation %s this time: %s", self.invocation_id, exc)
            return False
        self.log.info("Invocation %s is %s.", invocation.id, invocation.raw_status)
        if not invocation.is_terminal:
            return False
        return PokeReturnValue(is_done=True, xcom_value=self._complete(context, invocation.id, invocation))

    def execute_complete(self, context: Any, event: dict[str, Any] | None = None) -> Any:
        """Resumes the deferred sensor with the trigger's event: times out, fails, or returns the output.

        :param event: the trigger's payload; anything unexpected (or None) fails rather than passing as success.
        """
        event = validate_event(event)
        stale_try = from_an_earlier_try(event, context)
        if stale_try is not None:
            self.log.warning("Resumed with the wait result of try %s, not of this try: waiting afresh.", stale_try)
            return self.execute(context)
        push_live_view_link(self, context, event)
        if event["status"] == TIMEOUT:
            message = f"Sensor timed out: {event['message']}"
            if self.soft_fail:
                raise AirflowSkipException(message)
            raise AirflowSensorTimeout(message)
        if event["status"] == ERROR:
            raise KernelError(f"Waiting for invocation {event['invocation_id']} failed: {event['message']}")
        return self._complete(context, event["invocation_id"], event=event)

    def _complete(self, context: Any, invocation_id: str, invocation: Any = None, event: Any = None) -> Any:
        from kernel_provider.utils.usage_report import report_usage

        invocation = invocation or self.hook.get_invocation(invocation_id)
        self.kernel_invocation = invocation
        url = self.hook.invocation_url(invocation.id)
        self.log.info("Invocation %s %s. %s", invocation.id, invocation.raw_status, url)
        report_usage(self, context, invocation, event)
        try:
            result = finish(invocation, fail_on_failure=self.fail_on_failure, url=url)
            attach_run_to_outlets(context, invocation=invocation, usage=self.run_usage)
            return result
        except KernelInvocationFailed as exc:
            # Deferred, Airflow turns any error on resume into a skip under soft_fail; poke mode would fail.
            # One rule for every mode: soft_fail skips on a failed invocation.
            if self.soft_fail:
                raise AirflowSkipException(f"soft_fail: {exc}") from exc
            raise
