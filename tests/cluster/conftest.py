"""Harness of the cluster tests: Airflow 3.3 in its production shape on one machine.

PostgreSQL (metadata DB, Celery result backend) and Redis (Celery broker) from ``example_dags/run_cluster.py``,
then api-server, scheduler, dag-processor, **two triggerers** and **two Celery workers**, all on 127.0.0.1, with
the Kernel emulator (and ``HoldingProxy`` for ``kernel_slow``) of the end-to-end harness, which this extends
(``ClusterAirflow`` subclasses ``AirflowE2E``: same REST helpers, bounded waits and diagnostics).

ONE cluster serves the whole session (``airflow_cluster``, about a minute to start): the tests run one after the
other on it. Where PostgreSQL, Redis or the ``[cluster]`` extra cannot be had (``make cluster-deps`` installs
them as root), or Airflow is older than 3.3, every test is skipped with that reason.

Failover is tuned down (``FAST_FAILOVER`` in the runner: triggerer heartbeat 1 s, health-check threshold 8 s;
Airflow's defaults are 5 s and 30 s) and so is the task heartbeat timeout (20 s, default 300 s), so a dead
triggerer's or worker's work moves on in seconds.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import load_e2e_harness

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
DAG_FILE = HERE / "dags" / "cluster_dags.py"
WORKER_CONCURRENCY = 6
TRIGGERERS = ("triggerer1", "triggerer2")
#: ``triggerer1`` takes at most this many triggers, so the failover test's 100 waits must spread over both.
TRIGGERER1_CAPACITY = 60
WORKERS = ("worker1", "worker2")

harness = load_e2e_harness()


def load_cluster_runner() -> Any:
    """``example_dags/run_cluster.py`` as a module (PostgreSQL, Redis, the cluster's settings and commands)."""
    name = "kernel_cluster_runner"
    if name in sys.modules:
        return sys.modules[name]
    path = ROOT / "example_dags" / "run_cluster.py"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


runner = load_cluster_runner()


class ClusterAirflow(harness.AirflowE2E):  # type: ignore[misc,name-defined]
    """The e2e harness on PostgreSQL + Redis + CeleryExecutor with two triggerers and two Celery workers."""

    #: ``--capacity`` per triggerer service (others: Airflow's default, 1000).
    triggerer_capacity: dict[str, int] = {"triggerer1": TRIGGERER1_CAPACITY}
    service_names = ("api-server", "scheduler", "dag-processor", *TRIGGERERS, *WORKERS)
    ready_what = "the cluster to be healthy"
    ready_timeout = 240.0

    def __init__(self, base: Path) -> None:
        super().__init__(base)
        self.postgres: Any = None
        self.redis: Any = None

    def suite_name(self) -> str:
        return "cluster (Airflow 3.3, CeleryExecutor)"

    def write_dags(self) -> None:
        shutil.copy(DAG_FILE, self.dags / DAG_FILE.name)

    def start_backing(self) -> None:
        self.postgres = runner.Postgres(self.logs)
        self.redis = runner.Redis(self.logs)

    def build_env(self) -> None:
        super().build_env()
        self.env.update(
            runner.cluster_settings(
                self.postgres.url, self.redis.url, api_port=self.port, worker_concurrency=WORKER_CONCURRENCY
            )
        )
        # The e2e harness's LocalExecutor-sized limits, raised for 100 tasks at once.
        self.env["AIRFLOW__CORE__PARALLELISM"] = "128"
        self.env["AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG"] = "128"

    def migrate(self) -> None:
        out = self.logs / "db-migrate.log"
        with open(out, "wb") as log:
            proc = subprocess.run(
                [str(harness.AIRFLOW), "db", "migrate"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=300,
                cwd=str(self.base),
            )
        if proc.returncode != 0:
            raise RuntimeError(f"airflow db migrate failed ({proc.returncode}):\n{harness._tail(out, 60)}")

    def start(self, name: str) -> Any:
        """Start ``api-server``, ``scheduler``, ``dag-processor``, ``triggerer<N>`` or ``worker<N>``."""
        kind = name.rstrip("0123456789")
        index = int(name[len(kind) :] or 0)
        argv = runner.service_argv(
            kind, index, port=self.port, concurrency=WORKER_CONCURRENCY, pid_dir=self.base / "home"
        )
        if name in self.triggerer_capacity:
            argv += ["--capacity", str(self.triggerer_capacity[name])]
        self.generation += 1
        service = harness.Service(name, argv, self.env, self.logs, self.generation)
        self.services[name] = service
        return service

    def stop_all(self, grace: float = 10.0) -> None:
        try:
            super().stop_all(grace)
        finally:
            for backing in (self.redis, self.postgres):
                if backing is not None:
                    backing.stop()

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
        service = self.services[name]
        return " ready." in service.log.read_text(errors="replace")

    def ready(self) -> bool:
        return self.cluster_healthy()

    def cluster_healthy(self) -> bool:
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


def _skip_reason() -> str | None:
    if harness.AIRFLOW_VERSION < (3, 3):
        installed = ".".join(map(str, harness.AIRFLOW_VERSION))
        return f"the cluster tests run on Airflow 3.3 (make test-cluster); installed: {installed}"
    if not harness.AIRFLOW.exists():
        return f"no airflow executable next to {sys.executable}"
    missing = runner.missing_reason()
    return f"the cluster needs {missing}" if missing else None


@pytest.fixture(scope="session")
def airflow_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterAirflow]:
    """The running cluster, shared by every cluster test of the session."""
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    with harness.running(ClusterAirflow(tmp_path_factory.mktemp("airflow-cluster"))) as cluster:
        cluster.api("POST", "/pools", json={"name": "kernel_cluster", "slots": 5, "include_deferred": True})
        yield cluster


@pytest.fixture(autouse=True)
def _error_line_audit(request: pytest.FixtureRequest) -> Iterator[None]:
    """The e2e harness's ERROR-line audit after every cluster test (see ``tests/e2e/error_audit.py``)."""
    yield
    if "airflow_cluster" in request.fixturenames:
        harness.audit_error_lines(request.node, request.getfixturevalue("airflow_cluster"))


@pytest.fixture
def expect_error_lines(request: pytest.FixtureRequest) -> Any:
    """``expect_error_lines(r"regex", ...)``: ERROR lines this test provokes on purpose."""
    declared: list[str] = request.node.__dict__.setdefault("declared_error_lines", [])
    return lambda *patterns: declared.extend(patterns)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """How much the ERROR-line audit read in the cluster suite."""
    for audit in harness.AUDITS:
        terminalreporter.write_line(f"[ERROR-line audit] {audit.summary()}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failing cluster test gets the tails of the service logs in its report."""
    outcome = yield
    report = outcome.get_result()
    if report.failed and call.when == "call":
        item.__dict__["e2e_call_failed"] = True  # the ERROR-line audit does not fail it twice
        cluster = getattr(item, "funcargs", {}).get("airflow_cluster")
        already = call.excinfo is not None and "----- " in str(call.excinfo.value)
        if isinstance(cluster, ClusterAirflow) and not already:
            try:
                report.sections.append(("Cluster service logs (tails)", cluster.diagnostics()))
            except Exception as exc:
                report.sections.append(("Cluster service logs", f"could not collect: {exc}"))
