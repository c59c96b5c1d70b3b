"""The create step of ``KernelInvokeOperator``: its retry settings, its run record, and what it trusts.

Against the emulator over HTTP; the only stand-ins are the run record's store (a metadata DB failure no server can
provoke) and the task instance's attributes (``tests/standins.py``).
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from kernel_provider.client.reconcile import MAX_SCAN, TOKEN_KEY, new_token
from kernel_provider.exceptions import KernelReconcileError, KernelRunMismatchError
from kernel_provider.operators.kernel import KernelInvokeOperator
from kernel_provider.testing import airflow_connection
from kernel_provider.utils.run_record import RunRecord, RunRecordStore
from tests.airflow_helpers import execute_try
from tests.standins import DictStateStore, FakeTI

pytestmark = pytest.mark.usefixtures("airflow_db")

#: Kernel records the create, then answers 503: the attempt's outcome is unknown to the worker.
LOST = {"status": 503, "after": True}


def test_rate_limit_wait_keeps_the_connections_other_retry_settings(kernel_emulator: Any, monkeypatch: Any) -> None:
    conn = airflow_connection(kernel_emulator.url, kernel_emulator.token, max_retries=0, max_retry_wait=5)
    monkeypatch.setenv("AIRFLOW_CONN_KERNEL_DEFAULT", conn)
    operator = KernelInvokeOperator(task_id="invoke", app_name="demo", action_name="echo", rate_limit_wait=60)
    policy = operator.hook.client.retry
    assert (policy.max_attempts - 1, policy.max_elapsed, policy.rate_limit_budget) == (0, 5, 60)
    # Without rate_limit_wait the connection's own 429 budget stays.
    plain = KernelInvokeOperator(task_id="plain", app_name="demo", action_name="echo").hook.client.retry
    assert (plain.max_attempts - 1, plain.max_elapsed, plain.rate_limit_budget) == (0, 5, 900)


def seed_fan_out(count: int, payload: dict[str, Any], *, tokens: bool) -> list[str]:
    """``count`` runs of ``demo/echo`` started by other task instances, through Kernel's API (real POSTs)."""
    from kernel_provider.hooks.kernel import KernelHook

    hook = KernelHook()
    body = [{**payload, TOKEN_KEY: new_token()} if tokens else payload for _ in range(count)]
    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(lambda p: hook.invoke("demo", "echo", payload=p, invoke_async=True).id, body))


def pending_record(store: DictStateStore, *, sent: float, token: str | None = None) -> None:
    """What try 1 left when its worker died mid-create: a pending record of that attempt's window."""
    records = RunRecordStore({"ti": FakeTI(max_tries=1), "task_state_store": store})
    records.put(records.new(sent_at=sent, window_end=sent + 40, token=token))


def test_a_retry_in_a_busy_fan_out_with_a_token_invokes_when_nothing_was_created(kernel_conn_env: Any) -> None:
    """Issue 24 item 2: a pending record, nothing created, 501 other runs of the action listed before the window."""
    store = DictStateStore()
    pending_record(store, sent=time.time() - 120, token=new_token())
    seed_fan_out(MAX_SCAN + 1, {"a": 1}, tokens=True)
    retry = FakeTI(try_number=2, max_tries=1)
    result = execute_try(store, retry, action_name="echo", payload={"a": 1}, reconcile_token=True)
    assert result["a"] == 1 and kernel_conn_env.created_count() == MAX_SCAN + 2


def test_a_retry_in_a_busy_fan_out_with_a_token_adopts_its_run_past_501_newer_ones(kernel_conn_env: Any) -> None:
    store = DictStateStore()
    token = new_token()
    pending_record(store, sent=time.time(), token=token)
    (mine,) = seed_fan_out(1, {"a": 1, TOKEN_KEY: token}, tokens=False)  # try 1's create reached Kernel
    seed_fan_out(MAX_SCAN + 1, {"a": 1}, tokens=True)  # the rest of the fan-out, listed first
    picked = execute_try(
        store,
        FakeTI(try_number=2, max_tries=1),
        action_name="echo",
        payload={"a": 1},
        reconcile_token=True,
        wait_for_completion=False,
    )
    assert picked == mine and kernel_conn_env.created_count() == MAX_SCAN + 2


