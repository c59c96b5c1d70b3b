"""KernelInvokeOperator in real Airflow DAG runs (``dag.test()``) against the local Kernel emulator.

What matters most is checked on the emulator side: how many invocations were created (never twice for one task
instance), which requests were made, and what state each invocation ended in.
"""

from __future__ import annotations

import datetime
import json
import threading
import time
from typing import Any

import pytest

from kernel_provider.exceptions import KernelError, KernelInputError
from kernel_provider.hooks.kernel import KernelHook
from kernel_provider.links import (
    LEGACY_XCOM_INVOCATION_ID,
    LEGACY_XCOM_INVOCATION_URL,
    XCOM_INVOCATION_ID,
    XCOM_INVOCATION_URL,
    KernelInvocationLink,
)
from kernel_provider.operators.kernel import KernelInvokeOperator
from kernel_provider.triggers.kernel import KernelInvocationTrigger
from tests.airflow_helpers import (
    AF2,
    INLINE_TRIGGER,
    START,
    TASK_FAILURES,
    all_logs,
    kernel_lines,
    make_dag,
    requests_for,
    run_dag,
    states,
    task,
    ti_map,
    xcom,
)
from tests.helpers import EVENTS, GET_ONE, conn_json, only_invocation, posts, seen

pytestmark = pytest.mark.usefixtures("airflow_db")

DASHBOARD = "https://dashboard.onkernel.com"


def invoke_dag(prefix: str = "kernel_invoke", **op_kwargs: Any) -> Any:
    op_kwargs.setdefault("app_name", "demo")
    op_kwargs.setdefault("poll_interval", 0.1)
    with make_dag(prefix) as dag:
        KernelInvokeOperator(task_id="invoke", **op_kwargs)
    return dag


# --- the ways to run ------------------------------------------------------------------------------------------


def test_sync_invoke(kernel_conn_env, caplog):
    dr = run_dag(invoke_dag(action_name="echo", payload={"url": "https://example.com"}, invoke_async=False))
    assert states(dr) == {"invoke": "success"}
    assert xcom(dr, "invoke") == {"url": "https://example.com"}
    inv = only_invocation(kernel_conn_env)
    assert inv["_emulator"]["async"] is False
    assert inv["status"] == "succeeded"
    assert xcom(dr, "invoke", key=XCOM_INVOCATION_ID) == inv["id"]
    assert not kernel_conn_env.requests(path=f"/invocations/{inv['id']}/events")
    assert INLINE_TRIGGER not in caplog.text


def gated_dag(gate: Any, **op_kwargs: Any) -> Any:
    return invoke_dag(app_name="gate", action_name="wait", **op_kwargs)


def test_async_wait_in_worker_streams_logs(gated_kernel, caplog, capfd):
    gate = gated_kernel.gate()
    opened = gate.open_when(seen(gated_kernel, EVENTS), "the worker to follow the stream")
    dr = run_dag(gated_dag(gate, payload=gate.payload(before=2, after=1, result={"lines": 3}), deferrable=False))
    opened()
    assert states(dr) == {"invoke": "success"}
    assert xcom(dr, "invoke") == {"lines": 3}
    inv = only_invocation(gated_kernel)
    assert inv["_emulator"]["async"] is True
    assert INLINE_TRIGGER not in caplog.text  # waited on the worker, not deferred
    assert kernel_lines(inv["id"], caplog, capfd) == ["line 0", "line 1", "line 2"]


def test_async_deferred(gated_kernel, caplog, capfd):
    gate = gated_kernel.gate()
    opened = gate.open_when(seen(gated_kernel, EVENTS), "the trigger to follow the stream")
    dr = run_dag(gated_dag(gate, payload=gate.payload(before=2, after=1, result={"lines": 3}), deferrable=True))
    opened()
    assert states(dr) == {"invoke": "success"}
    assert xcom(dr, "invoke") == {"lines": 3}
    inv = only_invocation(gated_kernel)
    assert INLINE_TRIGGER in caplog.text  # really deferred; dag.test ran the trigger inline
    assert kernel_lines(inv["id"], caplog, capfd) == ["line 0", "line 1", "line 2"]
    assert len(posts(gated_kernel)) == 1


