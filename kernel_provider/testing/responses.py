"""What every part of the emulator's HTTP side shares: route templates, Kernel ``Error`` responses, the store."""

from __future__ import annotations

import re
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from kernel_provider.testing.store import FoundBrowser, Store
from kernel_provider.testing.wire import dumps

ADMIN_PREFIX = "/_emulator/"
_ROUTES = (
    (re.compile(r"^/invocations$"), "/invocations"),
    (re.compile(r"^/invocations/[^/]+/events$"), "/invocations/{id}/events"),
    (re.compile(r"^/invocations/[^/]+/browsers$"), "/invocations/{id}/browsers"),
    (re.compile(r"^/invocations/[^/]+$"), "/invocations/{id}"),
    (re.compile(r"^/apps$"), "/apps"),
    # standalone browsers and pools (browser_routes.py)
    (re.compile(r"^/browsers$"), "/browsers"),
    (re.compile(r"^/browsers/[^/]+$"), "/browsers/{id}"),
    # replays (replay_routes.py)
    (re.compile(r"^/browsers/[^/]+/replays$"), "/browsers/{id}/replays"),
    (re.compile(r"^/browsers/[^/]+/replays/[^/]+$"), "/browsers/{id}/replays/{replay_id}"),
    (re.compile(r"^/browsers/[^/]+/replays/[^/]+/stop$"), "/browsers/{id}/replays/{replay_id}/stop"),
    # live views (live_view.py)
    (re.compile(r"^/browsers/[^/]+/live_view$"), "/browsers/{id}/live_view"),
    # the browser filesystem (fs_routes.py)
    (re.compile(r"^/browsers/[^/]+/fs/list_files$"), "/browsers/{id}/fs/list_files"),
    (re.compile(r"^/browsers/[^/]+/fs/file_info$"), "/browsers/{id}/fs/file_info"),
    (re.compile(r"^/browsers/[^/]+/fs/read_file$"), "/browsers/{id}/fs/read_file"),
    (re.compile(r"^/browser_pools$"), "/browser_pools"),
    (re.compile(r"^/browser_pools/[^/]+/acquire$"), "/browser_pools/{id}/acquire"),
    (re.compile(r"^/browser_pools/[^/]+/release$"), "/browser_pools/{id}/release"),
    (re.compile(r"^/browser_pools/[^/]+$"), "/browser_pools/{id}"),
)


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
    """``body`` as compact JSON."""
    return Response(dumps(body), status, headers, "application/json")


class BadRequest(Exception):
    """Raised by validators; becomes a 400 ``bad_request``."""


def store_of(request: Request) -> Store:
    """The store of the app serving ``request``."""
    store: Store = request.app.state.store
    return store


def named_browser(request: Request) -> FoundBrowser | Response:
    """The browser a ``/browsers/{id}/...`` route names (any the emulator created, ended ones too), or its 404."""
    found = store_of(request).find_browser(request.path_params["id"])
    if found is None:
        return error_response(404, "not_found", f"browser session {request.path_params['id']!r} not found")
    return found
