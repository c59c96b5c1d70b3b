"""The run record: its stored form, and how a retry is told from a clear (Airflow's ``max_tries`` rule)."""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import pytest

from kernel_provider.exceptions import KernelStateStoreError
from kernel_provider.utils.run_record import STATE_KEY, RunRecord, RunRecordStore, TryKind, classify
from tests.standins import BrokenStateStore, DictStateStore, FakeTI

#: An ERROR line as structlog (Airflow 3's console and JSON renderers) or stdlib logging prints it.
ERROR_LINE = re.compile(r"\[error\s*\]|\"level\": ?\"error\"|\bERROR\b")


def test_round_trip_of_a_pending_and_a_created_record() -> None:
    pending = RunRecord(None, try_number=1, max_tries=2, sent_at=10.5, window_end=99.0, token="tok")
    assert pending.pending
    assert RunRecord.from_stored(pending.to_json()) == pending
    created = RunRecord("inv1", try_number=2, max_tries=2)
    assert not created.pending
    assert RunRecord.from_stored(json.loads(created.to_json())) == created  # a dict, as a JSON store returns it
    assert RunRecord.from_stored("") is None and RunRecord.from_stored(None) is None


@pytest.mark.parametrize(
    ("recorded_max_tries", "current_max_tries", "kind"),
    [
        (2, 2, TryKind.RETRY),  # retries leave max_tries alone
        (2, 3, TryKind.CLEARED),  # a clear at try 1 with retries=2: max_tries = 1 + 2
        (0, 1, TryKind.CLEARED),  # retries=0, cleared after try 1
        (2, None, TryKind.RETRY),  # unknown: the safe side, never a second run
    ],
)
def test_retry_or_clear_from_max_tries(recorded_max_tries: int, current_max_tries: int | None, kind: TryKind) -> None:
    record = RunRecord("inv", try_number=1, max_tries=recorded_max_tries)
    assert classify(record, current_max_tries) is kind
    assert classify(None, current_max_tries) is TryKind.FIRST


def test_store_keeps_one_record_per_task_instance_in_the_state_store() -> None:
    store = DictStateStore()
    records = RunRecordStore({"ti": FakeTI(try_number=2, max_tries=3), "task_state_store": store})
    records.put(records.new(invocation_id="inv9"))
    assert RunRecord.from_stored(store.data[STATE_KEY]) == RunRecord("inv9", try_number=2, max_tries=3)
    assert records.get() == RunRecord("inv9", try_number=2, max_tries=3)
    records.forget()
    assert records.get() is None


def test_a_store_that_cannot_be_written_or_read_is_an_error_not_a_warning() -> None:
    records = RunRecordStore({"ti": FakeTI(), "task_state_store": BrokenStateStore()})
    with pytest.raises(KernelStateStoreError, match="fails before invoking"):
        records.put(records.new(sent_at=1.0, window_end=2.0))
    with pytest.raises(KernelStateStoreError, match="Nothing was invoked"):
        records.get()
    records.forget()  # best effort: never raises


@pytest.mark.usefixtures("airflow_db")
def test_a_successful_run_logs_no_error(
    kernel_conn_env: Any, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    """A healthy first try reads no record it cannot have: on Airflow 3.0/3.1 the Task SDK logs every lookup of a
    missing Variable as an ERROR ("Variable not found"), which would mark every healthy run. Checked in both
    places logs go: stdlib logging (``caplog``) and structlog's console output (``capfd``)."""
    from kernel_provider.operators.kernel import KernelInvokeOperator
    from tests.airflow_helpers import make_dag, run_dag, states, xcom

    caplog.set_level(logging.DEBUG)
    with make_dag("record_quiet") as dag:
        KernelInvokeOperator(task_id="invoke", app_name="demo", action_name="echo", payload={"quiet": True})
    dr = run_dag(dag)
    assert states(dr) == {"invoke": "success"}
    assert xcom(dr, "invoke") == {"quiet": True}
    assert kernel_conn_env.created_count() == 1

    captured = capfd.readouterr()
    printed = [line for line in (captured.out + captured.err).splitlines() if ERROR_LINE.search(line)]
    logged = [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.ERROR]
    assert logged + printed == []
    assert "invoke" in caplog.text + captured.out + captured.err  # the run's logs were captured at all


def test_the_variable_key_fits_airflows_column_for_the_longest_ids() -> None:
    """Airflow 2.11 and 3.0-3.2 keep the record in a Variable, whose key column holds 250 characters (PostgreSQL
    and MySQL refuse longer keys); dag and task ids may each be 250 long."""
    from airflow.models.variable import Variable

    column = Variable.__table__.c.key.type.length
    long_dag, long_task = "d" * 250, "t" * 250

    def key(**ids: Any) -> str:
        return RunRecordStore({"ti": FakeTI(**{"dag_id": long_dag, "task_id": long_task, **ids})}).variable_key

    assert len(key()) <= column == 250
    assert key() == key()  # every try and the trigger compute the same key
    assert key(map_index=3) != key(map_index=4) != key(run_id="other")
    near_twin = RunRecordStore({"ti": FakeTI(dag_id=long_dag, task_id="t" * 249 + "u")}).variable_key
    assert near_twin != key()  # ids that differ only past the readable head still get their own record
    assert key().startswith("kernel_provider.invocation.ddd")  # still readable
    short = RunRecordStore({"ti": FakeTI(dag_id="etl", task_id="invoke", run_id="r1", map_index=2)}).variable_key
    assert short == "kernel_provider.invocation.etl.invoke.r1.2"  # short ids keep the documented form
