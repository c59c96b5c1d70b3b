"""``AirflowE2E``: the e2e harness on a real Airflow 3.x (3.0 to 3.3): scheduler, dag-processor, triggerer and
api-server on a temporary SQLite metadata DB with the LocalExecutor, driven and read through the REST API v2.

Every service runs in its own process group, and the group plus every descendant (LocalExecutor workers, the
triggerer's runner) is killed at teardown. Service logs go to files in the temporary directory; every bounded
wait that times out prints their tails.
"""

from __future__ import annotations

import datetime
import json
import secrets
import subprocess
import sys
import textwrap
import time
from base64 import urlsafe_b64encode
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest

from tests.harness.backing import Postgres, pg_bin
from tests.harness.base import EXAMPLE_DAG, LIFECYCLE_DAGS, ROOT, AirflowHarness
from tests.harness.processes import AIRFLOW_VERSION

SERVICES = ("scheduler", "dag-processor", "triggerer", "api-server")
E2E_DAGS = ROOT / "tests" / "e2e" / "dags" / "e2e_kernel_dags.py"
SKIP_REASON = (
    f"e2e tests need Airflow >= 3.0 (separate dag-processor, REST API v2); "
    f"installed: {'.'.join(map(str, AIRFLOW_VERSION))}"
)
#: How long a task may go without a heartbeat before the scheduler fails it (Airflow 3.3). Low, so a SIGKILLed
#: worker is noticed in seconds; the supervisor heartbeats every ``[workers] min_heartbeat_interval`` (3 s here).
TI_HEARTBEAT_TIMEOUT = 20
DB_LOCKED_PATIENCE = 60.0  # seconds a REST call is repeated while SQLite is locked
#: Airflow calls a trigger's ``on_kill`` (the only way a deferred task that a person marks reaches its trigger)
#: from 3.3 on; below, nothing cancels such a run (the task's next try would, but marking makes none).
NEEDS_ON_KILL = pytest.mark.skipif(
    AIRFLOW_VERSION < (3, 3),
    reason=f"needs Airflow >= 3.3 (BaseTrigger.on_kill); installed {version('apache-airflow')}",
)


def epoch(stamp: str) -> float:
    """A REST API timestamp (ISO 8601, ``Z`` or an offset) as seconds since the epoch."""
    return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def postgres_available() -> bool:
    """Whether the metadata DB can be a throw-away PostgreSQL: a server on this machine and psycopg2 installed
    (``make deps`` installs both; elsewhere the harness falls back to SQLite)."""
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        return False
    return pg_bin() is not None