def test_a_retry_in_a_busy_fan_out_without_a_token_weighs_only_its_window(kernel_conn_env: Any) -> None:
    store = DictStateStore()
    pending_record(store, sent=time.time() - 120)
    seed_fan_out(MAX_SCAN + 1, {"a": 1}, tokens=False)  # twins, but all started after the window
    assert execute_try(store, FakeTI(try_number=2, max_tries=1), action_name="echo", payload={"a": 1}) == {"a": 1}
    assert kernel_conn_env.created_count() == MAX_SCAN + 2


class RecordingStateStore(DictStateStore):
    """Keeps every record written, to show which window each create attempt recorded."""

    def __init__(self) -> None:
        super().__init__()
        self.written: list[RunRecord] = []

    def set(self, key: str, value: Any) -> None:
        super().set(key, value)
        record = RunRecord.from_stored(value)
        if record is not None:
            self.written.append(record)


def test_the_recorded_window_is_the_attempt_that_got_no_answer_not_the_429_budget(kernel_conn_env: Any) -> None:
    kernel_conn_env.set_faults(
        [{"route": "POST /invocations", "sequence": [{"status": 429, "retry_after_ms": 300}] * 2 + [LOST]}]
    )
    store = RecordingStateStore()
    ti = FakeTI()
    result = execute_try(store, ti, action_name="echo", payload={"a": 1}, reconcile_token=True, rate_limit_wait=600)
    assert result["a"] == 1 and kernel_conn_env.created_count() == 1
    pending = [r for r in store.written if r.pending]
    assert len(pending) == 3  # one per attempt, each written right before it was sent
    assert all(r.window_end - r.sent_at == 10 + 30 for r in pending)  # connect + read timeout, no 429 budget
    assert pending[2].sent_at - pending[0].sent_at >= 0.5  # the last attempt's own moment, after two 429 waits
    (created,) = kernel_conn_env.invocations()
    assert store.written[-1] == RunRecord(created["id"], 1, 0, token=pending[2].token)


class FailsAfterThePost(DictStateStore):
    """A state store that takes the pending record but fails the next write (the metadata DB went away)."""

    def set(self, key: str, value: Any) -> None:
        if self.data.get(key):
            raise ConnectionError("metadata DB unavailable")
        super().set(key, value)


