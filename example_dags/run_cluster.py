"""``make cluster``: Airflow in its production shape on one machine, wired to the Kernel emulator, to click through.

PostgreSQL (metadata DB and Celery result backend), Redis (Celery broker), and Airflow 3 with the
CeleryExecutor: api-server, scheduler, dag-processor, **two triggerers** and **two Celery workers**, plus the
Kernel emulator with the demo app and the example DAGs. Everything listens on 127.0.0.1 only and lives in a
throw-away directory (``--home``, default a new temporary one) that is removed at the end. Ctrl-C or SIGTERM
stops every process (the leader of each process group, then anything left in the group).

Needs Debian's ``postgresql`` and ``redis-server`` (``make cluster`` installs them with apt when run as root)
and the ``[cluster]`` extra (``apache-airflow-providers-celery``, ``psycopg2-binary``, ``redis``). As root,
PostgreSQL runs as the ``postgres`` user (``initdb`` refuses root) from a data directory that user owns.

The same building blocks (:class:`Postgres`, :class:`Redis`, :func:`cluster_settings`, :func:`missing_reason`)
start the cluster of ``tests/cluster`` and ``bench/bench_cluster.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from base64 import urlsafe_b64encode
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BIN = Path(sys.executable).parent
AIRFLOW = BIN / "airflow"
PG_ROOTS = (Path("/usr/lib/postgresql"),)
REDIS_SERVER = "redis-server"


def _runuser() -> str | None:
    """util-linux's ``runuser`` (in /usr/sbin, often not on a user's PATH)."""
    return shutil.which("runuser") or next(
        (p for p in ("/usr/sbin/runuser", "/sbin/runuser") if os.access(p, os.X_OK)), None
    )


#: Fast failover for tests and demos: a triggerer heartbeats every second (``[triggerer] job_heartbeat_sec``) and
#: its triggers move to another one once its heartbeat is 8 s old (``[triggerer] triggerer_health_check_threshold``).
#: Airflow's defaults are 5 s and 30 s; see README "Running at scale".
FAST_FAILOVER = {
    "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "1",
    "AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD": "8",
}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pg_bin() -> Path | None:
    """The newest ``/usr/lib/postgresql/<version>/bin`` holding ``initdb`` and ``postgres``, if any."""
    found = []
    for root in PG_ROOTS:
        if root.is_dir():
            for version in root.iterdir():
                if (version / "bin" / "initdb").exists() and (version / "bin" / "postgres").exists():
                    found.append(version / "bin")
    return (
        max(found, key=lambda p: float(p.parent.name) if p.parent.name.replace(".", "").isdigit() else 0.0)
        if (found)
        else None
    )


def missing_reason() -> str | None:
    """Why the cluster cannot run here (None when it can): a missing server binary or Python package."""
    missing = []
    if pg_bin() is None:
        missing.append("PostgreSQL server (Debian package postgresql; `make cluster-deps` as root installs it)")
    if shutil.which(REDIS_SERVER) is None:
        missing.append("redis-server (Debian package redis-server; `make cluster-deps` as root installs it)")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            missing.append("a `postgres` user to run PostgreSQL as (initdb refuses root)")
        if _runuser() is None:
            missing.append("runuser (util-linux), to run PostgreSQL as the `postgres` user")
    for module, dist in (
        ("airflow.providers.celery", "apache-airflow-providers-celery"),
        ("psycopg2", "psycopg2"),
        ("asyncpg", "asyncpg"),
        ("redis", "redis"),
    ):
        try:
            __import__(module)
        except ImportError:
            missing.append(f"Python package {dist} (pip install -e '.[cluster]')")
    return "; ".join(missing) or None


class ServiceProcess:
    """A server subprocess in its own process group, logging to a file."""

    def __init__(self, name: str, argv: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.log = log
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=str(log.parent)
            )

    def stop(self, sig: int = signal.SIGTERM, grace: float = 15.0) -> None:
        """``sig`` to the group, wait ``grace`` seconds, then SIGKILL the group."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(grace)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)


