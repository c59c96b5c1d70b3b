"""OpenLineage of Kernel runs: real ``dag.test()`` runs on the emulator with the OpenLineage provider's listener
enabled and its ``file`` transport configured (``[openlineage] transport``), the emitted events read back.

The DAG-run tests skip (with the reason) where the ``[openlineage]`` extra is not installed; the test venvs
install it. The naming and input checks need no OpenLineage.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kernel_provider.exceptions import KernelInputError
from kernel_provider.links import XCOM_INVOCATION_URL
from kernel_provider.operators.kernel import KernelInvokeOperator
from kernel_provider.sensors.kernel import KernelInvocationSensor
from kernel_provider.utils.lineage_naming import check_lineage_inputs, dataset_id
from tests.airflow_helpers import AF2, make_dag, run_dag, states, xcom
from tests.helpers import only_invocation

HAVE_OPENLINEAGE = importlib.util.find_spec("airflow.providers.openlineage") is not None
needs_openlineage = pytest.mark.skipif(
    not HAVE_OPENLINEAGE, reason="the [openlineage] extra (apache-airflow-providers-openlineage) is not installed"
)


def _asset(uri: str) -> Any:
    if AF2:
        from airflow.datasets import Dataset

        return Dataset(uri)
    from airflow.sdk import Asset

    return Asset(uri=uri, name=uri)


# --- naming and input checks (no OpenLineage needed) ----------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("kernel://demo/echo", ("kernel://demo", "echo")),
        ("s3://bucket/dir/out.json", ("s3://bucket", "dir/out.json")),
        ("https://user:pw@shop.example:8443/catalog?token=abc#top", ("https://shop.example:8443", "catalog")),
        ("https://shop.example", ("https://shop.example", "/")),
        ("file:///tmp/report.csv", ("file", "/tmp/report.csv")),
        ("no-scheme/path", None),
        ("https://shop.example:notaport/x", None),
    ],
)
def test_dataset_ids_follow_openlineage_naming_and_drop_credentials(uri: str, expected: Any) -> None:
    assert dataset_id(uri) == expected


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("https://shop.example/", "must be a list, got str"),
        (["shop.example/catalog"], "'shop.example/catalog' is neither a URI"),
        ([42], "42 is neither a URI"),
    ],
)
def test_bad_lineage_inputs_fail_when_the_task_is_built(value: Any, problem: str) -> None:
    with pytest.raises(KernelInputError, match="lineage_inputs") as caught:
        KernelInvokeOperator(task_id="t", app_name="demo", action_name="echo", lineage_inputs=value)
    assert problem in str(caught.value)
    assert check_lineage_inputs(None) is None


def test_the_operator_module_imports_no_openlineage() -> None:
    # Airflow itself may read the OpenLineage provider's metadata; the OpenLineage client is what costs.
    code = (
        "import sys, kernel_provider.operators.kernel, kernel_provider.sensors.kernel; "
        "print(sorted(m for m in sys.modules if m.startswith(('openlineage', 'kernel_provider.utils.lineage_facets'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --- events of real runs ------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _no_secrets_of_earlier_tests() -> Iterator[None]:
    """Airflow 2.11's secrets masker is one per process and masks a secret of any length: the one-letter API key
    ("k") of an earlier test in the same worker would redact every "k" of the events (the OpenLineage provider
    redacts events with it). Each test here starts with the masker empty; its own key is masked when its hook
    is made."""
    try:
        from airflow.utils.log.secrets_masker import _secrets_masker
    except ImportError:  # Airflow 3: secrets shorter than its minimum length are not masked
        yield
        return
    masker = _secrets_masker()
    saved = (set(masker.patterns), masker.replacer)
    masker.patterns.clear()
    masker.replacer = None
    yield
    masker.patterns.update(saved[0])
    masker.replacer = saved[1]


@pytest.fixture
def lineage_events(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The OpenLineage listener on this process's listener manager, writing every event to a file; returns a
    function that reads the events of one task (by job name ``dag_id.task_id``).

    The provider's configuration is read once and cached, and its plugin registers its listener (for good, on
    task and DAG-run events) if OpenLineage is enabled when the plugins load: the plugins are loaded first, while
    it is not, then the caches are cleared and a fresh listener is registered for this test only, whatever ran
    before in this process and runs after. ``execute_in_thread``: the listener must not fork the test process (it
    runs the emulator's server threads).
    """
    from airflow.providers.openlineage import conf as ol_conf
    from airflow.providers.openlineage.plugins.listener import OpenLineageListener

    if AF2:
        from airflow.listeners.listener import get_listener_manager
    else:
        from airflow.sdk.listener import get_listener_manager

    manager = get_listener_manager()  # loads the plugins, before OpenLineage is enabled
    events_file = tmp_path / "openlineage.jsonl"
    monkeypatch.setenv("AIRFLOW__OPENLINEAGE__DISABLED", "False")
    monkeypatch.setenv(
        "AIRFLOW__OPENLINEAGE__TRANSPORT",
        json.dumps({"type": "file", "log_file_path": str(events_file), "append": True}),
    )
    monkeypatch.setenv("AIRFLOW__OPENLINEAGE__NAMESPACE", "kernel-tests")
    monkeypatch.setenv("AIRFLOW__OPENLINEAGE__EXECUTE_IN_THREAD", "True")

    def clear_caches() -> None:
        for value in vars(ol_conf).values():
            if callable(getattr(value, "cache_clear", None)):
                value.cache_clear()

    clear_caches()
    earlier = [p for p in manager.pm.get_plugins() if isinstance(p, OpenLineageListener)]
    for listener in earlier:
        manager.pm.unregister(listener)

    class TaskEventsOnly(OpenLineageListener):
        # DAG-run events go through a process pool, which would fork the test process; task events are tested.
        on_dag_run_running = on_dag_run_success = on_dag_run_failed = None

    ours = TaskEventsOnly()
    manager.add_listener(ours)

    def read(job_name: str) -> dict[str, list[dict[str, Any]]]:
        found: dict[str, list[dict[str, Any]]] = {}
        lines = events_file.read_text().splitlines() if events_file.exists() else []
        for event in map(json.loads, lines):
            if event.get("job", {}).get("name") == job_name:
                found.setdefault(event["eventType"], []).append(event)
        return found

    read.file = events_file  # type: ignore[attr-defined]
    yield read
    manager.pm.unregister(ours)
    for listener in earlier:
        manager.add_listener(listener)
    monkeypatch.undo()
    clear_caches()


