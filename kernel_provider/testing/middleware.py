"""The ASGI middleware in front of every request: who may ask (:mod:`~.access`), then, for Kernel's API routes,
the token check, the request log and HTTP faults.

It sits outside Starlette so that it can abort the TCP connection (``drop`` faults) through uvicorn's transport.
Stream faults are not applied here: they are handed to the event stream (:mod:`~.invocation_routes`) in the ASGI scope.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import parse_qs

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kernel_provider.testing.access import SAFE_METHODS, HostRules, token_valid
from kernel_provider.testing.admin import LOGIN_PATH, login_page
from kernel_provider.testing.faults import Fault, HttpFault
from kernel_provider.testing.live_view_urls import GRANT_PREFIX, LIVE_PREFIX
from kernel_provider.testing.responses import ADMIN_PREFIX, error_response, json_response, route_template
from kernel_provider.testing.signing import ADMIN_COOKIE, LIVE_ACCESS_SCOPE_KEY, QUERY_PARAM, admin_cookie_valid, verify
from kernel_provider.testing.store import Store
from kernel_provider.testing.timeutil import format_ns, now_ns

#: The ASGI scope key under which the middleware hands a :class:`~.faults.StreamFault` to the event stream.
FAULT_SCOPE_KEY = "kernel_emulator.fault"
#: The ASGI scope key under which it hands a ``browser_launch`` fault to the browser routes (:mod:`~.browser_routes`).
BROWSER_FAULT_SCOPE_KEY = "kernel_emulator.browser_fault"
#: What a state-changing ``/_emulator/`` request must send (a cross-site form can only send three other types).
ADMIN_MEDIA_TYPE = "application/json"
FORM_MEDIA_TYPE = "application/x-www-form-urlencoded"


def _abort_connection(send: Send) -> bool:
    """Abort the client's TCP connection via uvicorn's transport. False if that is not possible."""
    owner = getattr(send, "__self__", None)
    transport = getattr(owner, "transport", None)
    if transport is None:
        return False
    transport.abort()
    if owner is not None and hasattr(owner, "disconnected"):
        owner.disconnected = True  # so uvicorn does not try to answer with a 500
    return True


def _headers(scope: Scope) -> dict[bytes, str]:
    """The request's headers by lower-case name (the first of repeated ones)."""
    found: dict[bytes, str] = {}
    for key, value in scope["headers"]:
        found.setdefault(key, value.decode("latin-1"))
    return found


def _cookie(header: str | None, name: str) -> str | None:
    for part in (header or "").split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None


