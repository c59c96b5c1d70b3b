"""The emulator's live views: the pages a browser's live-view URLs open, and Kernel's route that mints such URLs.

* ``GET /live/{session_id}``: what a browser's ``browser_live_view_url`` opens. Kernel streams the browser's
  screen there; the emulator has no screen to show, so the page shows what a person watching a run wants to know:
  the browser, its invocation's state and log lines (the newest ``PAGE_LOG_LINES``), refreshed every
  ``REFRESH_SECONDS`` while the run goes on. Standalone and pool browsers show their session instead.
* ``POST /browsers/{id}/live_view`` (Kernel's route; API key needed): mints a URL ``/live/t/{token}`` with
  ``access`` ``read`` or ``control`` for ``ttl_seconds`` (default: until the browser ends), answered as
  ``{"url", "access", "expires_at"}`` (``expires_at`` only with a TTL). Headless browsers have no live view: 400,
  as Kernel serves the route only for headful ones. 404 for a browser that is unknown or has ended.
* ``GET /live/t/{token}``: a minted URL's page. A ``read`` one shows the run and has no input form, and its input
  endpoint ``POST /live/t/{token}/input`` answers 403 whatever the query says; a ``control`` one has the form and
  its input is accepted (204). Once the TTL passed, or the browser ended, page and input answer 410. The page
  of a minted URL leaves out the session id and CDP URL, which would let a reader reach the listed URL.
* ``POST /live/{session_id}/input``: the input of the listed ``browser_live_view_url``, which, as on Kernel, gives
  control: accepted (``readOnly=true`` on the page only hides the form, as Kernel's hint does).
* ``GET /live/{session_id}/replays/{replay_id}``: what a replay's ``replay_view_url`` opens (Kernel's replay API
  is :mod:`~.replay_routes`).

The ``/live/`` pages need no API key: a person's browser opens them with the signed token their URL carries
(checked by the middleware, see :mod:`~.signing`); :mod:`~.live_view_urls` makes the URLs.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from kernel_provider.testing.live_view_urls import GRANT_PREFIX, LiveViewGrant
from kernel_provider.testing.responses import error_response, json_response, named_browser, store_of
from kernel_provider.testing.signing import QUERY_PARAM
from kernel_provider.testing.store import FoundBrowser
from kernel_provider.testing.timeutil import format_ns
from kernel_provider.testing.wire import strict_json

#: Log lines a live page shows (the newest).
PAGE_LOG_LINES = 200
#: Seconds between refreshes of a live page while its run goes on.
REFRESH_SECONDS = 2
#: Kernel's bounds of a live-view URL's ``ttl_seconds``.
LIVE_VIEW_TTL_RANGE = (1, 31_536_000)


def _page(title: str, body: str, refresh: bool) -> HTMLResponse:
    meta = f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">' if refresh else ""
    return HTMLResponse(
        '<!doctype html><html><head><meta charset="utf-8">'
        f"{meta}<title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;margin:2em}dt{font-weight:bold}"
        "pre{background:#111;color:#ddd;padding:1em;max-height:60vh;overflow:auto}</style>"
        f"</head><body><h1>{html.escape(title)}</h1>{body}</body></html>"
    )


def _facts(items: Iterable[tuple[str, str, Any]]) -> str:
    rows = "".join(
        f'<dt>{html.escape(label)}</dt><dd id="{key}">{html.escape(str(value))}</dd>' for key, label, value in items
    )
    return f"<dl>{rows}</dl>"


def _log_line(data: str) -> str:
    """One stored log event (the JSON the event stream sends) as a page line: its time and message."""
    try:
        event = json.loads(data)
    except ValueError:
        return data + "\n"
    stamp = str(event.get("timestamp") or "")[11:23]  # HH:MM:SS.mmm of an RFC 3339 time
    message = str(event.get("message") or "").rstrip("\n")
    return f"{stamp}  {message}\n"


def _lookup(request: Request) -> FoundBrowser | Response:
    found = store_of(request).find_browser(request.path_params["session_id"])
    if found is None:
        return HTMLResponse(
            f"<!doctype html><title>Not found</title><p>No browser {html.escape(request.path_params['session_id'])}"
            " in this emulator.</p>",
            status_code=404,
        )
    return found


async def live_view(request: Request) -> Response:
    """The page a browser's listed live-view URL opens (see the module docstring): it gives control."""
    found = _lookup(request)
    if isinstance(found, Response):
        return found
    read_only = request.query_params.get("readOnly") == "true"  # a hint: the input endpoint still accepts
    # The form posts with the page's own signed token: without it the input would be refused (401).
    signed = request.query_params.get(QUERY_PARAM)
    action = f"/live/{found.session_id}/input" + (f"?{QUERY_PARAM}={quote(signed, safe='')}" if signed else "")
    form = "" if read_only else _input_form(action)
    return _view(request, found, ("session", "Browser session", found.session_id), form)


