"""Which deferred waits end their task in the triggerer (``end_in_triggerer``, Airflow 3.3+): decided on the worker
from the task, before it defers. The real scheduler and triggerer run is in ``tests/e2e/test_real_airflow.py``."""

from __future__ import annotations

import pytest

from kernel_provider.operators.kernel import KernelInvokeOperator
from kernel_provider.operators.wait_trigger import ends_in_triggerer, wait_trigger
from kernel_provider.version_compat import AIRFLOW_V_3_3_PLUS
from tests.airflow_helpers import make_dag

pytestmark = pytest.mark.skipif(not AIRFLOW_V_3_3_PLUS, reason="tasks end in the triggerer on Airflow 3.3+ only")


def _invoke(task_id: str, **kwargs):
    return KernelInvokeOperator(task_id=task_id, app_name="a", action_name="b", deferrable=True, **kwargs)


def test_a_plain_deferred_wait_ends_in_the_triggerer_and_anything_a_worker_must_do_keeps_the_resume():
    from airflow.sdk import Asset, task

    with make_dag("kernel_end_where"):
        plain = _invoke("plain")
        off = _invoke("off", end_in_triggerer=False)
        on_worker = KernelInvokeOperator(task_id="worker", app_name="a", action_name="b", deferrable=False)
        outlets = _invoke("outlets", outlets=[Asset("s3://bucket/prices")])
        lineage = _invoke("lineage", lineage_inputs=["https://example.com/"])
        no_push = _invoke("no_push", do_xcom_push=False)
        fanned = _invoke("fanned")

        @task
        def use(value: int) -> int:
            return value

        use.expand(value=fanned.output)  # Airflow sizes this mapping from a worker's push only
        plain >> use.override(task_id="plain_downstream")(plain.output)  # an unmapped consumer is fine
    decided = {t.task_id: ends_in_triggerer(t) for t in (plain, off, on_worker, outlets, lineage, no_push, fanned)}
    assert decided == {
        "plain": True,
        "off": False,
        "worker": False,
        "outlets": False,
        "lineage": False,
        "no_push": False,
        "fanned": False,
    }


def test_the_trigger_carries_the_decision_and_the_failure_rule():
    with make_dag("kernel_end_kwargs"):
        lenient = _invoke("lenient", fail_on_failure=False)
        off = _invoke("off", end_in_triggerer=False)
    kwargs = wait_trigger(lenient, "inv1", {}, None).serialize()[1]
    assert (kwargs["end_task"], kwargs["fail_on_failure"], kwargs["soft_fail"]) == (True, False, False)
    assert wait_trigger(off, "inv1", {}, None).serialize()[1]["end_task"] is False
