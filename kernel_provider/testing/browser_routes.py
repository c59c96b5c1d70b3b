"""The routes of Kernel's standalone browsers and browser pools in the emulator: ``/browsers`` (create, list, get,
delete) and ``/browser_pools`` (create, list, get, acquire, release), each browser a real local Chromium
(:mod:`~.chromium`) kept by :mod:`~.browser_sessions`.

Like Kernel, a browser ends after ``timeout_seconds`` without a CDP connection (checked every second; Kernel checks
every 5 s): the emulator sees a connection as an established TCP connection to the browser's DevTools port. A
released pool browser is stopped (the pool starts a fresh one on the next acquire), so the live count is exactly
the browsers someone holds. ``KERNEL_EMULATOR_MAX_BROWSERS`` (default 8) caps live browsers: beyond it a create
is refused with 429, as Kernel's browser concurrency limit does.

Fault kind ``browser_launch`` (see :mod:`~.faults`) on ``POST /browsers`` or an acquire:
``"fail"`` answers 500 ``browser_launch_failed`` and starts nothing; ``"crash"`` creates the browser, answers, and
kills its Chromium half a second later (Kernel's session dies under the client); ``"slow"`` starts it
:data:`SLOW_LAUNCH_SECONDS` later (a client that gives up meanwhile leaves a browser behind).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from kernel_provider.testing.browser_sessions import (
    POOL_TIMEOUT_RANGE,
    TIMEOUT_RANGE,
    BrowserSession,
    BrowserSessions,
    Pool,
    with_usage,
)
from kernel_provider.testing.chromium import ChromiumError
from kernel_provider.testing.middleware import BROWSER_FAULT_SCOPE_KEY
from kernel_provider.testing.responses import BadRequest, error_response, json_response, store_of
from kernel_provider.testing.wire import strict_json

#: The extra start-up time of a browser under the ``browser_launch: "slow"`` fault.
SLOW_LAUNCH_SECONDS = 2.0


def _max_browsers() -> int:
    try:
        return max(1, int(os.environ.get("KERNEL_EMULATOR_MAX_BROWSERS", "8")))
    except ValueError:
        return 8


def sessions_of(request: Request) -> BrowserSessions:
    """The emulator's browser registry."""
    return store_of(request).browser_sessions  # type: ignore[no-any-return]


async def _object_body(request: Request, required: bool) -> dict[str, Any]:
    raw = await request.body()
    if not raw:
        if required:
            raise BadRequest("request body is required")
        return {}
    try:
        body = strict_json(raw)
    except ValueError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    return body


def _check_int(body: dict[str, Any], name: str, low: int, high: int | None) -> None:
    if name not in body:
        return
    value = body[name]
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f">= {low}"
        raise BadRequest(f"invalid {name}: must be an integer {bounds}, got {value!r}")


def _check_browser_fields(body: dict[str, Any]) -> None:
    """Kernel's ``BrowserRequest`` checks the emulator mirrors."""
    for name in ("headless", "stealth", "kiosk_mode", "gpu"):
        if name in body and not isinstance(body[name], bool):
            raise BadRequest(f"invalid {name}: must be a boolean")
    _check_int(body, "timeout_seconds", *TIMEOUT_RANGE)
    for name in ("proxy_id", "start_url", "invocation_id"):
        if name in body and not isinstance(body[name], str):
            raise BadRequest(f"invalid {name}: must be a string")
    viewport = body.get("viewport")
    if viewport is not None:
        if not isinstance(viewport, dict) or "width" not in viewport or "height" not in viewport:
            raise BadRequest("invalid viewport: width and height are required")
        _check_int(viewport, "width", 320, 7680)
        _check_int(viewport, "height", 240, 4320)
    profile = body.get("profile")
    if profile is not None and (not isinstance(profile, dict) or not ({"id", "name"} & set(profile))):
        raise BadRequest("invalid profile: provide either id or name")