def _only(events: dict[str, list[dict[str, Any]]], kind: str) -> dict[str, Any]:
    assert len(events.get(kind, [])) == 1, f"expected one {kind} event, got {sorted(events)}"
    return events[kind][0]


def _logs(caplog: Any, capfd: Any) -> tuple[str, list[str]]:
    """Everything logged or printed, and its ERROR lines: the OpenLineage listener's and client's own lines (which
    the task log of a worker also gets) reach Python's logging here."""
    captured = capfd.readouterr()
    printed = (captured.out + captured.err).splitlines()
    errors = [line for line in printed if " ERROR " in line or "[error" in line.lower()]
    errors += [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    return "\n".join([caplog.text, *printed]), errors


def _invoke_dag(prefix: str, **op_kwargs: Any) -> Any:
    with make_dag(prefix) as dag:
        KernelInvokeOperator(task_id="invoke", app_name="demo", poll_interval=0.1, **op_kwargs)
    return dag


@needs_openlineage
@pytest.mark.usefixtures("airflow_db")
def test_a_succeeded_run_sends_start_and_complete_with_the_kernel_facets(
    kernel_conn_env: Any, lineage_events: Any, caplog: Any, capfd: Any
) -> None:
    caplog.set_level(logging.INFO)
    dag = _invoke_dag(
        "lineage_ok",
        action_name="echo",
        payload={"url": "https://shop.example/catalog"},
        deferrable=False,
        lineage_inputs=["https://shop.example/catalog?session=s3cr3t", _asset("s3://bucket/in.csv")],
        outlets=[_asset("kernel://demo/echo"), _asset("s3://bucket/out.json")],
    )
    dr = run_dag(dag)
    assert states(dr) == {"invoke": "success"}
    invocation = only_invocation(kernel_conn_env)

    events = lineage_events(f"{dag.dag_id}.invoke")
    start, complete = _only(events, "START"), _only(events, "COMPLETE")
    inputs = [{"namespace": "https://shop.example", "name": "catalog"}, {"namespace": "s3://bucket", "name": "in.csv"}]
    outputs = [{"namespace": "kernel://demo", "name": "echo"}, {"namespace": "s3://bucket", "name": "out.json"}]
    for event in (start, complete):
        action = event["job"]["facets"]["kernelAction"]
        assert {k: action[k] for k in ("app", "action")} == {"app": "demo", "action": "echo"}
        assert action["_producer"].startswith("https://github.com/kernel/airflow-provider-kernel/")
        assert action["_schemaURL"].endswith("docs/openlineage.md#kernelaction-job-facet")
        assert [{k: d[k] for k in ("namespace", "name")} for d in event["inputs"]] == inputs
        assert [{k: d[k] for k in ("namespace", "name")} for d in event["outputs"]] == outputs
    assert start["job"]["facets"]["kernelAction"]["version"] == "latest"
    assert "kernelInvocation" not in start["run"]["facets"]  # nothing invoked yet
    # Kernel's GET reports the version the run used; the facet carries it once known.
    assert complete["job"]["facets"]["kernelAction"]["version"] == invocation["version"]
    run_facet = complete["run"]["facets"]["kernelInvocation"]
    assert run_facet["invocationId"] == invocation["id"]
    assert run_facet["status"] == "succeeded"
    assert run_facet["url"] == xcom(dr, "invoke", key=XCOM_INVOCATION_URL)
    assert run_facet["_schemaURL"].endswith("#kernelinvocation-run-facet")
    written = lineage_events.file.read_text()
    assert "s3cr3t" not in written and kernel_conn_env.token not in written
    assert "live" not in json.dumps(run_facet)
    logs, errors = _logs(caplog, capfd)
    assert not errors
    assert "failed to extract" not in logs and "OpenLineage" in logs  # the listener ran, and was content


@needs_openlineage
@pytest.mark.usefixtures("airflow_db")
def test_a_failed_invocation_sends_fail_with_its_status(
    kernel_conn_env: Any, lineage_events: Any, caplog: Any, capfd: Any
) -> None:
    dag = _invoke_dag(
        "lineage_fail",
        action_name="fail",
        payload={"message": "selector #buy not found"},
        deferrable=True,
        outlets=[_asset("kernel://demo/fail")],
    )
    dr = run_dag(dag)
    assert states(dr) == {"invoke": "failed"}
    invocation = only_invocation(kernel_conn_env)

    events = lineage_events(f"{dag.dag_id}.invoke")
    failed = _only(events, "FAIL")
    assert "COMPLETE" not in events
    run_facet = failed["run"]["facets"]["kernelInvocation"]
    assert (run_facet["invocationId"], run_facet["status"]) == (invocation["id"], "failed")
    assert run_facet["url"].endswith(invocation["id"])
    assert failed["job"]["facets"]["kernelAction"]["action"] == "fail"
    assert [(d["namespace"], d["name"]) for d in failed["outputs"]] == [("kernel://demo", "fail")]
    logs, _ = _logs(caplog, capfd)
    assert "failed to extract" not in logs and "OpenLineage" in logs


@needs_openlineage
@pytest.mark.usefixtures("airflow_db")
def test_the_sensor_reports_the_invocation_it_watched(kernel_conn_env: Any, lineage_events: Any) -> None:
    with make_dag("lineage_sensor") as dag:
        submit = KernelInvokeOperator(
            task_id="submit", app_name="demo", action_name="echo", payload={"n": 1}, wait_for_completion=False
        )
        KernelInvocationSensor(
            task_id="wait",
            invocation_id=submit.output,
            poke_interval=0.2,
            deferrable=False,
            outlets=[_asset("kernel://demo/echo")],
        )
    dr = run_dag(dag)
    assert states(dr) == {"submit": "success", "wait": "success"}
    invocation = only_invocation(kernel_conn_env)

    complete = _only(lineage_events(f"{dag.dag_id}.wait"), "COMPLETE")
    action = complete["job"]["facets"]["kernelAction"]
    assert (action["app"], action["action"]) == ("demo", "echo")  # from Kernel's answer: the sensor asks nothing
    run_facet = complete["run"]["facets"]["kernelInvocation"]
    assert (run_facet["invocationId"], run_facet["status"]) == (invocation["id"], "succeeded")
    assert [(d["namespace"], d["name"]) for d in complete["outputs"]] == [("kernel://demo", "echo")]
    # The submitting task hands the id off: its COMPLETE names the invocation, not yet finished.
    submitted = _only(lineage_events(f"{dag.dag_id}.submit"), "COMPLETE")["run"]["facets"]["kernelInvocation"]
    assert submitted["invocationId"] == invocation["id"]
    assert submitted["status"] in {"queued", "running"}


@needs_openlineage
@pytest.mark.usefixtures("airflow_db")
def test_a_timed_out_wait_sends_fail_without_a_stale_status(kernel_conn_env: Any, lineage_events: Any) -> None:
    dag = _invoke_dag("lineage_timeout", action_name="sleep", payload={"seconds": 3600}, timeout=1.5, deferrable=False)
    dr = run_dag(dag)
    assert states(dr) == {"invoke": "failed"}
    invocation = only_invocation(kernel_conn_env)

    run_facet = _only(lineage_events(f"{dag.dag_id}.invoke"), "FAIL")["run"]["facets"]["kernelInvocation"]
    assert run_facet["invocationId"] == invocation["id"]
    # The task last saw it queued or running, then cancelled it: no status rather than a stale one.
    assert "status" not in run_facet or run_facet["status"] is None
