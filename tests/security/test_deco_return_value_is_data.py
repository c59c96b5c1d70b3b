"""``@task.kernel``'s return value is user data, never a template: Jinja text in it reaches Kernel byte-exact, and a
connection reference in it is never resolved, so the API key cannot ride out in a payload (``dag.test()`` against
the emulator, real HTTP, a unique canary key)."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from tests.airflow_helpers import all_logs, make_dag, run_dag, states, task, xcom
from tests.helpers import conn_json, only_invocation

pytestmark = pytest.mark.usefixtures("airflow_db")

CANARY = f"kc_{uuid.uuid4().hex}"
#: What an upstream task scraped: Jinja that would resolve the key, and ordinary text Jinja cannot render.
SCRAPED = {"secret_ref": "{{ conn.kernel_default.password }}", "greeting": "Hello {{ name }}!"}


def _stored_for(dag_id: str) -> str:
    """Every XCom and rendered-field row of ``dag_id`` in the metadata DB, as text."""
    from airflow import settings
    from sqlalchemy import text

    session = settings.Session()
    try:
        rows = [
            str(tuple(row))
            for table in ("xcom", "rendered_task_instance_fields")
            for row in session.execute(text(f"SELECT * FROM {table} WHERE dag_id = :d"), {"d": dag_id})
        ]
    finally:
        session.close()
    return "\n".join(rows)


def test_a_returned_template_reaches_kernel_as_text_and_the_key_nowhere(
    kernel_emulator_factory: Any, monkeypatch: pytest.MonkeyPatch, caplog: Any, capfd: Any
) -> None:
    emulator = kernel_emulator_factory(token=CANARY)
    monkeypatch.setenv("AIRFLOW_CONN_KERNEL_DEFAULT", conn_json(emulator.url, CANARY))
    with make_dag("deco_data") as dag:

        @task
        def scraped() -> dict[str, str]:
            return dict(SCRAPED)

        @task.kernel(app_name="demo", action_name="echo", poll_interval=0.1, retries=0)
        def send(data: dict[str, str]) -> dict[str, str]:
            return data

        send(scraped())
    run = run_dag(dag)

    assert states(run) == {"scraped": "success", "send": "success"}
    posted = only_invocation(emulator)["payload"]
    assert json.loads(posted) == SCRAPED
    for value in SCRAPED.values():
        assert json.dumps(value) in posted  # the very characters, not a rendering of them
    assert xcom(run, "send") == SCRAPED  # the action's output: what it was sent
    wire = json.dumps([{k: v for k, v in r.items() if k != "headers"} for r in emulator.requests()])
    for where, text in {
        "requests to Kernel": wire,
        "logs": all_logs(caplog, capfd),
        "metadata DB": _stored_for(dag.dag_id),
    }.items():
        assert CANARY not in text, f"the API key leaked into the {where}"