def test_deferrable_poll_mode(gated_kernel, caplog):
    gate = gated_kernel.gate()
    opened = gate.open_when(seen(gated_kernel, GET_ONE, at_least=3), "the trigger to poll")
    dr = run_dag(gated_dag(gate, payload=gate.payload(result=[1, 2]), deferrable=True, wait_mode="poll"))
    opened()
    assert states(dr) == {"invoke": "success"}
    assert xcom(dr, "invoke") == [1, 2]
    inv = only_invocation(gated_kernel)
    assert not gated_kernel.requests(path=f"/invocations/{inv['id']}/events")
    assert INLINE_TRIGGER in caplog.text


def test_not_waiting_returns_the_id_at_once(kernel_conn_env):
    dr = run_dag(invoke_dag(action_name="slow", wait_for_completion=False))
    assert states(dr) == {"invoke": "success"}
    inv = only_invocation(kernel_conn_env)
    assert xcom(dr, "invoke") == inv["id"]
    assert xcom(dr, "invoke", key=XCOM_INVOCATION_ID) == inv["id"]
    assert xcom(dr, "invoke", key=XCOM_INVOCATION_URL) == f"{DASHBOARD}/invocations/{inv['id']}"
    assert inv["status"] == "running"  # left running for a sensor to watch
    assert [r["method"] for r in requests_for(kernel_conn_env, inv["id"])] == []  # not even one GET


class DeferredByProvider01(KernelInvokeOperator):
    """Acts as provider 0.1 did up to the deferral: the invocation under the old XCom keys, and a trigger without
    ``xcom_scheme`` (which 0.1's triggers lacked); the resumed task is today's code."""

    def _remember(self, context, invocation_id):
        if getattr(self, "_resumed", False):
            return super()._remember(context, invocation_id)
        self.invocation_id = invocation_id
        context["ti"].xcom_push(key=LEGACY_XCOM_INVOCATION_ID, value=invocation_id)
        context["ti"].xcom_push(key=LEGACY_XCOM_INVOCATION_URL, value=self.hook.invocation_url(invocation_id))
        return None

    def _trigger(self, invocation_id, context):
        kwargs = super()._trigger(invocation_id, context).serialize()[1]
        del kwargs["xcom_scheme"]
        return KernelInvocationTrigger(**kwargs)

    def execute_complete(self, context, event=None):
        self._resumed = True
        return super().execute_complete(context, event)


def test_a_task_deferred_by_provider_01_pushes_todays_keys_when_it_resumes(kernel_conn_env, caplog):
    """The upgrade does not break a deferred task: downstream tasks pulling ``kernel_invocation_id`` find it."""
    with make_dag("deferred_by_01") as dag:
        DeferredByProvider01(task_id="invoke", app_name="demo", action_name="echo", payload=1, deferrable=True)
    dr = run_dag(dag)
    assert states(dr) == {"invoke": "success"}
    assert INLINE_TRIGGER in caplog.text  # really deferred and resumed
    inv = only_invocation(kernel_conn_env)
    assert xcom(dr, "invoke", key=LEGACY_XCOM_INVOCATION_ID) == inv["id"]  # what 0.1 pushed stays
    assert xcom(dr, "invoke", key=XCOM_INVOCATION_ID) == inv["id"]
    assert xcom(dr, "invoke", key=XCOM_INVOCATION_URL) == f"{DASHBOARD}/invocations/{inv['id']}"


def test_todays_task_pushes_only_todays_keys(kernel_conn_env):
    dr = run_dag(invoke_dag(action_name="echo", payload=1, deferrable=True))
    inv = only_invocation(kernel_conn_env)
    assert xcom(dr, "invoke", key=XCOM_INVOCATION_ID) == inv["id"]
    assert xcom(dr, "invoke", key=LEGACY_XCOM_INVOCATION_ID) is None