async def _launch(request: Request, body: dict[str, Any], pool: Pool | None) -> BrowserSession | Response:
    sessions = sessions_of(request)
    fault = request.scope.get(BROWSER_FAULT_SCOPE_KEY)
    if fault == "fail":
        return error_response(500, "browser_launch_failed", "injected fault: the browser failed to start")
    if pool is None and len(sessions.live) >= _max_browsers():
        return error_response(
            429, "rate_limited", f"concurrent browser limit reached ({len(sessions.live)}/{_max_browsers()} live)"
        )
    if fault == "slow":
        await asyncio.sleep(SLOW_LAUNCH_SECONDS)  # the client may give up meanwhile; the browser starts anyway
    try:
        session = await sessions.launch(body, pool, str(request.base_url))
    except ChromiumError as exc:
        return error_response(500, "browser_launch_failed", str(exc))
    if fault == "crash":

        async def crash_soon() -> None:
            await asyncio.sleep(0.5)
            await asyncio.to_thread(session.process.stop, 0.0)

        asyncio.get_running_loop().create_task(crash_soon())
    return session


async def create_browser(request: Request) -> Response:
    """``POST /browsers``: start a standalone browser (400 for a bad body, 429 beyond the browser cap)."""
    try:
        body = await _object_body(request, required=False)
        _check_browser_fields(body)
    except BadRequest as exc:
        return error_response(400, "bad_request", str(exc))
    launched = await _launch(request, body, None)
    if isinstance(launched, Response):
        return launched
    return json_response(launched.to_dict(), 200)


def _page(request: Request, items: list[dict[str, Any]]) -> Response:
    try:
        limit = _param(request, "limit", 20, 1, 100)
        offset = _param(request, "offset", 0, 0, None)
    except BadRequest as exc:
        return error_response(400, "bad_request", str(exc))
    page = items[offset : offset + limit]
    has_more = offset + len(page) < len(items)
    headers = {
        "X-Limit": str(limit),
        "X-Offset": str(offset),
        "X-Has-More": "true" if has_more else "false",
        "X-Next-Offset": str(offset + len(page) if has_more else 0),
    }
    return json_response(page, 200, headers)


def _param(request: Request, name: str, default: int, low: int, high: int | None) -> int:
    raw = request.query_params.get(name)
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise BadRequest(f"invalid {name}: {raw!r} is not an integer") from exc
    if value < low or (high is not None and value > high):
        raise BadRequest(f"invalid {name}: out of range: {value}")
    return value


async def list_browser_sessions(request: Request) -> Response:
    """``GET /browsers``: one page of browsers, newest first (``status``: active, deleted or all)."""
    sessions = sessions_of(request)
    status = request.query_params.get("status") or "active"
    if status not in ("active", "deleted", "all"):
        return error_response(400, "bad_request", f"invalid status: {status!r} (active, deleted or all)")
    found: list[BrowserSession] = []
    if status in ("active", "all"):
        found += sessions.live.values()
    if status in ("deleted", "all"):
        found += sessions.ended.values()
    query = request.query_params.get("query")
    if query:
        found = [s for s in found if query in s.session_id or (s.pool and query in (s.pool.name or s.pool.id))]
    found.sort(key=lambda s: s.created_ns, reverse=True)
    return _page(request, [s.to_dict() for s in found])


async def get_browser(request: Request) -> Response:
    """``GET /browsers/{id}``: a live browser (an ended one with ``include_deleted=true``, with its ``deleted_at``),
    else 404. An invocation's browsers too, as Kernel's are sessions like any other."""
    sessions = sessions_of(request)
    session_id = request.path_params["id"]
    deleted_too = request.query_params.get("include_deleted") == "true"
    session = sessions.live.get(session_id)
    if session is None and deleted_too:
        session = sessions.ended.get(session_id)
    if session is not None:
        return json_response(session.to_dict())
    found = store_of(request).find_browser(session_id)
    if found is not None and found.invocation_id is not None and (found.live or deleted_too):
        return json_response(with_usage(found.data))
    return error_response(404, "not_found", f"browser session {session_id!r} not found")


async def delete_browser(request: Request) -> Response:
    """``DELETE /browsers/{id}``: stop a live browser (204), else 404."""
    sessions = sessions_of(request)
    session_id = request.path_params["id"]
    session = sessions.live.get(session_id)
    if session is None:
        return error_response(404, "not_found", f"browser session {session_id!r} not found")
    await sessions.end(session, "deleted")
    return Response(status_code=204)


