"""Kernel's standalone browsers (``/browsers``) and browser pools (``/browser_pools``): the options, checked before
any request, the sans-IO operations, and :class:`BrowserApi`, which runs them on a
:class:`~kernel_provider.client.client.KernelClient` synchronously or with asyncio.

``POST /browsers`` (and a pool's acquire) is not idempotent: the client's retry policy re-sends it only when Kernel
certainly refused it (connection refused, 429, ``x-should-retry: true``). When the answer is lost after the
request may have reached Kernel, the create looks the browser up instead of sending again:

* **with a marker** (the default whenever no ``start_url`` is asked for): the request carries
  ``start_url = about:blank#airflow-kernel-<random token>``, which Kernel echoes in every listing; the active
  browser with exactly that ``start_url`` is this create's, and is adopted. Exact, even next to twins.
* **without one** (a ``start_url`` of the caller's own): active browsers created within the request's window (plus
  :data:`SKEW_SECONDS` each side) with the same options are candidates. None: Kernel created nothing. Any: the
  create fails with :class:`KernelAmbiguousBrowserCreateError` naming them; none is deleted (it could be another
  task's), and Kernel ends them after ``timeout_seconds`` without a connection.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar
from urllib.parse import urlsplit

from kernel_provider.client.client import KernelClient
from kernel_provider.client.errors import (
    KernelAmbiguousBrowserCreateError,
    KernelApiError,
    KernelError,
    KernelInputError,
    KernelNotFoundError,
    KernelResponseError,
    KernelTransportError,
)
from kernel_provider.client.invocations import create_may_have_happened
from kernel_provider.client.models import Browser, parse_timestamp
from kernel_provider.client.trust import require_id
from kernel_provider.client.validation import BrowserRequest, require_int_in, require_name
from kernel_provider.client.wire import ApiCall, Endpoint, Operation, paginate

T = TypeVar("T")

CREATE_BROWSER = Endpoint("POST", "/browsers", idempotent=False)
LIST_BROWSER_SESSIONS = Endpoint("GET", "/browsers")
GET_BROWSER = Endpoint("GET", "/browsers/{id}")
DELETE_BROWSER = Endpoint("DELETE", "/browsers/{id}")  # deleting twice: a 404, read as "already gone"
ACQUIRE_BROWSER = Endpoint("POST", "/browser_pools/{id}/acquire", idempotent=False)
RELEASE_BROWSER = Endpoint("POST", "/browser_pools/{id}/release")  # releasing twice frees nothing more
# Each call mints a fresh URL and Kernel stores nothing, so a repeat only mints another: safe to retry.
CREATE_LIVE_VIEW = Endpoint("POST", "/browsers/{id}/live_view")

#: Seconds added to each side of a create's window when matching browsers without a marker (clock skew).
SKEW_SECONDS = 5.0
#: The most browsers a lookup after a lost create lists.
LOOKUP_LIMIT = 500
#: One long poll of a pool's acquire lasts at most this long; the client polls again until its own deadline.
ACQUIRE_POLL_SECONDS = 60
#: Extra read time beyond a long poll's length.
ACQUIRE_READ_MARGIN = 30.0
#: What a live-view URL of ``POST /browsers/{id}/live_view`` lets its holder do: watch, or also click and type.
LIVE_VIEW_ACCESS = ("read", "control")
#: Kernel's bounds of a live-view URL's ``ttl_seconds`` (one year at most).
LIVE_VIEW_TTL_RANGE = (1, 31_536_000)


@dataclass(frozen=True)
class LiveView:
    """A live-view URL minted by ``POST /browsers/{id}/live_view``.

    :param url: the URL (a credential: a ``control`` one steers the browser; kept out of the repr).
    :param access: ``read`` (shows the browser, accepts no input, whatever its query says) or ``control``.
    :param expires_at: when it stops working; None when it lasts until the browser is deleted (or released).
    """

    url: str = field(repr=False)
    access: str
    expires_at: datetime | None = None


# --- operations -------------------------------------------------------------------------------------------


def create_browser(request: BrowserRequest) -> Operation[Browser]:
    """``POST /browsers``; a failure after the request may have reached Kernel is settled by a lookup (see the
    module docstring): the browser found is returned, else :class:`KernelAmbiguousBrowserCreateError`.
    Refusals (4xx, 429 once the retry policy gives up) stay what they are."""
    sent = datetime.now(timezone.utc)
    try:
        return (yield ApiCall(CREATE_BROWSER, body=dict(request.body), parse=_parse_browser))
    except (KernelTransportError, KernelApiError) as exc:
        if not create_may_have_happened(exc):
            raise
        cause = exc
    try:
        found = yield from find_created(request, sent, datetime.now(timezone.utc))
    except KernelError as lookup_error:
        raise KernelAmbiguousBrowserCreateError(
            f"Creating the browser failed after the request was sent ({cause}), and looking it up failed too "
            f"({lookup_error}). It was not re-sent. Kernel ends a browser after its timeout_seconds without a "
            "connection; check GET /browsers before retrying.",
            cause=cause,
        ) from lookup_error
    if isinstance(found, Browser):
        return found
    if not found:
        raise KernelAmbiguousBrowserCreateError(
            f"Creating the browser failed ({cause}); Kernel lists no browser it could have created, so none is "
            "running. It was not re-sent here; retrying the task is safe.",
            cause=cause,
        )
    raise KernelAmbiguousBrowserCreateError(
        f"Creating the browser failed after the request was sent ({cause}), and without a marker (start_url was "
        f"given) these active browsers could be the one it created: {', '.join(found)}. None was deleted (each "
        "could be another task's); Kernel ends a browser after its timeout_seconds without a connection. "
        "Check them, delete this task's if any, then retry.",
        candidates=found,
        cause=cause,
    )


def find_created(request: BrowserRequest, sent: datetime, answered: datetime) -> Operation[Browser | list[str]]:
    """After a lost create: the browser carrying the request's marker; without a marker, the session ids of the
    active browsers that could be it (created in ``[sent, answered]`` ± :data:`SKEW_SECONDS`, same options).

    :returns: the marked :class:`Browser` when found, else the list of candidate ids (empty: none).
    """
    items = yield from paginate(LIST_BROWSER_SESSIONS, {"status": "active"}, LOOKUP_LIMIT, 100)
    browsers = [Browser.from_api(item) for item in items if isinstance(item, Mapping) and item.get("session_id")]
    if request.marker:
        return next((b for b in browsers if b.start_url == request.marker), [])
    low, high = sent - timedelta(seconds=SKEW_SECONDS), answered + timedelta(seconds=SKEW_SECONDS)
    return [b.session_id for b in browsers if _could_be(b, request.body, low, high)]


def get_browser(session_id: str, *, include_deleted: bool = False) -> Operation[Browser]:
    """``GET /browsers/{id}``: the session as Kernel knows it (:class:`KernelNotFoundError` once it is gone).

    :param include_deleted: also find a deleted session (Kernel's ``include_deleted``): it then carries its
        ``deleted_at`` and ``usage``.
    """
    params = {"include_deleted": True} if include_deleted else {}
    return (yield ApiCall(GET_BROWSER, {"id": session_id}, params=params, parse=_parse_browser))


def list_browser_sessions(*, status: str = "active", limit: int | None = None) -> Operation[list[Browser]]:
    """``GET /browsers`` across pages.

    :param status: ``active`` (Kernel's default), ``deleted`` or ``all``.
    :param limit: the most browsers returned; None follows every page.
    """
    items = yield from paginate(LIST_BROWSER_SESSIONS, {"status": status}, limit, 100)
    return [Browser.from_api(item) for item in items if isinstance(item, Mapping)]


def delete_browser(session_id: str) -> Operation[bool]:
    """``DELETE /browsers/{id}``: end the session. True when this call deleted it, False when it was already gone."""
    try:
        yield ApiCall(DELETE_BROWSER, {"id": session_id}, parse=lambda r: None)
    except KernelNotFoundError:
        return False
    return True


def acquire_browser(pool: str, acquire_timeout_seconds: int | None = None) -> Operation[Browser]:
    """``POST /browser_pools/{pool}/acquire``, long-polled again after each "no browser yet" (204) until
    ``acquire_timeout_seconds`` have passed (None: Kernel's own wait, one poll).

    :raises KernelAmbiguousBrowserCreateError: an acquire's answer was lost after it may have reached Kernel: a
        browser may be held from the pool; not re-sent (the pool takes it back after its ``timeout_seconds``).
    :raises KernelTransportError: no browser came free in time (``request_sent=False``: nothing is held).
    """
    deadline = None if acquire_timeout_seconds is None else time.monotonic() + acquire_timeout_seconds
    while True:
        wait = None if deadline is None else max(1, min(ACQUIRE_POLL_SECONDS, math.ceil(deadline - time.monotonic())))
        call: ApiCall[Browser | None] = ApiCall(
            ACQUIRE_BROWSER,
            {"id": pool},
            body={} if wait is None else {"acquire_timeout_seconds": wait},
            read_timeout=(wait or ACQUIRE_POLL_SECONDS) + ACQUIRE_READ_MARGIN,
            parse=lambda r: Browser.from_api(r.json()) if r.body else None,
        )
        try:
            browser = yield call
        except (KernelTransportError, KernelApiError) as exc:
            if not create_may_have_happened(exc):
                raise
            raise KernelAmbiguousBrowserCreateError(
                f"Acquiring a browser from pool {pool!r} failed after the request was sent ({exc}); a browser may "
                "be held from the pool. It was not re-sent; the pool takes the browser back after its "
                "timeout_seconds without a connection.",
                cause=exc,
            ) from exc
        if browser is not None:
            return browser
        if deadline is None or time.monotonic() >= deadline:
            raise KernelTransportError(
                f"no browser of pool {pool!r} came free within {acquire_timeout_seconds} seconds",
                request_sent=False,
                method=ACQUIRE_BROWSER.method,
                path=call.path,
            )


def release_browser(pool: str, session_id: str, *, reuse: bool = True) -> Operation[bool]:
    """``POST /browser_pools/{pool}/release``: hand the browser back (``reuse`` False: the pool replaces it).
    True when released, False when Kernel no longer knew it (already gone)."""
    try:
        yield ApiCall(
            RELEASE_BROWSER, {"id": pool}, body={"session_id": session_id, "reuse": reuse}, parse=lambda r: None
        )
    except KernelNotFoundError:
        return False
    return True


def create_live_view(session_id: str, *, access: str, ttl_seconds: int | None = None) -> Operation[LiveView]:
    """``POST /browsers/{id}/live_view``: a live-view URL of a headful browser with ``access`` (``read`` or
    ``control``) for ``ttl_seconds`` (None: until the browser is deleted). Kernel refuses it for headless browsers.

    :raises KernelInputError: ``access`` or ``ttl_seconds`` is out of range (before any request).
    :raises KernelResponseError: the answer has no absolute http(s) URL, or grants other access than asked.
    """
    if access not in LIVE_VIEW_ACCESS:
        raise KernelInputError("access", f"must be one of {', '.join(LIVE_VIEW_ACCESS)}, got {access!r}.")
    body: dict[str, Any] = {"access": access}
    if ttl_seconds is not None:
        body["ttl_seconds"] = require_int_in("ttl_seconds", ttl_seconds, *LIVE_VIEW_TTL_RANGE)
    view = yield ApiCall(CREATE_LIVE_VIEW, {"id": session_id}, body=body, parse=_parse_live_view)
    if view.access != access:
        # A wider grant than asked must not be published as a read-only link.
        raise KernelResponseError(f"Kernel answered a {view.access!r} live view to a request for {access!r}.")
    return view


# --- running them -----------------------------------------------------------------------------------------


class BrowserApi:
    """The browser operations on a :class:`KernelClient`: each sync method has an ``a``-twin for asyncio, both
    driving the same operation under the client's retry policy.

    :param client: the client whose settings, transports and retries are used.
    """

    def __init__(self, client: KernelClient) -> None:
        self.client = client

    def open(self, request: BrowserRequest) -> Browser:
        """Create the browser, or acquire it when the request names a pool."""
        return self.client.execute(_open(request))

    async def aopen(self, request: BrowserRequest) -> Browser:
        """:meth:`open` without blocking the event loop."""
        return await self.client.aexecute(_open(request))

    def close(self, request: BrowserRequest, session_id: str, *, budget: float | None = None) -> bool:
        """Delete the browser (or release it to its pool). False when Kernel no longer knew it.

        :param budget: seconds the call may take in all (None: the client's full timeouts and retries).
        """
        return self.client.execute(_close(request, session_id), budget=budget)

    async def aclose(self, request: BrowserRequest, session_id: str, *, budget: float | None = None) -> bool:
        """:meth:`close` without blocking the event loop."""
        return await self.client.aexecute(_close(request, session_id), budget=budget)

    def find_marked(self, request: BrowserRequest, *, budget: float | None = None) -> Browser | None:
        """The active browser carrying ``request``'s marker (None when there is none, or no marker)."""
        if not request.marker or request.pool:
            return None
        now = datetime.now(timezone.utc)
        found = self.client.execute(find_created(request, now, now), budget=budget)
        return found if isinstance(found, Browser) else None

    async def afind_marked(self, request: BrowserRequest, *, budget: float | None = None) -> Browser | None:
        """:meth:`find_marked` without blocking the event loop."""
        if not request.marker or request.pool:
            return None
        now = datetime.now(timezone.utc)
        found = await self.client.aexecute(find_created(request, now, now), budget=budget)
        return found if isinstance(found, Browser) else None

    def get(self, session_id: str) -> Browser:
        """``GET /browsers/{id}``."""
        return self.client.execute(get_browser(require_id("session_id", session_id)))

    async def aget(self, session_id: str, *, include_deleted: bool = False) -> Browser:
        """``GET /browsers/{id}`` without blocking the event loop; a deleted session too with ``include_deleted``."""
        operation = get_browser(require_id("session_id", session_id), include_deleted=include_deleted)
        return await self.client.aexecute(operation)

    def list(self, *, status: str = "active", limit: int | None = None) -> list[Browser]:
        """``GET /browsers`` (every page, or ``limit`` browsers)."""
        return self.client.execute(list_browser_sessions(status=status, limit=limit))

    def delete(self, session_id: str) -> bool:
        """``DELETE /browsers/{id}``; False when it was already gone."""
        return self.client.execute(delete_browser(require_id("session_id", session_id)))

    def live_view(self, *, session_id: str, access: str, ttl_seconds: int | None = None) -> LiveView:
        """``POST /browsers/{id}/live_view`` (see :func:`create_live_view`)."""
        return self.client.execute(
            create_live_view(require_name("session_id", session_id), access=access, ttl_seconds=ttl_seconds)
        )

    async def alive_view(self, *, session_id: str, access: str, ttl_seconds: int | None = None) -> LiveView:
        """:meth:`live_view` without blocking the event loop."""
        operation = create_live_view(require_name("session_id", session_id), access=access, ttl_seconds=ttl_seconds)
        return await self.client.aexecute(operation)


def _open(request: BrowserRequest) -> Operation[Browser]:
    if request.pool:
        return (yield from acquire_browser(request.pool, request.acquire_timeout_seconds))
    return (yield from create_browser(request))


def _close(request: BrowserRequest, session_id: str) -> Operation[bool]:
    if request.pool:
        return (yield from release_browser(request.pool, session_id, reuse=request.reuse))
    return (yield from delete_browser(session_id))


def _parse_browser(response: Any) -> Browser:
    return Browser.from_api(response.json())


def _parse_live_view(response: Any) -> LiveView:
    data = response.json()
    data = data if isinstance(data, Mapping) else {}
    url, access = data.get("url"), data.get("access")
    if not isinstance(url, str) or urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).netloc:
        raise KernelResponseError("Kernel's live view answer has no absolute http(s) url.")
    if access not in LIVE_VIEW_ACCESS:
        raise KernelResponseError(f"Kernel's live view answer has an unknown access {access!r}.")
    return LiveView(url=url, access=access, expires_at=parse_timestamp(data.get("expires_at")))


def _could_be(browser: Browser, body: Mapping[str, Any], low: datetime, high: datetime) -> bool:
    """Whether ``browser`` could be the answer to ``body``: created within ``[low, high]`` (unknown counts) and
    no option Kernel echoed differs."""
    if browser.created_at is not None and not low <= browser.created_at <= high:
        return False
    echoed = {
        "headless": browser.headless,
        "stealth": browser.stealth,
        "timeout_seconds": browser.timeout_seconds,
        "proxy_id": browser.proxy_id,
        "start_url": browser.start_url,
    }
    return all(echoed[k] == body[k] for k in echoed if k in body and echoed[k] not in (None, ""))