class EmulatorMiddleware:
    """The access rules for every request; authentication, request recording and faults for Kernel's API."""

    def __init__(self, app: ASGIApp, store: Store) -> None:
        self.app = app
        self.store = store
        self._rules: HostRules | None = None

    def _host_rules(self, scope: Scope) -> HostRules:
        server = scope.get("server") or (None, 80)
        port = int(server[1] or 80)  # the port the request came in on: the bound one
        if self._rules is None or self._rules.port != port:
            self._rules = HostRules(self.store.config.host, port, self.store.config.allow_hosts)
        return self._rules

    def _refusal(self, scope: Scope, headers: dict[bytes, str]) -> Response | None:
        """The answer to a request that may not go further, or None. Kernel API requests without a valid token
        are answered later (:meth:`__call__`), so that the request log shows them."""
        rules = self._host_rules(scope)
        host = headers.get(b"host")
        if host is None or not rules.host_allowed(host):
            return error_response(
                421,
                "misdirected_request",
                f"this emulator does not answer for Host {(host or '')[:100]!r}: use 127.0.0.1, localhost or [::1] "
                "with its port, or start it with --allow-host",
            )
        method: str = scope["method"]
        origin = headers.get(b"origin")
        if method not in SAFE_METHODS and origin is not None and not rules.origin_allowed(origin):
            return error_response(403, "forbidden_origin", f"cross-site {method} refused (Origin {origin[:100]!r})")
        path: str = scope["path"]
        if path.startswith(ADMIN_PREFIX):
            return self._admin_refusal(scope, headers)
        if path.startswith(LIVE_PREFIX):
            return self._live_refusal(scope, headers)
        return None

    def _admin_refusal(self, scope: Scope, headers: dict[bytes, str]) -> Response | None:
        method, path, tokens = scope["method"], scope["path"], self.store.config.tokens
        media_type = headers.get(b"content-type", "").partition(";")[0].strip().lower()
        if path == LOGIN_PATH:  # the sign-in page itself is open; it only checks the token it is given
            if method == "POST" and media_type != FORM_MEDIA_TYPE:
                return error_response(415, "unsupported_media_type", f"sign in with a {FORM_MEDIA_TYPE} form")
            return None
        authorised = token_valid(headers.get(b"authorization"), tokens)
        if not authorised and method in SAFE_METHODS:
            # a browser that signed in at /_emulator/login may read (never change) the emulator's state
            cookie = _cookie(headers.get(b"cookie"), ADMIN_COOKIE)
            authorised = cookie is not None and admin_cookie_valid(cookie, tokens)
        if not authorised:
            if method == "GET" and "text/html" in headers.get(b"accept", ""):
                return login_page(path, 401)
            return error_response(401, "unauthorized", "missing or invalid authorization token")
        if method not in SAFE_METHODS and media_type != ADMIN_MEDIA_TYPE:
            return error_response(415, "unsupported_media_type", f"send {ADMIN_MEDIA_TYPE} (Content-Type)")
        return None

    def _live_refusal(self, scope: Scope, headers: dict[bytes, str]) -> Response | None:
        if scope["path"].startswith(GRANT_PREFIX):  # a minted URL: its page checks the token in its path
            return None
        session_id = scope["path"][len(LIVE_PREFIX) :].split("/", 1)[0]
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        claims = next((c for t in query.get(QUERY_PARAM, []) if (c := verify(t, session_id)) is not None), None)
        if claims is None and token_valid(headers.get(b"authorization"), self.store.config.tokens):
            claims = {"sub": session_id, "access": "control"}
        if claims is None:
            return error_response(401, "unauthorized", "this live-view link is not valid here, or it has expired")
        scope[LIVE_ACCESS_SCOPE_KEY] = claims
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Refuse, record, fault or pass on one request (see the class docstring)."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        refusal = self._refusal(scope, headers)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        if scope["path"].startswith((ADMIN_PREFIX, LIVE_PREFIX)):
            await self.app(scope, receive, send)
            return
        store = self.store
        method: str = scope["method"]
        path: str = scope["path"]
        template = route_template(path)
        auth, user_agent = headers.get(b"authorization"), headers.get(b"user-agent")
        project = headers.get(b"x-kernel-project-id", headers.get(b"x-kernel-project"))
        auth_state = "valid" if token_valid(auth, store.config.tokens) else "missing" if auth is None else "invalid"
        started = time.perf_counter()
        entry: dict[str, Any] = {
            "time": format_ns(now_ns()),
            "method": method,
            "path": path,
            "route": template,
            "query": scope.get("query_string", b"").decode("latin-1"),
            "status": None,
            "project_id": project,
            "user_agent": user_agent,
            "auth": auth_state,
            "fault": None,
            "dropped": None,
            "duration_ms": None,
        }
        store.record_request(entry)

        async def recording_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                entry["status"] = message["status"]
                entry["duration_ms"] = round((time.perf_counter() - started) * 1000, 3)
            await send(message)

        if auth_state != "valid":
            await error_response(401, "unauthorized", "missing or invalid authorization token")(
                scope, receive, recording_send
            )
            return
        if project is not None and project in store.config.unknown_projects:
            await error_response(404, "project_not_found", f"project {project!r} not found")(
                scope, receive, recording_send
            )
            return

        fault = store.faults.pick(method, template)
        if fault is None:
            await self.app(scope, receive, recording_send)
            return
        entry["fault"] = fault.raw
        await self._apply(fault, entry, scope, receive, send, recording_send)

    async def _apply(
        self,
        fault: Fault,
        entry: dict[str, Any],
        scope: Scope,
        receive: Receive,
        send: Send,
        recording_send: Send,
    ) -> None:
        if fault.stream is not None:
            scope[FAULT_SCOPE_KEY] = fault.stream  # applied by the events endpoint
        if fault.browser_launch is not None:
            scope[BROWSER_FAULT_SCOPE_KEY] = fault.browser_launch  # applied by the browser routes
        http = fault.http
        if http is None:
            await self.app(scope, receive, recording_send)
            return
        if http.delay:
            await asyncio.sleep(http.delay)
        streaming = entry["route"] == "/invocations/{id}/events"
        if http.drop == "before" or (http.drop == "after" and streaming):
            # a stream never "finishes", so "after" means "before" there
            entry["dropped"] = "before"
            await self._drop(send)
            return
        answers = http.status is not None or http.body is not None
        if answers and (not http.after or streaming) and http.drop is None:
            await self._fault_response(http, scope, receive, recording_send)
            return
        if http.truncate is not None and not streaming:
            await self._truncated(http.truncate, entry, scope, receive, send, recording_send)
            return
        if http.drop == "after" or (answers and http.after):

            async def swallow(message: Message) -> None:
                if message["type"] == "http.response.start":
                    entry["handled_status"] = message["status"]

            await self.app(scope, receive, swallow)
            if http.drop == "after":
                entry["dropped"] = "after"
                await self._drop(send)
            else:
                await self._fault_response(http, scope, receive, recording_send)
            return
        await self.app(scope, receive, recording_send)

    @staticmethod
    async def _fault_response(fault: HttpFault, scope: Scope, receive: Receive, send: Send) -> None:
        if fault.body is not None:  # a raw (e.g. non-JSON) body, 200 unless a status is given
            headers = fault.response_headers()
            media_type = None if any(k.lower() == "content-type" for k in headers) else "text/plain"
            raw = Response(fault.encoded_body(), fault.status or 200, headers, media_type)
            await raw(scope, receive, send)
            return
        status = fault.status or 500
        response = json_response(fault.error_body(), status, fault.response_headers())
        await response(scope, receive, send)

    async def _truncated(
        self, keep: int, entry: dict[str, Any], scope: Scope, receive: Receive, send: Send, recording_send: Send
    ) -> None:
        """Act, then send the real headers (full Content-Length) but only ``keep`` body bytes, and close."""
        cut = False

        async def cutting_send(message: Message) -> None:
            nonlocal cut
            if message["type"] == "http.response.start":
                await recording_send(message)
            elif message["type"] == "http.response.body" and not cut:
                cut = True
                await send({"type": "http.response.body", "body": message.get("body", b"")[:keep], "more_body": True})

        await self.app(scope, receive, cutting_send)
        entry["dropped"] = "truncated"
        owner = getattr(send, "__self__", None)
        transport = getattr(owner, "transport", None)
        if transport is not None:
            transport.close()  # flushes what was written, then FIN: the client sees a short body
            owner.disconnected = True  # type: ignore[union-attr]  # so uvicorn does not complain or answer

    @staticmethod
    async def _drop(send: Send) -> None:
        if _abort_connection(send):
            return
        # Not uvicorn: start a response and blow up, which makes the server close the connection.
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"10")]})
        raise ConnectionAbortedError("kernel emulator: injected connection drop")
