"""``KernelInvokeOperator``: run a Kernel app action from a DAG and (optionally) wait for its result.

Importing this module makes no network call and stays cheap: DAG files import it at every parse.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import BaseOperator, conf

from kernel_provider.client.browser_watch import check_live_view
from kernel_provider.client.errors import KernelError, KernelRateLimitError, KernelWaitTimeout
from kernel_provider.client.events import ERROR, FAILED, TIMEOUT, WAIT_MODES, validate_event
from kernel_provider.client.validation import build_invoke_request, check_seconds
from kernel_provider.links import (
    XCOM_INVOCATION_ID,
    XCOM_INVOCATION_URL,
    XCOM_SCHEME,
    KernelInvocationLink,
    KernelLiveViewLink,
    push_live_view_link,
)
from kernel_provider.operators.run_keeping import RunKeeping
from kernel_provider.utils.asset_events import attach_run_to_outlets
from kernel_provider.utils.completion import finish, from_an_earlier_try, wait_deadline
from kernel_provider.utils.lineage import KernelLineageMixin, check_lineage_inputs

if TYPE_CHECKING:
    from kernel_provider.client.models import Invocation
    from kernel_provider.hooks.kernel import KernelHook
    from kernel_provider.utils.run_record import RunRecordStore

# The hook (requests, httpx, tenacity) and the trigger are imported when a task runs, not when a DAG file is
# parsed: DAG parsing imports this module for every DAG that uses the operator.

log = logging.getLogger(__name__)
#: Seconds ``on_kill`` may spend cancelling: the worker is stopping the task and will not wait long.
ON_KILL_BUDGET = 15.0
#: Shortest and longest single deferral of a deferrable create that Kernel refused with 429 (before jitter). The
#: floor is not Kernel's: on Airflow 3.3 a timer that fires before the deferring worker's process has exited (seconds
#: on a busy machine) races the executor's report of that process, and the scheduler fails the resumed task ("state
#: changed externally"). Seen in ``bench/bench_fanout.py`` with 1 s timers.
RATE_LIMIT_MIN_DEFER = 5.0
RATE_LIMIT_MAX_DEFER = 60.0
_UNSET = object()


class KernelInvokeOperator(RunKeeping, KernelLineageMixin, BaseOperator):
    """Invokes an action of a deployed Kernel app (``POST /invocations``) and returns its output.

    The invocation is created on the worker in ``execute()``, never in a trigger. Before the ``POST`` the task
    instance records that a create is in flight, and then which invocation it got (see
    :mod:`kernel_provider.utils.run_record`), so an automatic retry continues its own run instead of starting a second
    one, while a person's clear starts a fresh run. The id also goes to XCom (``invocation_id``,
    ``invocation_url``).

    :param app_name: the deployed app (templated).
    :param action_name: the action to run (templated).
    :param version: the app version label (templated; default ``"latest"``).
    :param payload: the action's input (templated): a dict/list/number/bool, JSON-encoded for you, or JSON text.
    :param invoke_async: create the invocation asynchronously (Kernel's ``async``, default True) and wait on the
        client side. False makes Kernel run it synchronously within the request, capped by Kernel at ~100 s:
        only for short actions.
    :param async_timeout_seconds: how long Kernel lets an async run go before failing it (10..3600; Kernel's
        default is 900). Only with ``invoke_async``.
    :param wait_for_completion: wait for the invocation to finish and return its output (default). False
        returns the invocation id at once (pair with :class:`KernelInvocationSensor`).
    :param deferrable: wait in the triggerer, freeing the worker slot (default ``[operators]
        default_deferrable``). Not deferrable: the worker waits, with the same logic and log streaming. A
        deferred task resumes no sooner than 5 s after it deferred, even for a run that ended sooner (Airflow's
        scheduler can fail a task that resumes before its deferring process was seen to exit).
    :param wait_mode: ``"stream"`` (follow Kernel's event stream, default) or ``"poll"``.
    :param poll_interval: seconds between status checks in poll mode and after a broken stream.
    :param timeout: seconds to wait for the result (an absolute deadline is computed when waiting starts and
        also honours ``execution_timeout``, which Airflow does not enforce while deferred). When it passes,
        the invocation is cancelled and the task fails. None: no limit but ``execution_timeout``. This is not
        Kernel's ``async_timeout_seconds``, which bounds the run on Kernel's side.
    :param stream_logs: copy the action's log lines into the task log while waiting.
    :param cancel_on_kill: cancel the invocation when the task is killed, marked failed/success or cleared
        (default True; for deferred tasks this needs Airflow 3.3+). Airflow clears a task that is running on a
        worker by killing it and giving it a new try (state ``restarting``); where it keeps ``max_tries`` (2.11,
        and 3.x when the killed try ended failed) that try is a retry here, so with False it re-attaches to the
        run that kept going instead of starting afresh.
    :param reattach_on_retry: on an automatic retry, re-join the invocation a previous try started if it is still
        running, return its output if it succeeded, invoke again only if it failed (default True). False: a retry
        cancels a previous try's run that is still going and starts a new one (never two at once). A clear of a
        finished or deferred task starts a new run, whatever this says (of one running on a worker: see
        ``cancel_on_kill``).
    :param reconcile_token: add a random per-try token to the payload (key ``_airflow_kernel_token``; the payload
        must be a JSON object, and the action sees the extra key) so that a create whose answer was lost is
        matched to its invocation exactly. Without it (default), a lost answer is settled only when Kernel lists no
        invocation that could be it; otherwise the task fails naming the candidates, for a person to check.
    :param validate_action: check with ``GET /apps`` that the app, version and action exist before invoking;
        a mistake fails with the list of what exists (default False: one request fewer).
    :param fail_on_failure: a ``failed`` invocation fails the task (default). False returns
        ``{"id", "status", "status_reason", "output"}`` instead.
    :param rate_limit_wait: seconds the create may keep waiting out Kernel's 429 (concurrency or rate limit),
        honouring ``Retry-After``, before failing (default: the connection's ``rate_limit_wait``, 900 s), counted
        from the first attempt. Deferrable: no worker sleeps through a 429; the task defers on a timer (Airflow's
        ``DateTimeTrigger``) until ``Retry-After`` (jittered, 5 to 60 s) has passed, then POSTs again.
        Pools are the other lever: a pool sized to your Kernel concurrency limit keeps tasks from queueing at
        Kernel at all.
    :param live_view: ``"read"`` (default; True means the same): while waiting, learn the run's browsers, mint a
        read-only live-view URL of each headful one (``POST /browsers/{id}/live_view``, valid for the task's
        remaining time, at most an hour), log it once and point the task's "Kernel live view" link at the first;
        when the run failed, log the view URLs of its browsers' replays. ``"control"``: publish control URLs
        instead (they steer the browser: masked, never logged; only for people allowed to act in it).
        False or ``"off"``: no browser request, nothing published. Costs a few ``GET /invocations/{id}/browsers``
        per wait plus one ``POST`` per browser (see docs/live-view.md).
    :param lineage_inputs: what the action reads, for OpenLineage (``[openlineage]`` extra): URIs with a scheme
        (e.g. the pages it starts at) or Airflow assets, sent as the run's input datasets; its outputs are the
        task's ``outlets``. See docs/openlineage.md.
    :param track_usage: watch the run's browsers (even with ``live_view`` off) for its cost: when the run ends the
        task pushes XCom ``kernel_usage``, logs one ``Kernel usage:`` line and sends Airflow metrics (see
        docs/usage.md). Costs the browser lists of ``live_view`` when that is off, plus one ``GET /browsers/{id}``
        per browser after the run. False: the duration only, with no browser request (browsers ``untracked``).
    :param max_browser_seconds: a budget (> 0) for the run's browser-seconds (summed over its browsers, from
        Kernel's uptime or their create times): once passed, the wait cancels the invocation and the task fails
        naming it. None (default): no budget. Watches the browsers even with ``live_view`` off.
    :param end_in_triggerer: Airflow 3.3+, deferrable: when the invocation ``succeeded`` or ``failed``, the
        triggerer ends the task (pushes its XComs, fails it or marks it done) and no worker process resumes it
        (default True). Resumed on a worker all the same after a timeout or a Kernel outage, and for a task with
        ``outlets``, OpenLineage configured, ``multiple_outputs``, ``do_xcom_push=False`` or a mapped task
        expanding over its output. False: always resume on a worker.
    :param kernel_conn_id: Airflow connection of type ``kernel``.
    """

    template_fields: Sequence[str] = ("app_name", "action_name", "version", "payload")
    template_fields_renderers = {"payload": "json"}
    operator_extra_links = (KernelInvocationLink(), KernelLiveViewLink())
    ui_color = "#dbe7ff"

    def __init__(
        self,
        *,
        app_name: str,
        action_name: str,
        version: str = "latest",
        payload: Any = None,
        invoke_async: bool = True,
        async_timeout_seconds: int | None = None,
        wait_for_completion: bool = True,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        wait_mode: str = "stream",
        poll_interval: float = 5.0,
        timeout: float | timedelta | None = None,
        stream_logs: bool = True,
        cancel_on_kill: bool = True,
        reattach_on_retry: bool = True,
        reconcile_token: bool = False,
        validate_action: bool = False,
        fail_on_failure: bool = True,
        rate_limit_wait: float | None = None,
        live_view: bool | str = "read",
        lineage_inputs: Sequence[Any] | None = None,
        track_usage: bool = True,
        max_browser_seconds: float | None = None,
        end_in_triggerer: bool = True,
        kernel_conn_id: str = "kernel_default",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.lineage_inputs = check_lineage_inputs(lineage_inputs)
        self.app_name = app_name
        self.action_name = action_name
        self.version = version
        self.payload = payload
        self.invoke_async = invoke_async
        self.async_timeout_seconds = async_timeout_seconds
        self.wait_for_completion = wait_for_completion
        self.deferrable = deferrable
        self.wait_mode = wait_mode
        self.poll_interval = poll_interval
        self.timeout = timeout
        self.stream_logs = stream_logs
        self.cancel_on_kill = cancel_on_kill
        self.reattach_on_retry = reattach_on_retry
        self.reconcile_token = reconcile_token
        self.validate_action = validate_action
        self.fail_on_failure = fail_on_failure
        self.rate_limit_wait = rate_limit_wait
        self.live_view = live_view
        self.track_usage = track_usage
        self.max_browser_seconds = max_browser_seconds
        self.end_in_triggerer = bool(end_in_triggerer)
        #: The run's cost once it ended (:class:`~kernel_provider.client.usage.RunUsage`), for the asset event.
        self.run_usage: Any = None
        #: The first browser's live-view URL once a wait has reported one (the "Kernel live view" link).
        self.live_view_url: str | None = None
        self.kernel_conn_id = kernel_conn_id
        self.invocation_id: str | None = None

    @cached_property
    def hook(self) -> KernelHook:
        """The hook of ``kernel_conn_id`` (created on first use, when the task runs: never at DAG parse), with
        ``rate_limit_wait`` as its 429 budget when given (the connection's other retry settings kept)."""
        from kernel_provider.hooks.kernel import KernelHook

        return KernelHook(kernel_conn_id=self.kernel_conn_id, rate_limit_wait=self.rate_limit_wait)

    # --- execute -------------------------------------------------------------------------------------------

    def _validated_request(self) -> dict[str, Any]:
        """Every argument checked before any request; errors name the field and the fix."""
        request = build_invoke_request(
            app_name=self.app_name,
            action_name=self.action_name,
            version=self.version,
            payload=self.payload,
            invoke_async=self.invoke_async,
            async_timeout_seconds=self.async_timeout_seconds,
        )
        check_seconds("poll_interval", self.poll_interval, allow_none=False, exclusive=True)
        check_seconds("timeout", self.timeout, exclusive=True)
        check_seconds("rate_limit_wait", self.rate_limit_wait)
        check_live_view(self.live_view)
        check_seconds("max_browser_seconds", self.max_browser_seconds, exclusive=True)
        if self.wait_mode not in WAIT_MODES:
            raise KernelError(f"wait_mode: must be one of {', '.join(WAIT_MODES)}, got {self.wait_mode!r}.")
        if self.deferrable and self.wait_for_completion and not self.invoke_async:
            self.log.info("invoke_async=False: Kernel answers when the action is done, so nothing is deferred.")
        return request

    def execute(self, context: Any) -> Any:
        """Check the arguments, continue a previous try's run or create one, then wait (deferred or here).

        :returns: the action's decoded output (or the invocation id with ``wait_for_completion=False``; the
            failure dict with ``fail_on_failure=False``).
        """
        from kernel_provider.utils.run_record import RunRecordStore

        request = self._validated_request()
        records = RunRecordStore(context)
        invocation = self._previous_run(records, request)
        if invocation is None:
            if self.validate_action:
                self.hook.get_action(request["app_name"], request["action_name"], version=request["version"])
            invocation = self._create_or_defer(request, records, deadline=None, attempt=0)
        return self._proceed(context, request, records, invocation)

    def execute_after_rate_limit(self, context: Any, event: Any = None) -> Any:
        """Resumes a deferrable task whose create Kernel refused with 429, once the timer has fired: POSTs again
        (the run record written before it, as on the first try), and defers again on another 429 until
        ``rate_limit_wait`` (counted from the first attempt) is spent.

        :param event: the timer's payload, ``{"rate_limit_deadline", "attempt"}``.
        """
        from kernel_provider.utils.run_record import RunRecordStore

        if not isinstance(event, dict) or not isinstance(event.get("rate_limit_deadline"), (int, float)):
            raise KernelError(f"The rate-limit timer returned no usable event ({event!r}); the task did not invoke.")
        request = self._validated_request()
        records = RunRecordStore(context)
        invocation = self._create_or_defer(
            request, records, deadline=float(event["rate_limit_deadline"]), attempt=int(event.get("attempt") or 1)
        )
        return self._proceed(context, request, records, invocation)

    def _proceed(self, context: Any, request: dict[str, Any], records: RunRecordStore, invocation: Invocation) -> Any:
        """After the create (or re-attach): hand the id off, finish, or wait (deferred or on this worker)."""
        self.kernel_invocation = invocation
        self._remember(context, invocation.id)

        if not self.wait_for_completion and (request.get("async") or not invocation.is_terminal):
            # Submit only: the result is the id, whatever state a reconciled or re-attached invocation has
            # reached by now; its outcome is for the sensor to report. The id is handed off with the return
            # value, so the record goes: a later clear must start a new run, not find this one.
            records.forget()
            attach_run_to_outlets(context, invocation=invocation, usage=None, requested=request)
            return invocation.id
        if invocation.is_terminal:
            return self._finish(context, invocation, records)
        trigger = self._trigger(invocation.id, context)
        if self.deferrable:
            # No GET first: the create's (or the re-attach's) answer says it is not finished, and the trigger
            # learns the current state from the first event of the stream (or its first GET in poll mode).
            from kernel_provider.triggers.log_cursor import seed_log_cursor

            seed_log_cursor(context["ti"], invocation.id)
            self.defer(trigger=trigger, method_name="execute_complete")
        latest = self.hook.get_invocation(invocation.id)
        if latest.is_terminal:
            return self._finish(context, latest, records)
        from kernel_provider.triggers.in_worker import wait_in_worker

        self.log.info("Waiting on this worker for invocation %s.", invocation.id)
        trigger.link_to(context["ti"])
        return self.execute_complete(context, wait_in_worker(trigger))

    def execute_complete(self, context: Any, event: dict[str, Any] | None = None) -> Any:
        """Resumes the task when the wait is over (called by Airflow after deferral, or directly)."""
        from kernel_provider.utils.run_record import RunRecordStore

        event = validate_event(event)
        stale_try = from_an_earlier_try(event, context)
        if stale_try is not None:
            self.log.warning(
                "Resumed with the wait result of try %s, not of this try: starting this try afresh (it continues "
                "or replaces that try's invocation by the usual retry rules).",
                stale_try,
            )
            return self.execute(context)
        invocation_id = event["invocation_id"]
        if event.get("xcom_scheme", 1) < XCOM_SCHEME:
            # Deferred by provider 0.1, which pushed the invocation under its old keys: downstream tasks and the
            # link read today's.
            self._remember(context, invocation_id)
        self.invocation_id = invocation_id
        push_live_view_link(self, context, event)
        records = RunRecordStore(context)
        if event["status"] == TIMEOUT and not event.get("cancelled"):
            self._cancel(invocation_id, "the Airflow task's timeout passed")
        if event["status"] in (TIMEOUT, ERROR):
            from kernel_provider.utils.usage_report import report_ended_by_wait

            report_ended_by_wait(self, context, event)
        if event["status"] == TIMEOUT:
            records.forget()  # cancelled: a retry starts a new run
            raise KernelWaitTimeout(f"{event['message']} It was cancelled. {self.hook.invocation_url(invocation_id)}")
        if event["status"] == ERROR:
            # The record stays: a retry re-attaches to the invocation, which may still be running.
            raise KernelError(f"Waiting for invocation {invocation_id} failed: {event['message']}")
        invocation = self.hook.get_invocation(invocation_id)
        if not invocation.is_terminal and event["status"] == FAILED:
            raise KernelError(f"Invocation {invocation_id} was reported failed but is {invocation.raw_status}.")
        return self._finish(context, invocation, records, event)

    def on_kill(self) -> None:
        """The worker is stopping the task: cancel the invocation (bounded, never blocking the kill)."""
        if not (self.cancel_on_kill and self.invocation_id):
            return
        self._cancel(self.invocation_id, "the Airflow task was killed", budget=ON_KILL_BUDGET)

    # --- steps ---------------------------------------------------------------------------------------------

    def _trigger(self, invocation_id: str, context: Any) -> Any:
        from kernel_provider.operators.wait_trigger import wait_trigger

        return wait_trigger(self, invocation_id, context, self._deadline(context))

    def _create_or_defer(
        self, request: dict[str, Any], records: RunRecordStore, *, deadline: float | None, attempt: int
    ) -> Invocation:
        """Create the invocation. Not deferrable: 429s are waited out here by the hook's policy. Deferrable: the
        first 429 is raised at once (no worker sleeps through it) and the task defers on a timer instead.

        :param deadline: epoch seconds when the 429 budget ends (None: the first attempt, which sets it).
        :param attempt: creates refused with 429 so far.
        """
        if not self.deferrable:
            return self._create(request, records)
        from dataclasses import replace

        policy = self.hook.client.retry
        if deadline is None:
            deadline = time.time() + policy.rate_limit_budget
        try:
            return self._create(request, records, retry=replace(policy, rate_limit_budget=0.0))
        except KernelRateLimitError as exc:
            self._defer_for_rate_limit(exc, policy.wait_seconds(attempt + 1, exc), deadline, attempt + 1)
            raise  # not reached: defer() raises

    def _defer_for_rate_limit(self, exc: KernelRateLimitError, wait: float, deadline: float, attempt: int) -> None:
        """Defer on a timer until Kernel's ``Retry-After`` (jittered, capped) has passed, within the budget; past
        it, fail naming ``rate_limit_wait``. The run record was already forgotten: a 429 created nothing."""
        from kernel_provider.triggers.rate_limit import KernelRateLimitTimer

        left = deadline - time.time()
        if left <= 0:
            raise KernelError(
                f"Kernel refused to start {self.app_name}/{self.action_name} with 429 ({exc}) {attempt} times, and "
                f"the task's rate_limit_wait ({self.hook.client.retry.rate_limit_budget:g}s, counted from the first "
                "attempt) is spent. Nothing was created. Raise rate_limit_wait (or the connection's), or size a "
                "pool to your Kernel concurrency limit."
            ) from exc
        wait = min(max(RATE_LIMIT_MIN_DEFER, wait), RATE_LIMIT_MAX_DEFER) * random.uniform(1.0, 1.25)
        wait = min(wait, left)
        self.log.info(
            "Kernel refused the create with 429 (%s); deferring %.1fs before trying again (attempt %d; "
            "rate_limit_wait leaves %.0fs).",
            exc,
            wait,
            attempt,
            left,
        )
        moment = datetime.now(timezone.utc) + timedelta(seconds=wait)
        self.defer(
            trigger=KernelRateLimitTimer(moment=moment, rate_limit_deadline=deadline, attempt=attempt),
            method_name="execute_after_rate_limit",
        )

    def _finish(
        self, context: Any, invocation: Invocation, records: RunRecordStore, event: dict[str, Any] | None = None
    ) -> Any:
        from kernel_provider.utils.usage_report import report_usage

        self.kernel_invocation = invocation
        url = self.hook.invocation_url(invocation.id)
        self.log.info("Invocation %s %s. %s", invocation.id, invocation.raw_status, url)
        report_usage(self, context, invocation, event)
        records.forget()  # the run has an outcome: a retry or a clear starts a new one
        result = finish(invocation, fail_on_failure=self.fail_on_failure, url=url)
        asked = {"app_name": self.app_name, "version": self.version, "action_name": self.action_name}
        attach_run_to_outlets(context, invocation=invocation, usage=self.run_usage, requested=asked)
        return result

    def _remember(self, context: Any, invocation_id: str) -> None:
        self.invocation_id = invocation_id
        url = self.hook.invocation_url(invocation_id)
        self.log.info("Kernel invocation: %s", url)
        ti = context["ti"]
        ti.xcom_push(key=XCOM_INVOCATION_ID, value=invocation_id)
        ti.xcom_push(key=XCOM_INVOCATION_URL, value=url)
        link_key = getattr(KernelInvocationLink(), "xcom_key", None)
        if link_key:
            # Airflow 3 shows extra links from this XCom, which it writes only when the task ends: written now,
            # the button works while the task waits on a worker.
            ti.xcom_push(key=link_key, value=url)

    def _deadline(self, context: Any) -> float | None:
        return wait_deadline(
            context,
            self.execution_timeout,
            check_seconds("timeout", self.timeout, exclusive=True),
            deferred=self.deferrable,
        )

    def _cancel(self, invocation_id: str, why: str, budget: float | None = None) -> None:
        try:
            self.hook.cancel_invocation(invocation_id, reason=f"Cancelled by Airflow: {why}", budget=budget)
            self.log.info("Cancelled invocation %s (%s).", invocation_id, why)
        except Exception as exc:
            self.log.warning("Could not cancel invocation %s: %s", invocation_id, exc)