# --- outcomes ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("deferrable", [False, True])
def test_failed_invocation_fails_the_task_with_the_reason(kernel_conn_env, caplog, capfd, deferrable):
    dr = run_dag(invoke_dag(action_name="fail", payload={"message": "selector #buy not found"}, deferrable=deferrable))
    assert states(dr) == {"invoke": "failed"}
    inv = only_invocation(kernel_conn_env)
    assert inv["status"] == "failed"
    logs = all_logs(caplog, capfd)
    assert f"Kernel invocation {inv['id']} failed: {inv['status_reason']}" in logs
    assert "selector #buy not found" in logs
    assert len(posts(kernel_conn_env)) == 1


def test_failed_invocation_with_fail_on_failure_false(kernel_conn_env):
    dr = run_dag(invoke_dag(action_name="fail", payload={"message": "nope"}, fail_on_failure=False))
    assert states(dr) == {"invoke": "success"}
    inv = only_invocation(kernel_conn_env)
    result = xcom(dr, "invoke")
    assert result["id"] == inv["id"]
    assert result["status"] == "failed"
    assert result["status_reason"] == inv["status_reason"]


@pytest.mark.parametrize("deferrable", [False, True])
def test_timeout_cancels_the_invocation(kernel_conn_env, caplog, capfd, deferrable):
    dr = run_dag(
        invoke_dag(action_name="browse", payload={"count": 1, "seconds": 3600}, timeout=1.5, deferrable=deferrable)
    )
    assert states(dr) == {"invoke": "failed"}
    inv = only_invocation(kernel_conn_env)
    assert inv["status"] == "failed"  # cancelled on Kernel, not left running
    assert inv["_emulator"]["browsers"] == []
    methods = [(r["method"], r["route"]) for r in requests_for(kernel_conn_env, inv["id"])]
    assert ("PATCH", "/invocations/{id}") in methods
    assert "It was cancelled" in all_logs(caplog, capfd)


def test_execution_timeout_is_a_deadline_for_a_deferred_wait(kernel_conn_env):
    """Airflow does not enforce execution_timeout while a task is deferred; the trigger's deadline does.

    8 s, not less: Airflow 2 enforces the timeout on the worker too, and a busy machine can take seconds to get from
    execute() to the deferral (1.5 s timed the task out there, before it deferred)."""
    dr = run_dag(invoke_dag(action_name="slow", deferrable=True, execution_timeout=datetime.timedelta(seconds=8)))
    assert states(dr) == {"invoke": "failed"}
    assert only_invocation(kernel_conn_env)["status"] == "failed"


def test_deadline_is_absolute_wall_clock_time():
    op = KernelInvokeOperator(task_id="t", app_name="demo", action_name="echo", timeout=300)
    deadline = op._deadline({})
    assert abs(deadline - (time.time() + 300)) < 60  # time.time(), not time.monotonic()


# --- retries never invoke twice -------------------------------------------------------------------------------


@pytest.mark.parametrize("deferrable", [False, True])
def test_retry_after_the_first_try_died_mid_wait_reattaches(gated_kernel, caplog, capfd, deferrable):
    """Try 1 creates the invocation and then dies while waiting (here: its status checks start failing).

    Try 2 finds the id the first try recorded and re-joins that invocation: Kernel sees exactly one create.
    """
    # The wait opens the event stream first (no GET before it): its 404 makes the wait error, so try 1 fails.
    gated_kernel.set_faults({"rules": [{"route": "GET /invocations/{id}/events", "sequence": [{"status": 404}]}]})
    gate = gated_kernel.gate()
    # Still running when try 2 looks at it: the gate opens at try 2's first check (the non-deferrable try 1 made
    # one GET of its own before waiting; a deferrable one goes straight to the trigger).
    checks = 1 if deferrable else 2
    opened = gate.open_when(seen(gated_kernel, GET_ONE, at_least=checks), "the retry to look at the invocation")
    dag = gated_dag(
        gate, payload=gate.payload(result="once"), deferrable=deferrable, retries=1, retry_delay=datetime.timedelta(0)
    )
    dr = run_dag(dag)
    opened()
    assert states(dr) == {"invoke": "success"}
    assert ti_map(dr)["invoke"].try_number == 2
    assert xcom(dr, "invoke") == "once"
    assert gated_kernel.created_count() == 1
    assert len(posts(gated_kernel)) == 1
    assert only_invocation(gated_kernel)["status"] == "succeeded"
    assert "re-attaching to it" in all_logs(caplog, capfd)
    if AF2:  # Airflow < 3.3 keeps the id in a Variable, removed once the invocation has an outcome
        from airflow.models import Variable

        ti = ti_map(dr)["invoke"]
        key = f"kernel_provider.invocation.{ti.dag_id}.invoke.{ti.run_id}.-1"
        assert Variable.get(key, default_var=None) is None


