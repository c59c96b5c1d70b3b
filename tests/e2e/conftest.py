"""Harness of the end-to-end tests: a real Airflow 3.x (3.0 to 3.3: scheduler, dag-processor, triggerer,
api-server) on a temporary SQLite metadata DB with the LocalExecutor, talking to the Kernel emulator in a subprocess.

Everything is started once per module (``airflow_e2e``, about a minute) and torn down at the end: each service
runs in its own process group, and the group plus every descendant (LocalExecutor workers, the triggerer's
runner) is killed at teardown. Service logs go to files in the temporary directory; every bounded wait that
times out, and every failing e2e test, prints their tails.

``airflow2_e2e`` is the same harness for Airflow 2.11 (run under ``.venv-af2``): its scheduler (which parses the
DAGs itself and runs tasks with the SequentialExecutor, since 2.11 refuses SQLite with any other executor) and
triggerer. With no REST API v2 there, runs are triggered, read, cleared and marked through Airflow's own ORM in
one long-lived helper subprocess (``_DB_AGENT``), as the 2.11 UI/REST API would do it.

Both harnesses also run ``HoldingProxy``: the connection ``kernel_slow`` reaches the emulator through it, so a
test can hold back Kernel's answer to a ``POST /invocations`` that did reach Kernel (a worker that dies then
has created an invocation it never heard of; the emulator's own ``delay`` fault sleeps *before* reading the
request, so a client that dies during it creates nothing).

After ``airflow db migrate`` the SQLite ``trigger`` table is rebuilt with ``AUTOINCREMENT`` so trigger ids are
never reused, as on PostgreSQL (see ``_never_reuse_trigger_ids``). ``KERNEL_E2E_PROVIDER_SRC=<dir>`` runs every
Airflow process on another copy of ``kernel_provider`` (``git archive <rev> kernel_provider | tar -x -C <dir>``),
e.g. to see a test fail on older code; ``PYTHONPATH=<dir>`` does the same for the test process too.

Every test is followed by the ERROR-line audit (``error_audit.py``): an ERROR line in any service or task log that
the test did not declare (``@pytest.mark.expect_error_lines(r"regex")`` or the ``expect_error_lines`` fixture)
fails it; the summary says how many log lines were read. Like users' deployments, every run has a Fernet key.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from base64 import urlsafe_b64encode
from collections.abc import Callable, Iterator
from importlib.metadata import version as dist_version
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.e2e.error_audit import ErrorAudit, failure_text

T = TypeVar("T")

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
BIN = Path(sys.executable).parent
AIRFLOW = BIN / "airflow"
SERVICES = ("scheduler", "dag-processor", "triggerer", "api-server")
SERVICES_AF2 = ("scheduler", "triggerer")
EXAMPLE_DAG = ROOT / "example_dags" / "example_kernel_async_sensor.py"
LIFECYCLE_DAGS = HERE / "dags" / "e2e_lifecycle_dags.py"
DEMO_APP = ROOT / "example_dags" / "demo_app" / "app.py"
GATE_APP = HERE.parent / "apps" / "gate_app.py"
TRIGGERER_MARK = "(triggerer)"
TERMINAL_TI = frozenset({"success", "failed", "upstream_failed", "skipped", "removed"})
TERMINAL_RUN = frozenset({"success", "failed"})
#: The ERROR-line audit of every harness started in this session (for the terminal summary).
AUDITS: list[ErrorAudit] = []


def _airflow_version() -> tuple[int, int]:
    try:
        parts = dist_version("apache-airflow").split(".")
        return int(parts[0]), int(parts[1])
    except Exception:
        return (0, 0)


AIRFLOW_VERSION = _airflow_version()
SKIP_REASON = (
    f"e2e tests need Airflow >= 3.0 (separate dag-processor, REST API v2); "
    f"installed: {'.'.join(map(str, AIRFLOW_VERSION))}"
)
SKIP_REASON_AF2 = (
    f"the Airflow 2.11 e2e tests need Airflow 2.11 (run them with .venv-af2); "
    f"installed: {'.'.join(map(str, AIRFLOW_VERSION))}"
)
#: How long a task may go without a heartbeat before the scheduler fails it (Airflow 3.3). Low, so a SIGKILLed
#: worker is noticed in seconds; the supervisor heartbeats every ``[workers] min_heartbeat_interval`` (3 s here).
TI_HEARTBEAT_TIMEOUT = 20
DB_LOCKED_PATIENCE = 60.0  # seconds a REST call is repeated while SQLite is locked


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    return "\n".join(text.splitlines()[-lines:])


def _never_reuse_trigger_ids(db: Path) -> None:
    """Make SQLite hand out trigger ids the way PostgreSQL's sequence does: never twice.

    Airflow's ``trigger.id`` is an ``INTEGER PRIMARY KEY``, which SQLite reuses once the highest row is deleted.
    Clearing a deferred task deletes its trigger row and the new try's trigger then gets the *same* id; a
    triggerer that still runs the old trigger object under that id never stops it (no ``on_kill``), and the old
    trigger's event resumes the new try (seen: the new try resumed 0.7 s after deferring, then was failed by the
    scheduler's state check). Production databases never reuse ids, so the harness rebuilds the table with
    ``AUTOINCREMENT`` right after ``airflow db migrate`` (SQLite's documented table-rebuild procedure).
    """
    import re
    import sqlite3

    conn = sqlite3.connect(str(db), isolation_level=None)
    try:
        row = conn.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'trigger'").fetchone()
        if row is None or "AUTOINCREMENT" in row[0]:
            return
        create = row[0]
        create = re.sub(r",\s*CONSTRAINT \w+ PRIMARY KEY \(id\)(?=\s*\)\s*$)", "", create)
        create = re.sub(r"CONSTRAINT \w+ PRIMARY KEY \(id\),\s*", "", create)
        create = create.replace("id INTEGER NOT NULL,", "id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,", 1)
        create = create.replace('CREATE TABLE "trigger"', 'CREATE TABLE "trigger_e2e_rebuilt"', 1)
        if "AUTOINCREMENT" not in create or "PRIMARY KEY (id)" in create or "trigger_e2e_rebuilt" not in create:
            raise RuntimeError(f"cannot rebuild Airflow's trigger table with AUTOINCREMENT from:\n{row[0]}")
        indexes = [
            sql
            for (sql,) in conn.execute(
                "SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'trigger' AND sql IS NOT NULL"
            )
        ]
        conn.execute("PRAGMA foreign_keys = OFF")
        conn.execute("BEGIN")
        conn.execute(create)
        conn.execute('INSERT INTO "trigger_e2e_rebuilt" SELECT * FROM "trigger"')
        conn.execute('DROP TABLE "trigger"')
        conn.execute('ALTER TABLE "trigger_e2e_rebuilt" RENAME TO "trigger"')
        for sql in indexes:
            conn.execute(sql)
        conn.execute("COMMIT")
    finally:
        conn.close()


class Service:
    """One ``airflow <command>`` subprocess in its own process group, logging to a file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path, generation: int) -> None:
        self.name = name
        self.log = log_dir / f"{name}.{generation}.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=str(log_dir)
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def _descendants(self) -> list[Any]:
        import psutil

        try:
            return psutil.Process(self.pid).children(recursive=True)
        except psutil.Error:
            return []

    def send(self, sig: int) -> None:
        """Signal the process group and every descendant (some may have left the group)."""
        self._family = getattr(self, "_family", []) + self._descendants()
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        for child in self._family:
            try:
                child.send_signal(sig)
            except Exception:
                pass

    def finish(self, grace: float) -> None:
        """Wait up to ``grace`` seconds for the leader, then SIGKILL whatever is left of the family."""
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
        self.send(signal.SIGKILL)
        self.proc.wait(10)

    def kill(self, sig: int = signal.SIGKILL, grace: float = 10.0) -> None:
        self.send(sig)
        self.finish(grace)