async def granted_view(request: Request) -> Response:
    """The page of a URL minted by ``POST /browsers/{id}/live_view``: no input form for ``read`` access."""
    grant = _grant(request)
    if isinstance(grant, Response):
        return grant
    token, found = grant
    access = ("access", "Access", token.access)
    form = _input_form(f"{GRANT_PREFIX}{request.path_params['token']}/input") if token.access == "control" else ""
    return _view(request, found, access, form, minted=True)


async def granted_input(request: Request) -> Response:
    """Input sent through a minted URL: 403 for a ``read`` one, 410 once expired, else recorded (204)."""
    grant = _grant(request)
    if isinstance(grant, Response):
        return grant
    token, found = grant
    if token.access != "control":
        return error_response(403, "forbidden", "a read-only live view accepts no input")
    store_of(request).browser_sessions.live_views.inputs.append((found.session_id, "control"))
    return Response(status_code=204)


async def listed_input(request: Request) -> Response:
    """Input sent through the listed live-view URL (which, as on Kernel, gives control): recorded (204)."""
    found = _lookup(request)
    if isinstance(found, Response):
        return found
    if not found.live:
        return error_response(410, "gone", "the browser has ended")
    store_of(request).browser_sessions.live_views.inputs.append((found.session_id, "listed"))
    return Response(status_code=204)


def _grant(request: Request) -> tuple[LiveViewGrant, FoundBrowser] | Response:
    """The minted URL's grant and its browser; 404 for an unknown token, 410 once it no longer works."""
    grant = store_of(request).browser_sessions.live_views.by_token.get(request.path_params["token"])
    if grant is None:
        return error_response(404, "not_found", "no such live view")
    found = store_of(request).find_browser(grant.session_id)
    if grant.expired() or found is None or not found.live:
        return error_response(410, "gone", "this live view URL has expired or its browser has ended")
    return grant, found


def _input_form(action: str) -> str:
    return (
        f'<form id="input" method="post" action="{html.escape(action)}">'
        '<input name="text"><button type="submit">Send to the browser</button></form>'
    )


