"""Cancellation audit: every way Airflow stops a Kernel task leaves nothing running in Kernel.

After a timeout (deferrable and not), a worker-side kill (``on_kill`` while ``execute`` waits, and after a
``wait_for_completion=False`` submit) and the trigger's ``on_kill`` (Airflow 3.3 calls it when a user marks a
deferred task failed or clears it), the emulator shows the invocation ``failed``, 0 running invocations and 0
live browsers (the ``browse`` action holds fake browsers until it is stopped). A control with
``cancel_on_kill=False`` shows the same audit would catch a run left behind.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from kernel_provider.exceptions import KernelInvocationFailed
from kernel_provider.operators.kernel import KernelInvokeOperator
from kernel_provider.triggers.kernel import KernelInvocationTrigger
from tests.airflow_helpers import (
    make_dag,
    run_dag,
    states,
    ti_map,
)
from tests.chaos.harness import thread_ready_for_execute
from tests.helpers import wait_until
from tests.standins import DictStateStore, FakeTI

BROWSE = {"count": 2, "seconds": 3600}  # two browsers, held for an hour unless the run is stopped


def context() -> dict[str, Any]:
    return {"ti": FakeTI(dag_id="audit"), "task_state_store": DictStateStore()}


def browsing(emulator: Any) -> list[dict[str, Any]]:
    """Invocations that are running and hold browsers."""
    return [i for i in emulator.invocations() if i["status"] == "running" and i["_emulator"]["browsers"]]


def assert_nothing_left(emulator: Any, invocation_id: str) -> None:
    inv = emulator.invocation(invocation_id)
    assert inv["status"] == "failed", inv
    assert inv["_emulator"]["browsers"] == [], inv
    assert not inv["_emulator"]["action_running"], inv
    stats = emulator.stats()
    assert stats["by_status"]["running"] == 0 and stats["by_status"]["queued"] == 0, stats
    assert stats["browsers_live"] == 0, stats
    assert emulator.requests(path=f"/invocations/{invocation_id}/browsers", method="DELETE")  # belt and braces


# --------------------------------------------------------------------------------------------- timeouts
@pytest.mark.usefixtures("airflow_db")
@pytest.mark.parametrize("deferrable", [False, True], ids=["worker", "deferred"])
def test_timeout_cancels_the_run_and_its_browsers(kernel_conn_env: Any, deferrable: bool) -> None:
    with make_dag("audit_timeout") as dag:
        KernelInvokeOperator(
            task_id="invoke",
            app_name="demo",
            action_name="browse",
            payload=BROWSE,
            timeout=1.5,
            deferrable=deferrable,
            poll_interval=0.1,
        )
    dr = run_dag(dag)
    assert states(dr) == {"invoke": "failed"}
    (inv,) = kernel_conn_env.invocations()
    assert len(inv["_emulator"]["browsers"]) == 0 and "timeout" in (inv.get("output") or "")
    assert_nothing_left(kernel_conn_env, inv["id"])
    assert ti_map(dr)["invoke"].try_number >= 1


# --------------------------------------------------------------------------------------------- worker kill
def test_on_kill_while_execute_waits_cancels_everything(kernel_conn_env: Any) -> None:
    # live_view=False: outside a task runner the live-view watch can hold the ending wait past the join below
    # (seen after other tests left Airflow 3's in-process supervisor channel set); this test is about the cancel.
    op = KernelInvokeOperator(
        task_id="invoke",
        app_name="demo",
        action_name="browse",
        payload=BROWSE,
        deferrable=False,
        poll_interval=0.1,
        live_view=False,
    )
    outcome: list[BaseException | Any] = []

    def run() -> None:
        thread_ready_for_execute()
        try:
            outcome.append(op.execute(context()))
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    (inv,) = wait_until(lambda: browsing(kernel_conn_env), "the action to hold its browsers")
    # The action may start before the worker thread has the create's answer (a loaded machine): wait for it.
    assert wait_until(lambda: op.invocation_id, "the operator to hold the invocation id") == inv["id"]
    op.on_kill()  # what Airflow's task runner calls when the task is killed (SIGTERM, marked failed, timeout)
    worker.join(30)
    assert not worker.is_alive()
    assert isinstance(outcome[0], KernelInvocationFailed), outcome  # the wait saw the cancellation and ended
    assert_nothing_left(kernel_conn_env, inv["id"])


def test_on_kill_after_a_submit_only_execute_cancels_everything(kernel_conn_env: Any) -> None:
    op = KernelInvokeOperator(
        task_id="invoke", app_name="demo", action_name="browse", payload=BROWSE, wait_for_completion=False
    )
    invocation_id = op.execute(context())
    wait_until(lambda: browsing(kernel_conn_env), "the action to hold its browsers")
    op.on_kill()
    assert_nothing_left(kernel_conn_env, invocation_id)


def test_control_without_cancel_on_kill_leaves_the_run_going(kernel_conn_env: Any) -> None:
    op = KernelInvokeOperator(
        task_id="invoke",
        app_name="demo",
        action_name="browse",
        payload=BROWSE,
        wait_for_completion=False,
        cancel_on_kill=False,
    )
    invocation_id = op.execute(context())
    wait_until(lambda: browsing(kernel_conn_env), "the action to hold its browsers")
    op.on_kill()
    with pytest.raises(AssertionError):  # the audit does see a run left behind
        assert_nothing_left(kernel_conn_env, invocation_id)
    assert kernel_conn_env.stats()["browsers_live"] == 2


# --------------------------------------------------------------------------------------------- trigger on_kill
@pytest.mark.parametrize("mode", ["stream", "poll"])
async def test_trigger_on_kill_cancels_the_run_and_its_browsers(kernel_conn_env: Any, mode: str) -> None:
    from kernel_provider.hooks.kernel import KernelHook

    inv = KernelHook().invoke("demo", "browse", payload=BROWSE, invoke_async=True)
    trigger = KernelInvocationTrigger(inv.id, mode=mode, poll_interval=0.1)
    waiting = asyncio.ensure_future(trigger.wait())
    await asyncio.to_thread(wait_until, lambda: browsing(kernel_conn_env), "the action to hold its browsers")
    assert not waiting.done()
    await trigger.on_kill()  # Airflow 3.3+: the user marked the deferred task failed (or cleared it)
    event = await asyncio.wait_for(waiting, 30)
    assert event["status"] == "failed" and event["invocation_id"] == inv.id
    assert_nothing_left(kernel_conn_env, inv.id)
