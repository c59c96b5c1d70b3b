"""The installed Airflow and the processes the harnesses and the developer tools start: the venv's executables,
free ports, log tails; :class:`Service`, an Airflow service of a harness (its whole process family is signalled,
and each start gets a log of its own), and :class:`ServiceProcess`, a server of the developer tools and of the
cluster's PostgreSQL and Redis (its process group is signalled; one log, appended to)."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
from importlib.metadata import version as dist_version
from pathlib import Path
from typing import Any

#: The venv's ``bin/``, not resolved: a venv's ``python`` is often a symlink to the system one.
BIN = Path(sys.executable).parent
AIRFLOW = BIN / "airflow"


def _airflow_version() -> tuple[int, int]:
    try:
        parts = dist_version("apache-airflow").split(".")
        return int(parts[0]), int(parts[1])
    except Exception:
        return (0, 0)


#: The installed Airflow's (major, minor), read from its metadata: importing this module imports no Airflow.
AIRFLOW_VERSION = _airflow_version()


def _ephemeral_ports() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now, for a server started next.

    Picked at random below the kernel's ephemeral range: a port the kernel hands out (``bind(0)``) is also
    the source port of the next outgoing connection, so on a busy machine another process could take it before
    the server binds it ("Address already in use"). Falls back to ``bind(0)``."""
    low, _ = _ephemeral_ports()
    if low > 12000:
        for _ in range(50):
            port = random.randrange(10000, low)
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tail(path: Path, lines: int = 40, width: int | None = None) -> str:
    """The last ``lines`` lines of a log file, each cut to ``width`` characters when given, or why it cannot be
    read (a diagnostic must never raise)."""
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    return "\n".join(line[:width] for line in text.splitlines()[-lines:])


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
        """The process id of the service (the leader of its process group)."""
        return self.proc.pid

    def alive(self) -> bool:
        """Whether the service's leader process still runs."""
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
        """Send ``sig`` to the family, then :meth:`finish` within ``grace`` seconds."""
        self.send(sig)
        self.finish(grace)


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


def wait_port(port: int, proc: ServiceProcess, timeout: float) -> None:
    """Wait until ``proc`` listens on 127.0.0.1:``port``; fail with its log's tail when it exits or is late."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.proc.poll() is not None:
            raise RuntimeError(f"{proc.name} exited ({proc.proc.returncode}):\n{tail(proc.log, 30)}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.2)
    raise RuntimeError(f"{proc.name} did not listen on 127.0.0.1:{port} within {timeout:.0f}s:\n{tail(proc.log, 30)}")


def stop_all(services: list[ServiceProcess], grace: float = 15.0) -> None:
    """SIGTERM every service at once, then give each what is left of ``grace`` before SIGKILLing its group."""
    for service in services:
        if service.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(service.proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for service in services:
        service.stop(grace=max(0.1, deadline - time.monotonic()))


def watch(services: list[ServiceProcess]) -> int:
    """Run until one of ``services`` exits, then say which, with its log's tail; returns 1 (an exit status)."""
    while True:
        for service in services:
            if service.proc.poll() is not None:
                print(f"!! {service.name} exited ({service.proc.returncode}); {service.log}:\n{tail(service.log, 30)}")
                return 1
        time.sleep(1)
