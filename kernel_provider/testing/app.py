"""The Starlette application: Kernel's invocation/app routes, the SSE follow stream and the admin routes.

Auth, the request log and fault injection live in :class:`EmulatorMiddleware`, a plain ASGI middleware placed
outside Starlette so that it can abort the TCP connection (``drop`` faults) through uvicorn's transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import AsyncIterator
from typing import Any

from sse_starlette import EventSourceResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kernel_provider.testing.faults import Fault, FaultPlan
from kernel_provider.testing.state import STATUSES, Invocation, Store, dumps
from kernel_provider.testing.timeutil import format_ns, now_ns, parse_since

ADMIN_PREFIX = "/_emulator/"
_ROUTES = (
    (re.compile(r"^/invocations/?$"), "/invocations"),
    (re.compile(r"^/invocations/[^/]+/events/?$"), "/invocations/{id}/events"),
    (re.compile(r"^/invocations/[^/]+/browsers/?$"), "/invocations/{id}/browsers"),
    (re.compile(r"^/invocations/[^/]+/?$"), "/invocations/{id}"),
    (re.compile(r"^/apps/?$"), "/apps"),
)
FAULT_SCOPE_KEY = "kernel_emulator.fault"


def route_template(path: str) -> str:
    """The templated form of a request path (``/invocations/abc`` → ``/invocations/{id}``)."""
    for pattern, template in _ROUTES:
        if pattern.match(path):
            return template
    return path


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    """A Kernel ``Error`` body."""
    return Response(dumps({"code": code, "message": message}), status, headers, "application/json")


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(dumps(body), status, headers, "application/json")


class BadRequest(Exception):
    """Raised by validators; becomes a 400 ``bad_request``."""


# ----------------------------------------------------------------------------------------------- middleware
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
        if scope["type"] != "http" or scope["path"].startswith(ADMIN_PREFIX):
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
        if fault.delay:
            await asyncio.sleep(fault.delay)
        streaming = entry["route"] == "/invocations/{id}/events"
        if fault.drop == "before" or (fault.drop == "after" and streaming):
            # a stream never "finishes", so "after" means "before" there
            entry["dropped"] = "before"
            await self._drop(send)
            return
        answers = fault.status is not None or fault.body is not None
        if answers and (not fault.after or streaming) and fault.drop is None:
            await self._fault_response(fault, scope, receive, recording_send)
            return
        if fault.truncate is not None and not streaming:
            await self._truncated(fault.truncate, entry, scope, receive, send, recording_send)
            return
        if fault.drop == "after" or (answers and fault.after):

            async def swallow(message: Message) -> None:
                if message["type"] == "http.response.start":
                    entry["handled_status"] = message["status"]

            await self.app(scope, receive, swallow)
            if fault.drop == "after":
                entry["dropped"] = "after"
                await self._drop(send)
            else:
                await self._fault_response(fault, scope, receive, recording_send)
            return
        scope[FAULT_SCOPE_KEY] = fault  # SSE-only faults are applied by the events endpoint
        await self.app(scope, receive, recording_send)

    @staticmethod
    async def _fault_response(fault: Fault, scope: Scope, receive: Receive, send: Send) -> None:
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


# ----------------------------------------------------------------------------------------------- helpers
def _store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


async def _json_body(request: Request) -> Any:
    raw = await request.body()
    if not raw:
        raise BadRequest("request body is required")
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from exc


def _int_param(request: Request, name: str, default: int, low: int, high: int | None) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise BadRequest(f"invalid {name}: {raw!r} is not an integer") from exc
    if value < low or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f">= {low}"
        raise BadRequest(f"invalid {name}: must be {bounds}, got {value}")
    return value


def _since_param(request: Request) -> int | None:
    raw = request.query_params.get("since")
    try:
        return parse_since(raw, now_ns())
    except ValueError as exc:
        raise BadRequest(
            f"invalid since: {raw!r} is neither an RFC 3339 timestamp nor a duration like 5m or 1h30m"
        ) from exc


def _page_headers(limit: int, offset: int, count: int, has_more: bool) -> dict[str, str]:
    return {
        "X-Limit": str(limit),
        "X-Offset": str(offset),
        "X-Next-Offset": str(offset + count if has_more else 0),
        "X-Has-More": "true" if has_more else "false",
    }


def _lookup(request: Request) -> Invocation | Response:
    inv_id = request.path_params["id"]
    inv = _store(request).invocations.get(inv_id)
    if inv is None:
        return error_response(404, "not_found", f"invocation {inv_id!r} not found")
    return inv


# ----------------------------------------------------------------------------------------------- Kernel API
async def create_invocation(request: Request) -> Response:
    store = _store(request)
    try:
        body = await _json_body(request)
        if not isinstance(body, dict):
            raise BadRequest("request body must be a JSON object")
        fields = _validate_create(body)
    except BadRequest as exc:
        return error_response(400, "bad_request", str(exc))
    app_name, version, action_name, payload, payload_value, is_async, timeout = fields
    spec = store.registry.resolve(app_name, version, action_name)
    if isinstance(spec, str):
        return error_response(404, "not_found", spec)
    busy = store.capacity_error(app_name)
    if busy is not None:
        return error_response(429, "rate_limited", busy, {"Retry-After": str(store.config.retry_after)})
    project = request.headers.get("x-kernel-project-id") or request.headers.get("x-kernel-project")
    inv = store.create(spec, app_name, version, payload, payload_value, is_async, timeout, project)
    if is_async:
        return json_response(inv.invoke_response(store.legacy), 202)
    try:
        await asyncio.wait_for(inv.done.wait(), store.config.sync_timeout)
    except asyncio.TimeoutError:
        store.sync_cap_exceeded(inv)
    return json_response(inv.invoke_response(store.legacy), 200)


def _validate_create(body: dict[str, Any]) -> tuple[str, str, str, str | None, Any, bool, int]:
    def required_str(name: str) -> str:
        value = body.get(name)
        if value is None or value == "":
            raise BadRequest(f"Missing required field: {name}")
        if not isinstance(value, str):
            raise BadRequest(f"invalid {name}: must be a string")
        return value

    app_name = required_str("app_name")
    action_name = required_str("action_name")
    version = body.get("version")
    if version is None or version == "":
        version = "latest"
    elif not isinstance(version, str):
        raise BadRequest("invalid version: must be a string")
    payload = body.get("payload")
    payload_value: Any = None
    if payload is not None:
        if not isinstance(payload, str):
            raise BadRequest('invalid payload: must be a JSON-encoded string, e.g. "{\\"key\\":1}"')
        if payload.strip():
            try:
                payload_value = json.loads(payload)
            except ValueError as exc:
                raise BadRequest(f"invalid payload: not valid JSON text ({exc})") from exc
    is_async = body.get("async", False)
    if is_async is None:
        is_async = False
    if not isinstance(is_async, bool):
        raise BadRequest("invalid async: must be a boolean")
    timeout = body.get("async_timeout_seconds", 900)
    if timeout is None:
        timeout = 900
    if isinstance(timeout, bool) or not isinstance(timeout, int):
        raise BadRequest("invalid async_timeout_seconds: must be an integer")
    if not 10 <= timeout <= 3600:
        raise BadRequest(f"invalid async_timeout_seconds: must be between 10 and 3600, got {timeout}")
    return app_name, version, action_name, payload, payload_value, is_async, timeout


async def get_invocation(request: Request) -> Response:
    found = _lookup(request)
    if isinstance(found, Response):
        return found
    return json_response(found.to_dict(_store(request).legacy))


async def update_invocation(request: Request) -> Response:
    store = _store(request)
    found = _lookup(request)
    if isinstance(found, Response):
        return found
    try:
        body = await _json_body(request)
        if not isinstance(body, dict):
            raise BadRequest("request body must be a JSON object")
        status = body.get("status")
        if status is None:
            raise BadRequest("Missing required field: status")
        if status not in ("succeeded", "failed"):
            raise BadRequest(f"invalid status: must be 'succeeded' or 'failed', got {status!r}")
        output = body.get("output")
        if output is not None and not isinstance(output, str):
            raise BadRequest("invalid output: must be a string")
    except BadRequest as exc:
        return error_response(400, "bad_request", str(exc))
    if not found.terminal:  # a PATCH on a terminal invocation leaves it unchanged (documented choice)
        reason = "Invocation cancelled" if status == "failed" else None
        store.terminate(found, status, reason, output, destroy_browsers=status == "failed")
    return json_response(found.to_dict(store.legacy))


async def list_invocations(request: Request) -> Response:
    store = _store(request)
    params = request.query_params
    try:
        limit = _int_param(request, "limit", 20, 1, 100)
        offset = _int_param(request, "offset", 0, 0, None)
        since_ns = _since_param(request)
        status = params.get("status") or None
        if status is not None and status not in STATUSES:
            raise BadRequest(f"invalid status: must be one of {', '.join(STATUSES)}")
    except BadRequest as exc:
        return error_response(400, "bad_request", str(exc))
    page, has_more = store.search(
        app_name=params.get("app_name") or None,
        version=params.get("version") or None,
        action_name=params.get("action_name") or None,
        deployment_id=params.get("deployment_id") or None,
        status=status,
        since_ns=since_ns,
        query=params.get("query") or None,
        limit=limit,
        offset=offset,
    )
    legacy = store.legacy
    return json_response([inv.to_dict(legacy) for inv in page], 200, _page_headers(limit, offset, len(page), has_more))


async def list_browsers(request: Request) -> Response:
    found = _lookup(request)
    if isinstance(found, Response):
        return found
    return json_response({"browsers": list(found.browsers)})


async def delete_browsers(request: Request) -> Response:
    found = _lookup(request)
    if isinstance(found, Response):
        return found
    found.browsers.clear()
    return Response(status_code=204)


async def list_apps(request: Request) -> Response:
    store = _store(request)
    params = request.query_params
    try:
        limit = _int_param(request, "limit", 20, 1, 100)
        offset = _int_param(request, "offset", 0, 0, None)
    except BadRequest as exc:
        return error_response(400, "bad_request", str(exc))
    found = store.registry.search(
        params.get("app_name") or None, params.get("version") or None, params.get("query") or None
    )
    page = found[offset : offset + limit]
    has_more = offset + len(page) < len(found)
    return json_response([v.summary() for v in page], 200, _page_headers(limit, offset, len(page), has_more))


# ----------------------------------------------------------------------------------------------- SSE
def _frame(data: str) -> bytes:
    return b"data: " + data.encode() + b"\n\n"


async def follow_invocation(request: Request) -> Response:
    store = _store(request)
    found = _lookup(request)
    if isinstance(found, Response):
        return found
    try:
        since_ns = _since_param(request)
    except BadRequest as exc:
        return error_response(400, "bad_request", str(exc))
    fault: Fault | None = request.scope.get(FAULT_SCOPE_KEY)
    return EventSourceResponse(
        _event_stream(store, found, since_ns, fault),
        headers={"X-SSE-Content-Type": "application/json"},
        ping=0,
        sep="\n",
    )


async def _event_stream(
    store: Store, inv: Invocation, since_ns: int | None, fault: Fault | None
) -> AsyncIterator[bytes]:
    """The follow stream: state on connect, log history, then live events and heartbeats until terminal."""
    queue: asyncio.Queue[tuple[str, bool]] = asyncio.Queue()
    # Snapshot and subscription happen in one synchronous step on the loop: nothing can slip in between.
    history = [data for ns, data in inv.logs if since_ns is None or ns > since_ns]
    initial = store.state_event(inv)
    finished = inv.terminal
    if not finished:
        inv.subscribers.append(queue)
    store.open_streams += 1
    budget = fault.cut_after_events if fault is not None else None
    sent = 0

    def spend() -> bool:
        """Count one event; True when a ``cut_after_events`` fault says the stream must end now."""
        nonlocal sent
        sent += 1
        return budget is not None and sent >= budget

    try:
        if budget == 0:
            return
        if not finished:
            yield _frame(initial)
            if spend():
                return
        if fault is not None and fault.raw_sse_data is not None:
            yield b"data: " + fault.raw_sse_data.encode("utf-8", "surrogateescape") + b"\n\n"
        if fault is not None and fault.error_event is not None:
            yield _frame(dumps({"event": "error", "timestamp": format_ns(now_ns()), "error": fault.error_event}))
            if spend() or fault.error_then_close:
                return
        if fault is not None and fault.silent:
            if finished:
                yield _frame(initial)
            # say nothing more until the client goes away (or the emulator stops)
            await (store.stopping or asyncio.Event()).wait()
            return
        for data in history:
            yield _frame(data)
            if spend():
                return
        if finished:
            yield _frame(initial)
            return
        heartbeat = store.config.heartbeat
        while True:
            try:
                data, terminal = await asyncio.wait_for(queue.get(), heartbeat)
            except asyncio.TimeoutError:
                data, terminal = dumps({"event": "sse_heartbeat", "timestamp": format_ns(now_ns())}), False
            if budget is not None and terminal:
                return  # a cut stream never delivers the terminal state
            yield _frame(data)
            if terminal or spend():
                return
    finally:
        store.open_streams -= 1
        if queue in inv.subscribers:
            inv.subscribers.remove(queue)


# ----------------------------------------------------------------------------------------------- admin
async def admin_health(request: Request) -> Response:
    store = _store(request)
    return json_response({"status": "ok", "invocations": len(store.invocations), "live": store.live_total})


async def admin_stats(request: Request) -> Response:
    return json_response(_store(request).stats())


async def admin_requests(request: Request) -> Response:
    params = request.query_params
    entries = _store(request).requests(params.get("path"), params.get("method"), params.get("route"))
    return json_response(entries)


async def admin_faults(request: Request) -> Response:
    store = _store(request)
    if request.method == "GET":
        return json_response(store.faults.to_json())
    raw = await request.body()
    try:
        data = json.loads(raw) if raw.strip() else None
        store.faults = FaultPlan.from_json(data, default_seed=store.config.seed)
    except ValueError as exc:
        return error_response(400, "bad_request", f"invalid fault plan: {exc}")
    return json_response(store.faults.to_json())


async def admin_reset(request: Request) -> Response:
    store = _store(request)
    store.reset()
    return json_response({"status": "reset"})


async def admin_invocations(request: Request) -> Response:
    store = _store(request)
    return json_response([inv.admin_dict() for inv in store.invocations.values()])


async def admin_invocation(request: Request) -> Response:
    inv = _store(request).invocations.get(request.path_params["id"])
    if inv is None:
        return error_response(404, "not_found", "invocation not found")
    return json_response(inv.admin_dict())


async def admin_config(request: Request) -> Response:
    store = _store(request)
    if request.method == "POST":
        try:
            data = json.loads(await request.body() or b"{}")
            if not isinstance(data, dict):
                raise ValueError("expected a JSON object")
            store.config.update(data)
        except ValueError as exc:
            return error_response(400, "bad_request", str(exc))
    return json_response(store.config.public())


async def admin_apps(request: Request) -> Response:
    return json_response([v.summary() for v in _store(request).registry.versions.values()])


def build_app(store: Store) -> ASGIApp:
    """The full ASGI application for a store."""
    routes = [
        Route("/invocations", create_invocation, methods=["POST"]),
        Route("/invocations", list_invocations, methods=["GET"]),
        Route("/invocations/{id}", get_invocation, methods=["GET"]),
        Route("/invocations/{id}", update_invocation, methods=["PATCH"]),
        Route("/invocations/{id}/events", follow_invocation, methods=["GET"]),
        Route("/invocations/{id}/browsers", list_browsers, methods=["GET"]),
        Route("/invocations/{id}/browsers", delete_browsers, methods=["DELETE"]),
        Route("/apps", list_apps, methods=["GET"]),
        Route("/_emulator/health", admin_health, methods=["GET"]),
        Route("/_emulator/stats", admin_stats, methods=["GET"]),
        Route("/_emulator/requests", admin_requests, methods=["GET"]),
        Route("/_emulator/faults", admin_faults, methods=["GET", "POST", "PUT"]),
        Route("/_emulator/reset", admin_reset, methods=["POST"]),
        Route("/_emulator/invocations", admin_invocations, methods=["GET"]),
        Route("/_emulator/invocations/{id}", admin_invocation, methods=["GET"]),
        Route("/_emulator/config", admin_config, methods=["GET", "POST"]),
        Route("/_emulator/apps", admin_apps, methods=["GET"]),
    ]

    async def not_found(request: Request, exc: Exception) -> Response:
        return error_response(404, "not_found", f"no route for {request.method} {request.url.path}")

    async def not_allowed(request: Request, exc: Exception) -> Response:
        return error_response(405, "method_not_allowed", f"{request.method} not allowed on {request.url.path}")

    async def server_error(request: Request, exc: Exception) -> Response:
        return error_response(500, "internal_error", f"emulator error: {type(exc).__name__}: {exc}")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        store.bind_loop()
        try:
            yield
        finally:
            store.shutdown()

    app = Starlette(
        routes=routes,
        exception_handlers={404: not_found, 405: not_allowed, 500: server_error},
        lifespan=lifespan,
    )
    app.state.store = store
    return EmulatorMiddleware(app, store)
