"""Kernel's REST API as data: endpoints, requests, responses and the operations built from them.

Nothing here does I/O. An *operation* is a generator that yields :class:`ApiCall` objects and receives their
results (or has the call's exception thrown into it). :class:`~kernel_provider.client.client.KernelClient` drives
operations with a synchronous transport (requests) and an asynchronous one (httpx) through :func:`drive` and
:func:`adrive`, so every operation is written once; tests drive them with canned :class:`ApiResponse` objects.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Generator, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import Any, Generic, TypeVar
from urllib.parse import quote

from kernel_provider.client.errors import (
    KernelAmbiguousCreateError,
    KernelApiError,
    KernelError,
    KernelInputError,
    KernelNotFoundError,
    KernelRedirectError,
    KernelResponseError,
    KernelServerError,
    KernelTransportError,
    api_error_for_status,
    is_error_status,
)
from kernel_provider.client.models import AppVersion, Browser, Invocation, Replay
from kernel_provider.client.trust import is_name, origin, require_id

T = TypeVar("T")

#: Kernel caps a synchronous invocation at about 100 s; the read timeout of a sync create must outlast it.
SYNC_INVOKE_CAP_SECONDS = 100.0
SYNC_INVOKE_READ_TIMEOUT = SYNC_INVOKE_CAP_SECONDS + 30.0
CANCEL_OUTPUT = json.dumps({"error": "Invocation cancelled by user"})
MAX_PAGE_SIZE = 100
#: Shortest read timeout a call is cut to: zero or less means "no timeout" (or an error) to the HTTP clients.
MIN_TIMEOUT = 0.05


@dataclass(frozen=True)
class Endpoint:
    """One route of the API. ``idempotent`` says whether repeating the request can never start a second run;
    ``stream`` marks the server-sent-events route, which is opened, never retried."""

    method: str
    path: str
    idempotent: bool = True
    stream: bool = False


CREATE_INVOCATION = Endpoint("POST", "/invocations", idempotent=False)
GET_INVOCATION = Endpoint("GET", "/invocations/{id}")
UPDATE_INVOCATION = Endpoint("PATCH", "/invocations/{id}")  # setting a final state twice is harmless
LIST_INVOCATIONS = Endpoint("GET", "/invocations")
INVOCATION_EVENTS = Endpoint("GET", "/invocations/{id}/events", stream=True)
LIST_BROWSERS = Endpoint("GET", "/invocations/{id}/browsers")
DELETE_BROWSERS = Endpoint("DELETE", "/invocations/{id}/browsers")
LIST_APPS = Endpoint("GET", "/apps")
LIST_REPLAYS = Endpoint("GET", "/browsers/{id}/replays")


@dataclass(frozen=True)
class ApiResponse:
    """What a transport hands back: status, headers (lower-cased names) and the raw body."""

    status_code: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        """The body decoded from JSON (None when empty); :class:`KernelResponseError` when it is not JSON."""
        if not self.body:
            return None
        try:
            return json.loads(self.body)
        except ValueError as exc:
            raise KernelResponseError(
                f"Kernel sent a response that is not JSON (HTTP {self.status_code}): {_body_excerpt(self.body)}"
            ) from exc


@dataclass(frozen=True)
class ApiCall(Generic[T]):
    """One HTTP request plus how to read its successful response.

    :param endpoint: the route.
    :param path_params: values for the route's ``{placeholders}``, URL-quoted when the path is built. Callers check
        them first (naming their own field); the path refuses anything that is not an id or name all the same.
    :param params: query parameters; None values are left out, bools and datetimes are written as Kernel expects.
    :param body: the JSON body, or None for none.
    :param read_timeout: this request's read timeout in seconds; None uses the settings' ``request_timeout``.
    :param parse: turns a successful response into the call's result (default: the decoded JSON).
    """

    endpoint: Endpoint
    path_params: Mapping[str, str] = field(default_factory=dict)
    params: Mapping[str, Any] = field(default_factory=dict)
    body: Any = None
    read_timeout: float | None = None
    parse: Callable[[ApiResponse], T] = field(default=lambda r: r.json())  # type: ignore[assignment]

    @property
    def path(self) -> str:
        """The request path with its parameters filled in (e.g. ``/invocations/abc``).

        :raises KernelInputError: a parameter is empty, ``.``, ``..`` or holds a character outside ids and names:
            quoting cannot stop an HTTP client from collapsing dot segments (``/invocations/..`` is ``/``).
        """
        for key, value in self.path_params.items():
            if not is_name(value):
                raise KernelInputError(
                    f"path parameter {key!r} of {self.endpoint.method} {self.endpoint.path}",
                    "is not a Kernel id or name; nothing was sent.",
                    "Pass the id as Kernel returned it.",
                )
        return self.endpoint.path.format(**{k: quote(str(v), safe="") for k, v in self.path_params.items()})

    @property
    def query(self) -> dict[str, str]:
        """The query parameters as strings, None values left out."""
        return {k: _query_value(v) for k, v in self.params.items() if v is not None}

    @property
    def shard_key(self) -> str:
        """What picks the connection pool of this call on the async side (the invocation id, if any)."""
        return str(self.path_params.get("id", ""))

    def within(self, seconds: float) -> ApiCall[T]:
        """This call with its own read timeout (if it has one, e.g. a sync create) cut to ``seconds``.

        A call without a read timeout of its own is returned as is: the settings' timeouts are cut separately.
        """
        if self.read_timeout is None or self.read_timeout <= seconds:
            return self
        return replace(self, read_timeout=max(MIN_TIMEOUT, seconds))

    def result(self, response: ApiResponse) -> T:
        """The call's result from ``response``: its parsed body, or the :class:`KernelApiError` of an error status."""
        raise_for_status(self, response)
        return self.parse(response)


