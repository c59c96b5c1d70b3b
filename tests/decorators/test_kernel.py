"""``@task.kernel`` in real DAG runs (``dag.test()``) against the emulator, on Airflow 3.3 and 2.11.

The decorator is reached the way users reach it, ``task.kernel`` (registered through the provider info's
``task-decorators``), never by importing the factory.
"""

from __future__ import annotations

from typing import Any

import pytest

from kernel_provider.links import XCOM_INVOCATION_ID
from tests.airflow_helpers import (
    INLINE_TRIGGER,
    all_logs,
    kernel_lines,
    make_dag,
    run_dag,
    states,
    task,
    ti_map,
    xcom,
)
from tests.helpers import EVENTS, seen

pytestmark = pytest.mark.usefixtures("airflow_db")


def posted_payloads(emulator: Any) -> list[Any]:
    import json

    return sorted((json.loads(i["payload"]) for i in emulator.invocations() if "payload" in i), key=repr)


def test_the_decorator_is_registered_through_provider_info():
    from kernel_provider.decorators.kernel import kernel_task

    assert task.kernel is kernel_task


def test_plain(kernel_conn_env):
    with make_dag("deco_plain") as dag:

        @task.kernel(app_name="demo", action_name="echo", poll_interval=0.1)
        def scrape(url: str) -> dict:  # the annotation describes the payload: no multiple_outputs
            return {"url": url, "pages": 2}

        scrape("https://example.com")
    dr = run_dag(dag)
    assert states(dr) == {"scrape": "success"}
    assert xcom(dr, "scrape") == {"url": "https://example.com", "pages": 2}
    assert xcom(dr, "scrape", key="url") is None  # not unrolled
    inv = kernel_conn_env.invocations()
    assert len(inv) == 1 and inv[0]["action_name"] == "echo"
    assert xcom(dr, "scrape", key=XCOM_INVOCATION_ID) == inv[0]["id"]


def test_templated_arguments_and_xcom_args(kernel_conn_env):
    with make_dag("deco_templated") as dag:

        @task
        def upstream() -> str:
            return "from-upstream"

        @task.kernel(app_name="{{ 'de' + 'mo' }}", action_name="echo", poll_interval=0.1)
        def scrape(source: str, day: str) -> dict:
            # Arguments are rendered; the returned payload is data, sent as it is.
            return {"source": source, "day": day, "literal": "{{ ds }}"}

        scrape(upstream(), "{{ ds }}")
    dr = run_dag(dag)
    assert states(dr) == {"upstream": "success", "scrape": "success"}
    day = dr.logical_date.strftime("%Y-%m-%d") if dr.logical_date else None
    result = xcom(dr, "scrape")
    assert result["source"] == "from-upstream"
    assert result["literal"] == "{{ ds }}"
    if day is not None:
        assert result["day"] == day
    assert "{{" not in result["day"]


def test_mapped_partial_expand(kernel_conn_env):
    with make_dag("deco_mapped") as dag:

        @task.kernel(app_name="demo", action_name="echo", poll_interval=0.1)
        def scrape(site: str, n: int) -> dict:
            return {"site": site, "n": n}

        scrape.partial(site="shop").expand(n=[1, 2, 3])
    dr = run_dag(dag)
    assert set(states(dr).values()) == {"success"}
    assert sorted(k[1] for k in ti_map(dr)) == [0, 1, 2]
    assert [xcom(dr, "scrape", map_index=i) for i in range(3)] == [{"site": "shop", "n": n} for n in (1, 2, 3)]
    assert posted_payloads(kernel_conn_env) == [{"site": "shop", "n": n} for n in (1, 2, 3)]


