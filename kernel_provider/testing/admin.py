"""The emulator's own routes under ``/_emulator/``: health, stats, the request log, faults, config, reset, and the
sign-in page a browser uses to read them.

Like Kernel's API they need the token (the middleware checks it): ``Authorization: Bearer <token>`` from a program;
a person's browser signs in once at ``/_emulator/login`` and then holds a cookie that lets it *read* these routes
(the provider's "Kernel invocation" link opens ``/_emulator/invocations/{id}`` when the connection's
``dashboard_url`` points here). Changing anything (faults, config, reset) always takes the token and a JSON body.
"""

from __future__ import annotations

import html
import json
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from kernel_provider.testing.access import token_valid
from kernel_provider.testing.fault_plan import FaultPlan
from kernel_provider.testing.responses import error_response, json_response, store_of
from kernel_provider.testing.signing import ADMIN_COOKIE, admin_cookie

#: The sign-in page of the ``/_emulator/`` routes (open to all: it only checks the token it is given).
LOGIN_PATH = "/_emulator/login"
#: Where a browser goes after signing in when it came from nowhere in particular.
LOGIN_LANDING = "/_emulator/invocations"


def _safe_next(path: str) -> str:
    """Only a path of this emulator's own admin pages: never another site (an open redirect)."""
    own_page = path.startswith("/_emulator/") and path != LOGIN_PATH
    if own_page and "//" not in path and not any(c in path for c in "\\\r\n\t"):
        return path
    return LOGIN_LANDING


def login_page(next_path: str, status: int = 200, message: str = "") -> HTMLResponse:
    """The sign-in form; after it the browser goes to ``next_path`` (one of the ``/_emulator/`` pages)."""
    note = f'<p id="message">{html.escape(message)}</p>' if message else ""
    return HTMLResponse(
        '<!doctype html><html><head><meta charset="utf-8"><title>Kernel emulator: sign in</title></head><body>'
        "<h1>Kernel emulator</h1><p>These pages need the emulator's API token (its <code>--token</code>).</p>"
        f'{note}<form method="post" action="{LOGIN_PATH}">'
        f'<input type="hidden" name="next" value="{html.escape(_safe_next(next_path))}">'
        '<label>Token <input type="password" name="token" autocomplete="off" autofocus></label> '
        '<button type="submit">Sign in</button></form></body></html>',
        status_code=status,
        headers={"Cache-Control": "no-store"},
    )


async def admin_login(request: Request) -> Response:
    """``GET``: the sign-in form. ``POST`` (a form with ``token`` and ``next``): set the read cookie and go on."""
    if request.method == "GET":
        return login_page(request.query_params.get("next", LOGIN_LANDING))
    form = parse_qs((await request.body()).decode("utf-8", "replace"))
    token, next_path = form.get("token", [""])[0].strip(), form.get("next", [LOGIN_LANDING])[0]
    if not token_valid(f"Bearer {token}", store_of(request).config.tokens):
        return login_page(next_path, 401, "That is not this emulator's token.")
    response = RedirectResponse(_safe_next(next_path), status_code=303)
    # Lax: sent when a person follows a link here from another site (Airflow's UI), never on its forms or fetches.
    response.set_cookie(ADMIN_COOKIE, admin_cookie(token), httponly=True, samesite="lax", path="/_emulator/")
    return response


async def admin_health(request: Request) -> Response:
    """``GET /_emulator/health``: ``{"status": "ok", "invocations", "live"}``."""
    store = store_of(request)
    return json_response({"status": "ok", "invocations": len(store.invocations), "live": store.live_total})


async def admin_stats(request: Request) -> Response:
    """``GET /_emulator/stats``: the counters (:meth:`~.store.Store.stats`)."""
    return json_response(store_of(request).stats())


async def admin_requests(request: Request) -> Response:
    """``GET /_emulator/requests``: the request log, filtered by ``path``, ``method``, ``route``."""
    params = request.query_params
    entries = store_of(request).requests(params.get("path"), params.get("method"), params.get("route"))
    return json_response(entries)


async def admin_faults(request: Request) -> Response:
    """``GET``: the fault plan with its progress; ``POST``/``PUT``: replace it (400 for an invalid plan)."""
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
    """``POST /_emulator/reset``: forget invocations, counters, the request log and faults."""
    store = store_of(request)
    store.reset()
    return json_response({"status": "reset"})


async def admin_invocations(request: Request) -> Response:
    """``GET /_emulator/invocations``: every retained invocation with its ``_emulator`` section."""
    store = store_of(request)
    return json_response([inv.admin_dict() for inv in store.invocations.values()])


async def admin_invocation(request: Request) -> Response:
    """``GET /_emulator/invocations/{id}``: one of them, else 404."""
    inv = store_of(request).invocations.get(request.path_params["id"])
    if inv is None:
        return error_response(404, "not_found", "invocation not found")
    return json_response(inv.admin_dict())


async def admin_config(request: Request) -> Response:
    """``GET``: the public settings; ``POST``: change run-time ones first (400 when refused)."""
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
    """``GET /_emulator/apps``: every deployed app version."""
    return json_response([v.summary() for v in store_of(request).registry.versions.values()])


ADMIN_ROUTES = [
    Route(LOGIN_PATH, admin_login, methods=["GET", "POST"]),
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