Operation = Generator[ApiCall[Any], Any, T]


def raise_for_status(call: ApiCall[Any], response: ApiResponse) -> None:
    """Turn an HTTP error into :class:`KernelApiError` carrying Kernel's ``code``/``message``/``details``.

    :param call: the request, named in the error (method and path).
    :param response: Kernel's answer; a success status returns None, an error status raises the class
        :func:`~kernel_provider.client.errors.api_error_for_status` picks. A body that is not Kernel's error
        object is quoted (cut short) as the message.
    """
    if not is_error_status(response.status_code):
        return
    code: str | None = None
    message = ""
    details: list[Mapping[str, Any]] = []
    try:
        data = json.loads(response.body) if response.body else None
    except ValueError:
        data = None
    if isinstance(data, Mapping):
        code = str(data["code"]) if data.get("code") is not None else None
        message = str(data.get("message") or "")
        details = [d for d in data.get("details") or () if isinstance(d, Mapping)]
        inner = data.get("inner_error")
        if isinstance(inner, Mapping) and inner.get("message"):
            message = f"{message} ({inner.get('code') or 'inner'}: {inner['message']})"
    if not message:
        message = _body_excerpt(response.body) or "no error body"
    error_class = api_error_for_status(response.status_code)
    if issubclass(error_class, KernelRedirectError):
        raise _redirect_error(call, response)
    raise error_class(
        response.status_code,
        code,
        message,
        details=details,
        request_id=response.headers.get("x-request-id") or response.headers.get("request-id"),
        method=call.endpoint.method,
        path=call.path,
        headers=response.headers,
    )


def _redirect_error(call: ApiCall[Any], response: ApiResponse) -> KernelRedirectError:
    """A 3xx as an error naming only the ``Location``'s origin: its path and query may hold anything (a token), and
    the body is the redirecting server's, not Kernel's."""
    location = response.headers.get("location")
    where = origin(location) if location else "nowhere (no Location header)"
    error = KernelRedirectError(
        response.status_code,
        "redirect",
        f"the server answered with a redirect to {where}; it was not followed (the API key, the project header "
        "and any payload stay unsent there). Kernel's API does not redirect: check the connection's host (the "
        "API base URL, e.g. https://api.onkernel.com) and any proxy in between.",
        method=call.endpoint.method,
        path=call.path,
    )
    error.location_origin = where
    return error


# --- drivers: pure loops, the sending is the caller's ----------------------------------------------------------


def drive(operation: Operation[T], send: Callable[[ApiCall[Any]], Any]) -> T:
    """Run ``operation`` to its end on this thread and return its result.

    :param operation: a generator from this module (e.g. ``get_invocation("abc")``).
    :param send: answers one call with its result (see :meth:`ApiCall.result`) or raises a :class:`KernelError`,
        which is thrown into the operation so it can decide (a cancel tolerates a 404, a create turns an
        ambiguous failure into :class:`KernelAmbiguousCreateError`). Retries are ``send``'s business. Other
        exceptions are not thrown in: they end the operation at once.
    """
    outcome: tuple[bool, Any] = (True, None)
    while True:
        try:
            call = operation.send(outcome[1]) if outcome[0] else operation.throw(outcome[1])
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        try:
            outcome = (True, send(call))
        except KernelError as exc:
            outcome = (False, exc)


