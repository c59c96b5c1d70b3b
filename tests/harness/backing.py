"""The cluster's backing services, each a throw-away server on 127.0.0.1: PostgreSQL (metadata DB and Celery result
backend) and Redis (Celery broker), and :func:`missing_reason`, why the cluster cannot run here.

Needs Debian's ``postgresql`` and ``redis-server`` (``make cluster-deps`` installs them with apt when run as root)
and the ``[cluster]`` extra. As root, PostgreSQL runs as the ``postgres`` user (``initdb`` refuses root) from a data
directory that user owns.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from tests.harness.processes import ServiceProcess, free_port, wait_port

PG_ROOTS = (Path("/usr/lib/postgresql"),)
REDIS_SERVER = "redis-server"


def _runuser() -> str | None:
    """util-linux's ``runuser`` (in /usr/sbin, often not on a user's PATH)."""
    return shutil.which("runuser") or next(
        (p for p in ("/usr/sbin/runuser", "/sbin/runuser") if os.access(p, os.X_OK)), None
    )


#: Fast failover for tests and demos: a triggerer heartbeats every second (``[triggerer] job_heartbeat_sec``) and


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
        wait_port(self.port, self.server, 60)
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
            wait_port(self.port, self.server, 30)
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
