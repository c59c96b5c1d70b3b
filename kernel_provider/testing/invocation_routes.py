"""Kernel's invocation API: the ``/invocations`` routes (input validation included), the SSE follow stream, and
``/apps``, the deployed app versions invocations name."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from sse_starlette import EventSourceResponse
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from kernel_provider.testing.browser_sessions import with_usage
from kernel_provider.testing.faults import StreamFault
from kernel_provider.testing.invocation import STATUSES, InvocationRecord
from kernel_provider.testing.middleware import FAULT_SCOPE_KEY
from kernel_provider.testing.responses import BadRequest, error_response, json_response, store_of
from kernel_provider.testing.runner import sync_cap_exceeded
from kernel_provider.testing.store import Store
from kernel_provider.testing.timeutil import format_ns, now_ns, parse_since
from kernel_provider.testing.wire import dumps, strict_json


async def _json_body(request: Request) -> Any:
    raw = await request.body()
    if not raw:
        raise BadRequest("request body is required")
    try:
        return strict_json(raw)
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


def _lookup(request: Request) -> InvocationRecord | Response:
    inv_id = request.path_params["id"]
    inv = store_of(request).invocations.get(inv_id)
    if inv is None:
        return error_response(404, "not_found", f"invocation {inv_id!r} not found")
    return inv


async def create_invocation(request: Request) -> Response:
    """``POST /invocations``: 202 with the queued invocation when ``async``, else 200 once it ended (or
    the sync cap failed it); 404 for an unknown app, version or action; 429 beyond a concurrency limit."""
    store = store_of(request)
    try:
        body = await _json_body(request)
        if not isinstance(body, dict):
            raise BadRequest("request body must be a JSON object")
        fields = _validate_create(body, store.config.payload_limit)
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
        sync_cap_exceeded(store, inv)
    return json_response(inv.invoke_response(store.legacy), 200)


def _validate_create(body: dict[str, Any], payload_limit: int) -> tuple[str, str, str, str | None, Any, bool, int]:
    """Check a create body against Kernel's spec (``required: [app_name, version, action_name]``)."""

    def required_str(name: str) -> str:
        value = body.get(name)
        if value is None or value == "":
            raise BadRequest(f"Missing required field: {name}")
        if not isinstance(value, str):
            raise BadRequest(f"invalid {name}: must be a string")
        return value

    def optional(name: str, default: Any) -> Any:
        if name not in body:
            return default
        if body[name] is None:  # the spec's fields are not nullable: absent is fine, null is not
            raise BadRequest(f"invalid {name}: must not be null")
        return body[name]

    app_name = required_str("app_name")
    version = required_str("version")
    action_name = required_str("action_name")
    payload = body.get("payload")
    payload_value: Any = None
    if payload is not None:
        if not isinstance(payload, str):
            raise BadRequest('invalid payload: must be a JSON-encoded string, e.g. "{\\"key\\":1}"')
        size = len(payload.encode("utf-8", "surrogatepass"))
        if payload_limit and size > payload_limit:
            raise BadRequest(f"invalid payload: {size} bytes exceeds the maximum of {payload_limit} bytes")
        if payload != "":  # "" means no payload; anything else must be JSON text
            try:
                payload_value = strict_json(payload)
            except ValueError as exc:
                raise BadRequest(f"invalid payload: not valid JSON text ({exc})") from exc
    is_async = optional("async", False)
    if not isinstance(is_async, bool):
        raise BadRequest("invalid async: must be a boolean")
    timeout = optional("async_timeout_seconds", 900)
    if isinstance(timeout, bool) or not isinstance(timeout, int):
        raise BadRequest("invalid async_timeout_seconds: must be an integer")
    if not 10 <= timeout <= 3600:
        raise BadRequest(f"invalid async_timeout_seconds: must be between 10 and 3600, got {timeout}")
    return app_name, version, action_name, payload, payload_value, is_async, timeout


async def get_invocation(request: Request) -> Response:
    """``GET /invocations/{id}``: the ``Invocation``, else 404."""
    found = _lookup(request)
    if isinstance(found, Response):
        return found
    return json_response(found.to_dict(store_of(request).legacy))


async def update_invocation(request: Request) -> Response:
    """``PATCH /invocations/{id}``: end a live invocation as ``succeeded`` or ``failed`` and cancel its action
    (``failed`` also deletes its browsers); a finished one is answered unchanged."""
    store = store_of(request)
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
        if "output" in body and not isinstance(output, str):  # optional, but a string when present (not null)
            raise BadRequest("invalid output: must be a string")
    except BadRequest as exc:
        return error_response(400, "bad_request", str(exc))
    if not found.terminal:  # a PATCH on a terminal invocation leaves it unchanged (documented choice)
        reason = "Invocation cancelled" if status == "failed" else None
        store.terminate(found, status, reason, output, destroy_browsers=status == "failed")
    return json_response(found.to_dict(store.legacy))


async def list_invocations(request: Request) -> Response:
    """``GET /invocations``: one page, newest first, filtered by the query (Kernel's ``X-*`` paging headers)."""
    store = store_of(request)
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
    """``GET /invocations/{id}/browsers``: the browsers the invocation holds."""
    found = _lookup(request)
    if isinstance(found, Response):
        return found
    return json_response({"browsers": [with_usage(b) for b in found.browsers]})


async def delete_browsers(request: Request) -> Response:
    """``DELETE /invocations/{id}/browsers``: delete them (204)."""
    found = _lookup(request)
    if isinstance(found, Response):
        return found
    store_of(request).drop_browsers(found)
    return Response(status_code=204)


async def list_apps(request: Request) -> Response:
    """``GET /apps``: one page of deployed app versions, filtered by ``app_name``, ``version``, ``query``."""
    store = store_of(request)
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


def _frame(data: str) -> bytes:
    return b"data: " + data.encode() + b"\n\n"


#: sse-starlette's keep-alive interval, in seconds: longer than any stream lives, so it never sends a ``: ping``
#: comment (Kernel's stream has no such comments; its heartbeats are events). ``ping=0`` is no way to say "off":
#: sse-starlette 3.0.3 and older (the only one Airflow 3.0/3.1's Starlette allows) then pings in a busy loop.
_NO_PING_SECONDS = 10**9


async def follow_invocation(request: Request) -> Response:
    """``GET /invocations/{id}/events``: the SSE follow stream (stream faults applied)."""
    store = store_of(request)
    found = _lookup(request)
    if isinstance(found, Response):
        return found
    try:
        since_ns = _since_param(request)
    except BadRequest as exc:
        return error_response(400, "bad_request", str(exc))
    fault: StreamFault | None = request.scope.get(FAULT_SCOPE_KEY)
    return EventSourceResponse(
        _event_stream(store, found, since_ns, fault),
        headers={"X-SSE-Content-Type": "application/json"},
        ping=_NO_PING_SECONDS,
        sep="\n",
    )


async def _event_stream(
    store: Store, inv: InvocationRecord, since_ns: int | None, fault: StreamFault | None
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


INVOCATION_ROUTES = [
    Route("/invocations", create_invocation, methods=["POST"]),
    Route("/invocations", list_invocations, methods=["GET"]),
    Route("/invocations/{id}", get_invocation, methods=["GET"]),
    Route("/invocations/{id}", update_invocation, methods=["PATCH"]),
    Route("/invocations/{id}/events", follow_invocation, methods=["GET"]),
    Route("/invocations/{id}/browsers", list_browsers, methods=["GET"]),
    Route("/invocations/{id}/browsers", delete_browsers, methods=["DELETE"]),
    Route("/apps", list_apps, methods=["GET"]),
]
