"""``ClusterAirflow``: the harness of the cluster tests and the cluster benchmark, Airflow 3.3 in its production
shape on one machine.

PostgreSQL (metadata DB, Celery result backend) and Redis (Celery broker) from ``backing.py``, then api-server,
scheduler, dag-processor, **two triggerers** and **two Celery workers**, all on 127.0.0.1, with the Kernel emulator
(and ``HoldingProxy`` for ``kernel_slow``) of the e2e harness, which this extends (same REST helpers, bounded waits
and diagnostics).

Failover is tuned down (``cluster.FAST_FAILOVER``: triggerer heartbeat 1 s, health-check threshold 8 s; Airflow's
defaults are 5 s and 30 s) and so is the task heartbeat timeout (20 s, default 300 s), so a dead triggerer's or
worker's work moves on in seconds.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from tests.harness.airflow3 import AirflowE2E
from tests.harness.backing import Postgres, Redis, missing_reason
from tests.harness.cluster import cluster_settings, service_argv
from tests.harness.processes import AIRFLOW, AIRFLOW_VERSION, Service

DAG_FILE = Path(__file__).resolve().parents[1] / "cluster" / "dags" / "cluster_dags.py"
WORKER_CONCURRENCY = 6
TRIGGERERS = ("triggerer1", "triggerer2")
#: ``triggerer1`` takes at most this many triggers, so the failover test's 100 waits must spread over both.
TRIGGERER1_CAPACITY = 60
WORKERS = ("worker1", "worker2")


class ClusterAirflow(AirflowE2E):
    """The e2e harness on PostgreSQL + Redis + CeleryExecutor with two triggerers and two Celery workers."""

    #: ``--capacity`` per triggerer service (others: Airflow's default, 1000).
    triggerer_capacity: dict[str, int] = {"triggerer1": TRIGGERER1_CAPACITY}
    service_names = ("api-server", "scheduler", "dag-processor", *TRIGGERERS, *WORKERS)
    ready_what = "the cluster to be healthy"
    ready_timeout = 240.0
    migrate_timeout = 300.0

    def __init__(self, base: Path) -> None:
        super().__init__(base)
        self.redis: Any = None

    def suite_name(self) -> str:
        return "cluster (Airflow 3.3, CeleryExecutor)"

    def write_dags(self) -> None:
        """The cluster tests' DAGs only."""
        self.deploy([DAG_FILE])

    def start_backing(self) -> None:
        self.postgres = Postgres(self.logs)
        self.redis = Redis(self.logs)

    def build_env(self) -> None:
        super().build_env()
        self.env.update(
            cluster_settings(
                self.postgres.url, self.redis.url, api_port=self.port, worker_concurrency=WORKER_CONCURRENCY
            )
        )
        # The e2e harness's LocalExecutor-sized limits, raised for 100 tasks at once.
        self.env["AIRFLOW__CORE__PARALLELISM"] = "128"
        self.env["AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG"] = "128"

    def start(self, name: str) -> Any:
        """Start ``api-server``, ``scheduler``, ``dag-processor``, ``triggerer<N>`` or ``worker<N>``."""
        kind = name.rstrip("0123456789")
        index = int(name[len(kind) :] or 0)
        argv = service_argv(kind, index, port=self.port, concurrency=WORKER_CONCURRENCY, pid_dir=self.base / "home")
        if name in self.triggerer_capacity:
            argv += ["--capacity", str(self.triggerer_capacity[name])]
        self.generation += 1
        service = Service(name, argv, self.env, self.logs, self.generation)
        self.services[name] = service
        return service

    def stop_all(self, grace: float = 10.0) -> None:
        try:
            super().stop_all(grace)  # PostgreSQL too
        finally:
            if self.redis is not None:
                self.redis.stop()

    # --- the metadata DB, read directly (psycopg2) ------------------------------------------------------

    def sql(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        """Rows of one read-only query on the metadata DB."""
        import psycopg2

        conn = psycopg2.connect(
            host="127.0.0.1", port=self.postgres.port, user="airflow", password=self.postgres.password, dbname="airflow"
        )
        try:
            with conn.cursor() as cur:
                cur.execute(query, params)
                return list(cur.fetchall())
        finally:
            conn.close()

    def live_triggerers(self) -> list[int]:
        """Ids of the triggerer jobs that heartbeat within the health-check threshold."""
        threshold = float(self.env.get("AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD", "30"))
        rows = self.sql(
            "SELECT id FROM job WHERE job_type = 'TriggererJob' AND state = 'running' "
            "AND latest_heartbeat > now() - make_interval(secs => %s) ORDER BY id",
            threshold,
        )
        return [row[0] for row in rows]

    def worker_ready(self, name: str) -> bool:
        """Whether the Celery worker ``name`` has said it is ready (in its log)."""
        service = self.services[name]
        return " ready." in service.log.read_text(errors="replace")

    def ready(self) -> bool:
        return self.cluster_healthy()

    def cluster_healthy(self) -> bool:
        """Every Airflow service healthy, both triggerers heartbeating, both workers ready."""
        return (
            self.healthy()
            and len(self.live_triggerers()) == len(TRIGGERERS)
            and all(self.worker_ready(name) for name in WORKERS)
        )

    def worker_of(self, ti_id: str) -> str | None:
        """Which Celery worker service runs the task instance ``ti_id`` right now (by its process titles)."""
        import psutil

        for name in WORKERS:
            service = self.services.get(name)
            if service is None:
                continue
            for proc in service._descendants():
                try:
                    if ti_id in " ".join(proc.cmdline()):
                        return name
                except psutil.Error:
                    pass
        return None


def skip_reason() -> str | None:
    """Why the cluster cannot run here (None when it can): Airflow older than 3.3, or what is missing."""
    if AIRFLOW_VERSION < (3, 3):
        installed = ".".join(map(str, AIRFLOW_VERSION))
        return f"the cluster tests run on Airflow 3.3 (make test-cluster); installed: {installed}"
    if not AIRFLOW.exists():
        return f"no airflow executable next to {sys.executable}"
    missing = missing_reason()
    return f"the cluster needs {missing}" if missing else None