def test_a_record_write_failing_after_the_post_keeps_the_run_and_says_so(
    kernel_conn_env: Any, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    store, ti = FailsAfterThePost(), FakeTI()
    operator = KernelInvokeOperator(task_id="invoke", app_name="demo", action_name="slow", wait_for_completion=False)
    with caplog.at_level(logging.WARNING):
        invocation_id = operator.execute({"ti": ti, "task_state_store": store})
    (created,) = kernel_conn_env.invocations()
    assert invocation_id == created["id"] == ti.xcom["kernel_invocation_id"] == operator.invocation_id
    said = caplog.text + capfd.readouterr().out  # stdlib logging (Airflow 2) or structlog's console (Airflow 3)
    assert f"Invocation {created['id']} was created, but its id could not be saved" in said
    assert "fails before invoking" not in said and "retry looks for the run" in said
    operator.on_kill()  # the id was kept: killing the task stops the run
    assert kernel_conn_env.invocation(created["id"])["status"] == "failed"


def forged_record(store: DictStateStore, invocation_id: str, **ti: Any) -> None:
    records = RunRecordStore({"ti": FakeTI(**ti), "task_state_store": store})
    records.put(records.new(invocation_id=invocation_id))


def test_a_forged_record_naming_another_apps_run_is_neither_adopted_nor_cancelled(kernel_conn_env: Any) -> None:
    """Issue 25 finding 3: a record edited to point at another app's (or action's) invocation."""
    from kernel_provider.hooks.kernel import KernelHook

    other = KernelHook().invoke("demo", "slow", payload={"seconds": 600}, invoke_async=True)
    store = DictStateStore()
    forged_record(store, other.id, max_tries=1)
    # The retry would adopt it, or with reattach_on_retry=False cancel it: it does neither.
    for reattach in (True, False):
        with pytest.raises(KernelRunMismatchError) as failure:
            execute_try(
                store,
                FakeTI(try_number=2, max_tries=1),
                action_name="echo",
                payload={"a": 1},
                reattach_on_retry=reattach,
            )
        assert failure.value.candidates == [other.id]
        assert failure.value.differences == ["action 'slow' instead of 'echo'"]
    assert isinstance(failure.value, KernelReconcileError)
    # A clear still starts afresh, but never cancels a run it cannot show is this task's.
    assert execute_try(store, FakeTI(try_number=3, max_tries=3), action_name="echo", payload={"a": 1}) == {"a": 1}
    assert kernel_conn_env.invocation(other.id)["status"] == "running"
    assert kernel_conn_env.created_count() == 2


def test_a_record_naming_a_run_without_its_token_is_not_adopted(kernel_conn_env: Any) -> None:
    from kernel_provider.hooks.kernel import KernelHook

    twin = KernelHook().invoke("demo", "slow", payload={"seconds": 600, TOKEN_KEY: new_token()}, invoke_async=True)
    store = DictStateStore()
    records = RunRecordStore({"ti": FakeTI(max_tries=1), "task_state_store": store})
    records.put(records.new(invocation_id=twin.id, token=new_token()))
    with pytest.raises(KernelRunMismatchError, match="lacks this task's reconcile token"):
        execute_try(
            store,
            FakeTI(try_number=2, max_tries=1),
            action_name="slow",
            payload={"seconds": 600},
            reconcile_token=True,
            wait_for_completion=False,
        )
    assert kernel_conn_env.created_count() == 1


@pytest.mark.parametrize("cancel_on_kill", [True, False])
def test_a_clear_of_a_task_running_on_a_worker_is_a_kill_and_a_retry(
    kernel_conn_env: Any, cancel_on_kill: bool
) -> None:
    """Airflow moves a running task instance that is cleared to ``restarting`` and kills it; 2.11 (and 3.x when
    the killed try ended failed) keeps its ``max_tries``, so the next try looks like an automatic retry. Whether
    it starts afresh then rests on ``on_kill``'s cancel (the real services: ``tests/e2e``, same test name)."""
    from kernel_provider.hooks.kernel import KernelHook

    store = DictStateStore()
    ti = FakeTI(max_tries=1)
    first = KernelInvokeOperator(
        task_id=ti.task_id, app_name="demo", action_name="slow", payload={"seconds": 600}, cancel_on_kill=cancel_on_kill
    )
    # Try 1 created its run and is waiting for it on the worker: its record names the run, on_kill knows the id.
    invocation_id = KernelHook().invoke("demo", "slow", payload={"seconds": 600}, invoke_async=True).id
    records = RunRecordStore({"ti": ti, "task_state_store": store})
    records.put(records.new(invocation_id=invocation_id))
    first.invocation_id = invocation_id
    first.on_kill()  # the clear: Airflow kills the running try
    picked = execute_try(
        store,
        FakeTI(try_number=2, max_tries=1),  # restarting keeps max_tries
        action_name="slow",
        payload={"seconds": 600},
        cancel_on_kill=cancel_on_kill,
        wait_for_completion=False,
    )
    if cancel_on_kill:
        assert picked != invocation_id and kernel_conn_env.created_count() == 2  # afresh: the old run was cancelled
        assert kernel_conn_env.invocation(invocation_id)["status"] == "failed"
    else:
        assert picked == invocation_id and kernel_conn_env.created_count() == 1  # re-attached to the old run
