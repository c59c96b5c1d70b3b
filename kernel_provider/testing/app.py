"""The emulator's ASGI application, assembled from its parts.

* :mod:`~.middleware` - authentication, the request log, HTTP faults (transport aborts included);
* :mod:`~.invocation_routes` - Kernel's ``/invocations`` and ``/apps`` and the SSE follow stream;
* :mod:`~.browser_routes` - standalone browsers and pools (kept by :mod:`~.browser_sessions`), each a real
  Chromium (:mod:`~.chromium`);
* :mod:`~.live_view` - the live-view pages; :mod:`~.replay_routes` - Kernel's replay API;
* :mod:`~.admin` - the ``/_emulator/`` routes.

Behind the routes: :mod:`~.store` keeps the invocations and their state machine, :mod:`~.runner` runs actions.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match
from starlette.types import ASGIApp

from kernel_provider.testing.admin import ADMIN_ROUTES
from kernel_provider.testing.browser_routes import BROWSER_ROUTES
from kernel_provider.testing.fs_routes import FS_ROUTES
from kernel_provider.testing.invocation_routes import INVOCATION_ROUTES
from kernel_provider.testing.live_view import LIVE_VIEW_ROUTES
from kernel_provider.testing.middleware import EmulatorMiddleware
from kernel_provider.testing.replay_routes import REPLAY_ROUTES
from kernel_provider.testing.responses import error_response
from kernel_provider.testing.store import Store


def build_app(store: Store) -> ASGIApp:
    """The full ASGI application for a store."""
    # The order is Starlette's matching order: the first route whose path and method match serves the request.
    routes = [*INVOCATION_ROUTES, *BROWSER_ROUTES, *LIVE_VIEW_ROUTES, *REPLAY_ROUTES, *FS_ROUTES, *ADMIN_ROUTES]

    async def not_found(request: Request, exc: Exception) -> Response:
        return error_response(404, "not_found", f"no route for {request.method} {request.url.path}")

    async def not_allowed(request: Request, exc: Exception) -> Response:
        # RFC 9110 §15.5.6: a 405 lists the allowed methods (of every route on this path, not just one)
        allowed: set[str] = set()
        for route in routes:
            if route.matches(request.scope)[0] != Match.NONE and route.methods:
                allowed |= route.methods
        message = f"{request.method} not allowed on {request.url.path}"
        return error_response(405, "method_not_allowed", message, {"Allow": ", ".join(sorted(allowed))})

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
    app.router.redirect_slashes = False  # Kernel answers 404 for "/invocations/", not a 307 redirect
    app.state.store = store
    return EmulatorMiddleware(app, store)
