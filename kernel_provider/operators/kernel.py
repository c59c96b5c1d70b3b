"""``KernelInvokeOperator``: run a Kernel app action from a DAG and (optionally) wait for its result.

Importing this module makes no network call and stays cheap: DAG files import it at every parse.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import BaseOperator, BaseOperatorLink, XCom, conf

from kernel_provider.completion import ERROR, FAILED, TIMEOUT, WAIT_MODES, finish, validate_event
from kernel_provider.exceptions import (
    KernelAmbiguousCreateError,
    KernelApiError,
    KernelError,
    KernelWaitTimeout,
)
from kernel_provider.validation import build_invoke_request, check_seconds

if TYPE_CHECKING:
    from kernel_provider.hooks.kernel import KernelHook
    from kernel_provider.models import Invocation

# The hook (requests, httpx, tenacity) and the trigger are imported when a task runs, not when a DAG file is
# parsed: DAG parsing imports this module for every DAG that uses the operator.

XCOM_INVOCATION_ID = "invocation_id"
XCOM_INVOCATION_URL = "invocation_url"
#: Stored (with the time) while a create is in flight; a retry that finds it reconciles before invoking.
PENDING_MARK = "pending-create@"
_UNSET = object()


class KernelInvocationLink(BaseOperatorLink):
    """The "Kernel invocation" button on a task: opens the invocation in Kernel's dashboard."""

    name = "Kernel invocation"

    def get_link(self, operator: Any, dttm: Any = None, *, ti_key: Any = None) -> str:
        # A live operator that never created an invocation has nothing to link: skip the XCom lookup, which
        # Airflow 3 would otherwise report as an error next to the task's real one.
        if ti_key is None or getattr(operator, "invocation_id", _UNSET) is None:
            return ""
        return XCom.get_value(key=XCOM_INVOCATION_URL, ti_key=ti_key) or ""