def _view(
    request: Request, found: FoundBrowser, first: tuple[str, str, Any], form: str, *, minted: bool = False
) -> Response:
    facts: list[tuple[str, str, Any]] = [first, ("browser-state", "Browser", "live" if found.live else "ended")]
    inv = found.invocation
    log = ""
    refresh = found.live
    if inv is not None:
        facts += [
            ("invocation", "Invocation", inv.id),
            ("action", "Action", f"{inv.app_name}/{inv.action_name}@{inv.version}"),
            ("status", "Status", inv.status),
        ]
        if inv.status_reason:
            facts.append(("status-reason", "Reason", inv.status_reason))
        text = "".join(_log_line(data) for _, data in list(inv.logs)[-PAGE_LOG_LINES:])
        log = f'<h2>Log</h2><pre id="log">{html.escape(text)}</pre>'
        refresh = not inv.terminal
    elif found.invocation_id is not None:
        facts.append(("invocation", "Invocation", f"{found.invocation_id} (no longer retained)"))
    else:
        pool = found.data.get("pool") or {}
        facts += [
            ("created", "Created", found.data.get("created_at", "")),
            ("pool", "Pool", pool.get("name") or pool.get("id") or "none (standalone)"),
        ]
        if not minted:  # the CDP URL steers the browser: not on a page a read-only URL opens
            facts.append(("cdp", "CDP", found.data.get("cdp_ws_url", "")))
    # A minted page leaves them out too: their links carry the session id, the key to the listed (control) page.
    replays = [] if minted else store_of(request).replays.of(found.session_id)
    if replays:
        items = "".join(
            f'<li><a href="{html.escape(r.view_url)}">{html.escape(r.replay_id)}</a>'
            f"{' (recording)' if r.finished_ns is None else ''}</li>"
            for r in replays
        )
        log += f'<h2>Replays</h2><ul id="replays">{items}</ul>'
    return _page("Kernel live view (emulator)", _facts(facts) + form + log, refresh)


async def replay_view(request: Request) -> Response:
    """The page a replay's ``replay_view_url`` opens."""
    found = _lookup(request)
    if isinstance(found, Response):
        return found
    recording = store_of(request).replays.find(found.session_id, request.path_params["replay_id"])
    if recording is None:
        return HTMLResponse("<!doctype html><title>Not found</title><p>No such replay.</p>", status_code=404)
    facts = [
        ("replay", "Replay", recording.replay_id),
        ("session", "Browser session", found.session_id),
        ("invocation", "Invocation", found.invocation_id or "none (standalone)"),
        ("started", "Started", format_ns(recording.started_ns)),
        (
            "finished",
            "Finished",
            "still recording" if recording.finished_ns is None else format_ns(recording.finished_ns),
        ),
    ]
    return _page("Kernel replay (emulator)", _facts(facts), recording.finished_ns is None)


# --- Kernel's live-view route -------------------------------------------------------------------------------


async def create_live_view(request: Request) -> Response:
    """``POST /browsers/{id}/live_view``: ``{"url", "access", "expires_at"?}`` (see the module docstring)."""
    found = named_browser(request)
    if isinstance(found, Response):
        return found
    try:
        body = strict_json(await request.body() or b"{}")
    except ValueError as exc:
        return error_response(400, "bad_request", f"request body is not valid JSON: {exc}")
    if not isinstance(body, dict):
        return error_response(400, "bad_request", "request body must be a JSON object")
    access, ttl = body.get("access"), body.get("ttl_seconds")
    if access not in ("read", "control"):
        return error_response(400, "bad_request", f"invalid access: must be read or control, got {access!r}")
    low, high = LIVE_VIEW_TTL_RANGE
    if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int) or not low <= ttl <= high):
        return error_response(400, "bad_request", f"invalid ttl_seconds: must be an integer {low}..{high}")
    if not found.live:
        return error_response(404, "not_found", f"browser session {found.session_id!r} has ended")
    if found.data.get("headless"):
        return error_response(400, "bad_request", "live view is only available for headful browsers")
    store = store_of(request)
    token, grant = store.browser_sessions.live_views.mint(found.session_id, access, ttl)
    answer: dict[str, Any] = {"url": f"{store.base_url.rstrip('/')}{GRANT_PREFIX}{token}", "access": access}
    if grant.expires_ns is not None:
        answer["expires_at"] = format_ns(grant.expires_ns)
    return json_response(answer)


LIVE_VIEW_ROUTES = [
    Route(GRANT_PREFIX + "{token}", granted_view, methods=["GET"]),
    Route(GRANT_PREFIX + "{token}/input", granted_input, methods=["POST"]),
    Route("/live/{session_id}", live_view, methods=["GET"]),
    Route("/live/{session_id}/input", listed_input, methods=["POST"]),
    Route("/browsers/{id}/live_view", create_live_view, methods=["POST"]),
    Route("/live/{session_id}/replays/{replay_id}", replay_view, methods=["GET"]),
]