class HoldingProxy:
    """A TCP proxy in front of the emulator that can hold back Kernel's answer to ``POST /invocations``.

    Bytes from the client are forwarded at once, so the emulator really creates the invocation; after
    :meth:`hold_creates` the answers to the next ``count`` creates are kept from the client until it goes away
    (then they are dropped) or ``max_hold`` seconds pass. Everything else passes straight through.

    It listens before the emulator starts (``upstream`` is set once the emulator's port is known), because the
    emulator must be told to accept requests that name the proxy in their Host header (``allow_hosts``).
    """

    def __init__(self) -> None:
        self.upstream: tuple[str, int] = ("127.0.0.1", 0)
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self.port = int(self._listener.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._lock = threading.Lock()
        self._to_hold = 0
        self._max_hold = 0.0
        self._closed = False
        #: One record per held create: ``{"held_at", "outcome": None | "dropped" | "released"}``.
        self.held: list[dict[str, Any]] = []
        threading.Thread(target=self._accept, name="e2e-holding-proxy", daemon=True).start()

    def hold_creates(self, count: int, max_hold: float = 120.0) -> None:
        with self._lock:
            self._to_hold, self._max_hold = count, max_hold

    def stop_holding(self) -> None:
        with self._lock:
            self._to_hold = 0

    def close(self) -> None:
        self._closed = True
        try:
            self._listener.close()
        except OSError:
            pass

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.upstream, timeout=10)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        state: dict[str, Any] = {"hold": None, "client_gone": False}

        def client_to_upstream() -> None:
            try:
                while True:
                    data = client.recv(65536)
                    if not data:
                        break
                    if data.startswith(b"POST /invocations"):
                        with self._lock:
                            if self._to_hold > 0:
                                self._to_hold -= 1
                                record = {
                                    "held_at": time.time(),
                                    "until": time.monotonic() + self._max_hold,
                                    "outcome": None,
                                }
                                self.held.append(record)
                                state["hold"] = record
                    upstream.sendall(data)
            except OSError:
                pass
            state["client_gone"] = True
            for sock in (client, upstream):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

        threading.Thread(target=client_to_upstream, daemon=True).start()
        try:
            while True:
                data = upstream.recv(65536)
                if not data:
                    break
                record = state["hold"]
                if record is not None:
                    while not state["client_gone"] and time.monotonic() < record["until"]:
                        time.sleep(0.05)
                    state["hold"] = None
                    record["outcome"] = "dropped" if state["client_gone"] else "released"
                    if state["client_gone"]:
                        break
                client.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (client, upstream):
                try:
                    sock.close()
                except OSError:
                    pass


