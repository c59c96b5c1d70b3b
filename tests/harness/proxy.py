"""``HoldingProxy``: a TCP proxy in front of the emulator that can hold back Kernel's answer to a create.

The e2e harnesses point the connection ``kernel_slow`` at it, so a test can make a worker die after Kernel
recorded its ``POST /invocations`` but before the worker heard back (the emulator's own ``delay`` fault sleeps
*before* reading the request, so a client that dies during it creates nothing).
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any


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
        """Hold back the answers to the next ``count`` creates, each for at most ``max_hold`` seconds."""
        with self._lock:
            self._to_hold, self._max_hold = count, max_hold

    def stop_holding(self) -> None:
        """Let the answers of later creates through (holds already taken stay)."""
        with self._lock:
            self._to_hold = 0

    def close(self) -> None:
        """Stop accepting connections."""
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
