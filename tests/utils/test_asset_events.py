"""The run's figures on the asset events of a Kernel task: the extra itself (pure), and what Airflow records in its
metadata DB after real ``dag.test()`` runs of the operator, ``@task.kernel`` and the sensor against the emulator,
on Airflow 3.3 and 2.11 (assets there are datasets)."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from kernel_provider.assets.kernel import kernel_asset
from kernel_provider.client.models import Invocation
from kernel_provider.links import XCOM_USAGE
from kernel_provider.operators.kernel import KernelInvokeOperator
from kernel_provider.sensors.kernel import KernelInvocationSensor
from kernel_provider.utils.asset_events import EXTRA_KEYS, attach_run_to_outlets, run_extra
from tests.airflow_helpers import AF2, make_dag, run_dag, states, task, xcom
from tests.asset_helpers import (
    asset_events,
    asset_triggered,
    queued_for,
    start_asset_triggered_runs,
    sync_dags,
    unpause,
)
from tests.helpers import only_invocation

ID = "abcdefghijklmnopqrstuvwx"
STARTED = datetime(2026, 1, 2, 3, 4, 5, 250000, tzinfo=timezone.utc)


def invocation(**fields: Any) -> Invocation:
    data = {"id": ID, "status": "succeeded", "app_name": "shop", "version": "v7", "action_name": "scrape"}
    data.update(fields)
    return Invocation.from_api(data)


# --- the extra (pure) --------------------------------------------------------------------------------------


def test_the_extra_holds_the_runs_figures_and_nothing_else() -> None:
    run = invocation(started_at="2026-01-02T03:04:05.25Z", finished_at="2026-01-02T03:04:17.5Z", output='{"a": 1}')

    extra = run_extra(invocation=run, usage={"browser_seconds": 9.5, "other": 1})

    assert extra == {
        "kernel_invocation_id": ID,
        "app_name": "shop",
        "version": "v7",
        "action_name": "scrape",
        "status": "succeeded",
        "duration_seconds": 12.25,
        "browser_seconds": 9.5,
    }
    assert tuple(extra) == EXTRA_KEYS


def test_without_usage_or_timestamps_the_figures_are_null_not_absent() -> None:
    extra = run_extra(invocation=invocation(status="running", started_at=STARTED.isoformat()))

    assert (extra["status"], extra["duration_seconds"], extra["browser_seconds"]) == ("running", None, None)
    assert tuple(extra) == EXTRA_KEYS


@pytest.mark.parametrize("usage", [{}, {"browser_seconds": True}, {"browser_seconds": -1}, {"browser_seconds": "9"}])
def test_browser_seconds_that_are_not_a_duration_are_null(usage: dict[str, Any]) -> None:
    assert run_extra(invocation=invocation(), usage=usage)["browser_seconds"] is None


def test_browser_seconds_are_read_from_a_usage_object_too() -> None:
    class Usage:
        browser_seconds = 3

    assert run_extra(invocation=invocation(), usage=Usage())["browser_seconds"] == 3.0  # type: ignore[arg-type]


def test_names_kernel_did_not_send_or_that_are_unsafe_come_from_the_request() -> None:
    run = Invocation.from_api({"id": ID, "status": "succeeded", "action_name": "scrape", "app_name": "evil\x1b[2J"})
    requested = {"app_name": "shop", "version": "latest", "action_name": "ignored"}

    extra = run_extra(invocation=run, requested=requested)

    assert (extra["app_name"], extra["version"], extra["action_name"]) == ("shop", "latest", "scrape")
    assert run_extra(invocation=run)["app_name"] is None


def test_an_unknown_status_is_reported_as_unknown_not_as_kernel_wrote_it() -> None:
    assert run_extra(invocation=invocation(status="<b>odd</b>"))["status"] == "unknown"


def test_a_finish_before_the_start_gives_no_duration() -> None:
    later = (STARTED + timedelta(seconds=5)).isoformat()
    assert (
        run_extra(invocation=invocation(started_at=later, finished_at=STARTED.isoformat()))["duration_seconds"] is None
    )


# --- attaching (Airflow's own outlet accessors) ----------------------------------------------------------------


def outlet_events() -> Any:
    if AF2:
        from airflow.utils.context import OutletEventAccessors

        return OutletEventAccessors()
    from airflow.sdk.execution_time.context import OutletEventAccessors as SdkOutletEventAccessors

    return SdkOutletEventAccessors()


class Task:
    def __init__(self, outlets: list[Any]) -> None:
        self.outlets = outlets


def test_every_asset_outlet_gets_the_extra_and_keeps_the_users_keys() -> None:
    from airflow.providers.common.compat.sdk import Asset, AssetAlias

    first, second = kernel_asset(app_name="shop", action_name="scrape"), Asset("s3://bucket/prices.json")
    events = outlet_events()
    events[first].extra["mine"] = "kept"
    context = {"task": Task([first, AssetAlias("some-alias"), second]), "outlet_events": events}

    count = attach_run_to_outlets(context, invocation=invocation(), usage=None)

    assert count == 2
    assert events[first].extra == {"mine": "kept", **run_extra(invocation=invocation())}
    assert events[second].extra == run_extra(invocation=invocation())


@pytest.mark.parametrize("context", [{}, {"task": Task([])}, {"task": Task(["not an asset"])}, None])
def test_a_task_without_asset_outlets_gets_nothing_and_no_error(context: Any) -> None:
    events = outlet_events()
    if context:
        context["outlet_events"] = events

    assert attach_run_to_outlets(context, invocation=invocation(), usage=None) == 0
    assert len(events) == 0


# --- real runs --------------------------------------------------------------------------------------------------

pytestmark_db = pytest.mark.usefixtures("airflow_db", "kernel_conn_env")


def unique_asset() -> Any:
    """An asset of the emulator's demo app with a name of its own: no other test's events are in its rows."""
    return kernel_asset(app_name="demo", action_name=f"echo-{uuid.uuid4().hex[:8]}")


def events_of(dag: Any, asset: Any) -> list[dict[str, Any]]:
    return [e for e in asset_events(asset.uri) if e["source_dag_id"] == dag.dag_id]


@pytestmark_db
@pytest.mark.parametrize("invoke_async", [True, False], ids=["async", "sync"])
def test_the_operators_asset_event_carries_the_run(kernel_conn_env: Any, invoke_async: bool) -> None:
    asset = unique_asset()
    with make_dag("asset_operator") as dag:
        KernelInvokeOperator(
            task_id="invoke",
            app_name="demo",
            action_name="echo",
            payload={"n": 1},
            invoke_async=invoke_async,
            poll_interval=0.1,
            outlets=[asset],
        )
    sync_dags(dag)
    dr = run_dag(dag)

    assert states(dr) == {"invoke": "success"}
    inv = only_invocation(kernel_conn_env)
    [event] = events_of(dag, asset)
    extra = event["extra"]
    assert extra == {
        "kernel_invocation_id": inv["id"],
        "app_name": "demo",
        "version": inv["version"],
        "action_name": "echo",
        "status": "succeeded",
        "duration_seconds": extra["duration_seconds"],
        "browser_seconds": xcom(dr, "invoke", key=XCOM_USAGE)["browser_seconds"],
    }
    assert extra["browser_seconds"] == 0.0  # echo opens no browser: tracked, and none
    if invoke_async:
        assert isinstance(extra["duration_seconds"], float) and 0 <= extra["duration_seconds"] < 60
    else:  # Kernel's answer to a synchronous create carries no timestamps, and no GET is made for them
        assert extra["duration_seconds"] is None
    assert (event["source_task_id"], event["source_run_id"]) == ("invoke", dr.run_id)


@pytestmark_db
def test_the_decorators_asset_event_carries_the_run(kernel_conn_env: Any) -> None:
    asset = unique_asset()
    with make_dag("asset_decorator") as dag:

        @task.kernel(app_name="demo", action_name="echo", poll_interval=0.1, outlets=[asset])
        def scrape() -> dict[str, Any]:
            return {"n": 2}

        scrape()
    sync_dags(dag)
    dr = run_dag(dag)

    assert xcom(dr, "scrape") == {"n": 2}
    [event] = events_of(dag, asset)
    assert event["extra"]["kernel_invocation_id"] == only_invocation(kernel_conn_env)["id"]
    assert (event["extra"]["status"], event["extra"]["action_name"]) == ("succeeded", "echo")


@pytestmark_db
def test_the_sensors_asset_event_carries_the_finished_run_and_a_submit_only_task_the_started_one(
    kernel_conn_env: Any,
) -> None:
    started, finished = unique_asset(), unique_asset()
    with make_dag("asset_sensor") as dag:
        invoke = KernelInvokeOperator(
            task_id="invoke",
            app_name="demo",
            action_name="sleep",
            payload={"seconds": 0.5},
            wait_for_completion=False,
            outlets=[started],
        )
        KernelInvocationSensor(
            task_id="wait", invocation_id=invoke.output, poke_interval=0.2, timeout=60, outlets=[finished]
        )
    sync_dags(dag)
    dr = run_dag(dag)

    assert states(dr) == {"invoke": "success", "wait": "success"}
    inv_id = only_invocation(kernel_conn_env)["id"]
    [submitted] = events_of(dag, started)
    assert submitted["extra"]["kernel_invocation_id"] == inv_id
    assert submitted["extra"]["status"] in {"queued", "running"}
    assert submitted["extra"]["duration_seconds"] is None
    [done] = events_of(dag, finished)
    assert done["extra"]["kernel_invocation_id"] == inv_id
    assert (done["extra"]["status"], done["extra"]["app_name"], done["extra"]["action_name"]) == (
        "succeeded",
        "demo",
        "sleep",
    )
    assert done["extra"]["duration_seconds"] >= 0.5


@pytestmark_db
def test_a_failed_run_is_an_event_only_when_the_task_succeeds_with_it(kernel_conn_env: Any) -> None:
    kept, lost = unique_asset(), unique_asset()
    with make_dag("asset_failed") as dag:
        common = {"app_name": "demo", "action_name": "fail", "poll_interval": 0.1}
        KernelInvokeOperator(task_id="tolerated", fail_on_failure=False, outlets=[kept], **common)
        KernelInvokeOperator(task_id="failing", outlets=[lost], **common)
    sync_dags(dag)
    dr = run_dag(dag)

    assert states(dr) == {"tolerated": "success", "failing": "failed"}
    [event] = events_of(dag, kept)
    assert event["extra"]["status"] == "failed"
    assert events_of(dag, lost) == []


@pytestmark_db
def test_a_dag_scheduled_on_the_asset_is_queued_by_the_producers_event(kernel_conn_env: Any) -> None:
    asset = unique_asset()
    with make_dag("asset_producer") as producer:
        KernelInvokeOperator(task_id="invoke", app_name="demo", action_name="echo", poll_interval=0.1, outlets=[asset])
    with make_dag("asset_consumer", schedule=[asset]) as consumer:

        @task
        def noop() -> None:
            return None

        noop()
    assert type(consumer.timetable).__name__ in {"AssetTriggeredTimetable", "DatasetTriggeredTimetable"}
    sync_dags(producer, consumer)
    unpause(consumer.dag_id)
    assert queued_for(consumer.dag_id) == []
    assert consumer.dag_id not in asset_triggered()

    run_dag(producer)

    assert queued_for(consumer.dag_id) == [asset.uri]
    assert consumer.dag_id in asset_triggered()
    [event] = events_of(producer, asset)
    [run] = start_asset_triggered_runs(consumer.dag_id)
    assert run == {"run_type": "asset_triggered" if not AF2 else "dataset_triggered", "extras": [event["extra"]]}