def test_deferrable_with_operator_parameters(gated_kernel, caplog, capfd):
    gate = gated_kernel.gate()
    opened = gate.open_when(seen(gated_kernel, EVENTS), "the trigger to follow the stream")
    with make_dag("deco_deferred") as dag:

        @task.kernel(app_name="gate", action_name="wait", deferrable=True, timeout=300, version="latest")
        def wait_for_gate(lines: int) -> dict:
            return gate.payload(before=lines, result={"done": True})

        wait_for_gate(2)
    dr = run_dag(dag)
    opened()
    assert states(dr) == {"wait_for_gate": "success"}
    assert xcom(dr, "wait_for_gate") == {"done": True}
    assert INLINE_TRIGGER in caplog.text  # really deferred
    inv = gated_kernel.invocations()
    assert len(inv) == 1
    assert kernel_lines(inv[0]["id"], caplog, capfd) == ["line 0", "line 1"]


def test_failed_action_fails_the_task(kernel_conn_env, caplog, capfd):
    with make_dag("deco_failed") as dag:

        @task.kernel(app_name="demo", action_name="fail", poll_interval=0.1, retries=0)
        def broken() -> dict:
            return {"message": "selector #buy not found"}

        broken()
    dr = run_dag(dag)
    assert states(dr) == {"broken": "failed"}
    inv = kernel_conn_env.invocations()
    assert len(inv) == 1 and inv[0]["status"] == "failed"
    assert "selector #buy not found" in all_logs(caplog, capfd)


def test_a_return_value_json_cannot_hold_fails_before_any_request(kernel_conn_env, caplog, capfd):
    with make_dag("deco_bad_payload") as dag:

        @task.kernel(app_name="demo", action_name="echo", retries=0)
        def bad() -> Any:
            return {"when": object()}

        bad()
    dr = run_dag(dag)
    assert states(dr) == {"bad": "failed"}
    assert kernel_conn_env.invocations() == []
    assert "the return value of @task.kernel function bad()" in all_logs(caplog, capfd)


def test_payload_keyword_is_refused_at_parse_time():
    refused = pytest.raises(TypeError, match="payload is the decorated function's return value")
    with refused, make_dag("deco_payload_kw"):

        @task.kernel(app_name="demo", action_name="echo", payload={"x": 1})
        def f() -> None:
            return None

        f()


def test_deferrable_create_refused_with_429_resumes_with_the_functions_payload(kernel_conn_env):
    """A resumed task is a fresh operator: after the 429 timer, the function runs again for the payload."""
    kernel_conn_env.set_faults(
        {"rules": [{"route": "POST /invocations", "sequence": [{"status": 429, "retry_after": 1}, None]}]}
    )
    with make_dag("deco_429") as dag:

        @task.kernel(app_name="demo", action_name="echo", deferrable=True, poll_interval=0.1, rate_limit_wait=120)
        def scrape(url: str, day: str) -> dict:
            return {"url": url, "day": day}

        scrape("https://example.com", "{{ ds }}")
    dr = run_dag(dag)
    assert states(dr) == {"scrape": "success"}
    result = xcom(dr, "scrape")
    assert result["url"] == "https://example.com" and "{{" not in result["day"]
    statuses = [r["status"] for r in kernel_conn_env.requests(path="/invocations", method="POST")]
    assert statuses == [429, 202]  # refused once (nothing created), then created exactly once
    assert posted_payloads(kernel_conn_env) == [result]


def test_the_decorators_keywords_are_the_operators_with_the_same_defaults():
    """``@task.kernel`` spells every operator parameter out (an IDE completes them); none may drift."""
    import inspect

    from kernel_provider.decorators.kernel import kernel_task
    from kernel_provider.operators.kernel import KernelInvokeOperator

    operator = inspect.signature(KernelInvokeOperator.__init__).parameters
    decorator = inspect.signature(kernel_task).parameters
    wanted = {name: p.default for name, p in operator.items() if name not in ("self", "payload", "kwargs")}
    offered = {name: p.default for name, p in decorator.items() if name not in ("python_callable", "kwargs")}
    assert offered == wanted