def test_retry_after_a_failed_invocation_invokes_again_exactly_once(gated_kernel):
    """Someone cancels the first run in Kernel; the retry starts one new invocation and succeeds."""
    emulator = gated_kernel
    gate = emulator.gate()
    cancelled: list[str] = []

    def cancel_first() -> bool:
        running = [i for i in emulator.invocations() if i["status"] == "running"]
        if not running:
            return False
        KernelHook().cancel_invocation(running[0]["id"], reason="cancelled in the dashboard")
        cancelled.append(running[0]["id"])
        return True

    opened = gate.open_when(cancel_first, "the first invocation to run")  # cancels it, then opens the gate
    dag = gated_dag(gate, payload=gate.payload(result="second try"), retries=1, retry_delay=datetime.timedelta(0))
    dr = run_dag(dag)
    opened()

    assert len(cancelled) == 1
    assert states(dr) == {"invoke": "success"}
    assert ti_map(dr)["invoke"].try_number == 2
    assert xcom(dr, "invoke") == "second try"
    assert emulator.created_count() == 2  # the failed one, and exactly one more
    first, second = emulator.invocations()
    assert first["id"] == cancelled[0] and first["status"] == "failed"
    assert second["status"] == "succeeded"
    assert xcom(dr, "invoke", key=XCOM_INVOCATION_ID) == second["id"]


# --- fan-out under Kernel's concurrency limit -------------------------------------------------------------------


# --- deferrable: 429s waited out in the triggerer; three requests per waited invocation ---------------------------

REFUSED_LOG = "Kernel refused the create with 429"


def task_log(caplog: Any, capfd: Any) -> str:
    """The task's own log lines, from one source only (for counting). ``dag.test()`` logs them through stdlib
    logging on Airflow 2.11 and 3.0 (both print each line too, 3.0 twice), through structlog to stdout on 3.1+."""
    captured = capfd.readouterr()
    if any(r.name.startswith("airflow.task.operators.kernel_provider") for r in caplog.records):
        return caplog.text
    return captured.out + captured.err


def test_deferrable_create_defers_on_429_and_invokes_once(kernel_emulator_factory, monkeypatch, caplog, capfd):
    """Kernel's concurrency limit is full: the deferrable task defers on a timer per 429 (no worker sleeps through
    one: exactly one POST per deferral), then creates once when a slot frees."""
    emulator = kernel_emulator_factory(org_concurrency=1, retry_after=1)
    monkeypatch.setenv("AIRFLOW_CONN_KERNEL_DEFAULT", conn_json(emulator.url, emulator.token))
    hook = KernelHook()
    blocker = hook.invoke("demo", "slow", invoke_async=True).id

    def release_after_two_refusals() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if sum(r["status"] == 429 for r in posts(emulator)) >= 2:
                hook.cancel_invocation(blocker, reason="make room")
                return
            time.sleep(0.05)

    releaser = threading.Thread(target=release_after_two_refusals, daemon=True)
    releaser.start()
    dr = run_dag(
        invoke_dag(
            action_name="sleep", payload={"seconds": 0.2, "result": "done"}, deferrable=True, rate_limit_wait=120
        )
    )
    releaser.join(5)

    assert states(dr) == {"invoke": "success"}
    assert xcom(dr, "invoke") == "done"
    assert emulator.created_count(action="sleep") == 1
    refused = [r for r in posts(emulator) if r["status"] == 429]
    assert len(refused) >= 2
    assert len(posts(emulator)) == 1 + len(refused) + 1  # the blocker, each refusal once, the create
    # One timer deferral per refusal: the worker never retried a 429 itself.
    logs = task_log(caplog, capfd)
    assert logs.count(REFUSED_LOG) == len(refused)
    assert INLINE_TRIGGER in logs + caplog.text  # dag.test() ran the timer inline