class AirflowE2E:
    """The running services, the emulator, and helpers for the REST API, the metadata DB and bounded waits."""

    #: Where the operator keeps its retry-safety record: Airflow 3.3's task_state_store, else a Variable.
    records_in_variables = AIRFLOW_VERSION < (3, 3)

    def __init__(self, base: Path) -> None:
        import httpx

        self.base = base
        self.home = base / "home"
        self.dags = base / "dags"
        self.gates = base / "gates"
        self.logs = base / "service-logs"
        for folder in (self.home, self.dags, self.gates, self.logs):
            folder.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        self.api_url = f"http://127.0.0.1:{self.port}"
        self.services: dict[str, Service] = {}
        self.retired: list[Service] = []
        self.generation = 0
        self.emulator: Any = None
        self.proxy: HoldingProxy | None = None
        self.env: dict[str, str] = {}
        self.http = httpx.Client(base_url=self.api_url, timeout=30.0)
        #: The ERROR-line audit over the service logs and everything under ``$AIRFLOW_HOME/logs``.
        self.audit = ErrorAudit(self.suite_name(), [self.logs, self.home / "logs"])
        AUDITS.append(self.audit)

    #: The Airflow services :meth:`start_all` starts, in this order.
    service_names: tuple[str, ...] = SERVICES
    #: What :meth:`start_all` waits for once they are started (the bounded wait's description).
    ready_what = "all Airflow services to be healthy"
    ready_timeout = 150.0

    def suite_name(self) -> str:
        """How the ERROR-line audit names this harness in the test summary."""
        return f"e2e on Airflow {'.'.join(map(str, AIRFLOW_VERSION))}"

    # --- set-up ----------------------------------------------------------------------------------------

    def start_all(self) -> float:
        """Start everything, in order (the one start-up of every harness: e2e, 2.11, browser, cluster): DAG files,
        backing services, emulator, environment, metadata DB, the Airflow services; returns the seconds it took,
        once :meth:`ready` holds."""
        started = time.monotonic()
        self.write_dags()
        self.start_backing()
        self.start_emulator()
        self.build_env()
        self.migrate()
        for name in self.service_names:
            self.start(name)
        self.after_start()
        self.wait_until(self.ready_what, self.ready, timeout=self.ready_timeout, interval=1.0)
        return time.monotonic() - started

    def start_backing(self) -> None:
        """Services the metadata DB or executor need before Airflow starts (none here; the cluster's PostgreSQL and
        Redis)."""

    def after_start(self) -> None:
        """Anything to start once the Airflow services are (nothing here; Airflow 2.11's DB helper)."""

    def ready(self) -> bool:
        """Whether the harness can take tests (here: every Airflow service healthy)."""
        return bool(self.healthy())

    def deploy(self, paths: list[Path]) -> None:
        """Add DAG files to the running harness (the DAG processor finds them within its refresh interval, 5 s):
        a test module that needs other DAGs costs seconds, not a new Airflow start. Wait with ``wait_for_dag``."""
        for path in paths:
            shutil.copy(path, self.dags / path.name)

    def write_dags(self) -> None:
        """Deploy the e2e DAGs, the lifecycle DAGs and the async-sensor example (more later: :meth:`deploy`)."""
        self.deploy(
            [path for path in (HERE / "dags" / "e2e_kernel_dags.py", LIFECYCLE_DAGS, EXAMPLE_DAG) if path.exists()]
        )

    def start_emulator(self) -> None:
        from urllib.parse import urlsplit

        from kernel_provider.testing.server import spawn_emulator

        apps: list[Path] = [GATE_APP] + ([DEMO_APP] if DEMO_APP.exists() else [])
        self.proxy = HoldingProxy()
        self.emulator = spawn_emulator(
            apps=apps,
            env={"KERNEL_E2E_GATE_DIR": str(self.gates)},
            timeout=60,
            allow_hosts=[f"127.0.0.1:{self.proxy.port}"],  # kernel_slow's requests name the proxy
        )
        where = urlsplit(self.emulator.url)
        self.proxy.upstream = (where.hostname or "127.0.0.1", int(where.port or 80))

    def _kernel_connections(self) -> dict[str, str]:
        from kernel_provider.testing import airflow_connection

        connections = {
            "AIRFLOW_CONN_KERNEL_DEFAULT": airflow_connection(self.emulator.url, self.emulator.token),
        }
        if self.proxy is not None:  # subclasses (the browser tests) may start the emulator without it
            # The same emulator behind HoldingProxy (worker-crash-during-create tests).
            connections["AIRFLOW_CONN_KERNEL_SLOW"] = airflow_connection(self.proxy.url, self.emulator.token)
        return connections

    def _base_env(self) -> dict[str, str]:
        """This process's environment minus Airflow's settings. ``KERNEL_E2E_PROVIDER_SRC`` (a directory holding
        a ``kernel_provider`` package, e.g. ``git archive <rev> kernel_provider | tar -x -C DIR``) makes every
        Airflow process use that provider instead of the working tree's: to see a test fail on older code."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
        other = os.environ.get("KERNEL_E2E_PROVIDER_SRC")
        if other:
            if not (Path(other) / "kernel_provider" / "__init__.py").exists():
                raise RuntimeError(f"KERNEL_E2E_PROVIDER_SRC={other} has no kernel_provider package")
            env["PYTHONPATH"] = os.pathsep.join(p for p in (other, os.environ.get("PYTHONPATH")) if p)
        return env

    def build_env(self) -> None:
        from cryptography.fernet import Fernet

        env = self._base_env()
        env.update(
            {
                "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
                "AIRFLOW_HOME": str(self.home),
                "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
                "AIRFLOW__CORE__PARALLELISM": "32",
                "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": "32",
                "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
                "AIRFLOW__CORE__FERNET_KEY": Fernet.generate_key().decode(),
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.api_url}/execution/",
                # SQLite has one writer; with four services and the test writing, a write can wait on the lock
                # longer than the driver's 5 s default and fail ("Database error", an ERROR line): wait longer.
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.home / 'airflow.db'}?timeout=60",
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
                "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
                "AIRFLOW__SCHEDULER__JOB_HEARTBEAT_SEC": "2",
                "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "1",
                # A SIGKILLed triggerer's triggers move to a new one once its heartbeat is this old.
                "AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD": "8",
                "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
                # Free ports for the scheduler's and triggerer's log servers (defaults 8793/8794 may be taken).
                "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(_free_port()),
                "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(_free_port()),
                # A SIGKILLed worker (no supervisor left to report) is failed, and retried, within ~25 s.
                "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(TI_HEARTBEAT_TIMEOUT),
                "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "2",
                "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "3",
                **self._kernel_connections(),
            }
        )
        self.env = env

    def migrate(self) -> None:
        out = self.logs / "db-migrate.log"
        with open(out, "wb") as log:
            proc = subprocess.run(
                [str(AIRFLOW), "db", "migrate"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=180,
                cwd=str(self.base),
            )
        if proc.returncode != 0:
            raise RuntimeError(f"airflow db migrate failed ({proc.returncode}):\n{_tail(out, 60)}")
        _never_reuse_trigger_ids(self.home / "airflow.db")

    def start(self, name: str) -> Service:
        argv = [str(AIRFLOW), name]
        if name == "api-server":
            argv += ["--port", str(self.port), "--host", "127.0.0.1", "--workers", "1"]
        self.generation += 1
        service = Service(name, argv, self.env, self.logs, self.generation)
        self.services[name] = service
        return service

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        service = self.services.pop(name)
        service.kill(sig)
        self.retired.append(service)

    def stop_all(self, grace: float = 10.0) -> None:
        """SIGTERM every service at once, give them ``grace`` seconds together, then SIGKILL what is left."""
        running = list(self.services.values())
        self.services.clear()
        self.retired += running
        for service in running:
            service.send(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for service in running:
            try:
                service.finish(max(0.1, deadline - time.monotonic()))
            except Exception:
                pass
        self.http.close()
        if self.proxy is not None:
            self.proxy.close()
        if self.emulator is not None:
            try:
                self.emulator.stop()
            except Exception:
                pass

    # --- diagnostics and waits --------------------------------------------------------------------------

    def diagnostics(self, lines: int = 40) -> str:
        parts = []
        for service in list(self.services.values()) + self.retired:
            state = "running" if service.alive() else f"exited {service.proc.returncode}"
            parts.append(f"----- {service.log.name} (pid {service.pid}, {state}) -----\n{_tail(service.log, lines)}")
        if self.emulator is not None:
            emu_log = Path(self.emulator._workdir.name) / "stderr.log"
            parts.append(f"----- kernel emulator stderr -----\n{_tail(emu_log, lines)}")
        task_logs = sorted((self.home / "logs").rglob("*.log"), key=lambda p: p.stat().st_mtime)[-3:]
        for path in task_logs:
            parts.append(f"----- task log {path.relative_to(self.home)} -----\n{_tail(path, lines)}")
        return "\n".join(parts)

    def check_services(self) -> None:
        dead = [s for s in self.services.values() if not s.alive()]
        if dead:
            names = ", ".join(f"{s.name} (exit {s.proc.returncode})" for s in dead)
            raise AssertionError(f"Airflow service(s) died: {names}\n{self.diagnostics()}")

    def wait_until(self, what: str, probe: Callable[[], T | None], timeout: float, interval: float = 0.5) -> T:
        """Call ``probe`` until it returns something truthy; on timeout fail with the service log tails."""
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while True:
            self.check_services()
            try:
                value = probe()
                last_error = None
                if value:
                    return value
            except Exception as exc:  # e.g. the api-server is still starting
                last_error = exc
            if time.monotonic() > deadline:
                detail = f" (last error: {type(last_error).__name__}: {last_error})" if last_error else ""
                raise AssertionError(f"Timed out after {timeout:.0f}s waiting for {what}{detail}\n{self.diagnostics()}")
            time.sleep(interval)

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

    def states(self, dag_id: str, run_id: str, task_id: str | None = None) -> dict[tuple[str, int], str | None]:
        return {
            (ti["task_id"], ti["map_index"]): ti["state"]
            for ti in self.task_instances(dag_id, run_id)
            if task_id is None or ti["task_id"] == task_id
        }

    def wait_run_done(self, dag_id: str, run_id: str, timeout: float) -> str:
        return self.wait_until(
            f"run {run_id} of {dag_id} to finish (task states: see logs)",
            lambda: s if (s := self.run_state(dag_id, run_id)) in TERMINAL_RUN else None,
            timeout,
            interval=1.0,
        )

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

    # --- version-independent: task log files, processes, what reached the emulator -----------------------

    def task_logs(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> dict[str, str]:
        """Every log file of a task instance (each attempt's, and the triggerers' ``*.trigger.<job>.log``)."""
        folder = self.home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"
        if map_index >= 0:
            folder = folder / f"map_index={map_index}"
        if not folder.is_dir():
            return {}
        return {path.name: path.read_text(errors="replace") for path in sorted(folder.iterdir()) if path.is_file()}

    def processes_with(self, marker: str) -> list[Any]:
        """Live descendants of the services whose command line (process title) contains ``marker``."""
        import psutil

        found: dict[int, Any] = {}
        for service in self.services.values():
            for proc in service._descendants():
                try:
                    if marker in " ".join(proc.cmdline()):
                        found[proc.pid] = proc
                except psutil.Error:
                    pass
        return list(found.values())

    def executor_reported(self, dag_id: str, run_id: str, task_id: str, try_number: int, map_index: int = -1) -> bool:
        """Whether the scheduler has processed the executor's report that a try's workload ended (for a deferring
        task: that it left the worker). Read from the scheduler's log, the only place it shows."""
        key = (
            f"TaskInstanceKey(dag_id='{dag_id}', task_id='{task_id}', run_id='{run_id}', "
            f"try_number={try_number}, map_index={map_index})"
        )
        logs = [s.log for s in [*self.retired, *self.services.values()] if s.name == "scheduler"]
        return any(
            f"Received executor event with state success for task instance {key}" in log.read_text(errors="replace")
            for log in logs
            if log.exists()
        )

    def gate_invocations(self, gate: str) -> list[dict[str, Any]]:
        """The invocations the emulator created for a gate (oldest first): one per ``POST /invocations`` that
        created something for it, whatever else the payload carries (a reconcile token, say)."""
        return [i for i in self.emulator.client.invocations() if gate in (i.get("payload") or "")]

    def invocation(self, invocation_id: str) -> dict[str, Any]:
        found = self.emulator.client.invocation(invocation_id)
        assert found is not None, f"the emulator has no invocation {invocation_id}"
        return found

    def wait_invocation(self, invocation_id: str, statuses: tuple[str, ...], timeout: float) -> dict[str, Any]:
        return self.wait_until(
            f"invocation {invocation_id} to be {'/'.join(statuses)}",
            lambda: i if (i := self.invocation(invocation_id))["status"] in statuses else None,
            timeout,
        )

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

    # --- emulator ---------------------------------------------------------------------------------------

    def new_gate(self) -> str:
        return f"gate-{uuid.uuid4().hex[:12]}"

    def open_gate(self, name: str) -> None:
        (self.gates / name).touch()

    def kernel_requests(self, invocation_id: str) -> list[dict[str, Any]]:
        """Every request the emulator received about one invocation (oldest first)."""
        prefix = f"/invocations/{invocation_id}"
        return [r for r in self.emulator.client.requests() if r["path"] == prefix or r["path"].startswith(prefix + "/")]