async def adrive(operation: Operation[T], send: Callable[[ApiCall[Any]], Awaitable[Any]]) -> T:
    """:func:`drive` for an async ``send``: the same operation, without blocking the event loop."""
    outcome: tuple[bool, Any] = (True, None)
    while True:
        try:
            call = operation.send(outcome[1]) if outcome[0] else operation.throw(outcome[1])
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        try:
            outcome = (True, await send(call))
        except KernelError as exc:
            outcome = (False, exc)


# --- operations -------------------------------------------------------------------------------------------


def create_invocation(request: Mapping[str, Any]) -> Operation[Invocation]:
    """``POST /invocations`` with an already validated body (see :mod:`kernel_provider.client.validation`).

    Failures after the request may have reached Kernel become :class:`KernelAmbiguousCreateError` (see
    :func:`create_may_have_happened`); refusals stay what they are. A sync create (no ``async`` in the body) gets
    a read timeout above Kernel's 100 s cap.
    """
    window_start = datetime.now(timezone.utc) - timedelta(seconds=2)
    call: ApiCall[Invocation] = ApiCall(
        CREATE_INVOCATION,
        body=dict(request),
        read_timeout=None if request.get("async") else SYNC_INVOKE_READ_TIMEOUT,
        parse=_parse_invocation,
    )
    try:
        return (yield call)
    except (KernelTransportError, KernelApiError) as exc:
        if not create_may_have_happened(exc):
            raise
        raise KernelAmbiguousCreateError(
            app_name=str(request.get("app_name")),
            action_name=str(request.get("action_name")),
            payload=request.get("payload"),
            window_start=window_start,
            window_end=datetime.now(timezone.utc) + timedelta(seconds=2),
            cause=exc,
        ) from exc


def create_may_have_happened(exc: BaseException) -> bool:
    """Whether a failed create leaves open that Kernel started the invocation anyway.

    :param exc: the create's failure. A transport error counts when the request may have been sent; an API
        error when it is a 5xx or 408 (the run may have been recorded before the failure) and Kernel did not
        say ``x-should-retry: true``. Refusals (4xx, 429 included) and anything else never count.
    """
    if isinstance(exc, KernelTransportError):
        return exc.request_sent
    if isinstance(exc, KernelApiError):
        if exc.headers.get("x-should-retry", "").lower() == "true":
            return False
        return isinstance(exc, KernelServerError)
    return False


def get_invocation(invocation_id: str) -> Operation[Invocation]:
    """``GET /invocations/{id}``: the invocation's current state and, once finished, its output."""
    return (yield ApiCall(GET_INVOCATION, {"id": invocation_id}, parse=_parse_invocation))


def update_invocation(invocation_id: str, status: str, output: str | None = None) -> Operation[Invocation]:
    """``PATCH /invocations/{id}``: set the status (Kernel accepts only ``failed``, its cancel).

    :param output: the invocation's new ``output`` (JSON text); None leaves it alone.
    """
    body: dict[str, Any] = {"status": status}
    if output is not None:
        body["output"] = output
    return (yield ApiCall(UPDATE_INVOCATION, {"id": invocation_id}, body=body, parse=_parse_invocation))


def list_browsers(invocation_id: str) -> Operation[list[dict[str, Any]]]:
    """``GET /invocations/{id}/browsers``: the browsers the run holds (as Kernel describes them)."""
    data = yield ApiCall(LIST_BROWSERS, {"id": invocation_id})
    return list(data.get("browsers") or []) if isinstance(data, Mapping) else []


def invocation_browsers(invocation_id: str) -> Operation[list[Browser]]:
    """``GET /invocations/{id}/browsers`` parsed: the run's browsers as :class:`Browser` (live-view URLs included)."""
    items = yield from list_browsers(invocation_id)
    return [Browser.from_api(item) for item in items if isinstance(item, Mapping)]


def list_replays(browser_id: str) -> Operation[list[Replay]]:
    """``GET /browsers/{id}/replays``: the recordings of a browser session (a 404 for a session Kernel no longer
    knows is raised as :class:`KernelNotFoundError`, for the caller to tolerate)."""
    data = yield ApiCall(LIST_REPLAYS, {"id": browser_id})
    items = data if isinstance(data, list) else []
    return [Replay.from_api(item, browser_id) for item in items if isinstance(item, Mapping)]