def _wait_port(port: int, proc: ServiceProcess, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.proc.poll() is not None:
            raise RuntimeError(f"{proc.name} exited ({proc.proc.returncode}):\n{_tail(proc.log)}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.2)
    raise RuntimeError(f"{proc.name} did not listen on 127.0.0.1:{port} within {timeout:.0f}s:\n{_tail(proc.log)}")


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"


class Postgres:
    """A throw-away PostgreSQL on 127.0.0.1 (free port), password auth, database ``airflow``.

    Its data directory is a fresh temporary directory (not under the caller's, which the ``postgres`` user may
    not be able to enter), removed by :meth:`stop`.
    """

    def __init__(self, log_dir: Path) -> None:
        found = pg_bin()
        if found is None:
            raise RuntimeError("no PostgreSQL server found under /usr/lib/postgresql")
        self.bin = found
        self.port = free_port()
        self.password = secrets.token_hex(12)
        self.dir = Path(tempfile.mkdtemp(prefix="kernel-cluster-pg-"))
        self.log = log_dir / "postgres.log"
        self.server: ServiceProcess | None = None
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        self._run_as: list[str] = []
        if os.geteuid() == 0:
            os.chown(self.dir, pwd.getpwnam("postgres").pw_uid, -1)
            self._run_as = [_runuser() or "runuser", "-u", "postgres", "--"]
        pwfile = self.dir / "pw"
        pwfile.write_text(self.password + "\n")
        if os.geteuid() == 0:
            os.chown(pwfile, pwd.getpwnam("postgres").pw_uid, -1)
        init = subprocess.run(
            [
                *self._run_as,
                str(self.bin / "initdb"),
                "-D",
                str(self.dir / "data"),
                "-U",
                "airflow",
                f"--pwfile={pwfile}",
                "--auth-local=scram-sha-256",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--no-sync",
            ],
            capture_output=True,
            text=True,
        )
        pwfile.unlink()
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed ({init.returncode}):\n{init.stdout}\n{init.stderr}")
        self.server = ServiceProcess(
            "postgres",
            [
                *self._run_as,
                str(self.bin / "postgres"),
                "-D",
                str(self.dir / "data"),
                "-p",
                str(self.port),
                "-k",
                str(self.dir),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "max_connections=300",
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
            ],
            self.log,
        )
        _wait_port(self.port, self.server, 60)
        self._create_database()

    def _create_database(self) -> None:
        env = {**os.environ, "PGPASSWORD": self.password}
        deadline = time.monotonic() + 30
        while True:
            done = subprocess.run(
                [str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "airflow", "airflow"],
                env=env,
                capture_output=True,
                text=True,
            )
            if done.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"createdb failed: {done.stderr}")
            time.sleep(0.5)  # "the database system is starting up"

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the ``airflow`` database."""
        return f"postgresql+psycopg2://airflow:{self.password}@127.0.0.1:{self.port}/airflow"

    def stop(self) -> None:
        """Fast shutdown (SIGINT), then remove the data directory."""
        if self.server is not None:
            with contextlib.suppress(Exception):
                self.server.stop(signal.SIGINT, grace=20)
        shutil.rmtree(self.dir, ignore_errors=True)


class Redis:
    """A throw-away Redis on 127.0.0.1 (free port), password required, nothing persisted."""

    def __init__(self, log_dir: Path) -> None:
        self.port = free_port()
        self.password = secrets.token_hex(12)
        self.dir = Path(tempfile.mkdtemp(prefix="kernel-cluster-redis-"))
        self.server: ServiceProcess | None = None
        try:
            conf = self.dir / "redis.conf"
            # In a file, not on the command line, so the password is not in the process list.
            conf.write_text(
                f"port {self.port}\nbind 127.0.0.1\nprotected-mode yes\nrequirepass {self.password}\n"
                f'save ""\nappendonly no\ndir {self.dir}\ndaemonize no\n'
            )
            conf.chmod(0o600)
            self.server = ServiceProcess(
                "redis", [shutil.which(REDIS_SERVER) or REDIS_SERVER, str(conf)], log_dir / "redis.log"
            )
            _wait_port(self.port, self.server, 30)
        except BaseException:
            self.stop()
            raise

    @property
    def url(self) -> str:
        """Celery broker URL."""
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        """SIGTERM (Redis exits at once, nothing to save), then remove its directory."""
        if self.server is not None:
            with contextlib.suppress(Exception):
                self.server.stop(signal.SIGTERM, grace=10)
        shutil.rmtree(self.dir, ignore_errors=True)


def cluster_settings(
    db_url: str, broker_url: str, *, api_port: int, worker_concurrency: int = 8, fast_failover: bool = True
) -> dict[str, str]:
    """The Airflow settings (environment variables) of the cluster: PostgreSQL, CeleryExecutor on Redis, the
    api-server on 127.0.0.1, secrets shared by every component. ``fast_failover`` adds :data:`FAST_FAILOVER`."""
    from cryptography.fernet import Fernet

    api_url = f"http://127.0.0.1:{api_port}"
    settings = {
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": db_url,
        "AIRFLOW__CELERY__BROKER_URL": broker_url,
        "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + db_url,
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(worker_concurrency),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__FERNET_KEY": Fernet.generate_key().decode(),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{api_url}/execution/",
        "AIRFLOW__API__BASE_URL": api_url,
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(api_port),
        "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(24),
        "AIRFLOW__API_AUTH__JWT_SECRET": urlsafe_b64encode(secrets.token_bytes(32)).decode(),
        # Free ports even though no log server is started (every service runs with --skip-serve-logs: they
        # would bind 0.0.0.0; on one machine the api-server reads task and trigger logs from the shared folder).
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
    }
    if fast_failover:
        settings.update(FAST_FAILOVER)
    return settings


def service_argv(
    service: str,
    index: int = 0,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    concurrency: int | None = None,
    pid_dir: Path | None = None,
) -> list[str]:
    """``airflow`` command line of one cluster service, bound to ``host`` and without a 0.0.0.0 log server.

    ``service`` is ``api-server``, ``scheduler``, ``dag-processor``, ``triggerer`` or ``worker``; ``index``
    tells the copies of a worker apart (Celery node name, pid file). ``port`` is the api-server's.
    """
    if service == "api-server":
        return [str(AIRFLOW), "api-server", "--host", host, "--workers", "1", *(["--port", str(port)] if port else [])]
    if service in ("scheduler", "triggerer"):
        return [str(AIRFLOW), service, "--skip-serve-logs"]
    if service == "dag-processor":
        return [str(AIRFLOW), "dag-processor"]
    if service == "worker":
        argv = [
            str(AIRFLOW),
            "celery",
            "worker",
            "--skip-serve-logs",
            "--celery-hostname",
            f"worker{index}-{secrets.token_hex(3)}@%h",
            "--without-mingle",
            "--without-gossip",
        ]
        if concurrency:
            argv += ["--concurrency", str(concurrency)]
        if pid_dir is not None:
            argv += ["--pid", str(pid_dir / f"worker{index}-{secrets.token_hex(3)}.pid")]
        return argv
    raise ValueError(f"unknown cluster service {service!r}")


def stop_all(services: list[ServiceProcess], grace: float = 15.0) -> None:
    """SIGTERM every service at once, then give each what is left of ``grace`` before SIGKILLing its group."""
    for service in services:
        if service.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(service.proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for service in services:
        service.stop(grace=max(0.1, deadline - time.monotonic()))


@contextlib.contextmanager
def _backing_services(log_dir: Path) -> Iterator[tuple[Postgres, Redis]]:
    postgres = Postgres(log_dir)
    try:
        redis = Redis(log_dir)
        try:
            yield postgres, redis
        finally:
            redis.stop()
    finally:
        postgres.stop()


def main(argv: list[str] | None = None) -> int:
    """Start the cluster, print where it is, and run until Ctrl-C / SIGTERM."""
    from kernel_provider.testing import airflow_connection
    from kernel_provider.testing.server import spawn_emulator

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, help="throw-away directory (default: a new temporary one)")
    parser.add_argument("--port", type=int, default=8080, help="api-server port on 127.0.0.1 (default 8080)")
    parser.add_argument("--worker-concurrency", type=int, default=4, help="task slots per Celery worker")
    parser.add_argument("--kernel-concurrency", type=int, default=5, help="emulator org concurrency (and pool)")
    args = parser.parse_args(argv)
    reason = missing_reason()
    if reason:
        print(f"Cannot start the cluster: missing {reason}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the clean-up below on SIGTERM too

    base = Path(tempfile.mkdtemp(prefix="kernel-cluster-")) if args.home is None else args.home
    owns_base = args.home is None
    home, logs = base / "home", base / "logs"
    for folder in (home, logs):
        folder.mkdir(parents=True, exist_ok=True)
    services: list[ServiceProcess] = []
    emulator = None
    try:
        emulator = spawn_emulator(apps=[HERE / "demo_app" / "app.py"], org_concurrency=args.kernel_concurrency)
        with _backing_services(logs) as (postgres, redis):
            env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
            env.update(
                cluster_settings(
                    postgres.url, redis.url, api_port=args.port, worker_concurrency=args.worker_concurrency
                )
            )
            env.update(
                {
                    "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
                    "AIRFLOW_HOME": str(home),
                    "AIRFLOW__CORE__DAGS_FOLDER": str(HERE),
                    "AIRFLOW__CORE__TEST_CONNECTION": "Enabled",
                    "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
                    "AIRFLOW_CONN_KERNEL_DEFAULT": airflow_connection(
                        emulator.url, emulator.token, dashboard_url=f"{emulator.url}/_emulator"
                    ),
                }
            )
            print("==> airflow db migrate (PostgreSQL)", flush=True)
            subprocess.run(
                [str(AIRFLOW), "db", "migrate"], env=env, check=True, stdout=subprocess.DEVNULL, cwd=str(base)
            )
            subprocess.run(
                [str(AIRFLOW), "pools", "set", "kernel", str(args.kernel_concurrency), "Kernel concurrency"],
                env=env,
                check=True,
                stdout=subprocess.DEVNULL,
                cwd=str(base),
            )
            plan = [("api-server", 0), ("scheduler", 0), ("dag-processor", 0)]
            plan += [("triggerer", 1), ("triggerer", 2), ("worker", 1), ("worker", 2)]
            try:
                for name, index in plan:
                    label = f"{name}{index or ''}"
                    argv_ = service_argv(name, index, port=args.port, pid_dir=base)
                    services.append(ServiceProcess(label, argv_, logs / f"{label}.log", env))
                _wait_port(args.port, services[0], 120)
                print(
                    f"Kernel emulator: {emulator.url} (token {emulator.token}, "
                    f"org concurrency {args.kernel_concurrency}; sign in at {emulator.url}/_emulator/login "
                    "to open invocation links)"
                )
                print(f"PostgreSQL:      127.0.0.1:{postgres.port}   Redis: 127.0.0.1:{redis.port}")
                print(f"Service logs:    {logs}")
                print(f"Airflow UI:      http://127.0.0.1:{args.port}  (127.0.0.1 only, no login; Ctrl-C stops all)")
                while True:
                    for service in services:
                        if service.proc.poll() is not None:
                            print(f"!! {service.name} exited ({service.proc.returncode}):\n{_tail(service.log)}")
                            return 1
                    time.sleep(1)
            finally:
                # Airflow first, while PostgreSQL and Redis still answer its goodbyes.
                print("==> stopping the cluster", flush=True)
                stop_all(services)
    except KeyboardInterrupt:
        return 130
    finally:
        if emulator is not None:
            emulator.stop()
        if owns_base:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
