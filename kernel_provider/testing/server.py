"""``KernelEmulator``: run the emulator in-process (uvicorn in a daemon thread) or in a subprocess."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from kernel_provider.testing.apps import build_registry
from kernel_provider.testing.config import EmulatorConfig
from kernel_provider.testing.emulator_client import EmulatorClient
from kernel_provider.testing.fault_plan import FaultPlan
from kernel_provider.testing.introspection import count_created, wait_for_status
from kernel_provider.testing.invocation import TERMINAL
from kernel_provider.testing.runner import start_action
from kernel_provider.testing.store import Store

T = TypeVar("T")
FaultsArg = FaultPlan | dict[str, Any] | list[Any] | str | Path | None


def _load_faults(faults: FaultsArg, seed: int | None) -> FaultPlan:
    if isinstance(faults, FaultPlan):
        return faults
    if isinstance(faults, (str, Path)) and not str(faults).lstrip().startswith(("{", "[")):
        return FaultPlan.load(faults, default_seed=seed)
    return FaultPlan.from_json(faults, default_seed=seed)


class KernelEmulator:
    """A local Kernel API server.

    >>> with KernelEmulator() as emu:
    ...     Kernel(api_key=emu.token, base_url=emu.url).invocations.create(...)
    """

    def __init__(self, config: EmulatorConfig | None = None, /, **overrides: Any) -> None:
        """Take an :class:`EmulatorConfig` and/or its fields as keywords (``token=`` adds one token)."""
        self.config = EmulatorConfig.build(config, **overrides)
        self.config.validate()
        registry = build_registry(
            self.config.apps, self.config.app_versions, self.config.demo_versions, self.config.env_vars
        )
        faults = _load_faults(self.config.faults, self.config.seed)
        self.store = Store(self.config, registry, faults, start_action=start_action)
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self._client: EmulatorClient | None = None
        self.port = 0

    # ------------------------------------------------------------------ properties
    @property
    def host(self) -> str:
        """The address it binds."""
        return self.config.host

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:54321`` (no trailing slash)."""
        if not self.port:
            raise RuntimeError("the emulator is not started")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def token(self) -> str:
        """The first accepted API token."""
        return self.config.tokens[0]

    @property
    def tokens(self) -> tuple[str, ...]:
        """Every accepted API token."""
        return tuple(self.config.tokens)

    @property
    def client(self) -> EmulatorClient:
        """An :class:`EmulatorClient` for this emulator (same API over HTTP)."""
        if self._client is None:
            self._client = EmulatorClient(self.url, self.token)
        return self._client

    @property
    def running(self) -> bool:
        """Whether its server thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    # ------------------------------------------------------------------ start / stop
    def start(self, timeout: float = 15.0) -> KernelEmulator:
        """Bind the port, start uvicorn in a daemon thread and wait until it serves requests."""
        if self._thread is not None:
            return self
        import uvicorn

        from kernel_provider.testing.app import build_app

        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        # IPPROTO_TCP explicitly: asyncio only sets TCP_NODELAY on sockets whose proto says TCP (else +40 ms)
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.config.port))
        sock.set_inheritable(True)
        self._sock = sock
        self.port = sock.getsockname()[1]
        self.store.base_url = self.url  # browsers' live-view and replay URLs point at this emulator
        config = uvicorn.Config(
            build_app(self.store),
            loop="asyncio",
            http="h11",
            ws="none",
            lifespan="on",
            access_log=False,
            log_level="warning",
            timeout_graceful_shutdown=2,
            timeout_keep_alive=30,
            backlog=4096,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="kernel-emulator", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive():
                self._cleanup()
                raise RuntimeError("the Kernel emulator failed to start (see the log above)")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"the Kernel emulator did not start within {timeout}s")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Fail live invocations, close open streams, stop uvicorn and join its thread."""
        thread, server = self._thread, self._server
        if thread is None or server is None:
            return
        if thread.is_alive() and self.store.loop is not None:
            try:
                self._call(self.store.shutdown, timeout=timeout)
            except Exception:  # the loop may already be gone
                pass
        server.should_exit = True
        thread.join(timeout)
        self._cleanup()

    def _cleanup(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._thread = None
        self._server = None

    def __enter__(self) -> KernelEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ in-process introspection
    def _call(self, fn: Callable[..., T], *args: Any, timeout: float = 60.0) -> T:
        """Run ``fn(*args)`` on the emulator's loop thread (or directly when not running). ``timeout`` bounds the
        wait for the loop to take the call: generous, as a machine running nine test legs on two cores has kept the
        loop's thread off the CPU for over 10 s; a loop that is truly stuck still fails the caller."""
        loop = self.store.loop
        if loop is None or not self.running or threading.get_ident() == self.store.loop_thread:
            return fn(*args)

        async def runner() -> T:
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(runner(), loop).result(timeout)

    def stats(self) -> dict[str, Any]:
        """``{"created", "created_by_key", "live", "by_status", "browsers_live", ...}``."""
        return self._call(self.store.stats)

    def requests(
        self, path: str | None = None, method: str | None = None, route: str | None = None
    ) -> list[dict[str, Any]]:
        """The request log (oldest first), optionally filtered by concrete/templated path, method, route."""
        return self._call(self.store.requests, path, method, route)

    def created_count(self, app: str | None = None, action: str | None = None, payload: Any = None) -> int:
        """How many invocations were created for app/action/payload (payload: the JSON string or a value)."""
        return count_created(self.stats()["created_by_key"], app, action, payload)

    def set_faults(self, plan: FaultsArg) -> FaultPlan:
        """Replace the fault plan (FaultPlan, dict, rule list, JSON text, JSON file path; None clears)."""
        new = _load_faults(plan, self.config.seed)

        def apply() -> None:
            self.store.faults = new

        self._call(apply)
        return new

    def clear_faults(self) -> None:
        """Replace the fault plan with an empty one."""
        self.set_faults(None)

    @property
    def faults(self) -> FaultPlan:
        """The fault plan in force (with its progress)."""
        return self.store.faults

    def reset(self) -> None:
        """Forget invocations, counters, the request log and the fault plan."""
        self._call(self.store.reset)

    def invocation(self, invocation_id: str) -> dict[str, Any] | None:
        """The invocation's JSON (plus an ``_emulator`` section), or None."""

        def get() -> dict[str, Any] | None:
            inv = self.store.invocations.get(invocation_id)
            return inv.admin_dict() if inv is not None else None

        return self._call(get)

    def invocations(self) -> list[dict[str, Any]]:
        """All invocations, oldest first."""
        return self._call(lambda: [inv.admin_dict() for inv in self.store.invocations.values()])

    def wait_for(
        self, invocation_id: str, statuses: tuple[str, ...] = tuple(TERMINAL), timeout: float = 10.0
    ) -> dict[str, Any]:
        """Poll until the invocation reaches one of ``statuses``; raises ``TimeoutError``."""
        return wait_for_status(self.invocation, invocation_id, statuses, timeout, interval=0.01)

    def configure(self, **values: Any) -> dict[str, Any]:
        """Change run-time settings (the config fields marked ``runtime``: heartbeat, concurrency, retention...)."""
        self._call(self.config.update, values)
        return self.config.public()

    # ------------------------------------------------------------------ subprocess
    @classmethod
    def spawn(cls, config: EmulatorConfig | None = None, /, **kwargs: Any) -> EmulatorProcess:
        """Start ``python -m kernel_provider.testing`` in a subprocess; see :func:`spawn_emulator`."""
        return spawn_emulator(config, **kwargs)


class EmulatorProcess:
    """A running ``kernel-emulator`` subprocess: ``.url``, ``.token``, ``.client``, ``.pid``, ``.stop()``."""

    def __init__(self, proc: subprocess.Popen[bytes], url: str, token: str, workdir: tempfile.TemporaryDirectory[str]):
        self.proc = proc
        self.url = url
        self.token = token
        self.client = EmulatorClient(url, token)
        self._workdir = workdir

    @property
    def pid(self) -> int:
        """The subprocess's process id."""
        return self.proc.pid

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, wait (kill after ``timeout``); returns the exit code."""
        self.client.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        self._workdir.cleanup()
        return int(self.proc.returncode)

    def __enter__(self) -> EmulatorProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def spawn_emulator(
    config: EmulatorConfig | None = None,
    /,
    *,
    python: str | None = None,
    extra_args: Sequence[str] = (),
    env: dict[str, str] | None = None,
    timeout: float = 30.0,
    **overrides: Any,
) -> EmulatorProcess:
    """Run the emulator CLI in a subprocess and wait until it is listening.

    ``config`` and/or keyword ``overrides`` (its fields, ``token=``) become CLI flags; ``extra_args`` are added
    as they are. The port is 0 (a free one) unless the config says otherwise.
    """
    config = EmulatorConfig.build(config, **overrides)
    config.validate()  # fail here, with a traceback, rather than in the child
    workdir = tempfile.TemporaryDirectory(prefix="kernel-emulator-")
    url_file = Path(workdir.name) / "url"
    args = [python or sys.executable, "-m", "kernel_provider.testing", *config.to_args()]
    args += ["--url-file", str(url_file), "--quiet", *extra_args]
    proc_env = dict(os.environ)
    proc_env.update(env or {})
    log_path = Path(workdir.name) / "stderr.log"
    with open(log_path, "wb") as stderr:
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=stderr, env=proc_env)
    deadline = time.monotonic() + timeout
    while not url_file.exists() or not url_file.read_text().strip():
        if proc.poll() is not None:
            message = log_path.read_text(errors="replace")
            workdir.cleanup()
            raise RuntimeError(f"kernel-emulator exited with {proc.returncode}:\n{message}")
        if time.monotonic() > deadline:
            proc.kill()
            workdir.cleanup()
            raise TimeoutError("kernel-emulator did not start in time")
        time.sleep(0.02)
    url = url_file.read_text().strip()
    return EmulatorProcess(proc, url, config.tokens[0], workdir)