def delete_browsers(invocation_id: str) -> Operation[None]:
    """``DELETE /invocations/{id}/browsers``: stop every browser the run holds."""
    return (yield ApiCall(DELETE_BROWSERS, {"id": invocation_id}, parse=lambda r: None))


def check_connection() -> Operation[None]:
    """The cheapest authenticated call, ``GET /apps?limit=1``: it succeeds only with a valid key and project."""
    return (yield ApiCall(LIST_APPS, params={"limit": 1}, parse=lambda r: None))


def event_stream(invocation_id: str, since: str | None = None) -> ApiCall[None]:
    """The request that opens ``GET /invocations/{id}/events`` (server-sent events; a transport opens it).

    :param since: RFC 3339 timestamp; Kernel sends only events from then on. None: from the start.
    """
    return ApiCall(
        INVOCATION_EVENTS, {"id": invocation_id}, params={"since": since} if since else {}, parse=lambda r: None
    )


def cancel_output(reason: str | None = None) -> str:
    """The ``output`` a cancel PATCH sets: ``{"error": reason}`` as JSON text (Kernel's own wording when None)."""
    return json.dumps({"error": reason}) if reason else CANCEL_OUTPUT


def cancel_steps(invocation_id: str, reason: str | None = None) -> tuple[Operation[Invocation | None], Operation[None]]:
    """The two independent halves of a cancel, for a caller that runs them concurrently.

    :param invocation_id: the invocation to stop (not checked here; the client validates it).
    :param reason: text stored in the invocation's output as ``{"error": reason}``; None uses Kernel's wording.
    :returns: ``(patch, delete)``: :func:`update_invocation` to ``failed`` (its result: the invocation, or None
        when Kernel no longer knows it) and :func:`delete_browsers`. Each tolerates a 404 (already gone); any
        other error is raised by that half alone. Combine the outcomes with :func:`cancel_result`.
    """
    return (
        _unless_gone(update_invocation(invocation_id, "failed", cancel_output(reason))),
        _unless_gone(delete_browsers(invocation_id)),
    )


def cancel_invocation(invocation_id: str, reason: str | None = None) -> Operation[Invocation | None]:
    """Stop a run one step after the other: ``PATCH`` it ``failed`` (Kernel's only cancel), then delete its browsers.

    Browsers are deleted even when the PATCH fails, because a past Kernel regression left them running; the PATCH's
    error is raised afterwards. A 404 on either call is tolerated (already gone). Returns the invocation's state
    after the PATCH, or None. :class:`~kernel_provider.client.client.KernelClient` sends both halves
    (:func:`cancel_steps`) at once instead, so a slow PATCH cannot hold back the DELETE; this sequential form is
    for a caller that drives one operation at a time.
    """
    patch, delete = cancel_steps(invocation_id, reason)
    result: Invocation | None = None
    patch_error: KernelError | None = None
    try:
        result = yield from patch
    except KernelError as exc:
        patch_error = exc
    yield from delete
    if patch_error is not None:
        raise patch_error
    return result


def cancel_result(
    invocation_id: str, budget: float | None, patch: tuple[bool, Any] | None, delete: tuple[bool, Any] | None
) -> Invocation | None:
    """The outcome of a cancel whose halves ran concurrently.

    :param invocation_id: the cancelled invocation (named in the error of a half that did not end).
    :param budget: the seconds the cancel had, quoted in that error; None for no budget.
    :param patch: ``(True, result)`` or ``(False, error)`` of the PATCH half; None when it was still out when the
        budget ended (a :class:`KernelTransportError` then, as Kernel may have acted on it).
    :param delete: the same for the DELETE half.
    :returns: the PATCH's result. The PATCH's error wins over the DELETE's when both failed.
    """
    for endpoint, outcome in ((UPDATE_INVOCATION, patch), (DELETE_BROWSERS, delete)):
        if outcome is None:
            path = ApiCall(endpoint, {"id": invocation_id}).path
            raise KernelTransportError(
                f"no answer within the cancel budget ({budget or 0:g}s)",
                request_sent=True,
                method=endpoint.method,
                path=path,
            )
        if not outcome[0]:
            raise outcome[1]
    assert patch is not None
    return patch[1]  # type: ignore[no-any-return]