class AirflowE2E(AirflowHarness):
    """A real Airflow 3.x with the Kernel emulator, driven and read through the REST API v2.

    The metadata DB is PostgreSQL when this machine has it (see :func:`postgres_available`), as in production:
    SQLite's single writer, shared by four services, a worker's task processes and the test's own REST writes,
    made a busy run log "database is locked" errors of Airflow's own (never the provider's) and stall the
    one-worker api-server. Without PostgreSQL, SQLite in WAL mode.
    """

    service_names = SERVICES

    def __init__(self, base: Path) -> None:
        super().__init__(base)
        self.postgres: Any = None

    def start_backing(self) -> None:
        if postgres_available():
            self.postgres = Postgres(self.logs)

    def stop_all(self, grace: float = 10.0) -> None:
        try:
            super().stop_all(grace)
        finally:
            if self.postgres is not None:
                self.postgres.stop()

    def write_dags(self) -> None:
        """Deploy the e2e DAGs, the lifecycle DAGs and the async-sensor example (more later: :meth:`deploy`)."""
        self.deploy([path for path in (E2E_DAGS, LIFECYCLE_DAGS, EXAMPLE_DAG) if path.exists()])

    def build_env(self) -> None:
        """Airflow 3 on PostgreSQL (or SQLite) with the LocalExecutor, the api-server on 127.0.0.1 (no login: every
        user is an admin), and a task heartbeat timeout low enough to notice a SIGKILLed worker in seconds."""
        env = self._common_env()
        env.update(
            {
                "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
                "AIRFLOW__CORE__PARALLELISM": "32",
                "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": "32",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.api_url}/execution/",
                # On SQLite, the driver's 5 s busy timeout, kept: the api-server has one worker, and a request
                # waiting on the write lock blocks it (a 60 s wait stalled it, and the triggerer's supervisor, for a
                # minute). The log is in WAL mode instead.
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": (
                    self.postgres.url if self.postgres is not None else f"sqlite:///{self.home / 'airflow.db'}"
                ),
                "AIRFLOW__API__BASE_URL": self.api_url,
                "AIRFLOW__API__PORT": str(self.port),
                "AIRFLOW__API__HOST": "127.0.0.1",
                "AIRFLOW__API__WORKERS": "1",
                # The harness reads XCom values through the REST API with ?deserialize=true, which Airflow 3.0
                # refuses (HTTP 400) unless this is on; later versions ignore it.
                "AIRFLOW__API__ENABLE_XCOM_DESERIALIZE_SUPPORT": "True",
                "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(24),
                "AIRFLOW__API_AUTH__JWT_SECRET": urlsafe_b64encode(secrets.token_bytes(32)).decode(),
                "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
                "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "120",
                # Airflow 3.0 counts a file's callback-only run (a killed task's failure callback) as a parse that
                # found none of its DAGs, and deactivates them once they were parsed more than this long before
                # (apache/airflow#55315): the retry of a killed task is then never scheduled. Above the parse
                # interval, it cannot happen.
                "AIRFLOW__DAG_PROCESSOR__STALE_DAG_THRESHOLD": "600",
                "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
                # A SIGKILLed worker (no supervisor left to report) is failed, and retried, within ~25 s.
                "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(TI_HEARTBEAT_TIMEOUT),
                "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "2",
                "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "3",
                # A worker's supervisor that cannot mark its task running (5 tries, 5 s each, ~30 s in all) kills the
                # task before it logs anything past "Pre Execute", and the run fails. On a CI machine with nine legs
                # on two cores the one-worker api-server has been that slow right after a batch of DAGs was deployed;
                # a 30 s answer per try rides that out, and a dead api-server is still noticed within minutes.
                "AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT": "30",
            }
        )
        self.env = env

    # --- REST API ---------------------------------------------------------------------------------------

    def api(self, method: str, path: str, *, conflict_ok: bool = False, **kwargs: Any) -> Any:
        """One REST call. SQLite's single writer makes the api-server answer 500 "Database error" when a busy
        scheduler holds the lock past the busy timeout (seen with six legs on two cores): the call is repeated, for
        up to :data:`DB_LOCKED_PATIENCE` seconds. Every caller's request is safe to repeat (``trigger`` names its
        run); ``conflict_ok`` takes a 409 as "the earlier attempt went through"."""
        if "Authorization" not in self.http.headers:
            self._authorize()
        deadline = time.monotonic() + DB_LOCKED_PATIENCE
        while True:
            response = self.http.request(method, f"/api/v2{path}", **kwargs)
            locked = response.status_code == 500 and "Database error" in response.text
            if not locked or time.monotonic() > deadline:
                break
            time.sleep(1.0)
        if conflict_ok and response.status_code == 409:
            return None
        if response.status_code >= 400:
            raise AssertionError(f"{method} {path} -> HTTP {response.status_code}: {response.text[:1000]}")
        return response.json() if response.content else None

    def _authorize(self) -> None:
        """Take the token the simple auth manager hands out when every user is an admin: Airflow 3.0-3.2's REST
        API wants one even then (3.3's takes requests without). Raises while the api-server is not up yet."""
        response = self.http.get("/auth/token")
        response.raise_for_status()
        self.http.headers["Authorization"] = f"Bearer {response.json()['access_token']}"

    def healthy(self) -> bool:
        health = self.api("GET", "/monitor/health")
        return all(
            (health.get(part) or {}).get("status") == "healthy"
            for part in ("metadatabase", "scheduler", "triggerer", "dag_processor")
        )

    def wait_for_dag(self, dag_id: str, timeout: float = 90) -> None:
        self.wait_until(f"DAG {dag_id} to be parsed", lambda: self.api("GET", f"/dags/{dag_id}"), timeout)
        self.api("PATCH", f"/dags/{dag_id}", json={"is_paused": False})

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None) -> str:
        """Start a run with ``logical_date`` null; its id is chosen here, so a repeated POST cannot start two."""
        run_id = f"manual__{datetime.datetime.now(datetime.timezone.utc).isoformat()}"
        body = {"dag_run_id": run_id, "logical_date": None, "conf": conf or {}}
        self.api("POST", f"/dags/{dag_id}/dagRuns", json=body, conflict_ok=True)
        return run_id

    def run_state(self, dag_id: str, run_id: str) -> str:
        return str(self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}")["state"])

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        body = self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 100})
        return list(body["task_instances"])

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value", map_index: int = -1) -> Any:
        entry = self.api(
            "GET",
            f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}",
            params={"map_index": map_index, "deserialize": True, "stringify": False},
        )
        return entry["value"]

    def ti(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> dict[str, Any]:
        """One task instance (``state``, ``try_number``, ``max_tries``, ``id``...)."""
        path = f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}"
        return dict(self.api("GET", path + (f"/{map_index}" if map_index >= 0 else "")))

    def clear_run(self, dag_id: str, run_id: str) -> None:
        """What "Clear" on a whole DAG run does in the UI."""
        self.api("POST", f"/dags/{dag_id}/dagRuns/{run_id}/clear", json={"dry_run": False})

    def clear_tasks(self, dag_id: str, run_id: str, task_ids: list[str]) -> None:
        """What "Clear" on task instances does in the UI (running ones included)."""
        self.api(
            "POST",
            f"/dags/{dag_id}/clearTaskInstances",
            json={
                "dry_run": False,
                "dag_run_id": run_id,
                "task_ids": task_ids,
                "only_failed": False,
                "reset_dag_runs": True,
            },
        )

    def mark(self, dag_id: str, run_id: str, task_id: str, state: str) -> None:
        """What "Mark success/failed" on a task instance does in the UI."""
        self.api("PATCH", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}", json={"new_state": state})

    def variables(self, prefix: str) -> list[str]:
        """The keys of the Airflow Variables starting with ``prefix`` (the run records below Airflow 3.3)."""
        body = self.api("GET", "/variables", params={"variable_key_pattern": prefix, "limit": 100})
        return sorted(v["key"] for v in body["variables"] if v["key"].startswith(prefix))

    # --- metadata DB, read through Airflow's ORM in a subprocess with the same AIRFLOW_HOME ----------------

    # --- metadata DB, read through Airflow's ORM in a subprocess with the same AIRFLOW_HOME ----------------

    def triggers(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        """The trigger rows of a run's deferred tasks, kwargs decrypted by ``Trigger.kwargs``."""
        script = textwrap.dedent("""
            import json, sys
            from sqlalchemy import select
            from airflow.models.taskinstance import TaskInstance as TI
            from airflow.models.trigger import Trigger
            from airflow.utils.session import create_session

            dag_id, run_id = sys.argv[1], sys.argv[2]
            with create_session() as session:
                rows = session.execute(
                    select(TI.task_id, TI.map_index, TI.state, Trigger)
                    .join(Trigger, TI.trigger_id == Trigger.id)
                    .where(TI.dag_id == dag_id, TI.run_id == run_id)
                ).all()
                out = [{"task_id": task_id, "map_index": map_index, "state": str(state),
                        "trigger_id": trigger.id, "triggerer_id": trigger.triggerer_id,
                        "classpath": trigger.classpath, "kwargs": dict(trigger.kwargs)}
                       for task_id, map_index, state, trigger in rows]
            print("E2E-JSON " + json.dumps(out, default=str))
        """)
        proc = subprocess.run(
            [sys.executable, "-c", script, dag_id, run_id],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            cwd=str(self.base),
        )
        for line in proc.stdout.splitlines():
            if line.startswith("E2E-JSON "):
                return list(json.loads(line[len("E2E-JSON ") :]))
        raise AssertionError(
            f"reading the trigger table failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
