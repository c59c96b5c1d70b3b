"""A real local Chromium per emulated Kernel browser: started headless with remote debugging on 127.0.0.1 and a
throw-away profile directory, so Playwright's ``connect_over_cdp`` works offline; killed (with its process group)
and its directory removed when the browser ends.

Each also has a throw-away filesystem root, the emulated browser's ``/`` for the ``/browsers/{id}/fs`` routes
(:mod:`~.fs_routes`): its ``/tmp/downloads`` (:data:`DOWNLOAD_DIR`) is Chromium's default download directory
(profile preferences), so a download with CDP's ``Browser.setDownloadBehavior`` ``behavior: "default"`` lands
there. Removed with the browser, as Kernel deletes a browser's files with it.

Blocking calls (start, stop): the emulator runs them on worker threads, never on its event loop.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

#: Where Chromium is looked for, first hit wins (``KERNEL_EMULATOR_CHROMIUM`` overrides).
CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
#: Files a container runtime leaves behind (Docker, Podman/CRI-O).
CONTAINER_MARKERS = ("/.dockerenv", "/run/.containerenv")
#: Words in ``/proc/1/cgroup`` that mean process 1 lives in a container's cgroup.
CONTAINER_CGROUP_WORDS = ("docker", "kubepods", "containerd", "libpod", "lxc", "podman")
#: Flags for a closed network and a shared machine: no first-run UI, no background fetches, no GPU.
FLAGS = (
    "--headless=new",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
)
START_TIMEOUT = 30.0
#: The emulated browser's download directory (Kernel's docs use this path), under its filesystem root.
DOWNLOAD_DIR = "/tmp/downloads"


def in_container(root: str = "/") -> bool:
    """Whether this process runs inside a container: a runtime's marker file, a container cgroup of process 1,
    or the ``container`` environment variable systemd-nspawn and Podman set."""
    if os.environ.get("container"):  # noqa: SIM112  # lower-case by the container runtimes' convention
        return True
    base = Path(root)
    if any((base / marker.lstrip("/")).exists() for marker in CONTAINER_MARKERS):
        return True
    try:
        cgroup = (base / "proc/1/cgroup").read_text()
    except OSError:
        return False
    return any(word in cgroup for word in CONTAINER_CGROUP_WORDS)


def needs_no_sandbox(*, euid: int, container: bool) -> bool:
    """Whether Chromium must run with ``--no-sandbox``: only as root (its sandbox refuses to start as root) or in a
    container (which usually lacks the user namespaces the sandbox needs). Elsewhere the sandbox stays on, since
    the emulator's browsers open pages the user's actions choose."""
    return euid == 0 or container


def sandbox_flags() -> tuple[str, ...]:
    """``("--no-sandbox",)`` where :func:`needs_no_sandbox` says so for this process, else nothing."""
    euid = os.geteuid() if hasattr(os, "geteuid") else 1
    return ("--no-sandbox",) if needs_no_sandbox(euid=euid, container=in_container()) else ()


def find_chromium() -> str | None:
    """The Chromium executable the emulator uses, or None when there is none."""
    override = os.environ.get("KERNEL_EMULATOR_CHROMIUM")
    if override:
        return override if os.access(override, os.X_OK) else None
    return next((path for path in CANDIDATES if os.access(path, os.X_OK)), None)


class ChromiumError(RuntimeError):
    """Chromium could not be started."""


class ChromiumProcess:
    """One running Chromium. :meth:`start` returns once its DevTools endpoint is listening.

    :param start_url: the page it opens first (``about:blank`` when None).
    :param viewport: the window size ``(width, height)``.
    """

    def __init__(self, start_url: str | None = None, viewport: tuple[int, int] | None = None) -> None:
        self.start_url = start_url or "about:blank"
        self.viewport = viewport
        self.proc: subprocess.Popen[bytes] | None = None
        self.user_data_dir: str | None = None
        #: The emulated browser's ``/`` (None before start and after stop).
        self.fs_root: str | None = None
        self.port = 0
        self.ws_path = ""

    @property
    def cdp_ws_url(self) -> str:
        """The browser-level DevTools websocket URL (``ws://127.0.0.1:<port>/devtools/browser/<id>``)."""
        return f"ws://127.0.0.1:{self.port}{self.ws_path}"

    @property
    def alive(self) -> bool:
        """The process is running."""
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The process id (None before start)."""
        return self.proc.pid if self.proc else None

    def start(self) -> ChromiumProcess:
        """Launch Chromium and wait for its DevTools port; :class:`ChromiumError` when it cannot."""
        exe = find_chromium()
        if exe is None:
            raise ChromiumError(
                "no Chromium found (looked at KERNEL_EMULATOR_CHROMIUM and " + ", ".join(CANDIDATES) + "); "
                "install it with: apt-get install -y chromium"
            )
        self.user_data_dir = tempfile.mkdtemp(prefix="kernel-emulator-browser-")
        self.fs_root = tempfile.mkdtemp(prefix="kernel-emulator-fs-")
        downloads = Path(self.fs_root, DOWNLOAD_DIR.lstrip("/"))
        downloads.mkdir(parents=True)
        prefs = {"download": {"default_directory": str(downloads), "prompt_for_download": False}}
        Path(self.user_data_dir, "Default").mkdir()
        Path(self.user_data_dir, "Default", "Preferences").write_text(json.dumps(prefs))
        args = [exe, *FLAGS, *sandbox_flags(), f"--user-data-dir={self.user_data_dir}"]
        if self.viewport:
            args.append(f"--window-size={self.viewport[0]},{self.viewport[1]}")
        args.append(self.start_url)
        # A session of its own: the whole group (renderers, GPU and zygote helpers) is killed together.
        self.proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        port_file = Path(self.user_data_dir) / "DevToolsActivePort"
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.stop()
                raise ChromiumError(f"Chromium exited at start (exit code {self.proc.returncode})")
            try:
                lines = port_file.read_text().split()
            except OSError:
                lines = []
            if len(lines) >= 2:
                self.port, self.ws_path = int(lines[0]), lines[1]
                return self
            time.sleep(0.05)
        self.stop()
        raise ChromiumError(f"Chromium did not open its DevTools port within {START_TIMEOUT:g}s")

    def cdp_connections(self) -> int:
        """Established TCP connections to the DevTools port (what Kernel counts as activity); 0 when unknown."""
        if not self.port:
            return 0
        count = 0
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            try:
                lines = Path(table).read_text().splitlines()[1:]
            except OSError:
                continue
            for line in lines:
                parts = line.split()
                # local address "HEXIP:HEXPORT", state "01" = ESTABLISHED
                if len(parts) > 3 and parts[3] == "01" and int(parts[1].rsplit(":", 1)[1], 16) == self.port:
                    count += 1
        return count

    def stop(self, grace: float = 3.0) -> None:
        """Kill the process group (TERM, then KILL after ``grace`` seconds) and remove the profile directory."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
                try:
                    os.killpg(proc.pid, sig)
                except (ProcessLookupError, PermissionError):
                    break
                try:
                    proc.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        if proc is not None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # helpers that outlived the main process
            except (ProcessLookupError, PermissionError):
                pass
        for directory in (self.user_data_dir, self.fs_root):
            if directory:
                shutil.rmtree(directory, ignore_errors=True)
        self.user_data_dir = self.fs_root = None