def test_deferrable_create_fails_once_rate_limit_wait_is_spent(kernel_emulator_factory, monkeypatch, caplog, capfd):
    emulator = kernel_emulator_factory(org_concurrency=1, retry_after=1)
    monkeypatch.setenv("AIRFLOW_CONN_KERNEL_DEFAULT", conn_json(emulator.url, emulator.token))
    KernelHook().invoke("demo", "slow", invoke_async=True)  # holds the only slot throughout

    dr = run_dag(invoke_dag(action_name="sleep", payload={"seconds": 0.2}, deferrable=True, rate_limit_wait=2.5))

    assert states(dr) == {"invoke": "failed"}
    assert emulator.created_count(action="sleep") == 0
    refused = [r for r in posts(emulator) if r["status"] == 429]
    assert 2 <= len(refused) <= 4  # ~1 s apart within 2.5 s, and one last try at the deadline
    logs = task_log(caplog, capfd)
    failure = "\n".join([logs, caplog.text, *TASK_FAILURES])
    assert "rate_limit_wait (2.5s, counted from the first attempt) is spent" in failure
    assert logs.count(REFUSED_LOG) == len(refused) - 1  # every refusal but the last deferred


@pytest.mark.parametrize(
    ("live_view", "track_usage"),
    [(False, False), (True, False), (False, True)],
    ids=["live_view_off", "live_view_on", "track_usage_only"],
)
def test_deferrable_wait_takes_three_requests(kernel_conn_env, live_view, track_usage):
    """POST; the event stream (its first event is the current state, so no GET before it); one GET on resume.
    The live view or the usage tracking (both default on) add one browser list at the start of a short run that
    shows no browser (and so no browser to look up after it)."""
    payload = {"seconds": 0.5, "result": 7}
    dag = invoke_dag(
        action_name="sleep", payload=payload, deferrable=True, live_view=live_view, track_usage=track_usage
    )
    dr = run_dag(dag)
    assert states(dr) == {"invoke": "success"}
    assert xcom(dr, "invoke") == 7
    inv_id = only_invocation(kernel_conn_env)["id"]
    assert len(posts(kernel_conn_env)) == 1
    # The browser list runs beside the stream, so the two may reach the emulator in either order.
    listed = [("GET", "/invocations/{id}/browsers")] if live_view or track_usage else []
    expected = [("GET", EVENTS), *listed, ("GET", GET_ONE)]
    assert sorted((r["method"], r["route"]) for r in requests_for(kernel_conn_env, inv_id)) == sorted(expected)


# --- templating, XCom, links, chaining -------------------------------------------------------------------------


def test_templated_payload(kernel_conn_env):
    logical = START + datetime.timedelta(days=5)
    dr = run_dag(
        invoke_dag(action_name="echo", payload={"day": "{{ ds }}", "run": "{{ run_id }}"}, invoke_async=False),
        logical_date=logical,
    )
    assert states(dr) == {"invoke": "success"}
    assert xcom(dr, "invoke") == {"day": "2024-01-06", "run": dr.run_id}
    sent = json.loads(only_invocation(kernel_conn_env)["payload"])  # what Kernel received: rendered
    assert sent == {"day": "2024-01-06", "run": dr.run_id}