async def create_pool(request: Request) -> Response:
    """``POST /browser_pools``: a new pool (409 when its name is taken)."""
    sessions = sessions_of(request)
    try:
        body = await _object_body(request, required=True)
        if "size" not in body:
            raise BadRequest("Missing required field: size")
        _check_int(body, "size", 1, 100)
        _check_int(body, "timeout_seconds", *POOL_TIMEOUT_RANGE)
        _check_browser_fields({k: v for k, v in body.items() if k != "timeout_seconds"})
        name = body.get("name")
        if name is not None and (not isinstance(name, str) or not name):
            raise BadRequest("invalid name: must be a non-empty string")
    except BadRequest as exc:
        return error_response(400, "bad_request", str(exc))
    if name is not None and sessions.pool(name) is not None:
        return error_response(409, "conflict", f"a browser pool named {name!r} already exists")
    pool = Pool(body)
    sessions.pools[pool.id] = pool
    return json_response(pool.to_dict(), 200)


async def list_pools(request: Request) -> Response:
    """``GET /browser_pools``: every pool."""
    return json_response([p.to_dict() for p in sessions_of(request).pools.values()])


async def get_pool(request: Request) -> Response:
    """``GET /browser_pools/{id}``: a pool by id or name, else 404."""
    pool = sessions_of(request).pool(request.path_params["id"])
    if pool is None:
        return error_response(404, "not_found", f"browser pool {request.path_params['id']!r} not found")
    return json_response(pool.to_dict())


async def acquire(request: Request) -> Response:
    """``POST /browser_pools/{id}/acquire``: a fresh browser of the pool, waiting up to
    ``acquire_timeout_seconds`` (default 10) for a free slot; 204 when none came free."""
    pool = sessions_of(request).pool(request.path_params["id"])
    if pool is None:
        return error_response(404, "not_found", f"browser pool {request.path_params['id']!r} not found")
    try:
        body = await _object_body(request, required=False)
        _check_int(body, "acquire_timeout_seconds", 1, None)
    except BadRequest as exc:
        return error_response(400, "bad_request", str(exc))
    wait = body.get("acquire_timeout_seconds", 10)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while len(pool.held) >= pool.size:
        pool.freed.clear()
        left = deadline - loop.time()
        if left <= 0:
            return Response(status_code=204)
        try:
            await asyncio.wait_for(pool.freed.wait(), left)
        except asyncio.TimeoutError:
            return Response(status_code=204)
    launched = await _launch(request, dict(pool.config), pool)
    if isinstance(launched, Response):
        return launched
    return json_response(launched.to_dict(), 200)


async def release(request: Request) -> Response:
    """``POST /browser_pools/{id}/release``: stop a browser held from the pool (204), freeing its slot."""
    sessions = sessions_of(request)
    pool = sessions.pool(request.path_params["id"])
    if pool is None:
        return error_response(404, "not_found", f"browser pool {request.path_params['id']!r} not found")
    try:
        body = await _object_body(request, required=True)
        if not isinstance(body.get("session_id"), str) or not body["session_id"]:
            raise BadRequest("Missing required field: session_id")
        if "reuse" in body and not isinstance(body["reuse"], bool):
            raise BadRequest("invalid reuse: must be a boolean")
    except BadRequest as exc:
        return error_response(400, "bad_request", str(exc))
    session = sessions.live.get(body["session_id"])
    if session is None or session.pool is not pool:
        return error_response(404, "not_found", f"browser {body['session_id']!r} is not held from this pool")
    await sessions.end(session, "released")
    return Response(status_code=204)


BROWSER_ROUTES = [
    Route("/browsers", create_browser, methods=["POST"]),
    Route("/browsers", list_browser_sessions, methods=["GET"]),
    Route("/browsers/{id}", get_browser, methods=["GET"]),
    Route("/browsers/{id}", delete_browser, methods=["DELETE"]),
    Route("/browser_pools", create_pool, methods=["POST"]),
    Route("/browser_pools", list_pools, methods=["GET"]),
    Route("/browser_pools/{id}", get_pool, methods=["GET"]),
    Route("/browser_pools/{id}/acquire", acquire, methods=["POST"]),
    Route("/browser_pools/{id}/release", release, methods=["POST"]),
]
