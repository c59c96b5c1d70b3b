"""Reading what Airflow recorded about assets (Airflow 3) / datasets (Airflow 2.11): events and the queue of runs
the scheduler will start, straight from the metadata DB."""

from __future__ import annotations

import inspect
from typing import Any

from tests.airflow_helpers import AF2

__all__ = ["asset_events", "asset_triggered", "queued_for", "start_asset_triggered_runs", "sync_dags", "unpause"]


def _models() -> tuple[Any, Any, Any, str]:
    """(asset model, event model, run-queue model, the name of the asset id column)."""
    if AF2:
        from airflow.models.dataset import DatasetDagRunQueue, DatasetEvent, DatasetModel

        return DatasetModel, DatasetEvent, DatasetDagRunQueue, "dataset_id"
    from airflow.models.asset import AssetDagRunQueue, AssetEvent, AssetModel

    return AssetModel, AssetEvent, AssetDagRunQueue, "asset_id"


def asset_events(uri: str) -> list[dict[str, Any]]:
    """Every event of the asset ``uri``, oldest first: ``{"extra", "source_dag_id", "source_task_id",
    "source_run_id"}``."""
    from airflow.utils.session import create_session
    from sqlalchemy import select

    model, event, _, column = _models()
    with create_session() as session:
        rows = session.scalars(
            select(event).join(model, getattr(event, column) == model.id).where(model.uri == uri).order_by(event.id)
        ).all()
        return [
            {
                "extra": dict(row.extra or {}),
                "source_dag_id": row.source_dag_id,
                "source_task_id": row.source_task_id,
                "source_run_id": row.source_run_id,
            }
            for row in rows
        ]


def queued_for(dag_id: str) -> list[str]:
    """The asset URIs whose events queue a run of ``dag_id`` (what the scheduler turns into an asset-triggered run)."""
    from airflow.utils.session import create_session
    from sqlalchemy import select

    model, _, queue, column = _models()
    with create_session() as session:
        return list(
            session.scalars(
                select(model.uri).join(queue, getattr(queue, column) == model.id).where(queue.target_dag_id == dag_id)
            ).all()
        )


def asset_triggered() -> set[str]:
    """The DAGs the scheduler's next loop starts an asset-triggered run of (its own query: every asset they are
    scheduled on has an event they have not run for yet)."""
    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session

    with create_session() as session:
        _, triggered = DagModel.dags_needing_dagruns(session)
        return set(triggered)


def sync_dags(*dags: Any) -> None:
    """Write ``dags`` (serialized, with their assets and who is scheduled on which) to the metadata DB, as the DAG
    processor does. Airflow 2.11's ``dag.test()`` does not: an outlet's event needs its dataset row."""
    if AF2:
        from airflow.models.dag import DAG as ModelDAG
        from airflow.models.serialized_dag import SerializedDagModel

        ModelDAG.bulk_write_to_db(list(dags))
        for dag in dags:
            SerializedDagModel.write_dag(dag)  # what the scheduler reads a DAG from
        return
    from tests.airflow_helpers import _serialize_af3

    for dag in dags:
        _serialize_af3(dag)


def unpause(dag_id: str) -> None:
    """Unpause ``dag_id``: only unpaused DAGs get their asset-triggered runs queued."""
    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session
    from sqlalchemy import update

    with create_session() as session:
        session.execute(update(DagModel).where(DagModel.dag_id == dag_id).values(is_paused=False))


def start_asset_triggered_runs(dag_id: str) -> list[dict[str, Any]]:
    """Do what the scheduler's loop does for ``dag_id`` when its assets have events (create its asset-triggered
    run, with the events it consumes), in this process, and return the extras of the events that run consumed.

    Airflow's own method of its scheduler (a private one, named differently on 2.11) is called: no scheduler runs.
    """
    from airflow.jobs.job import Job
    from airflow.jobs.scheduler_job_runner import SchedulerJobRunner
    from airflow.models.dag import DagModel
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import select

    runner = SchedulerJobRunner(job=Job())
    with create_session() as session:
        _, triggered = DagModel.dags_needing_dagruns(session)
        models = [m for m in session.scalars(select(DagModel).where(DagModel.dag_id == dag_id)) if dag_id in triggered]
        if AF2:
            runner._create_dag_runs_dataset_triggered(models, triggered, session)
        elif "triggered_date_by_dag" in inspect.signature(runner._create_dag_runs_asset_triggered).parameters:
            runner._create_dag_runs_asset_triggered(models, triggered, session)  # Airflow 3.0, 3.1
        else:
            runner._create_dag_runs_asset_triggered(dag_models=models, session=session)
        session.flush()
        runs = session.scalars(select(DagRun).where(DagRun.dag_id == dag_id)).all()
        consumed = "consumed_dataset_events" if AF2 else "consumed_asset_events"
        return [
            {"run_type": str(run.run_type), "extras": [dict(e.extra or {}) for e in getattr(run, consumed)]}
            for run in runs
        ]
