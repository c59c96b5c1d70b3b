"""KernelInvocationSensor in real Airflow DAG runs (``dag.test()``) against the local Kernel emulator.

The invocation is started by an upstream ``KernelInvokeOperator(wait_for_completion=False)`` and the sensor gets
its id through the templated ``invocation_id`` (``invoke.output``), as in a real DAG.
"""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from kernel_provider.exceptions import KernelError
from kernel_provider.operators.kernel import KernelInvokeOperator
from kernel_provider.sensors.kernel import KernelInvocationSensor
from kernel_provider.triggers.kernel import KernelInvocationTrigger
from tests.airflow_helpers import (
    INLINE_TRIGGER,
    all_logs,
    kernel_lines,
    make_dag,
    run_dag,
    states,
    xcom,
)
from tests.helpers import EVENTS, GET_ONE, seen

pytestmark = pytest.mark.usefixtures("airflow_db")


def sensor_dag(action: str, payload: Any, app: str = "demo", **sensor_kwargs: Any) -> Any:
    sensor_kwargs.setdefault("poke_interval", 0.1)
    sensor_kwargs.setdefault("timeout", 120)
    # dag.test() runs no trigger for a task that starts in the triggerer (Airflow 3.3+): start on the "worker".
    sensor_kwargs.setdefault("start_from_trigger", False)
    with make_dag("kernel_sensor") as dag:
        invoke = KernelInvokeOperator(
            task_id="invoke", app_name=app, action_name=action, payload=payload, wait_for_completion=False
        )
        KernelInvocationSensor(task_id="wait", invocation_id=invoke.output, **sensor_kwargs)
    return dag


def invocation_id(dr: Any) -> str:
    value = xcom(dr, "invoke")
    assert isinstance(value, str) and len(value) == 24, value
    return value


@pytest.mark.parametrize("mode", ["poke", "reschedule"])
def test_waits_in_worker_modes_and_returns_the_output(gated_kernel, caplog, mode):
    gate = gated_kernel.gate()
    opened = gate.open_when(seen(gated_kernel, GET_ONE), "the sensor's first poke")  # still running then
    dr = run_dag(sensor_dag("wait", gate.payload(result={"rows": 7}), app="gate", mode=mode))
    opened()
    assert states(dr) == {"invoke": "success", "wait": "success"}
    assert INLINE_TRIGGER not in caplog.text
    inv_id = invocation_id(dr)
    assert xcom(dr, "wait") == {"rows": 7}
    assert gated_kernel.created_count() == 1  # the sensor only watches
    gets = gated_kernel.requests(path=f"/invocations/{inv_id}", method="GET")
    assert len(gets) >= 2  # poked while running, then again
    assert not gated_kernel.requests(path=f"/invocations/{inv_id}/events")


def test_deferrable_streams_the_action_log_into_the_task_log(gated_kernel, caplog, capfd):
    gate = gated_kernel.gate()
    opened = gate.open_when(seen(gated_kernel, EVENTS), "the deferred sensor's trigger to follow the stream")
    dr = run_dag(sensor_dag("wait", gate.payload(before=2, after=2, result={"lines": 4}), app="gate", deferrable=True))
    opened()
    assert states(dr) == {"invoke": "success", "wait": "success"}
    assert INLINE_TRIGGER in caplog.text  # really deferred; dag.test ran the trigger inline
    inv_id = invocation_id(dr)
    assert xcom(dr, "wait") == {"lines": 4}
    assert kernel_lines(inv_id, caplog, capfd) == [f"line {i}" for i in range(4)]  # each once, in order


def test_deferrable_poll_mode(gated_kernel, caplog):
    gate = gated_kernel.gate()
    opened = gate.open_when(seen(gated_kernel, GET_ONE, at_least=3), "the trigger to poll")
    dr = run_dag(sensor_dag("wait", gate.payload(result="done"), app="gate", deferrable=True, wait_mode="poll"))
    opened()
    assert states(dr) == {"invoke": "success", "wait": "success"}
    assert INLINE_TRIGGER in caplog.text
    inv_id = invocation_id(dr)
    assert xcom(dr, "wait") == "done"
    assert not gated_kernel.requests(path=f"/invocations/{inv_id}/events")


def test_already_finished_invocation_completes_without_deferring(kernel_conn_env):
    with make_dag("kernel_sensor_done") as dag:
        invoke = KernelInvokeOperator(
            task_id="invoke",
            app_name="demo",
            action_name="echo",
            payload={"x": 1},
            invoke_async=False,
            wait_for_completion=False,
        )
        wait = KernelInvocationSensor(
            task_id="wait",
            invocation_id="{{ ti.xcom_pull('invoke', key='kernel_invocation_id') }}",
            deferrable=True,
            start_from_trigger=False,
            poke_interval=0.1,
        )
        invoke >> wait
    dr = run_dag(dag)
    assert states(dr) == {"invoke": "success", "wait": "success"}
    inv_id = xcom(dr, "invoke", key="kernel_invocation_id")
    assert xcom(dr, "wait") == {"x": 1}
    assert not kernel_conn_env.requests(path=f"/invocations/{inv_id}/events")


