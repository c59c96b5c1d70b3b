"""The wire, as data: endpoints, requests, responses, and the drivers that run an operation over a transport.

Nothing here does I/O. An *operation* is a generator that yields :class:`ApiCall` objects and receives their
results (or has the call's exception thrown into it). :class:`~kernel_provider.client.client.KernelClient` drives
operations with a synchronous transport (requests) and an asynchronous one (httpx) through :func:`drive` and
:func:`adrive`, so every operation is written once; tests drive them with canned :class:`ApiResponse` objects.
The operations themselves live beside their resource: :mod:`~kernel_provider.client.invocations` (invocations and
apps) and :mod:`~kernel_provider.client.browsers`.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Generator, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, Generic, TypeVar
from urllib.parse import quote

from kernel_provider.client.errors import (
    KernelError,
    KernelInputError,
    KernelNotFoundError,
    KernelRedirectError,
    KernelResponseError,
    api_error_for_status,
    is_error_status,
)
from kernel_provider.client.trust import is_name, origin

T = TypeVar("T")

#: Most items Kernel returns in one page of a listing.
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
    :param sink: streams a successful body into it (``begin()`` per attempt, then ``write(chunk)``) instead of
        holding it; the response handed to ``parse`` then has an empty body. An error body is read as usual.
    """

    endpoint: Endpoint
    path_params: Mapping[str, str] = field(default_factory=dict)
    params: Mapping[str, Any] = field(default_factory=dict)
    body: Any = None
    read_timeout: float | None = None
    parse: Callable[[ApiResponse], T] = field(default=lambda r: r.json())  # type: ignore[assignment]
    sink: Any = None

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


# --- building blocks of operations ---------------------------------------------------------------------


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
        next_offset = int_header(response.headers.get("x-next-offset"))
        has_more = response.headers.get("x-has-more", "").lower() == "true"
        if not page or not has_more or not next_offset or next_offset <= offset:
            break
        offset = next_offset
    return items if limit is None else items[:limit]


def unless_gone(operation: Operation[T]) -> Operation[T | None]:
    """``operation``, with a 404 read as "already gone": None instead of an error."""
    try:
        return (yield from operation)
    except KernelNotFoundError:
        return None


def int_header(value: str | None) -> int | None:
    """A header's value as a whole number; None when it is missing, empty or not a number."""
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