#: The Airflow 2.11 helper: one process with Airflow's ORM loaded, answering JSON commands on stdin, so a test
#: needs no ~5 s ``airflow`` CLI start-up per look at the DB. Every command does what the 2.11 UI/REST API does.
_DB_AGENT = textwrap.dedent("""
    import json, sys, traceback
    from datetime import datetime, timezone as dt_timezone

    from sqlalchemy import select, update

    from airflow.api.common.trigger_dag import trigger_dag
    from airflow.jobs.job import Job
    from airflow.models import DagModel, DagRun, TaskInstance as TI, Variable, XCom
    from airflow.models.dagbag import DagBag
    from airflow.models.serialized_dag import SerializedDagModel
    from airflow.models.taskinstance import clear_task_instances
    from airflow.models.trigger import Trigger
    from airflow.utils import timezone
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState, TaskInstanceState

    def dag_of(dag_id, session):
        dag = DagBag(read_dags_from_db=True).get_dag(dag_id, session=session)
        if dag is None:
            raise LookupError(f"no serialized DAG {dag_id}")
        return dag

    def op_ping(session):
        return True

    def op_dag_ready(session, dag_id):
        return bool(session.get(DagModel, dag_id)) and SerializedDagModel.has_dag(dag_id, session=session)

    def op_unpause(session, dag_id):
        session.execute(update(DagModel).where(DagModel.dag_id == dag_id).values(is_paused=False))
        return True

    def op_trigger(session, dag_id, conf):
        now = timezone.utcnow()
        run = trigger_dag(dag_id=dag_id, run_id=f"manual__{now.isoformat()}", conf=conf, execution_date=now,
                          replace_microseconds=False, session=session)
        return run.run_id

    def op_run_state(session, dag_id, run_id):
        return str(session.scalar(select(DagRun.state).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id)))

    def op_tis(session, dag_id, run_id):
        rows = session.scalars(select(TI).where(TI.dag_id == dag_id, TI.run_id == run_id)).all()
        return [{"task_id": ti.task_id, "map_index": ti.map_index, "state": ti.state and str(ti.state),
                 "try_number": ti.try_number, "max_tries": ti.max_tries, "trigger_id": ti.trigger_id,
                 "next_method": ti.next_method, "pid": ti.pid, "start_date": ti.start_date,
                 "end_date": ti.end_date} for ti in rows]

    def op_xcom(session, dag_id, run_id, task_id, key, map_index):
        return XCom.get_one(key=key, dag_id=dag_id, task_id=task_id, run_id=run_id, map_index=map_index,
                            session=session)

    def op_clear(session, dag_id, run_id, task_ids):
        query = select(TI).where(TI.dag_id == dag_id, TI.run_id == run_id)
        if task_ids:
            query = query.where(TI.task_id.in_(task_ids))
        tis = session.scalars(query).all()
        clear_task_instances(tis, session, dag=dag_of(dag_id, session), dag_run_state=DagRunState.QUEUED)
        return len(tis)

    def op_mark(session, dag_id, run_id, task_id, state):
        changed = dag_of(dag_id, session).set_task_instance_state(
            task_id=task_id, run_id=run_id, state=TaskInstanceState(state), commit=True, session=session)
        return len(changed)

    def op_variables(session, prefix):
        return sorted(session.scalars(select(Variable.key).where(Variable.key.like(prefix + "%"))).all())

    def op_jobs(session):
        out = {}
        for job in session.scalars(select(Job).order_by(Job.id)).all():
            age = (timezone.utcnow() - job.latest_heartbeat).total_seconds() if job.latest_heartbeat else None
            out[job.job_type] = {"id": job.id, "state": job.state and str(job.state), "age": age}
        return out

    def op_triggers(session, dag_id, run_id):
        rows = session.execute(
            select(TI.task_id, TI.map_index, TI.state, Trigger).join(Trigger, TI.trigger_id == Trigger.id)
            .where(TI.dag_id == dag_id, TI.run_id == run_id)).all()
        return [{"task_id": t, "map_index": m, "state": str(st), "trigger_id": tr.id,
                 "triggerer_id": tr.triggerer_id, "classpath": tr.classpath, "kwargs": dict(tr.kwargs)}
                for t, m, st, tr in rows]

    for line in sys.stdin:
        try:
            command = json.loads(line)
            with create_session() as session:
                result = globals()["op_" + command["op"]](session, **command.get("args", {}))
            answer = {"ok": result}
        except Exception:
            answer = {"error": traceback.format_exc()}
        sys.stdout.write("E2E-JSON " + json.dumps(answer, default=str) + "\\n")
        sys.stdout.flush()
""")