def test_extra_link_and_url_xcom(kernel_conn_env):
    dr = run_dag(invoke_dag(action_name="echo", payload={}, invoke_async=False))
    inv = only_invocation(kernel_conn_env)
    url = f"{DASHBOARD}/invocations/{inv['id']}"
    assert xcom(dr, "invoke", key=XCOM_INVOCATION_URL) == url
    link = KernelInvocationLink()
    if AF2:
        ti = ti_map(dr)["invoke"]
        assert link.get_link(ti.task if getattr(ti, "task", None) else None, ti_key=ti.key) == url
    else:
        # Airflow 3 workers evaluate get_link when the task ends and store the result for the UI.
        assert xcom(dr, "invoke", key=link.xcom_key) == url
    assert link.get_link(None) == ""


def test_output_chains_into_a_downstream_task(kernel_conn_env):
    with make_dag("kernel_chain") as dag:
        scrape = KernelInvokeOperator(
            task_id="invoke", app_name="demo", action_name="echo", payload={"prices": [3, 4, 5]}, poll_interval=0.1
        )

        @task
        def total(result: Any) -> int:
            return sum(result["prices"])

        total(scrape.output)
    dr = run_dag(dag)
    assert states(dr) == {"invoke": "success", "total": "success"}
    assert xcom(dr, "total") == 12


# --- validation: nothing is sent when an argument is wrong ------------------------------------------------------


def test_bad_payload_fails_the_task_before_any_request(kernel_conn_env, caplog, capfd):
    dr = run_dag(invoke_dag(action_name="echo", payload="{not json"))
    assert states(dr) == {"invoke": "failed"}
    assert kernel_conn_env.requests() == []
    logs = all_logs(caplog, capfd)
    assert "KernelInputError" in logs and "payload" in logs


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"app_name": ""}, "app_name"),
        ({"action_name": "   "}, "action_name"),
        ({"payload": "{not json"}, "payload"),
        ({"payload": {1, 2}}, "payload"),
        ({"async_timeout_seconds": 5}, "async_timeout_seconds"),
        ({"poll_interval": 0}, "poll_interval"),
        ({"timeout": -1}, "timeout"),
    ],
)
def test_bad_input_raises_kernel_input_error_before_any_request(kernel_conn_env, kwargs, field):
    args: dict[str, Any] = {"app_name": "demo", "action_name": "echo", **kwargs}
    op = KernelInvokeOperator(task_id="t", **args)
    with pytest.raises(KernelInputError) as err:
        op.execute({})  # no context needed: validation comes first
    assert err.value.field == field
    assert kernel_conn_env.requests() == []


def test_bad_wait_mode_raises_before_any_request(kernel_conn_env):
    op = KernelInvokeOperator(task_id="t", app_name="demo", action_name="echo", wait_mode="sometimes")
    with pytest.raises(KernelError, match="wait_mode"):
        op.execute({})
    assert kernel_conn_env.requests() == []


def test_validate_action_lists_existing_actions(kernel_conn_env, caplog, capfd):
    dr = run_dag(invoke_dag(action_name="echoo", validate_action=True))
    assert states(dr) == {"invoke": "failed"}
    assert posts(kernel_conn_env) == []  # nothing was invoked
    assert kernel_conn_env.requests(path="/apps", method="GET")
    logs = all_logs(caplog, capfd)
    assert "has no action 'echoo'" in logs
    assert "Actions: big, blocking, browse, counter, echo, fail, logs, plain_fail, sleep, slow" in logs


def test_validate_action_passes_for_a_real_action(kernel_conn_env):
    dr = run_dag(invoke_dag(action_name="echo", payload={"ok": 1}, validate_action=True, invoke_async=False))
    assert states(dr) == {"invoke": "success"}
    assert xcom(dr, "invoke") == {"ok": 1}
    apps = kernel_conn_env.requests(path="/apps", method="GET")
    assert apps and apps[0]["seq"] < posts(kernel_conn_env)[0]["seq"]  # checked first, then invoked
