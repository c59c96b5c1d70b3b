"""The mapped fan-out under Kernel's concurrency limit, through dag.test() (its own file: the slowest test of the
unit legs, so xdist can start it first and run the rest of the operator's tests beside it)."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import pytest
from airflow import __version__ as AIRFLOW_VERSION

from kernel_provider.hooks.kernel import KernelHook
from kernel_provider.operators.kernel import KernelInvokeOperator
from kernel_provider.sensors.kernel import KernelInvocationSensor
from tests.airflow_helpers import make_dag, run_dag, states, task, xcom
from tests.helpers import conn_json, posts

pytestmark = pytest.mark.usefixtures("airflow_db")

#: Size of the mapped fan-out: the issue's target, 100 (about 25-45 s on Airflow 3.3 and 2.11); KERNEL_FANOUT_N=20
#: for a quick run. On 3.0-3.2, 30: their dag.test() slows down as a run's task instances grow (200 task runs took
#: over 15 minutes on 3.1.8 under CI's load), and 30 invokes against a limit of 5 already held by other work meet
#: the limit just as surely; make test-floors sets 30 too. The cluster suite runs 100 deferred waits on a real
#: scheduler.
_SLOW_DAG_TEST = (3, 0) <= tuple(int(part) for part in AIRFLOW_VERSION.split(".")[:2]) < (3, 3)
FANOUT = int(os.environ.get("KERNEL_FANOUT_N", "30" if _SLOW_DAG_TEST else "100"))


@pytest.mark.timeout(1200)  # 200 task runs: Airflow 3.2's dag.test() takes about 3 s a run on 2 cores
def test_mapped_fan_out_under_the_concurrency_limit(kernel_emulator_factory, monkeypatch):
    """N mapped invocations against an org limit of 5: the 429s are waited out, each task invokes once.

    When the DAG starts, other work already holds all 5 slots (five ``slow`` invocations); they are cancelled as
    soon as Kernel has refused a create, so the limit is certainly met whatever the machine's speed. dag.test()
    runs tasks one by one, so the invokes don't wait for their invocation (a mapped sensor does): that keeps
    many invocations live at once, and the fan-out itself meets the limit again.
    """
    emulator = kernel_emulator_factory(org_concurrency=5)
    monkeypatch.setenv("AIRFLOW_CONN_KERNEL_DEFAULT", conn_json(emulator.url, emulator.token))
    hook = KernelHook()
    blockers = [hook.invoke("demo", "slow", invoke_async=True).id for _ in range(5)]

    def release_when_refused() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if any(r["status"] == 429 for r in posts(emulator)):
                for inv_id in blockers:
                    hook.cancel_invocation(inv_id, reason="make room")
                return
            time.sleep(0.05)

    releaser = threading.Thread(target=release_when_refused, daemon=True)
    releaser.start()
    with make_dag("kernel_fanout") as dag:
        invoke = KernelInvokeOperator.partial(
            task_id="invoke",
            app_name="demo",
            action_name="sleep",
            wait_for_completion=False,
            rate_limit_wait=300,
        ).expand(payload=[{"seconds": 0.5, "result": i} for i in range(FANOUT)])
        wait = KernelInvocationSensor.partial(task_id="wait", poke_interval=0.1, timeout=300).expand(
            invocation_id=invoke.output
        )

        @task
        def collect(results: Any) -> list[int]:
            return sorted(results)

        collect(wait.output)

    dr = run_dag(dag)
    releaser.join(5)

    finished = states(dr)
    assert finished.pop("collect") == "success"
    assert set(finished.values()) == {"success"} and len(finished) == 2 * FANOUT
    assert xcom(dr, "collect") == list(range(FANOUT))
    assert emulator.created_count(action="sleep") == FANOUT
    for i in range(FANOUT):
        assert emulator.created_count(action="sleep", payload={"seconds": 0.5, "result": i}) == 1
    refused = [r for r in posts(emulator) if r["status"] == 429]
    assert refused
    assert len(posts(emulator)) == len(blockers) + FANOUT + len(refused)  # every refusal waited out, no repeats