class DbAgent:
    """Runs ``_DB_AGENT`` with the harness's environment; ``call(op, **args)`` returns its answer."""

    def __init__(self, env: dict[str, str], cwd: Path, log: Path) -> None:
        import queue

        self.log = log
        self._log_file = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-u", "-c", _DB_AGENT],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log_file,
            text=True,
            env=env,
            cwd=str(cwd),
            start_new_session=True,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def call(self, op: str, timeout: float = 120.0, **args: Any) -> Any:
        import queue

        with self._lock:
            assert self.proc.stdin is not None
            self.proc.stdin.write(json.dumps({"op": op, "args": args}) + "\n")
            self.proc.stdin.flush()
            deadline = time.monotonic() + timeout
            while True:
                try:
                    line = self._lines.get(timeout=max(0.1, deadline - time.monotonic()))
                except queue.Empty:
                    raise AssertionError(
                        f"the DB helper did not answer {op} within {timeout:.0f}s:\n{_tail(self.log)}"
                    ) from None
                if line is None:
                    raise AssertionError(f"the DB helper exited ({self.proc.poll()}):\n{_tail(self.log)}")
                if line.startswith("E2E-JSON "):
                    answer = json.loads(line[len("E2E-JSON ") :])
                    if "error" in answer:
                        raise AssertionError(f"DB helper {op}({args}) failed:\n{answer['error']}")
                    return answer["ok"]

    def stop(self) -> None:
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
            self.proc.wait(10)
        except Exception:
            self.proc.kill()
        self._log_file.close()


