"""One Kernel run per task instance, try after try: the operator's own decisions, against the emulator over HTTP.

Each test plays successive tries of one task instance by calling ``execute_try`` with the same run record store and
the ``try_number``/``max_tries`` Airflow would give them (a retry keeps ``max_tries``; a clear sets it to
``try_number + retries``). Whether Airflow's scheduler really produces those tries is proven in ``tests/e2e``.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from kernel_provider.client.reconcile import TOKEN_KEY, new_token
from kernel_provider.exceptions import KernelReconcileError, KernelStateStoreError
from kernel_provider.utils.run_record import RunRecordStore
from tests.airflow_helpers import AF3, execute_try
from tests.helpers import posts
from tests.standins import DictStateStore, FakeTI, ReadOnlyStateStore

pytestmark = pytest.mark.usefixtures("airflow_db")

#: Kernel records the create, then answers 503: the request's outcome is unknown to the worker.
LOST_ANSWER = {"route": "POST /invocations", "sequence": [{"status": 503, "after": True}]}


def test_the_task_fails_before_any_post_when_its_record_cannot_be_written(kernel_conn_env: Any) -> None:
    with pytest.raises(KernelStateStoreError, match="before invoking"):
        execute_try(ReadOnlyStateStore(), FakeTI(), action_name="echo", payload={"a": 1})
    assert len(posts(kernel_conn_env)) == 0


def test_submit_only_hands_off_so_a_clear_starts_a_new_run(kernel_conn_env: Any) -> None:
    store = DictStateStore()
    first = execute_try(store, FakeTI(try_number=1, max_tries=0), action_name="slow", wait_for_completion=False)
    assert store.data.get("kernel_invocation") in (None, "")  # handed off: nothing left to find
    # The person clears the finished task: try 2, max_tries = 1 + retries(0).
    second = execute_try(store, FakeTI(try_number=2, max_tries=1), action_name="slow", wait_for_completion=False)
    assert first != second
    assert kernel_conn_env.created_count() == 2


def test_a_retry_reattaches_but_a_clear_stops_the_old_run_and_starts_anew(kernel_conn_env: Any) -> None:
    store = DictStateStore()
    records = RunRecordStore({"ti": FakeTI(try_number=1, max_tries=1), "task_state_store": store})
    # Try 1 created a long run and died mid-wait (its record names the run).
    (old,) = [kernel_conn_env.invocation(i["id"]) for i in [_invoke_directly("slow", {"seconds": 600})]]
    records.put(records.new(invocation_id=old["id"]))

    # The automatic retry (same max_tries) re-attaches; it would wait, so submit-only shows what it picked.
    picked = execute_try(
        store,
        FakeTI(try_number=2, max_tries=1),
        action_name="slow",
        payload={"seconds": 600},
        wait_for_completion=False,
    )
    assert picked == old["id"] and kernel_conn_env.created_count() == 1

    records.put(records.new(invocation_id=old["id"]))
    # A clear (max_tries = 2 + 1): the old run is ours and still going, so it is stopped; a new one starts.
    fresh = execute_try(
        store,
        FakeTI(try_number=3, max_tries=3),
        action_name="slow",
        payload={"seconds": 600},
        wait_for_completion=False,
    )
    assert fresh != old["id"] and kernel_conn_env.created_count() == 2
    assert kernel_conn_env.invocation(old["id"])["status"] == "failed"


def test_a_lost_answer_without_token_fails_loudly_naming_the_candidate(kernel_conn_env: Any) -> None:
    kernel_conn_env.set_faults([LOST_ANSWER])
    store = DictStateStore()
    with pytest.raises(KernelReconcileError) as failure:
        execute_try(store, FakeTI(max_tries=1), action_name="echo", payload={"a": 1})
    (created,) = kernel_conn_env.invocations()
    assert failure.value.candidates == [created["id"]]
    assert "clear this task" in str(failure.value)
    # The automatic retry looks again and fails the same way: never a second run while its own may exist.
    with pytest.raises(KernelReconcileError):
        execute_try(store, FakeTI(try_number=2, max_tries=1), action_name="echo", payload={"a": 1})
    assert kernel_conn_env.created_count() == 1
    # A person's clear is the way out: a new run, never stuck.
    assert execute_try(store, FakeTI(try_number=3, max_tries=3), action_name="echo", payload={"a": 1}) == {"a": 1}
    assert kernel_conn_env.created_count() == 2


def test_a_lost_answer_with_a_token_adopts_exactly_its_own_run_past_a_twin(kernel_conn_env: Any) -> None:
    # A twin with the same app, action, version and payload starts in the same seconds (another task).
    twin = _invoke_directly("echo", {"a": 1})
    kernel_conn_env.set_faults([LOST_ANSWER])
    store = DictStateStore()
    result = execute_try(store, FakeTI(), action_name="echo", payload={"a": 1}, reconcile_token=True)
    assert result == {"a": 1, TOKEN_KEY: result[TOKEN_KEY]}  # the action saw the token
    ours = [i for i in kernel_conn_env.invocations() if i["id"] != twin["id"]]
    assert len(ours) == 1 and kernel_conn_env.created_count() == 2  # the twin and exactly one of ours


def test_a_twin_without_a_token_is_never_adopted(kernel_conn_env: Any) -> None:
    twin = _invoke_directly("echo", {"a": 1})
    kernel_conn_env.set_faults([LOST_ANSWER])
    with pytest.raises(KernelReconcileError) as failure:
        execute_try(DictStateStore(), FakeTI(), action_name="echo", payload={"a": 1})
    assert twin["id"] in failure.value.candidates and len(failure.value.candidates) == 2


def test_a_retry_after_a_crash_mid_create_finds_the_run_by_its_token(kernel_conn_env: Any) -> None:
    store = DictStateStore()
    records = RunRecordStore({"ti": FakeTI(), "task_state_store": store})
    token = new_token()
    sent = time.time()
    # Try 1 recorded its pending create, sent it, and the worker died before the answer arrived.
    records.put(records.new(sent_at=sent, window_end=sent + 40, token=token))
    mine = _invoke_directly("echo", {"a": 1, TOKEN_KEY: token})
    _invoke_directly("echo", {"a": 1, TOKEN_KEY: new_token()})  # a twin from another task instance

    result = execute_try(store, FakeTI(try_number=2), action_name="echo", payload={"a": 1}, reconcile_token=True)
    assert result == {"a": 1, TOKEN_KEY: token}
    assert kernel_conn_env.created_count() == 2  # no third: the retry adopted try 1's run
    assert len(posts(kernel_conn_env)) == 2
    assert store.data.get("kernel_invocation") in (None, "")
    assert mine["id"] in {i["id"] for i in kernel_conn_env.invocations()}


def test_a_retry_after_a_crash_before_the_post_invokes_once(kernel_conn_env: Any) -> None:
    store = DictStateStore()
    records = RunRecordStore({"ti": FakeTI(), "task_state_store": store})
    sent = time.time()
    records.put(records.new(sent_at=sent, window_end=sent + 40))  # recorded, never sent
    assert execute_try(store, FakeTI(try_number=2), action_name="echo", payload={"b": 2}) == {"b": 2}
    assert kernel_conn_env.created_count() == 1


@pytest.mark.skipif(not AF3, reason="Airflow 2 reads extra links live from the operator")
def test_the_link_is_pushed_while_the_task_runs(kernel_conn_env: Any) -> None:
    ti = FakeTI()
    invocation_id = execute_try(DictStateStore(), ti, action_name="slow", wait_for_completion=False)
    assert ti.xcom["_link_KernelInvocationLink"].endswith(f"/invocations/{invocation_id}")


def _invoke_directly(action: str, payload: dict[str, Any]) -> dict[str, Any]:
    """A run started by someone else (another task, the CLI) through the hook."""
    from kernel_provider.hooks.kernel import KernelHook

    invocation = KernelHook().invoke("demo", action, payload=payload, invoke_async=True)
    return {"id": invocation.id}