class KernelInvokeOperator(BaseOperator):
    """Invokes an action of a deployed Kernel app (``POST /invocations``) and returns its output.

    The invocation is created on the worker in ``execute()``, never in a trigger, and its id is recorded at
    once (XCom ``invocation_id`` and ``invocation_url``, plus a retry-safe store), so a retry re-attaches to
    it instead of starting a second run.

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
        default_deferrable``). Not deferrable: the worker waits, with the same logic and log streaming.
    :param wait_mode: ``"stream"`` (follow Kernel's event stream, default) or ``"poll"``.
    :param poll_interval: seconds between status checks in poll mode and after a broken stream.
    :param timeout: seconds to wait for the result (an absolute deadline is computed when waiting starts and
        also honours ``execution_timeout``, which Airflow does not enforce while deferred). When it passes,
        the invocation is cancelled and the task fails. None: no limit but ``execution_timeout``. This is not
        Kernel's ``async_timeout_seconds``, which bounds the run on Kernel's side.
    :param stream_logs: copy the action's log lines into the task log while waiting.
    :param cancel_on_kill: cancel the invocation when the task is killed, marked failed/success or cleared
        (default True; for deferred tasks this needs Airflow 3.3+).
    :param reattach_on_retry: on a retry, re-join the invocation a previous try started if it is still running,
        return its output if it succeeded, invoke again only if it failed (default True).
    :param validate_action: check with ``GET /apps`` that the app, version and action exist before invoking;
        a mistake fails with the list of what exists (default False: one request fewer).
    :param fail_on_failure: a ``failed`` invocation fails the task (default). False returns
        ``{"id", "status", "status_reason", "output"}`` instead.
    :param rate_limit_wait: seconds the create may keep waiting out Kernel's 429 (concurrency or rate limit),
        honouring ``Retry-After``, before failing (default: the connection's ``rate_limit_wait``, 900 s).
        Pools are the other lever: a pool sized to your Kernel concurrency limit keeps tasks from queueing at
        Kernel at all.
    :param kernel_conn_id: Airflow connection of type ``kernel``.
    """

    template_fields: Sequence[str] = ("app_name", "action_name", "version", "payload")
    template_fields_renderers = {"payload": "json"}
    operator_extra_links = (KernelInvocationLink(),)
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
        validate_action: bool = False,
        fail_on_failure: bool = True,
        rate_limit_wait: float | None = None,
        kernel_conn_id: str = "kernel_default",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
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
        self.validate_action = validate_action
        self.fail_on_failure = fail_on_failure
        self.rate_limit_wait = rate_limit_wait
        self.kernel_conn_id = kernel_conn_id
        self.invocation_id: str | None = None

    @cached_property
    def hook(self) -> KernelHook:
        from kernel_provider.hooks.kernel import KernelHook
        from kernel_provider.hooks.retry import RetryPolicy

        policy = None
        if self.rate_limit_wait is not None:
            policy = RetryPolicy(rate_limit_budget=float(self.rate_limit_wait))
        return KernelHook(kernel_conn_id=self.kernel_conn_id, retry_policy=policy)

    # --- execute -------------------------------------------------------------------------------------------

    def _validated_request(self) -> dict[str, Any]:
        """Every argument checked before any request; errors name the field and the fix."""
        request = build_invoke_request(
            app_name=self.app_name, action_name=self.action_name, version=self.version, payload=self.payload,
            invoke_async=self.invoke_async, async_timeout_seconds=self.async_timeout_seconds,
        )
        check_seconds("poll_interval", self.poll_interval, allow_none=False, exclusive=True)
        check_seconds("timeout", self.timeout, exclusive=True)
        check_seconds("rate_limit_wait", self.rate_limit_wait)
        if self.wait_mode not in WAIT_MODES:
            raise KernelError(f"wait_mode: must be one of {', '.join(WAIT_MODES)}, got {self.wait_mode!r}.")
        if self.deferrable and self.wait_for_completion and not self.invoke_async:
            self.log.info("invoke_async=False: Kernel answers when the action is done, so nothing is deferred.")
        return request

    def execute(self, context: Any) -> Any:
        from kernel_provider.triggers.kernel import KernelInvocationTrigger
        from kernel_provider.wait import InvocationIdStore

        request = self._validated_request()
        store = InvocationIdStore(context)
        invocation = self._reattach(store, request) if self.reattach_on_retry else None
        if invocation is None:
            if self.validate_action:
                self.hook.get_action(request["app_name"], request["action_name"], request["version"])
            invocation = self._create(request, store)
        self._remember(context, invocation.id)

        if not self.wait_for_completion and (request.get("async") or not invocation.is_terminal):
            # Submit only: the result is the id, whatever state a reconciled or re-attached invocation has
            # reached by now; its outcome is for the sensor to report (finishing it here returned its output,
            # or failed the task and let the retry invoke a second time).
            return invocation.id
        if invocation.is_terminal:
            return self._finish(invocation, store)
        latest = self.hook.get_invocation(invocation.id)
        if latest.is_terminal:
            return self._finish(latest, store)

        trigger = KernelInvocationTrigger(
            invocation_id=invocation.id,
            kernel_conn_id=self.kernel_conn_id,
            end_time=self._deadline(context),
            poll_interval=float(self.poll_interval),
            mode=self.wait_mode,
            stream_logs=self.stream_logs,
            cancel_on_kill=self.cancel_on_kill,
        )
        if self.deferrable:
            self.defer(trigger=trigger, method_name="execute_complete")
        from kernel_provider.wait import wait_in_worker

        self.log.info("Waiting on this worker for invocation %s.", invocation.id)
        return self.execute_complete(context, wait_in_worker(trigger))

    def execute_complete(self, context: Any, event: dict[str, Any] | None = None) -> Any:
        """Resumes the task when the wait is over (called by Airflow after deferral, or directly)."""
        from kernel_provider.wait import InvocationIdStore

        event = validate_event(event)
        invocation_id = event["invocation_id"]
        self.invocation_id = invocation_id
        if event["status"] == TIMEOUT:
            self._cancel(invocation_id, "the Airflow task's timeout passed")
            raise KernelWaitTimeout(f"{event['message']} It was cancelled. "
                                    f"{self.hook.invocation_url(invocation_id)}")
        if event["status"] == ERROR:
            # Kept in the id store: a retry re-attaches to the invocation, which may still be running.
            raise KernelError(f"Waiting for invocation {invocation_id} failed: {event['message']}")
        invocation = self.hook.get_invocation(invocation_id)
        if not invocation.is_terminal and event["status"] == FAILED:
            raise KernelError(f"Invocation {invocation_id} was reported failed but is {invocation.raw_status}.")
        return self._finish(invocation, InvocationIdStore(context))

    def on_kill(self) -> None:
        """The worker is stopping the task: cancel the invocation (best effort, bounded, never blocking)."""
        if not (self.cancel_on_kill and self.invocation_id):
            return
        worker = threading.Thread(target=self._cancel, args=(self.invocation_id, "the Airflow task was killed"),
                                  daemon=True)
        worker.start()
        worker.join(timeout=15)

    # --- steps ---------------------------------------------------------------------------------------------

    def _reattach(self, store: Any, request: dict[str, Any]) -> Invocation | None:
        previous = store.get()
        if not previous:
            return None
        if previous.startswith(PENDING_MARK):
            # A previous try was creating when it died or failed ambiguously: find what it created, if anything.
            since = datetime.fromisoformat(previous[len(PENDING_MARK):])
            found = self._find_created(request, since, datetime.now(timezone.utc))
            if found is None:
                self.log.info("A previous try's create left no invocation behind; invoking now.")
                return None
            self.log.warning("A previous try created invocation %s before failing; using it.", found.id)
            store.set(found.id)
            previous = found.id
            submitted_unseen = True  # that try never got to report it: it is this try's run, even if failed
        else:
            submitted_unseen = False
        try:
            invocation = self.hook.get_invocation(previous)
        except KernelApiError as exc:
            if exc.status_code == 404:
                self.log.info("The previous try's invocation %s no longer exists; invoking again.", previous)
                return None
            raise
        if invocation.failed and not submitted_unseen:
            self.log.info("The previous try's invocation %s failed (%s); invoking again.", previous,
                          invocation.status_reason)
            return None
        verb = "returning its output" if invocation.is_terminal else "re-attaching to it"
        self.log.info("A previous try started invocation %s (%s); %s instead of invoking again.", previous,
                      invocation.raw_status, verb)
        return invocation

    def _create(self, request: dict[str, Any], store: Any) -> Invocation:
        self.log.info("Invoking %s/%s@%s (%s).", request["app_name"], request["action_name"], request["version"],
                      "async" if request.get("async") else "sync")
        # Marked before the request: if this worker dies mid-request, the retry looks before it invokes again.
        store.set(PENDING_MARK + (datetime.now(timezone.utc) - timedelta(seconds=2)).isoformat())
        from kernel_provider.hooks import api

        try:
            invocation = self.hook.execute(api.create_invocation(request))
        except KernelAmbiguousCreateError as exc:
            self.log.warning("%s Reconciling by listing recent invocations.", exc)
            invocation = self._reconcile(exc, request)
        except KernelError:
            store.clear()  # refused (4xx, 429 budget, connection refused): certainly nothing was created
            raise
        store.set(invocation.id)
        self.log.info("Created invocation %s (%s).", invocation.id, invocation.raw_status)
        return invocation

    def _reconcile(self, exc: KernelAmbiguousCreateError, request: dict[str, Any]) -> Invocation:
        for attempt in range(3):
            found = self._find_created(request, exc.window_start, exc.window_end)
            if found is not None:
                self.log.warning("Found invocation %s created by the failed request; using it.", found.id)
                return found
            time.sleep(1.0 + attempt)
        raise KernelError(f"{exc} No such invocation was found, so it was probably not created; the task fails "
                          "rather than risk a duplicate (a retry of the task looks again before invoking).") from exc

    def _find_created(self, request: dict[str, Any], since: datetime, until: datetime) -> Invocation | None:
        """The one invocation of this app/action/payload started in the window; None if none; error if several."""
        candidates = [
            i for i in self.hook.list_invocations(app_name=request["app_name"], action_name=request["action_name"],
                                                  since=since)
            if (i.payload or None) == request.get("payload")
            and (i.started_at is None or i.started_at <= until + timedelta(seconds=5))
        ]
        # Pages are newest first by offset: an invocation created while paging shifts the rest, so the same one
        # can come back on two pages. Count distinct ids, or one run looks like several.
        candidates = list({i.id: i for i in candidates}.values())
        if len(candidates) > 1:
            ids = ", ".join(i.id for i in candidates)
            raise KernelError(f"Several invocations of {request['app_name']}/{request['action_name']} with this "
                              f"payload started since {since.isoformat()} ({ids}); refusing to guess which one "
                              "this task created.")
        return candidates[0] if candidates else None

    def _finish(self, invocation: Invocation, store: Any) -> Any:
        url = self.hook.invocation_url(invocation.id)
        self.log.info("Invocation %s %s. %s", invocation.id, invocation.raw_status, url)
        store.clear()
        return finish(invocation, fail_on_failure=self.fail_on_failure, url=url)

    def _remember(self, context: Any, invocation_id: str) -> None:
        self.invocation_id = invocation_id
        url = self.hook.invocation_url(invocation_id)
        self.log.info("Kernel invocation: %s", url)
        ti = context["ti"]
        ti.xcom_push(key=XCOM_INVOCATION_ID, value=invocation_id)
        ti.xcom_push(key=XCOM_INVOCATION_URL, value=url)

    def _deadline(self, context: Any) -> float | None:
        now = time.time()
        limits = []
        timeout = check_seconds("timeout", self.timeout, exclusive=True)
        if timeout is not None:
            limits.append(now + timeout)
        if self.execution_timeout is not None:
            ti = context.get("ti") if hasattr(context, "get") else None
            started = getattr(getattr(ti, "start_date", None), "timestamp", None)
            start = started() if callable(started) else now
            limits.append(start + self.execution_timeout.total_seconds())
        return min(limits) if limits else None

    def _cancel(self, invocation_id: str, why: str) -> None:
        try:
            self.hook.cancel_invocation(invocation_id, reason=f"Cancelled by Airflow: {why}")
            self.log.info("Cancelled invocation %s (%s).", invocation_id, why)
        except Exception as exc:
            self.log.warning("Could not cancel invocation %s: %s", invocation_id, exc)
