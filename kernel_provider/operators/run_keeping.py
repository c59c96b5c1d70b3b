"""Exactly one Kernel run per task instance, from the operator's side: what a try does with the run an earlier try
recorded (continue it, settle a create that got no answer, stop it after a clear), and a create that writes its
record before each attempt. The record itself: :mod:`kernel_provider.utils.run_record`; the listing rules:
:mod:`kernel_provider.client.reconcile`.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from kernel_provider.client.errors import KernelError
from kernel_provider.client.text import safe_text

if TYPE_CHECKING:
    from kernel_provider.client.errors import KernelAmbiguousCreateError
    from kernel_provider.client.models import Invocation
    from kernel_provider.client.reconcile import CreateWindow, Outcome
    from kernel_provider.client.retry import RetryPolicy
    from kernel_provider.hooks.kernel import KernelHook
    from kernel_provider.utils.run_record import RunRecord, RunRecordStore


class RunKeeping:
    """The run-keeping half of :class:`~kernel_provider.operators.kernel.KernelInvokeOperator` (a mixin: it reads
    the operator's ``hook``, ``log``, ``reattach_on_retry``, ``reconcile_token`` and sets ``invocation_id``)."""

    if TYPE_CHECKING:

        @property
        def hook(self) -> KernelHook: ...

        log: Any  # the operator's (BaseOperator's) logger

        reattach_on_retry: bool
        reconcile_token: bool
        invocation_id: str | None

        def _cancel(self, invocation_id: str, why: str, budget: float | None = None) -> None: ...

    def _previous_run(self, records: RunRecordStore, request: dict[str, Any]) -> Invocation | None:
        """The run a previous try of this task instance started, when this try must continue it; else None.

        Reads the record (failing before any request when it cannot), tells a retry from a clear, and on a
        clear stops the old run if it is provably ours and still going.
        """
        from kernel_provider.utils.run_record import TryKind, classify

        record = records.get()
        kind = classify(record, records.max_tries)
        if record is None or kind is TryKind.FIRST:
            return None
        if kind is TryKind.CLEARED:
            self.log.info(
                "This task instance was cleared since try %d recorded its Kernel run (max_tries %d -> "
                "%s): starting a new run.",
                record.try_number,
                record.max_tries,
                records.max_tries,
            )
            self._retire(record, request)
            records.forget()
            return None
        invocation = self._settle(record, request, records) if record.pending else self._lookup(record, request)
        if invocation is None:
            return None
        if not self.reattach_on_retry and not invocation.is_terminal:
            self._cancel(invocation.id, "the task was retried with reattach_on_retry=False")
            return None
        return invocation

    def _lookup(self, record: RunRecord, request: dict[str, Any]) -> Invocation | None:
        """A retry: the previous try's invocation if it is to be continued (running, or finished well). It must
        be this task's request (:func:`~kernel_provider.client.reconcile.check_same_request`) before anything is done
        with it: continued, cancelled, or replaced."""
        from kernel_provider.client.errors import KernelNotFoundError
        from kernel_provider.client.reconcile import check_same_request

        assert record.invocation_id is not None
        try:
            invocation = self.hook.get_invocation(record.invocation_id)
        except KernelNotFoundError:
            self.log.info("The previous try's invocation %s no longer exists; invoking again.", record.invocation_id)
            return None
        check_same_request(invocation, self._with_token(request, record.token), record.token, source="the run record")
        if invocation.failed:
            self.log.info(
                "The previous try's invocation %s failed (%s); invoking again.",
                invocation.id,
                safe_text(invocation.status_reason),
            )
            return None
        verb = "returning its output" if invocation.is_terminal else "re-attaching to it"
        self.log.info(
            "Try %d started invocation %s (%s); %s instead of invoking again.",
            record.try_number,
            invocation.id,
            invocation.raw_status,
            verb,
        )
        return invocation

    def _settle(self, record: RunRecord, request: dict[str, Any], records: RunRecordStore) -> Invocation | None:
        """A retry after a create that never got an answer (the worker died, or Kernel's answer was lost)."""
        from kernel_provider.client.reconcile import CreateWindow

        assert record.sent_at is not None and record.window_end is not None
        window = CreateWindow.from_epoch(record.sent_at, record.window_end)
        self.log.warning(
            "Try %d's create of %s/%s got no answer; looking for what it may have started (%s).",
            record.try_number,
            request["app_name"],
            request["action_name"],
            window.describe(),
        )
        outcome = self._reconcile(self._with_token(request, record.token), window, record.token)
        if outcome.ours is None:
            self.log.info("Try %d's create started nothing; invoking now.", record.try_number)
            return None
        self.log.warning("Try %d's create started invocation %s; continuing it.", record.try_number, outcome.ours.id)
        self._record_created(records, outcome.ours, record.token)
        return outcome.ours

    def _retire(self, record: RunRecord, request: dict[str, Any]) -> None:
        """After a clear: stop the previous try's run if it is provably this task instance's and still going.
        Never raises: a clear must always be able to start afresh."""
        try:
            invocation_id = record.invocation_id
            if record.pending:
                if record.token is None or record.sent_at is None or record.window_end is None:
                    self.log.warning(
                        "Try %d's create got no answer and carried no reconcile token: if it started a "
                        "run, that run is not stopped. Check Kernel for invocations of %s/%s started "
                        "around %s.",
                        record.try_number,
                        request["app_name"],
                        request["action_name"],
                        datetime.fromtimestamp(record.sent_at or 0, timezone.utc).isoformat(),
                    )
                    return
                from kernel_provider.client.reconcile import CreateWindow

                window = CreateWindow.from_epoch(record.sent_at, record.window_end)
                outcome = self._reconcile(self._with_token(request, record.token), window, record.token, loudly=False)
                invocation_id = outcome.ours.id if outcome.ours is not None else None
            if invocation_id is None:
                return
            from kernel_provider.client.reconcile import check_same_request

            previous = self.hook.get_invocation(invocation_id)
            # Never cancel on a record's word alone: it must name this task's request (else: a warning below).
            check_same_request(previous, self._with_token(request, record.token), record.token, source="the run record")
            if not previous.is_terminal:
                self._cancel(previous.id, "the task instance was cleared and starts a new run")
        except Exception as exc:
            self.log.warning("Could not check the previous try's Kernel run after the clear: %s", exc)

    def _with_token(self, request: dict[str, Any], token: str | None) -> dict[str, Any]:
        if token is None:
            return request
        from kernel_provider.client.reconcile import add_token

        return {**request, "payload": add_token(request.get("payload"), token)}

    def _create(self, request: dict[str, Any], records: RunRecordStore, retry: RetryPolicy | None = None) -> Invocation:
        from kernel_provider.client.errors import KernelAmbiguousCreateError
        from kernel_provider.client.reconcile import CreateWindow, new_token

        token = new_token() if self.reconcile_token else None
        body = self._with_token(request, token)
        self.log.info(
            "Invoking %s/%s@%s (%s).",
            request["app_name"],
            request["action_name"],
            request["version"],
            "async" if request.get("async") else "sync",
        )
        attempt_seconds = self.hook.create_attempt_seconds(body)
        sent: list[float] = []

        def record_attempt() -> None:
            # Recorded right before each attempt (and the task fails here, unsent, if it cannot be): if this
            # worker dies mid-request, the retry lists only this attempt's window. Earlier attempts were
            # answered (429, refused connection) and created nothing, so the 429 budget is no part of it.
            now = time.time()
            records.put(records.new(sent_at=now, window_end=now + attempt_seconds, token=token))
            sent.append(now)

        try:
            invocation = self.hook.create_invocation(body, retry=retry, before_send=record_attempt)
        except KernelAmbiguousCreateError as exc:
            self.log.warning("%s Reconciling by listing recent invocations.", exc)
            window = CreateWindow(datetime.fromtimestamp(sent[-1], timezone.utc), datetime.now(timezone.utc))
            invocation = self._reconcile_now(exc, body, window, token)
        except KernelError:
            records.forget()  # refused (4xx, 429 budget, connection refused): certainly nothing was created
            raise
        self.log.info("Created invocation %s (%s).", invocation.id, invocation.raw_status)
        self._record_created(records, invocation, token)
        return invocation

    def _record_created(self, records: RunRecordStore, invocation: Invocation, token: str | None) -> None:
        """Replace the pending record by the invocation's id. When that write fails the run already exists in
        Kernel: this try follows it (the id is kept for ``on_kill`` and pushed to XCom) and says what a retry
        will make of the record left behind, instead of failing as if nothing had been invoked."""
        from kernel_provider.client.errors import KernelStateStoreError

        self.invocation_id = invocation.id
        try:
            records.put(records.new(invocation_id=invocation.id, token=token))
        except KernelStateStoreError as exc:
            self.log.warning("%s", exc)

    def _reconcile_now(
        self, exc: KernelAmbiguousCreateError, body: dict[str, Any], window: CreateWindow, token: str | None
    ) -> Invocation:
        """Right after an ambiguous create: Kernel's listing may lag its writes, so look a few times."""
        for attempt in range(3):
            outcome = self._reconcile(body, window, token)
            if outcome.ours is not None:
                self.log.warning("Found invocation %s created by the failed request; using it.", outcome.ours.id)
                return outcome.ours
            time.sleep(1.0 + attempt)
        raise KernelError(
            f"{exc} No invocation from it was found, so it was probably not created; the task fails "
            "rather than risk a duplicate (a retry of the task looks again before invoking)."
        ) from exc

    def _reconcile(
        self, body: dict[str, Any], window: CreateWindow, token: str | None, *, loudly: bool = True
    ) -> Outcome:
        """List and judge (see :mod:`kernel_provider.client.reconcile`); unsettled answers fail loudly, naming the
        candidates and what a person should check."""
        from kernel_provider.client.errors import KernelReconcileError
        from kernel_provider.client.reconcile import check_same_request, reconcile

        outcome = reconcile(
            body, window, token, list_invocations=self.hook.list_invocations, get_invocation=self.hook.get_invocation
        )
        if outcome.ours is not None:
            check_same_request(outcome.ours, body, token, source="the reconcile of a create that got no answer")
        if outcome.settled or not loudly:
            return outcome
        ids = [i.id for i in outcome.candidates]
        listed = (
            "; ".join(
                f"{i.id} ({i.raw_status or 'status unknown'}, started "
                f"{i.started_at.isoformat() if i.started_at else 'unknown'}) "
                f"{self.hook.invocation_url(i.id)}"
                for i in outcome.candidates
            )
            or "none listed"
        )
        raise KernelReconcileError(
            f"A create of {body['app_name']}/{body['action_name']}@{body['version']} got no answer, and Kernel's "
            f"records cannot settle whether it started a run: {outcome.reason}. Candidates in the request's window "
            f"{window.describe()}: {listed}. Nothing was adopted and nothing was invoked. Check these invocations "
            "in Kernel: if one is this task's, stop it or use its result; then clear this task to start a new run "
            "(a clear always starts afresh). reconcile_token=True makes this check exact.",
            ids,
        )