def list_invocations(
    *,
    app_name: str | None = None,
    version: str | None = None,
    action_name: str | None = None,
    deployment_id: str | None = None,
    status: str | None = None,
    since: str | datetime | None = None,
    query: str | None = None,
    limit: int | None = None,
    page_size: int = MAX_PAGE_SIZE,
    offset: int = 0,
) -> Operation[list[Invocation]]:
    """``GET /invocations`` across pages (newest first).

    :param app_name: only this app's invocations (None, like every filter here: no filter).
    :param version: only this app version label.
    :param action_name: only this action.
    :param deployment_id: only this deployment.
    :param status: only this status (``queued``, ``running``, ``succeeded``, ``failed``).
    :param since: only invocations started from then on: a datetime (naive counts as UTC), RFC 3339 text, or a
        duration Kernel understands (``"5m"``).
    :param query: Kernel's free-text search.
    :param limit: the most invocations returned in all; None follows every page (see :func:`paginate`).
    :param page_size: invocations asked for per request, at most 100.
    :param offset: how many matching invocations to skip first (a caller reading one page at a time).
    :raises KernelInputError: ``deployment_id`` is not a Kernel id (before any request).
    """
    if deployment_id is not None:
        require_id("deployment_id", deployment_id)
    filters = {
        "app_name": app_name,
        "version": version,
        "action_name": action_name,
        "deployment_id": deployment_id,
        "status": status,
        "since": since,
        "query": query,
    }
    items = yield from paginate(LIST_INVOCATIONS, filters, limit, page_size, offset)
    return [Invocation.from_api(i) for i in items]


def list_apps(
    *,
    app_name: str | None = None,
    version: str | None = None,
    query: str | None = None,
    limit: int | None = None,
    page_size: int = MAX_PAGE_SIZE,
) -> Operation[list[AppVersion]]:
    """``GET /apps`` across pages: the deployed app versions and their actions.

    :param app_name: only this app (None: every app).
    :param version: only this version label.
    :param query: Kernel's free-text search.
    :param limit: the most versions returned; None follows every page.
    :param page_size: versions asked for per request, at most 100.
    """
    items = yield from paginate(LIST_APPS, {"app_name": app_name, "version": version, "query": query}, limit, page_size)
    return [AppVersion.from_api(i) for i in items if isinstance(i, Mapping)]


def paginate(
    endpoint: Endpoint, filters: Mapping[str, Any], limit: int | None, page_size: int, offset: int = 0
) -> Operation[list[Any]]:
    """Every item of a listing from ``offset`` on, page by page (``limit`` / ``offset`` query, ``x-has-more`` /
    ``x-next-offset``).

    It stops on an empty page, on ``x-has-more`` other than ``true``, on a missing or zero ``x-next-offset``, or on
    one that does not move forward (a server that would otherwise keep it looping), and once ``limit`` items
    are in hand (``limit`` None: no cap). A page that is not a JSON array is a :class:`KernelResponseError`.
    """
    page_size = max(1, min(page_size, MAX_PAGE_SIZE))
    items: list[Any] = []
    offset = max(0, int(offset))
    while limit is None or len(items) < limit:
        want = page_size if limit is None else min(page_size, limit - len(items))
        response: ApiResponse = yield ApiCall(
            endpoint, params={**filters, "limit": want, "offset": offset}, parse=lambda r: r
        )
        page = response.json()
        if not isinstance(page, list):
            raise KernelResponseError(f"{endpoint.path} returned {type(page).__name__}, expected a JSON array")
        items.extend(page)
        next_offset = _int_header(response.headers.get("x-next-offset"))
        has_more = response.headers.get("x-has-more", "").lower() == "true"
        if not page or not has_more or not next_offset or next_offset <= offset:
            break
        offset = next_offset
    return items if limit is None else items[:limit]


def _unless_gone(operation: Operation[T]) -> Operation[T | None]:
    """``operation``, with a 404 read as "already gone": None instead of an error."""
    try:
        return (yield from operation)
    except KernelNotFoundError:
        return None


def _parse_invocation(response: ApiResponse) -> Invocation:
    return Invocation.from_api(response.json())


def _int_header(value: str | None) -> int | None:
    try:
        return int(value) if value not in (None, "") else None  # type: ignore[arg-type]
    except ValueError:
        return None


def _query_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")
    return str(value)


def _body_excerpt(body: bytes, limit: int = 300) -> str:
    text = body.decode("utf-8", errors="replace").strip()
    return text if len(text) <= limit else text[:limit] + "..."
