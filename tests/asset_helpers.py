"""Reading what Airflow recorded about assets (Airflow 3) / datasets (Airflow 2.11): events and the queue of runs
the scheduler will start, straight from the metadata DB."""

from __future__ import annotations

from typing import Any

from tests.airflow_helpers import AF2

__all__ = ["asset_events", "queued_for", "sync_dags", "unpause"]


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


def sync_dags(*dags: Any) -> None:
    """Write ``dags`` (and their assets, and who is scheduled on which) to the metadata DB, as the DAG processor does.
    Airflow 2.11's ``dag.test()`` does not: an outlet's event needs its dataset row."""
    if AF2:
        from airflow.models.dag import DAG as ModelDAG

        ModelDAG.bulk_write_to_db(list(dags))
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
