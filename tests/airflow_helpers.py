"""Helpers for the trigger, sensor and operator tests: run small DAGs with ``dag.test()``, read what they left.

Airflow 3.3's ``dag.test()`` only runs DAGs that are serialized in the metadata DB (normally written by the DAG
processor walking a bundle). DAGs built inside a test are in no bundle, so :func:`run_dag` writes them first,
as Airflow's own test helpers do.
"""

from __future__ import annotations

import datetime
import inspect
import re
import uuid
from typing import Any

from airflow import __version__ as AIRFLOW_VERSION

AF2 = AIRFLOW_VERSION.startswith("2.")
AF3 = not AF2

if AF3:
    from airflow.sdk import DAG, task
else:
    from airflow import DAG  # type: ignore[no-redef]
    from airflow.decorators import task  # type: ignore[no-redef]

START = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)
#: What ``dag.test()`` logs when it runs a deferred task's trigger in its own process: the task really deferred.
INLINE_TRIGGER = "[DAG TEST] running trigger in line"

__all__ = [
    "AF2",
    "AF3",
    "DAG",
    "INLINE_TRIGGER",
    "START",
    "kernel_lines",
    "make_dag",
    "requests_for",
    "run_dag",
    "task",
    "ti_map",
    "xcom",
]


def make_dag(prefix: str, **kwargs: Any) -> Any:
    """A fresh DAG with a unique id, so runs of earlier tests never interfere."""
    kwargs.setdefault("schedule", None)
    kwargs.setdefault("start_date", START)
    kwargs.setdefault("catchup", False)
    return DAG(dag_id=f"{prefix}_{uuid.uuid4().hex[:10]}", **kwargs)


def _serialize_af3(dag: Any) -> None:
    from airflow import settings
    from airflow.dag_processing.collection import update_dag_parsing_results_in_db
    from airflow.serialization.serialized_objects import LazyDeserializedDAG

    # Airflow 3.0 has no LazyDeserializedDAG.from_dag and no parse_duration; 3.1+ have both. Asked of the
    # objects, not of the version number.
    if hasattr(LazyDeserializedDAG, "from_dag"):
        parsed = LazyDeserializedDAG.from_dag(dag)
    else:
        from airflow.serialization.serialized_objects import SerializedDAG

        if getattr(dag, "relative_fileloc", None) is None:
            dag.relative_fileloc = dag.fileloc  # what a DagBag sets for a file outside its bundle
        parsed = LazyDeserializedDAG(data=SerializedDAG.to_dict(dag))
    params = inspect.signature(update_dag_parsing_results_in_db).parameters
    extra: dict[str, Any] = {"parse_duration": None} if "parse_duration" in params else {}
    session = settings.Session()
    try:
        update_dag_parsing_results_in_db(
            bundle_name="dags-folder",
            bundle_version=None,
            dags=[parsed],
            import_errors={},
            warnings=set(),
            session=session,
            **extra,
        )
        session.commit()
    finally:
        session.close()


def run_dag(dag: Any, logical_date: datetime.datetime | None = None) -> Any:
    """Run one DagRun of ``dag`` in this process (tasks, deferrals and their triggers inline); returns it."""
    if AF3:
        _serialize_af3(dag)
        return dag.test(logical_date=logical_date) if logical_date else dag.test()
    return dag.test(execution_date=logical_date) if logical_date else dag.test()


def ti_map(dr: Any) -> dict[Any, Any]:
    """{task_id: ti} of a finished DagRun; mapped tasks as {(task_id, map_index): ti}."""
    out: dict[Any, Any] = {}
    for ti in dr.get_task_instances():
        out[ti.task_id if ti.map_index < 0 else (ti.task_id, ti.map_index)] = ti
    return out


def states(dr: Any) -> dict[Any, str]:
    return {key: str(getattr(ti.state, "value", ti.state)) for key, ti in ti_map(dr).items()}


def xcom(dr: Any, task_id: str, key: str = "return_value", map_index: int = -1) -> Any:
    """The XCom value a task of a finished DagRun pushed (None when absent)."""
    from airflow import settings

    session = settings.Session()
    try:
        if AF3:
            from airflow.models.xcom import XComModel

            row = session.scalars(
                XComModel.get_many(
                    run_id=dr.run_id, key=key, dag_ids=dr.dag_id, task_ids=task_id, map_indexes=map_index
                )
            ).first()
            return None if row is None else XComModel.deserialize_value(row)
        from airflow.models.xcom import XCom

        return XCom.get_one(
            run_id=dr.run_id, key=key, dag_id=dr.dag_id, task_id=task_id, map_index=map_index, session=session
        )
    finally:
        session.close()


def kernel_lines(invocation_id: str, caplog: Any, capfd: Any) -> list[str]:
    """The action log lines ("line 0", ...) the provider wrote for ``invocation_id``, in order.

    Airflow 2 (and task code on Airflow 3) logs through stdlib logging, which ``caplog`` sees; triggers on
    Airflow 3 log through structlog straight to stdout, which ``capfd`` sees. One source is used, never both,
    so a line is never counted twice.
    """
    pattern = re.compile(r"\[kernel " + re.escape(invocation_id) + r"\] (line \d+)")
    from_caplog = [m.group(1) for r in caplog.records for m in [pattern.search(r.getMessage())] if m]
    if from_caplog:
        return from_caplog
    out = capfd.readouterr().out
    return [m.group(1) for line in out.splitlines() for m in [pattern.search(line)] if m]


TASK_FAILURES: list[str] = []  # "Type: message" of every exception a task's execute step raised (this test)


def record_task_failures(monkeypatch: Any) -> None:
    """Keep the exception of every failing task step in :data:`TASK_FAILURES` (autouse, see ``conftest.py``).

    A worker logs the exception a task failed with on every Airflow version, and ``dag.test()`` does on 2.11 and
    3.1+. On 3.0 it logs it through a structlog logger whose output no capture sees, so the Task SDK's execute
    step is wrapped to keep it. Nothing else changes: the exception is re-raised as it was.
    """
    TASK_FAILURES.clear()
    if AF2:
        return
    from airflow.sdk.execution_time import task_runner

    execute_task = task_runner._execute_task

    def recording(*args: Any, **kwargs: Any) -> Any:
        try:
            return execute_task(*args, **kwargs)
        except BaseException as exc:
            TASK_FAILURES.append(f"{type(exc).__name__}: {exc}")
            raise

    monkeypatch.setattr(task_runner, "_execute_task", recording)


def all_logs(caplog: Any, capfd: Any) -> str:
    """Everything logged or printed during the test so far, and the exceptions tasks failed with (for message
    checks, not for counting)."""
    captured = capfd.readouterr()
    return "\n".join([caplog.text, captured.out, captured.err, *TASK_FAILURES])


def requests_for(emulator: Any, invocation_id: str) -> list[dict[str, Any]]:
    """Every request the emulator recorded whose path names ``invocation_id``."""
    return [r for r in emulator.requests() if invocation_id in r["path"]]


def execute_try(store: Any, ti: Any, **kwargs: Any) -> Any:
    """One try of a ``KernelInvokeOperator`` (``demo`` app unless ``kwargs`` say otherwise) by its ``execute``, with
    the run record in ``store`` and the task instance ``ti`` (stand-ins from ``tests/standins.py``)."""
    from kernel_provider.operators.kernel import KernelInvokeOperator

    kwargs.setdefault("app_name", "demo")
    kwargs.setdefault("poll_interval", 0.1)
    operator = KernelInvokeOperator(task_id=ti.task_id, **kwargs)
    return operator.execute({"ti": ti, "task_state_store": store})