@pytest.mark.parametrize("deferrable", [False, True])
def test_failed_invocation_fails_the_task(kernel_conn_env, caplog, capfd, deferrable):
    dr = run_dag(sensor_dag("fail", {"message": "login form missing"}, deferrable=deferrable))
    assert states(dr) == {"invoke": "success", "wait": "failed"}
    inv_id = invocation_id(dr)
    reason = kernel_conn_env.invocation(inv_id)["status_reason"]
    logs = all_logs(caplog, capfd)
    assert f"Kernel invocation {inv_id} failed: {reason}" in logs
    assert "login form missing" in logs  # the output excerpt is in the error


@pytest.mark.parametrize("deferrable", [False, True])
def test_failed_invocation_with_fail_on_failure_false_succeeds_with_details(kernel_conn_env, deferrable):
    dr = run_dag(sensor_dag("fail", {"message": "captcha"}, deferrable=deferrable, fail_on_failure=False))
    assert states(dr) == {"invoke": "success", "wait": "success"}
    inv_id = invocation_id(dr)
    result = xcom(dr, "wait")
    assert result["id"] == inv_id
    assert result["status"] == "failed"
    assert result["status_reason"] == kernel_conn_env.invocation(inv_id)["status_reason"]
    assert "captcha" in str(result["output"])


@pytest.mark.parametrize("deferrable", [False, True])
def test_timeout_fails_the_task_and_leaves_the_invocation_running(kernel_conn_env, caplog, capfd, deferrable):
    dr = run_dag(sensor_dag("slow", None, deferrable=deferrable, timeout=1, poke_interval=0.2))
    assert states(dr) == {"invoke": "success", "wait": "failed"}
    inv_id = invocation_id(dr)
    assert kernel_conn_env.invocation(inv_id)["status"] == "running"  # a sensor never cancels
    assert "AirflowSensorTimeout" in all_logs(caplog, capfd) or "timed out" in all_logs(caplog, capfd)


@pytest.mark.parametrize("deferrable", [False, True])
def test_timeout_with_soft_fail_skips(kernel_conn_env, deferrable):
    dr = run_dag(sensor_dag("slow", None, deferrable=deferrable, timeout=1, poke_interval=0.2, soft_fail=True))
    assert states(dr) == {"invoke": "success", "wait": "skipped"}
    assert kernel_conn_env.invocation(invocation_id(dr))["status"] == "running"


@pytest.mark.parametrize("mode", ["poke", "reschedule", "deferrable"])
def test_a_failed_invocation_with_soft_fail_skips_in_every_mode(kernel_conn_env, mode):
    """One rule in every mode (Airflow alone skips on resume but fails in poke mode)."""
    kwargs = {"deferrable": True} if mode == "deferrable" else {"mode": mode}
    dr = run_dag(sensor_dag("fail", {"message": "planned"}, soft_fail=True, **kwargs))
    assert states(dr) == {"invoke": "success", "wait": "skipped"}
    assert kernel_conn_env.invocation(invocation_id(dr))["status"] == "failed"


def test_deferred_wait_ends_at_execution_timeout(kernel_conn_env):
    """Airflow 3 does not enforce execution_timeout while a task is deferred: the sensor's own deadline does."""
    dr = run_dag(
        sensor_dag(
            "slow",
            None,
            deferrable=True,
            timeout=3600,
            poke_interval=0.2,
            execution_timeout=datetime.timedelta(seconds=3),
        )
    )
    assert states(dr) == {"invoke": "success", "wait": "failed"}
    assert kernel_conn_env.invocation(invocation_id(dr))["status"] == "running"  # a sensor never cancels


def test_unknown_invocation_fails(kernel_conn_env):
    with make_dag("kernel_sensor_404") as dag:
        KernelInvocationSensor(
            task_id="wait", invocation_id="nosuchinvocation00000000", poke_interval=0.1, deferrable=True
        )
    dr = run_dag(dag)
    assert states(dr) == {"wait": "failed"}
    assert [r["status"] for r in kernel_conn_env.requests(path="/invocations/nosuchinvocation00000000")] == [404]


@pytest.mark.parametrize("bad", ["", "   ", None])
def test_empty_invocation_id_is_rejected_before_any_request(kernel_conn_env, bad):
    sensor = KernelInvocationSensor(task_id="wait", invocation_id=bad, poke_interval=0.1)
    with pytest.raises(KernelError, match="invocation_id"):
        sensor.execute({})
    assert kernel_conn_env.requests() == []


# --- starting in the triggerer (Airflow 3.3+; the real scheduler run is in tests/e2e/test_real_airflow.py) -------


