"""Harness of the end-to-end tests: a real Airflow 3.3 (scheduler, dag-processor, triggerer, api-server) on a
temporary SQLite metadata DB with the LocalExecutor, talking to the Kernel emulator in a subprocess.

Everything is started once per module (``airflow_e2e``, about a minute) and torn down at the end: each service
runs in its own process group, and the group plus every descendant (LocalExecutor workers, the triggerer's
runner) is killed at teardown. Service logs go to files in the temporary directory; every bounded wait that
times out, and every failing e2e test, prints their tails.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from base64 import urlsafe_b64encode
from collections.abc import Callable, Iterator
from importlib.metadata import version as dist_version
from pathlib import Path
from typing import Any, TypeVar

import pytest

T = TypeVar("T")

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
BIN = Path(sys.executable).parent
AIRFLOW = BIN / "airflow"
SERVICES = ("scheduler", "dag-processor", "triggerer", "api-server")
EXAMPLE_DAG = ROOT / "example_dags" / "example_kernel_async_sensor.py"
DEMO_APP = ROOT / "example_dags" / "demo_app" / "app.py"
GATE_APP = HERE / "apps" / "gate_app.py"
TRIGGERER_MARK = "(triggerer)"
TERMINAL_TI = frozenset({"success", "failed", "upstream_failed", "skipped", "removed"})
TERMINAL_RUN = frozenset({"success", "failed"})


def _airflow_version() -> tuple[int, int]:
    try:
        parts = dist_version("apache-airflow").split(".")
        return int(parts[0]), int(parts[1])
    except Exception:
        return (0, 0)


AIRFLOW_VERSION = _airflow_version()
SKIP_REASON = (
    f"e2e tests need Airflow >= 3.3 (separate dag-processor, REST API v2, BaseTrigger.on_kill); "
    f"installed: {'.'.join(map(str, AIRFLOW_VERSION))}"
)


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


class Service:
    """One ``airflow <command>`` subprocess in its own process group, logging to a file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path, generation: int) -> None:
        self.name = name
        self.log = log_dir / f"{name}.{generation}.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True, cwd=str(log_dir))

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