class Airflow2E2E(AirflowE2E):
    """The same harness on Airflow 2.11: scheduler (parsing DAGs itself, SequentialExecutor) and triggerer.

    Runs are triggered, read, cleared and marked through :class:`DbAgent` (Airflow's ORM, as the 2.11 UI does),
    never through a REST API. Only the lifecycle DAGs are deployed (the others use ``airflow.sdk``).
    """

    def __init__(self, base: Path) -> None:
        super().__init__(base)
        self.agent: DbAgent | None = None

    service_names = SERVICES_AF2
    ready_what = "the scheduler and triggerer to heartbeat"

    def write_dags(self) -> None:
        shutil.copy(LIFECYCLE_DAGS, self.dags / LIFECYCLE_DAGS.name)

    def after_start(self) -> None:
        self.start_agent()

    def build_env(self) -> None:
        from cryptography.fernet import Fernet

        env = self._base_env()
        env.update(
            {
                "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
                "AIRFLOW_HOME": str(self.home),
                "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                # 2.11 refuses SQLite with the LocalExecutor ("cannot use SQLite with the LocalExecutor").
                "AIRFLOW__CORE__EXECUTOR": "SequentialExecutor",
                "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
                "AIRFLOW__CORE__FERNET_KEY": Fernet.generate_key().decode(),
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.home / 'airflow.db'}",
                "AIRFLOW__WEBSERVER__SECRET_KEY": secrets.token_urlsafe(24),
                "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
                "AIRFLOW__SCHEDULER__JOB_HEARTBEAT_SEC": "2",
                "AIRFLOW__SCHEDULER__MIN_FILE_PROCESS_INTERVAL": "120",
                "AIRFLOW__SCHEDULER__PARSING_PROCESSES": "1",
                "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "1",
                "AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD": "8",
                "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
                "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(_free_port()),
                "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(_free_port()),
                **self._kernel_connections(),
            }
        )
        self.env = env

    def start_agent(self) -> None:
        self.agent = DbAgent(self.env, self.base, self.logs / "db-agent.log")
        self.agent.call("ping", timeout=180)

    def _agent(self) -> DbAgent:
        assert self.agent is not None
        return self.agent

    def stop_all(self, grace: float = 10.0) -> None:
        if self.agent is not None:
            self.agent.stop()
        super().stop_all(grace)

    def diagnostics(self, lines: int = 40) -> str:
        text = super().diagnostics(lines)
        if self.agent is not None:
            text += f"\n----- DB helper stderr -----\n{_tail(self.agent.log, lines)}"
        return text

    # --- the same API as AirflowE2E, through the DB helper -----------------------------------------------

    def healthy(self) -> bool:
        jobs = self._agent().call("jobs")
        return all(
            (job := jobs.get(kind)) and job["state"] == "running" and (job["age"] or 99) < 20
            for kind in ("SchedulerJob", "TriggererJob")
        )

    def wait_for_dag(self, dag_id: str, timeout: float = 120) -> None:
        self.wait_until(
            f"DAG {dag_id} to be parsed", lambda: self._agent().call("dag_ready", dag_id=dag_id), timeout, interval=1.0
        )
        self._agent().call("unpause", dag_id=dag_id)

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None) -> str:
        return str(self._agent().call("trigger", dag_id=dag_id, conf=conf or {}))

    def run_state(self, dag_id: str, run_id: str) -> str:
        return str(self._agent().call("run_state", dag_id=dag_id, run_id=run_id))

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        return list(self._agent().call("tis", dag_id=dag_id, run_id=run_id))

    def ti(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> dict[str, Any]:
        found = [
            t for t in self.task_instances(dag_id, run_id) if t["task_id"] == task_id and t["map_index"] == map_index
        ]
        assert found, f"no task instance {dag_id}.{task_id}[{map_index}] in {run_id}"
        return found[0]

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value", map_index: int = -1) -> Any:
        return self._agent().call("xcom", dag_id=dag_id, run_id=run_id, task_id=task_id, key=key, map_index=map_index)

    def clear_run(self, dag_id: str, run_id: str) -> None:
        assert self._agent().call("clear", dag_id=dag_id, run_id=run_id, task_ids=None) > 0

    def clear_tasks(self, dag_id: str, run_id: str, task_ids: list[str]) -> None:
        assert self._agent().call("clear", dag_id=dag_id, run_id=run_id, task_ids=task_ids) > 0

    def mark(self, dag_id: str, run_id: str, task_id: str, state: str) -> None:
        assert self._agent().call("mark", dag_id=dag_id, run_id=run_id, task_id=task_id, state=state) > 0

    def variables(self, prefix: str) -> list[str]:
        return list(self._agent().call("variables", prefix=prefix))

    def triggers(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        return list(self._agent().call("triggers", dag_id=dag_id, run_id=run_id))


H = TypeVar("H", bound=AirflowE2E)


@contextlib.contextmanager
def running(harness: H, *, audit: bool = True) -> Iterator[H]:
    """``harness`` started (:meth:`AirflowE2E.start_all`), then stopped with every process it started, whatever
    happens. With ``audit``, ERROR lines left unchecked after the last test fail the fixture."""
    leftover: list[str] = []
    try:
        took = harness.start_all()
        print(f"\n[{harness.suite_name()}] ready after {took:.1f}s in {harness.base}")
        yield harness
        if audit:
            leftover = harness.audit.check()
    finally:
        harness.stop_all()
    if leftover:
        raise AssertionError("after the last test on this harness: " + failure_text(leftover))


@pytest.fixture(scope="session")
def airflow_e2e(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirflowE2E]:
    """A running Airflow 3.x with the Kernel emulator, shared by every e2e test of the session (on one xdist worker:
    tests/conftest.py groups them); a module needing other DAGs adds them with :meth:`AirflowE2E.deploy`."""
    if AIRFLOW_VERSION < (3, 0):
        pytest.skip(SKIP_REASON)
    if not AIRFLOW.exists():
        pytest.skip(f"no airflow executable next to {sys.executable}")
    with running(AirflowE2E(tmp_path_factory.mktemp("airflow-e2e"))) as e2e:
        yield e2e


@pytest.fixture(scope="session")
def airflow2_e2e(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Airflow2E2E]:
    """A running Airflow 2.11 (scheduler + triggerer) with the Kernel emulator, shared like ``airflow_e2e``."""
    if AIRFLOW_VERSION[0] != 2 or AIRFLOW_VERSION < (2, 11):
        pytest.skip(SKIP_REASON_AF2)
    if not AIRFLOW.exists():
        pytest.skip(f"no airflow executable next to {sys.executable}")
    with running(Airflow2E2E(tmp_path_factory.mktemp("airflow2-e2e"))) as e2e:
        yield e2e


@pytest.fixture
def expect_error_lines(request: pytest.FixtureRequest) -> Callable[..., None]:
    """``expect_error_lines(r"regex", ...)``: ERROR lines this test provokes on purpose (the audit allows them)."""
    declared: list[str] = request.node.__dict__.setdefault("declared_error_lines", [])
    return lambda *patterns: declared.extend(patterns)


def audit_error_lines(item: pytest.Item, e2e: AirflowE2E) -> None:
    """Fail ``item`` on the ERROR lines written since the last check that nothing allows (a test that already
    failed is not failed twice; its lines are consumed all the same)."""
    declared = [str(p) for marker in item.iter_markers("expect_error_lines") for p in marker.args]
    declared += item.__dict__.get("declared_error_lines", [])
    unexpected = e2e.audit.check(declared)
    if unexpected and not item.__dict__.get("e2e_call_failed"):
        pytest.fail(failure_text(unexpected), pytrace=False)


@pytest.fixture(autouse=True)
def _error_line_audit(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    for name in ("airflow_e2e", "airflow2_e2e"):
        if name in request.fixturenames:
            audit_error_lines(request.node, request.getfixturevalue(name))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """How much the ERROR-line audit read, per harness."""
    for audit in AUDITS:
        terminalreporter.write_line(f"[ERROR-line audit] {audit.summary()}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failing e2e test gets the tails of the service logs in its report."""
    outcome = yield
    report = outcome.get_result()
    if report.failed and call.when == "call":
        item.__dict__["e2e_call_failed"] = True
        funcargs = getattr(item, "funcargs", {})
        e2e = funcargs.get("airflow_e2e") or funcargs.get("airflow2_e2e")
        already = call.excinfo is not None and "----- " in str(call.excinfo.value)  # a wait_until timeout
        if isinstance(e2e, AirflowE2E) and not already:
            try:
                report.sections.append(("Airflow service logs (tails)", e2e.diagnostics()))
            except Exception as exc:
                report.sections.append(("Airflow service logs", f"could not collect: {exc}"))
