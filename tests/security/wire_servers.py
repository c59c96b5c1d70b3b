"""Small real HTTP servers on loopback that play a hostile or misplaced "Kernel" for the wire tests.

* :class:`Recorder` - another origin: records every request it gets (method, path, headers, body) and answers
  with something a client would gladly trust (a made-up invocation, a list), so a followed redirect would show.
* :class:`Scripted` - answers each request with a status, headers and JSON body picked by a function of the
  request: a redirector, or a Kernel that sends hostile ids and URLs.
"""

from __future__ import annotations

import json
import ssl
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

#: A different host than the servers under test (127.0.0.1): a redirect there changes the origin, not just a port.
OTHER_HOST = "127.0.0.2"


@dataclass
class Seen:
    """One request a server received."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Answer:
    """What a :class:`Scripted` server sends back."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


class _Server:
    def __init__(self, host: str, respond: Callable[[Seen], Answer], tls: ssl.SSLContext | None = None) -> None:
        self.seen: list[Seen] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                request = Seen(self.command, self.path, dict(self.headers.items()), self.rfile.read(length))
                server.seen.append(request)
                answer = respond(request)
                raw = b"" if answer.body is None else json.dumps(answer.body).encode()
                self.send_response(answer.status)
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _any

            def log_message(self, format: str, *args: Any) -> None:  # quiet test output
                pass

        self.httpd = ThreadingHTTPServer((host, 0), Handler)
        self.httpd.daemon_threads = True
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.url = f"{'https' if tls else 'http'}://{host}:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _trusting_answer(request: Seen) -> Answer:
    """What a client would take for Kernel's answer, were it to follow a redirect here."""
    made_up = {"id": "madeupinvocation00000000", "status": "succeeded", "action_name": "echo", "output": "{}"}
    if request.method == "GET" and request.path.split("?")[0] in ("/invocations", "/apps", "/browsers"):
        return Answer(200, [made_up] if request.path.startswith("/invocations") else [])
    return Answer(200, made_up)


@contextmanager
def recorder(host: str = OTHER_HOST) -> Iterator[_Server]:
    """Another origin that records what reaches it and answers as if it were Kernel."""
    server = _Server(host, _trusting_answer)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def scripted(
    respond: Callable[[Seen], Answer], host: str = "127.0.0.1", tls: ssl.SSLContext | None = None
) -> Iterator[_Server]:
    """A server answering each request with ``respond(request)`` (over TLS with ``tls``, a server context)."""
    server = _Server(host, respond, tls)
    server.start()
    try:
        yield server
    finally:
        server.stop()
