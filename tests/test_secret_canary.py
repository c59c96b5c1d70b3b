"""The API key never leaks: a unique canary key drives real DAG runs (``dag.test()``) - a succeeding one, a
failing one, a retried one and one whose trigger gives up - then everything those runs produced is searched for
the canary and for its first and last 8 characters: task logs (captured output and the log files under
AIRFLOW_HOME/logs), every table of the metadata DB (XComs, rendered template fields, trigger rows with their
kwargs decrypted, task instances, audit log...), the exceptions the tasks failed with, and the emulator's own
request log. Pass = 0 hits.
"""

from __future__ import annotations

import datetime
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from kernel_provider.operators.kernel import KernelInvokeOperator
from kernel_provider.sensors.kernel import KernelInvocationSensor
from tests.airflow_helpers import make_dag, run_dag, states, ti_map
from tests.helpers import conn_json

pytestmark = pytest.mark.usefixtures("airflow_db")

CANARY = f"kc_{uuid.uuid4().hex}{uuid.uuid4().hex[:8]}"
NEEDLES = {"canary": CANARY, "prefix": CANARY[:8], "suffix": CANARY[-8:]}
FAILURES: list[str] = []  # str/repr of every exception a task failed with (collected by the operator below)


def _remember(exc: BaseException) -> None:
    from airflow.exceptions import TaskDeferred

    if not isinstance(exc, TaskDeferred):  # deferring is how a task waits, not a failure
        FAILURES.append(f"{type(exc).__name__}: {exc!s} | {exc!r}")


class _RecordingInvoke(KernelInvokeOperator):
    """The operator, recording the exceptions it fails with. (A failure callback's ``context["exception"]``
    would do on a real worker, but ``dag.test()`` sets it only from Airflow 3.3 on.)"""

    def execute(self, context: Any) -> Any:
        try:
            return super().execute(context)
        except BaseException as exc:
            _remember(exc)
            raise

    def execute_complete(self, context: Any, event: Any = None) -> Any:
        try:
            return super().execute_complete(context, event)
        except BaseException as exc:
            _remember(exc)
            raise


@pytest.fixture
def worker_log_level() -> Any:
    """structlog filtered at the configured level ([logging] logging_level, INFO in tests), as a worker sets it up.

    ``dag.test()`` on Airflow 3.0 can leave structlog printing every DEBUG line, among them its in-process test
    supervisor's "Sending request" with the whole message: ``MaskSecret(value=<the key>)`` that the hook's masking
    sends. A real 3.0 supervisor omits that body, and logs at the configured level.
    """
    import logging

    from airflow.configuration import conf

    try:
        import structlog
    except ImportError:  # Airflow 2 logs through the standard library only: nothing to hold
        yield
        return

    level = logging.getLevelName(conf.get("logging", "logging_level", fallback="INFO").upper())
    probe = structlog.get_logger().bind()
    if not getattr(probe, "is_enabled_for", lambda _: False)(level - 1):
        yield  # already filtered at the configured level (or a logger this check cannot ask)
        return
    was_configured, saved = structlog.is_configured(), structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(level))
    try:
        yield
    finally:
        structlog.reset_defaults()
        if was_configured:
            structlog.configure(**saved)


