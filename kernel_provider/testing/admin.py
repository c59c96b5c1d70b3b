"""The emulator's own routes under ``/_emulator/``: health, stats, the request log, faults, config, reset."""

from __future__ import annotations

import json

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from kernel_provider.testing.faults import FaultPlan
from kernel_provider.testing.responses import error_response, json_response, store_of


async def admin_health(request: Request) -> Response:
    store = store_of(request)
    return json_response({"status": "ok", "invocations": len(store.invocations), "live": store.live_total})


async def admin_stats(request: Request) -> Response:
    return json_response(store_of(request).stats())


async def admin_requests(request: Request) -> Response:
    params = request.query_params
    entries = store_of(request).requests(params.get("path"), params.get("method"), params.get("route"))
    return json_response(entries)


async def admin_faults(request: Request) -> Response:
    store = store_of(request)
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
    store = store_of(request)
    store.reset()
    return json_response({"status": "reset"})


async def admin_invocations(request: Request) -> Response:
    store = store_of(request)
    return json_response([inv.admin_dict() for inv in store.invocations.values()])


async def admin_invocation(request: Request) -> Response:
    inv = store_of(request).invocations.get(request.path_params["id"])
    if inv is None:
        return error_response(404, "not_found", "invocation not found")
    return json_response(inv.admin_dict())


async def admin_config(request: Request) -> Response:
    store = store_of(request)
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
    return json_response([v.summary() for v in store_of(request).registry.versions.values()])


ADMIN_ROUTES = [
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