class AirflowE2E:
    """The running services, the emulator, and helpers for the REST API, the metadata DB and bounded waits."""

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
        self.env: dict[str, str] = {}
        self.http = httpx.Client(base_url=self.api_url, timeout=30.0)

    # --- set-up ----------------------------------------------------------------------------------------

    def write_dags(self) -> None:
        shutil.copy(HERE / "dags" / "e2e_kernel_dags.py", self.dags / "e2e_kernel_dags.py")
        if EXAMPLE_DAG.exists():
            shutil.copy(EXAMPLE_DAG, self.dags / EXAMPLE_DAG.name)

    def start_emulator(self) -> None:
        from kernel_provider.testing.server import spawn_emulator

        apps: list[Path] = [GATE_APP] + ([DEMO_APP] if DEMO_APP.exists() else [])
        self.emulator = spawn_emulator(apps=apps, env={"KERNEL_E2E_GATE_DIR": str(self.gates)}, timeout=60)

    def build_env(self) -> None:
        from cryptography.fernet import Fernet

        env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
        env.update({
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
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.home / 'airflow.db'}",
            "AIRFLOW__API__BASE_URL": self.api_url,
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(24),
            "AIRFLOW__API_AUTH__JWT_SECRET": urlsafe_b64encode(secrets.token_bytes(32)).decode(),
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "120",
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
            "AIRFLOW_CONN_KERNEL_DEFAULT": json.dumps(
                {"conn_type": "kernel", "host": self.emulator.url, "password": self.emulator.token}),
        })
        self.env = env

    def migrate(self) -> None:
        out = self.logs / "db-migrate.log"
        with open(out, "wb") as log:
            proc = subprocess.run([str(AIRFLOW), "db", "migrate"], env=self.env, stdout=log,
                                  stderr=subprocess.STDOUT, timeout=180, cwd=str(self.base))
        if proc.returncode != 0:
            raise RuntimeError(f"airflow db migrate failed ({proc.returncode}):\n{_tail(out, 60)}")

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
                raise AssertionError(f"Timed out after {timeout:.0f}s waiting for {what}{detail}\n"
                                     f"{self.diagnostics()}")
            time.sleep(interval)

    # --- REST API ---------------------------------------------------------------------------------------

    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.http.request(method, f"/api/v2{path}", **kwargs)
        if response.status_code >= 400:
            raise AssertionError(f"{method} {path} -> HTTP {response.status_code}: {response.text[:1000]}")
        return response.json() if response.content else None

    def healthy(self) -> bool:
        health = self.api("GET", "/monitor/health")
        return all((health.get(part) or {}).get("status") == "healthy"
                   for part in ("metadatabase", "scheduler", "triggerer", "dag_processor"))

    def wait_for_dag(self, dag_id: str, timeout: float = 90) -> None:
        self.wait_until(f"DAG {dag_id} to be parsed", lambda: self.api("GET", f"/dags/{dag_id}"), timeout)
        self.api("PATCH", f"/dags/{dag_id}", json={"is_paused": False})

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None) -> str:
        run = self.api("POST", f"/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf or {}})
        return str(run["dag_run_id"])

    def run_state(self, dag_id: str, run_id: str) -> str:
        return str(self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}")["state"])

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        body = self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 100})
        return list(body["task_instances"])

    def states(self, dag_id: str, run_id: str, task_id: str | None = None) -> dict[tuple[str, int], str | None]:
        return {(ti["task_id"], ti["map_index"]): ti["state"] for ti in self.task_instances(dag_id, run_id)
                if task_id is None or ti["task_id"] == task_id}

    def wait_run_done(self, dag_id: str, run_id: str, timeout: float) -> str:
        return self.wait_until(f"run {run_id} of {dag_id} to finish (task states: see logs)",
                               lambda: (s if (s := self.run_state(dag_id, run_id)) in TERMINAL_RUN else None),
                               timeout, interval=1.0)

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value", map_index: int = -1) -> Any:
        entry = self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}",
                         params={"map_index": map_index, "deserialize": True, "stringify": False})
        return entry["value"]

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
        proc = subprocess.run([sys.executable, "-c", script, dag_id, run_id], env=self.env, capture_output=True,
                              text=True, timeout=120, cwd=str(self.base))
        for line in proc.stdout.splitlines():
            if line.startswith("E2E-JSON "):
                return list(json.loads(line[len("E2E-JSON "):]))
        raise AssertionError(f"reading the trigger table failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-3000:]}")

    # --- emulator ---------------------------------------------------------------------------------------

    def new_gate(self) -> str:
        return f"gate-{uuid.uuid4().hex[:12]}"

    def open_gate(self, name: str) -> None:
        (self.gates / name).touch()

    def kernel_requests(self, invocation_id: str) -> list[dict[str, Any]]:
        """Every request the emulator received about one invocation (oldest first)."""
        prefix = f"/invocations/{invocation_id}"
        return [r for r in self.emulator.client.requests()
                if r["path"] == prefix or r["path"].startswith(prefix + "/")]


@pytest.fixture(scope="module")
def airflow_e2e(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirflowE2E]:
    """A running Airflow 3.3 with the Kernel emulator; shared by every test of the module."""
    if AIRFLOW_VERSION < (3, 3):
        pytest.skip(SKIP_REASON)
    if not AIRFLOW.exists():
        pytest.skip(f"no airflow executable next to {sys.executable}")
    started = time.monotonic()
    e2e = AirflowE2E(tmp_path_factory.mktemp("airflow-e2e"))
    try:
        e2e.write_dags()
        e2e.start_emulator()
        e2e.build_env()
        e2e.migrate()
        for name in SERVICES:
            e2e.start(name)
        e2e.wait_until("all Airflow services to be healthy", e2e.healthy, timeout=150, interval=1.0)
        print(f"\n[e2e] Airflow services healthy after {time.monotonic() - started:.1f}s in {e2e.base}")
        yield e2e
    finally:
        e2e.stop_all()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failing e2e test gets the tails of the service logs in its report."""
    outcome = yield
    report = outcome.get_result()
    if report.failed and call.when == "call":
        e2e = getattr(item, "funcargs", {}).get("airflow_e2e")
        already = call.excinfo is not None and "----- " in str(call.excinfo.value)  # a wait_until timeout
        if isinstance(e2e, AirflowE2E) and not already:
            try:
                report.sections.append(("Airflow service logs (tails)", e2e.diagnostics()))
            except Exception as exc:
                report.sections.append(("Airflow service logs", f"could not collect: {exc}"))