@pytest.fixture
def canary_kernel(kernel_emulator_factory: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    emulator = kernel_emulator_factory(token=CANARY)
    # max_retries=0: a failed status check counts at once, so the trigger's failure budget is spent quickly.
    monkeypatch.setenv("AIRFLOW_CONN_KERNEL_DEFAULT", conn_json(emulator.url, CANARY, max_retries=0))
    return emulator


def _dags(prefix: str) -> list[tuple[Any, dict[str, str]]]:
    common = {"app_name": "demo", "poll_interval": 0.1}
    runs = []
    with make_dag(f"{prefix}_ok") as ok:
        start = _RecordingInvoke(
            task_id="start",
            action_name="sleep",
            wait_for_completion=False,
            payload={"seconds": 0.3, "result": {"note": "templated {{ ds }}"}},
            **common,
        )
        _RecordingInvoke(task_id="invoke", action_name="logs", payload={"lines": 2}, deferrable=True, **common)
        start >> KernelInvocationSensor(
            task_id="wait",
            invocation_id=start.output,
            deferrable=True,
            poke_interval=0.1,
        )
    runs.append((ok, {"start": "success", "invoke": "success", "wait": "success"}))
    with make_dag(f"{prefix}_fail") as fail:
        _RecordingInvoke(
            task_id="invoke", action_name="fail", payload={"message": "form missing"}, deferrable=True, **common
        )
    runs.append((fail, {"invoke": "failed"}))
    with make_dag(f"{prefix}_retry") as retry:
        _RecordingInvoke(
            task_id="invoke",
            action_name="echo",
            payload={"try": "again"},
            retries=1,
            retry_delay=datetime.timedelta(0),
            **common,
        )
    runs.append((retry, {"invoke": "success"}))
    with make_dag(f"{prefix}_trigger_error") as trigger_error:
        _RecordingInvoke(
            task_id="invoke", action_name="slow", payload={"seconds": 60}, deferrable=True, wait_mode="poll", **common
        )
    runs.append((trigger_error, {"invoke": "failed"}))
    return runs


def _db_text(dag_ids: set[str]) -> tuple[str, int]:
    """Every row of every metadata table as text (bytes as latin-1), plus the decrypted trigger kwargs."""
    import sqlalchemy as sa
    from airflow import settings

    chunks: list[str] = []
    rows_with_our_dags = 0
    session = settings.Session()
    try:
        bind = session.get_bind()
        for table in sa.inspect(bind).get_table_names():
            for row in session.execute(sa.text(f'SELECT * FROM "{table}"')):
                text = " ".join(v.decode("latin-1") if isinstance(v, (bytes, bytearray)) else str(v) for v in row)
                if any(dag_id in text for dag_id in dag_ids):
                    rows_with_our_dags += 1
                chunks.append(text)
        from airflow.models.trigger import Trigger

        for trigger in session.query(Trigger).all():
            chunks.append(json.dumps(trigger.kwargs, default=str))
    finally:
        session.close()
    return "\n".join(chunks), rows_with_our_dags


def _log_files_text(since: float) -> str:
    home = Path(os.environ["AIRFLOW_HOME"])
    texts = []
    for path in home.rglob("*"):
        if (
            path.is_file()
            and path.suffix in (".log", ".json", "")
            and "logs" in path.parts
            and path.stat().st_mtime >= since
        ):
            texts.append(path.read_text(errors="replace"))
    return "\n".join(texts)


@pytest.mark.usefixtures("worker_log_level")
def test_the_api_key_leaks_nowhere(
    canary_kernel: Any, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    started = time.time() - 1
    FAILURES.clear()
    prefix = f"canary_{uuid.uuid4().hex[:6]}"
    dag_ids = set()
    for dag, expected in _dags(prefix):
        if "_trigger_error_" in dag.dag_id:
            # the worker's own check passes, then every status check of the trigger gets a 503 until the
            # trigger's failure budget is spent and it fires an error event
            canary_kernel.set_faults(
                [{"route": "GET /invocations/{id}", "sequence": [None, *([{"status": 503}] * 30)]}]
            )
        elif "_retry_" in dag.dag_id:  # try 1's create is refused, try 2 succeeds
            canary_kernel.set_faults(
                [
                    {
                        "route": "POST /invocations",
                        "sequence": [{"status": 403, "code": "forbidden", "message": "key not allowed here"}],
                    }
                ]
            )
        else:
            canary_kernel.set_faults(None)
        dr = run_dag(dag)
        dag_ids.add(dag.dag_id)
        assert states(dr) == expected, dag.dag_id
        if "_retry_" in dag.dag_id:
            assert ti_map(dr)["invoke"].try_number == 2

    captured = capfd.readouterr()
    logs = "\n".join([caplog.text, captured.out, captured.err])
    db, our_rows = _db_text(dag_ids)
    files = _log_files_text(started)
    requests = json.dumps(canary_kernel.requests())
    exceptions = "\n".join(FAILURES)
    sources = {
        "task logs (captured)": logs,
        "log files": files,
        "metadata DB": db,
        "exceptions": exceptions,
        "emulator request log": requests,
    }

    # The search reads real material: the runs' traces are there to be searched.
    invocation_ids = [i["id"] for i in canary_kernel.invocations()]
    assert len(invocation_ids) >= 5
    assert all(inv_id in db for inv_id in invocation_ids[:1])  # XCom invocation_id of the first run
    assert our_rows > 0
    assert any(inv_id in logs for inv_id in invocation_ids)
    assert "form missing" in exceptions and "Gave up after" in exceptions and "forbidden" in exceptions
    assert all(r["auth"] == "valid" for r in canary_kernel.requests())  # the canary really was the key

    hits = {
        (source, name): text.count(needle)
        for source, text in sources.items()
        for name, needle in NEEDLES.items()
        if needle in text
    }
    assert hits == {}, f"the API key leaked: {hits}"
