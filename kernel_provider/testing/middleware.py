"""The ASGI middleware in front of every non-admin request: authentication, the request log and HTTP faults.

It sits outside Starlette so that it can abort the TCP connection (``drop`` faults) through uvicorn's transport.
Stream faults are not applied here: they are handed to the event stream (:mod:`~.routes`) in the ASGI scope.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kernel_provider.testing.faults import Fault, HttpFault
from kernel_provider.testing.replays import LIVE_PREFIX
from kernel_provider.testing.responses import ADMIN_PREFIX, error_response, json_response, route_template
from kernel_provider.testing.store import Store
from kernel_provider.testing.timeutil import format_ns, now_ns

#: The ASGI scope key under which the middleware hands a :class:`~.faults.StreamFault` to the event stream.
FAULT_SCOPE_KEY = "kernel_emulator.fault"
#: The ASGI scope key under which it hands a ``browser_launch`` fault to the browser routes (:mod:`~.browsers`).
BROWSER_FAULT_SCOPE_KEY = "kernel_emulator.browser_fault"


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


class EmulatorMiddleware:
    """Authentication, request recording and fault injection for every non-admin request."""

    def __init__(self, app: ASGIApp, store: Store) -> None:
        self.app = app
        self.store = store

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Live-view and replay pages are opened by a person's browser, without the API key (as Kernel's are).
        if scope["type"] != "http" or scope["path"].startswith((ADMIN_PREFIX, LIVE_PREFIX)):
            await self.app(scope, receive, send)
            return
        store = self.store
        method: str = scope["method"]
        path: str = scope["path"]
        template = route_template(path)
        auth = project = user_agent = None
        for key, value in scope["headers"]:
            if key == b"authorization":
                auth = value.decode("latin-1")
            elif key == b"user-agent":
                user_agent = value.decode("latin-1")
            elif key in (b"x-kernel-project-id", b"x-kernel-project") and project is None:
                project = value.decode("latin-1")
        if auth is None:
            auth_state = "missing"
        else:
            scheme, _, token = auth.partition(" ")
            auth_state = "valid" if scheme.lower() == "bearer" and token.strip() in store.config.tokens else "invalid"
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
