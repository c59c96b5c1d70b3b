"""``make cluster``: Airflow in its production shape on one machine, wired to the Kernel emulator, to click through.

PostgreSQL (metadata DB and Celery result backend), Redis (Celery broker), and Airflow 3 with the
CeleryExecutor: api-server, scheduler, dag-processor, **two triggerers** and **two Celery workers**, plus the
Kernel emulator with the demo app and the example DAGs. Everything listens on 127.0.0.1 only and lives in a
throw-away directory (``--home``, default a new temporary one) that is removed at the end. Ctrl-C or SIGTERM
stops every process (the leader of each process group, then anything left in the group).

Run from the repository root: ``python -m tests.harness.cluster [--port 8080]``. Needs Debian's ``postgresql`` and
``redis-server`` (``make cluster`` installs them with apt when run as root) and the ``[cluster]`` extra
(``apache-airflow-providers-celery``, ``psycopg2-binary``, ``redis``); see ``backing.py``.

The same building blocks (``backing.Postgres``, ``backing.Redis``, :func:`cluster_settings`, :func:`service_argv`)
start the cluster of ``tests/cluster`` (``airflow_cluster.py``) and ``bench/bench_cluster.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from base64 import urlsafe_b64encode
from collections.abc import Iterator
from pathlib import Path

from tests.harness.backing import Postgres, Redis, missing_reason
from tests.harness.processes import AIRFLOW, BIN, ServiceProcess, free_port, stop_all, wait_port, watch

EXAMPLE_DAGS = Path(__file__).resolve().parents[2] / "example_dags"

#: Fast failover for tests and demos: a triggerer heartbeats every second (``[triggerer] job_heartbeat_sec``) and
#: its triggers move to another one once its heartbeat is 8 s old (``[triggerer] triggerer_health_check_threshold``).
#: Airflow's defaults are 5 s and 30 s; see docs/scale.md.
FAST_FAILOVER = {
    "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "1",
    "AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD": "8",
    # 3.3's "trigger runner appears deadlocked" ERROR (default 30 s) times the supervisor's whole loop, database
    # work included: on a loaded 2-core CI box it fired with no deadlock (tests/harness/base.py says the same).
    "AIRFLOW__TRIGGERER__RUNNER_HEALTH_CHECK_THRESHOLD": "120",
}


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
        emulator = spawn_emulator(apps=[EXAMPLE_DAGS / "demo_app" / "app.py"], org_concurrency=args.kernel_concurrency)
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
                    "AIRFLOW__CORE__DAGS_FOLDER": str(EXAMPLE_DAGS),
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
                wait_port(args.port, services[0], 120)
                print(
                    f"Kernel emulator: {emulator.url} (token {emulator.token}, "
                    f"org concurrency {args.kernel_concurrency}; sign in at {emulator.url}/_emulator/login "
                    "to open invocation links)"
                )
                print(f"PostgreSQL:      127.0.0.1:{postgres.port}   Redis: 127.0.0.1:{redis.port}")
                print(f"Service logs:    {logs}")
                print(f"Airflow UI:      http://127.0.0.1:{args.port}  (127.0.0.1 only, no login; Ctrl-C stops all)")
                return watch(services)
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