def test_deferrable_sensor_starts_from_the_trigger_where_airflow_supports_it():
    from kernel_provider.sensors.kernel import STARTS_FROM_TRIGGER, TRIGGER_CLASSPATH

    with make_dag("kernel_sensor_sft"):
        invoke = KernelInvokeOperator(task_id="invoke", app_name="demo", action_name="slow", wait_for_completion=False)
        wait = KernelInvocationSensor(task_id="wait", invocation_id=invoke.output, deferrable=True, timeout=60)
        text = KernelInvocationSensor(task_id="text", invocation_id="{{ params.inv }}", deferrable=True)
        off = KernelInvocationSensor(task_id="off", invocation_id="x", deferrable=True, start_from_trigger=False)
        # the triggerer cannot pull an XCom "of every map index": such a template starts on a worker
        pull = KernelInvocationSensor(task_id="pull", invocation_id="{{ ti.xcom_pull('invoke') }}", deferrable=True)
        poke = KernelInvocationSensor(task_id="poke", invocation_id="x", deferrable=False)
    assert not off.start_from_trigger and not poke.start_from_trigger and not pull.start_from_trigger
    assert wait.start_from_trigger is STARTS_FROM_TRIGGER and text.start_from_trigger is STARTS_FROM_TRIGGER
    if not STARTS_FROM_TRIGGER:  # Airflow < 3.3: the sensor starts on a worker, as before
        return
    args = wait.start_trigger_args
    assert args.trigger_cls == TRIGGER_CLASSPATH and args.next_method == "execute_complete"
    assert args.timeout == datetime.timedelta(seconds=60)
    kwargs = args.trigger_kwargs
    # rendered by the triggerer: the upstream's return value, exactly what invoke.output gives on a worker
    assert kwargs["invocation_id"] == "{{ ti.xcom_pull(task_ids='invoke', key='return_value', map_indexes=-1) }}"
    assert kwargs["cancel_on_kill"] is False and kwargs["end_time"] is None
    assert text.start_trigger_args.trigger_kwargs["invocation_id"] == "{{ params.inv }}"
    trigger = KernelInvocationTrigger(**kwargs)  # the triggerer builds it from these kwargs
    assert trigger.invocation_id == kwargs["invocation_id"]
    assert trigger.serialize()[1]["end_task"] is True  # it ends the task there too
    assert (trigger.fail_on_failure, trigger.soft_fail) == (True, False)


def test_a_sensor_whose_end_needs_a_worker_is_resumed_on_one(monkeypatch):
    """Asset events and OpenLineage events are sent by a worker: a sensor with outlets or lineage inputs, or on an
    Airflow whose OpenLineage provider is configured, starts in the triggerer but is resumed on a worker."""
    from kernel_provider.sensors.kernel import STARTS_FROM_TRIGGER

    if not STARTS_FROM_TRIGGER:
        pytest.skip("this Airflow starts the sensor on a worker")
    from airflow.sdk import Asset

    with make_dag("kernel_sensor_end_where"):
        plain = KernelInvocationSensor(task_id="plain", invocation_id="x", deferrable=True, soft_fail=True)
        strict = KernelInvocationSensor(task_id="strict", invocation_id="x", deferrable=True, fail_on_failure=False)
        outlets = KernelInvocationSensor(task_id="o", invocation_id="x", deferrable=True, outlets=[Asset("s3://b/k")])
        lineage = KernelInvocationSensor(task_id="l", invocation_id="x", deferrable=True, lineage_inputs=["s3://b/i"])
    ends = {t.task_id: t.start_trigger_args.trigger_kwargs["end_task"] for t in (plain, strict, outlets, lineage)}
    assert ends == {"plain": True, "strict": True, "o": False, "l": False}
    assert plain.start_trigger_args.trigger_kwargs["soft_fail"] is True
    assert strict.start_trigger_args.trigger_kwargs["fail_on_failure"] is False
    pytest.importorskip("airflow.providers.openlineage")
    from airflow.providers.openlineage.conf import is_disabled

    forget = getattr(is_disabled, "cache_clear", lambda: None)  # the provider caches it (except under pytest)
    monkeypatch.setenv("OPENLINEAGE__TRANSPORT__TYPE", "console")
    forget()
    try:
        with make_dag("kernel_sensor_end_ol"):
            configured = KernelInvocationSensor(task_id="c", invocation_id="x", deferrable=True)
    finally:
        monkeypatch.delenv("OPENLINEAGE__TRANSPORT__TYPE")
        forget()
    assert configured.start_trigger_args.trigger_kwargs["end_task"] is False


def test_where_airflow_cannot_start_in_the_triggerer_the_sensor_falls_back_and_returns_the_output(kernel_conn_env):
    """Airflow 2.11 has no ``start_from_trigger``: the default (asked for) sensor starts on a worker, defers, and
    still returns the action's output."""
    from kernel_provider.sensors.kernel import STARTS_FROM_TRIGGER

    if STARTS_FROM_TRIGGER:
        pytest.skip("this Airflow starts the sensor in the triggerer (dag.test() cannot run that; see tests/e2e)")
    dr = run_dag(sensor_dag("echo", {"fell": "back"}, deferrable=True, start_from_trigger=True))
    assert states(dr) == {"invoke": "success", "wait": "success"}
    assert xcom(dr, "wait") == {"fell": "back"}
