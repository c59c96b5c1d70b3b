"""What every Airflow harness shares (:class:`AirflowHarness`): the start-up order, the Kernel emulator behind
``HoldingProxy``, the settings of every Airflow process, services, bounded waits, diagnostics, what reached Kernel.

Each Airflow shape adds how it is configured and read: ``airflow3.AirflowE2E`` (REST API v2),
``airflow2.Airflow2E2E`` (Airflow's ORM in a helper process) and ``airflow_cluster.ClusterAirflow`` (PostgreSQL,
Redis, CeleryExecutor). :func:`running` starts one and stops every process it started, whatever happens.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from tests.harness.error_audit import AUDITS, ErrorAudit, failure_text
from tests.harness.processes import AIRFLOW, AIRFLOW_VERSION, BIN, Service, free_port, tail
from tests.harness.proxy import HoldingProxy
from tests.harness.sqlite import never_reuse_trigger_ids, use_write_ahead_log

T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_DAG = ROOT / "example_dags" / "example_kernel_async_sensor.py"
DEMO_APP = ROOT / "example_dags" / "demo_app" / "app.py"
GATE_APP = ROOT / "tests" / "apps" / "gate_app.py"
LIFECYCLE_DAGS = ROOT / "tests" / "e2e" / "dags" / "e2e_lifecycle_dags.py"
#: What ``KernelInvocationTrigger.run()`` appends to the provider's User-Agent.
TRIGGERER_MARK = "(triggerer)"
TERMINAL_RUN = frozenset({"success", "failed"})


def from_triggerer(request: dict[str, Any]) -> bool:
    """Whether a request the emulator recorded was sent by a trigger (its User-Agent carries the mark)."""
    return TRIGGERER_MARK in (request.get("user_agent") or "")


class AirflowHarness:
    """The running services, the emulator, bounded waits and diagnostics; subclasses say how Airflow is configured
    (:meth:`build_env`), which DAGs it starts with (:meth:`write_dags`) and how runs are driven and read."""

    #: Where the operator keeps its retry-safety record: Airflow 3.3's task_state_store, else a Variable.
    records_in_variables = AIRFLOW_VERSION < (3, 3)
    #: The Airflow services :meth:`start_all` starts, in this order.
    service_names: tuple[str, ...] = ()
    #: What :meth:`start_all` waits for once they are started (the bounded wait's description).
    ready_what = "all Airflow services to be healthy"
    ready_timeout = 150.0
    migrate_timeout = 180.0

    def __init__(self, base: Path) -> None:
        import httpx

        self.base = base
        self.home = base / "home"
        self.dags = base / "dags"
        self.gates = base / "gates"
        self.logs = base / "service-logs"
        for folder in (self.home, self.dags, self.gates, self.logs):
            folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.api_url = f"http://127.0.0.1:{self.port}"
        self.services: dict[str, Service] = {}
        self.retired: list[Service] = []
        self.generation = 0
        self.emulator: Any = None
        self.proxy: HoldingProxy | None = None
        self.env: dict[str, str] = {}
        # A loaded api-server (one worker, SQLite) can take tens of seconds for one call: slow is not a failure.
        self.http = httpx.Client(base_url=self.api_url, timeout=60.0)
        #: The ERROR-line audit over the service logs and everything under ``$AIRFLOW_HOME/logs``.
        self.audit = ErrorAudit(self.suite_name(), [self.logs, self.home / "logs"])

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

    def write_dags(self) -> None:
        """Put the DAG files this harness starts with into its DAGs folder (more later: :meth:`deploy`)."""
        raise NotImplementedError

    def start_backing(self) -> None:
        """Services the metadata DB or executor need before Airflow starts (none here; the cluster's PostgreSQL and
        Redis)."""

    def build_env(self) -> None:
        """Set :attr:`env`, the environment of every Airflow process (start from :meth:`_common_env`)."""
        raise NotImplementedError

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

    def start_emulator(self) -> None:
        """The Kernel emulator (gate app, and the demo app when present) behind :class:`HoldingProxy`."""
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

    def _common_env(self) -> dict[str, str]:
        """The settings of every harness, whatever the Airflow version (a fresh Fernet key each, as users'
        deployments have one), on this process's environment minus Airflow's settings.

        ``KERNEL_E2E_PROVIDER_SRC`` (a directory holding a ``kernel_provider`` package, e.g. ``git archive <rev>
        kernel_provider | tar -x -C DIR``) makes every Airflow process use that provider instead of the working
        tree's: to see a test fail on older code."""
        from cryptography.fernet import Fernet

        env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
        other = os.environ.get("KERNEL_E2E_PROVIDER_SRC")
        if other:
            if not (Path(other) / "kernel_provider" / "__init__.py").exists():
                raise RuntimeError(f"KERNEL_E2E_PROVIDER_SRC={other} has no kernel_provider package")
            env["PYTHONPATH"] = os.pathsep.join(p for p in (other, os.environ.get("PYTHONPATH")) if p)
        env.update(
            {
                "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
                "AIRFLOW_HOME": str(self.home),
                # gunicorn 27 (under Airflow 2.11's log server) opens a control socket at $XDG_RUNTIME_DIR/gunicorn.ctl,
                # else ~/.gunicorn/gunicorn.ctl: two harnesses side by side (xdist workers) collided there and one
                # logged ERROR "Address ... already in use". One directory per harness.
                "XDG_RUNTIME_DIR": str(self.home),
                "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
                "AIRFLOW__CORE__FERNET_KEY": Fernet.generate_key().decode(),
                "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
                "AIRFLOW__SCHEDULER__JOB_HEARTBEAT_SEC": "2",
                "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "1",
                # A SIGKILLed triggerer's triggers move to a new one once its heartbeat is this old.
                "AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD": "8",
                # 3.3 logs ERROR "event loop appears deadlocked" when its trigger runner sends nothing for this
                # long; it times the supervisor's whole loop (its database work included), so on a loaded 2-core
                # CI box it fired with no deadlock. A real one still fails the test waiting on it.
                "AIRFLOW__TRIGGERER__RUNNER_HEALTH_CHECK_THRESHOLD": "120",
                "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
                # Free ports for the scheduler's and triggerer's log servers (defaults 8793/8794 may be taken).
                "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
                "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
                **self._kernel_connections(),
            }
        )
        return env

    def migrate(self) -> None:
        """``airflow db migrate``; on SQLite, the trigger ids are then made never to repeat."""
        out = self.logs / "db-migrate.log"
        with open(out, "wb") as log:
            proc = subprocess.run(
                [str(AIRFLOW), "db", "migrate"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=self.migrate_timeout,
                cwd=str(self.base),
            )
        if proc.returncode != 0:
            raise RuntimeError(f"airflow db migrate failed ({proc.returncode}):\n{tail(out, 60)}")
        if self.env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("sqlite:"):
            never_reuse_trigger_ids(self.home / "airflow.db")
            use_write_ahead_log(self.home / "airflow.db")

    def start(self, name: str) -> Service:
        """Start the Airflow service ``name`` (a new log file for each start)."""
        argv = [str(AIRFLOW), name]
        if name == "api-server":
            argv += ["--port", str(self.port), "--host", "127.0.0.1", "--workers", "1"]
        self.generation += 1
        service = Service(name, argv, self.env, self.logs, self.generation)
        self.services[name] = service
        return service

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Signal a service and its family, then SIGKILL what is left (its log stays in the diagnostics)."""
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
        """The tails of every service log, the emulator's stderr and the newest task logs."""
        parts = []
        for service in list(self.services.values()) + self.retired:
            state = "running" if service.alive() else f"exited {service.proc.returncode}"
            parts.append(f"----- {service.log.name} (pid {service.pid}, {state}) -----\n{tail(service.log, lines)}")
        if self.emulator is not None:
            emu_log = Path(self.emulator._workdir.name) / "stderr.log"
            parts.append(f"----- kernel emulator stderr -----\n{tail(emu_log, lines)}")
        task_logs = sorted((self.home / "logs").rglob("*.log"), key=lambda p: p.stat().st_mtime)[-3:]
        for path in task_logs:
            parts.append(f"----- task log {path.relative_to(self.home)} -----\n{tail(path, lines)}")
        return "\n".join(parts)

    def check_services(self) -> None:
        """Fail, with the diagnostics, when a service has died."""
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

    # --- runs and task instances: the same API on every Airflow shape --------------------------------------

    def healthy(self) -> bool:
        """Whether every Airflow service reports healthy."""
        raise NotImplementedError

    def wait_for_dag(self, dag_id: str, timeout: float = 90) -> None:
        """Wait until ``dag_id`` is parsed, then unpause it."""
        raise NotImplementedError

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None) -> str:
        """Start a run; returns its run id."""
        raise NotImplementedError

    def run_state(self, dag_id: str, run_id: str) -> str:
        """A run's state."""
        raise NotImplementedError

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        """A run's task instances (``task_id``, ``map_index``, ``state``, ``try_number``...)."""
        raise NotImplementedError

    def ti(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> dict[str, Any]:
        """One task instance (``state``, ``try_number``, ``max_tries``...)."""
        raise NotImplementedError

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value", map_index: int = -1) -> Any:
        """The value of one XCom."""
        raise NotImplementedError

    def clear_run(self, dag_id: str, run_id: str) -> None:
        """What "Clear" on a whole DAG run does in the UI."""
        raise NotImplementedError

    def clear_tasks(self, dag_id: str, run_id: str, task_ids: list[str]) -> None:
        """What "Clear" on task instances does in the UI (running ones included)."""
        raise NotImplementedError

    def mark(self, dag_id: str, run_id: str, task_id: str, state: str) -> None:
        """What "Mark success/failed" on a task instance does in the UI."""
        raise NotImplementedError

    def variables(self, prefix: str) -> list[str]:
        """The keys of the Airflow Variables starting with ``prefix`` (the run records below Airflow 3.3)."""
        raise NotImplementedError

    def triggers(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        """The trigger rows of a run's deferred tasks, kwargs decrypted."""
        raise NotImplementedError

    def states(self, dag_id: str, run_id: str, task_id: str | None = None) -> dict[tuple[str, int], str | None]:
        """``{(task_id, map_index): state}`` of a run (of one task's instances with ``task_id``)."""
        return {
            (ti["task_id"], ti["map_index"]): ti["state"]
            for ti in self.task_instances(dag_id, run_id)
            if task_id is None or ti["task_id"] == task_id
        }

    def wait_run_done(self, dag_id: str, run_id: str, timeout: float) -> str:
        """Wait until a run has finished; returns its state."""
        return self.wait_until(
            f"run {run_id} of {dag_id} to finish (task states: see logs)",
            lambda: s if (s := self.run_state(dag_id, run_id)) in TERMINAL_RUN else None,
            timeout,
            interval=1.0,
        )

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

    def executor_saw(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> list[str]:
        """The scheduler's log lines about a task instance and its executor: queued for it (written before the
        task runs) or reported back by it (written after, possibly after the DAG run ended). None when no worker
        process ever ran any try of it."""
        reported = f"TaskInstanceKey(dag_id='{dag_id}', task_id='{task_id}', run_id='{run_id}', "
        queued = f"<TaskInstance: {dag_id}.{task_id} {run_id} {f'map_index={map_index} ' if map_index >= 0 else ''}"
        queued += "[scheduled]"  # the task instance as the scheduler queues it for the executor
        logs = [s.log for s in [*self.retired, *self.services.values()] if s.name == "scheduler"]
        return [
            line
            for log in logs
            if log.exists()
            for line in log.read_text(errors="replace").splitlines()
            if (reported in line and f"map_index={map_index})" in line) or queued in line
        ]

    def worker_runs(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> int:
        """How many worker processes ran a task instance, all tries together: the executor reports each one's end
        (a deferring task's too) to the scheduler once, possibly after the DAG run ended."""
        return sum("Received executor event" in line for line in self.executor_saw(dag_id, run_id, task_id, map_index))

    def gate_invocations(self, gate: str) -> list[dict[str, Any]]:
        """The invocations the emulator created for a gate (oldest first): one per ``POST /invocations`` that
        created something for it, whatever else the payload carries (a reconcile token, say)."""
        return [i for i in self.emulator.client.invocations() if gate in (i.get("payload") or "")]

    def invocation(self, invocation_id: str) -> dict[str, Any]:
        """The emulator's view of one invocation (fails when it has none)."""
        found = self.emulator.client.invocation(invocation_id)
        assert found is not None, f"the emulator has no invocation {invocation_id}"
        return found

    def wait_invocation(self, invocation_id: str, statuses: tuple[str, ...], timeout: float) -> dict[str, Any]:
        """Wait until an invocation has one of ``statuses``; returns it."""
        return self.wait_until(
            f"invocation {invocation_id} to be {'/'.join(statuses)}",
            lambda: i if (i := self.invocation(invocation_id))["status"] in statuses else None,
            timeout,
        )

    def new_gate(self) -> str:
        """A fresh gate name for the ``gate`` app's ``wait`` action (closed until :meth:`open_gate`)."""
        return f"gate-{uuid.uuid4().hex[:12]}"

    def open_gate(self, name: str) -> None:
        """Let the invocations waiting on gate ``name`` finish."""
        (self.gates / name).touch()

    def kernel_requests(self, invocation_id: str) -> list[dict[str, Any]]:
        """Every request the emulator received about one invocation (oldest first)."""
        prefix = f"/invocations/{invocation_id}"
        return [r for r in self.emulator.client.requests() if r["path"] == prefix or r["path"].startswith(prefix + "/")]

    def last_seq(self) -> int:
        """The sequence number of the newest request the emulator recorded (0 before any): later ones are new."""
        return max((r["seq"] for r in self.emulator.client.requests()), default=0)


H = TypeVar("H", bound=AirflowHarness)


@contextlib.contextmanager
def running(harness: H, *, audit: bool = True) -> Iterator[H]:
    """``harness`` started (:meth:`AirflowHarness.start_all`), then stopped with every process it started, whatever
    happens. With ``audit``, ERROR lines left unchecked after the last test fail the fixture, and the test summary
    says how many log lines the audit read."""
    leftover: list[str] = []
    if audit:
        AUDITS.append(harness.audit)
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
