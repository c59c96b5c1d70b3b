"""Kernel's REST API as data: endpoints, requests, responses and the operations built from them.

Nothing here does I/O. An *operation* is a generator that yields :class:`ApiCall` objects and receives their
results (or has the call's exception thrown into it). The hook drives operations with a synchronous transport
(requests) on workers and an asynchronous one (httpx) in triggers, so every operation is written once.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Generic, TypeVar

from kernel_provider.exceptions import (
    KernelAmbiguousCreateError,
    KernelApiError,
    KernelNotFoundError,
    KernelResponseError,
    KernelServerError,
    KernelTransportError,
    api_error_for_status,
)
from kernel_provider.models import AppVersion, Invocation

T = TypeVar("T")

#: Kernel caps a synchronous invocation at about 100 s; the read timeout of a sync create must outlast it.
SYNC_INVOKE_CAP_SECONDS = 100.0
SYNC_INVOKE_READ_TIMEOUT = SYNC_INVOKE_CAP_SECONDS + 30.0
CANCEL_OUTPUT = json.dumps({"error": "Invocation cancelled by user"})
MAX_PAGE_SIZE = 100


@dataclass(frozen=True)
class Endpoint:
    """One route of the API. ``idempotent`` says whether repeating the request can never start a second run."""

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


@dataclass(frozen=True)
class ApiResponse:
    """What a transport hands back: status, headers (lower-cased names) and the raw body."""

    status_code: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
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
    """One HTTP request plus how to read its successful response."""

    endpoint: Endpoint
    path_params: Mapping[str, str] = field(default_factory=dict)
    params: Mapping[str, Any] = field(default_factory=dict)
    body: Any = None
    read_timeout: float | None = None  # None: the connection's default
    parse: Callable[[ApiResponse], T] = field(default=lambda r: r.json())  # type: ignore[assignment]

    @property
    def path(self) -> str:
        return self.endpoint.path.format(**{k: _quote(v) for k, v in self.path_params.items()})

    @property
    def query(self) -> dict[str, str]:
        return {k: _query_value(v) for k, v in self.params.items() if v is not None}


Operation = Generator[ApiCall[Any], Any, T]


def raise_for_status(call: ApiCall[Any], response: ApiResponse) -> None:
    """Turn an HTTP error into :class:`KernelApiError` carrying Kernel's ``code``/``message``/``details``."""
    if response.status_code < 400:
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
    raise api_error_for_status(response.status_code)(
        response.status_code,
        code,
        message,
        details=details,
        request_id=response.headers.get("x-request-id") or response.headers.get("request-id"),
        method=call.endpoint.method,
        path=call.path,
        headers=response.headers,
    )


# --- operations -------------------------------------------------------------------------------------------


def create_invocation(request: Mapping[str, Any]) -> Operation[Invocation]:
    """``POST /invocations`` with an already validated body (see :mod:`kernel_provider.validation`).

    Failures after the request may have reached Kernel become :class:`KernelAmbiguousCreateError`.
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
    """Whether a failed create leaves open that Kernel started the invocation anyway."""
    if isinstance(exc, KernelTransportError):
        return exc.request_sent
    if isinstance(exc, KernelApiError):
        # 4xx (429 included) are refusals. A 5xx or 408 may come after the run was recorded, unless Kernel
        # says the request is safe to repeat.
        if exc.headers.get("x-should-retry", "").lower() == "true":
            return False
        return isinstance(exc, KernelServerError)
    return False


def get_invocation(invocation_id: str) -> Operation[Invocation]:
    return (yield ApiCall(GET_INVOCATION, {"id": invocation_id}, parse=_parse_invocation))


def update_invocation(invocation_id: str, status: str, output: str | None = None) -> Operation[Invocation]:
    body: dict[str, Any] = {"status": status}
    if output is not None:
        body["output"] = output
    return (yield ApiCall(UPDATE_INVOCATION, {"id": invocation_id}, body=body, parse=_parse_invocation))


def list_browsers(invocation_id: str) -> Operation[list[dict[str, Any]]]:
    data = yield ApiCall(LIST_BROWSERS, {"id": invocation_id})
    return list(data.get("browsers") or []) if isinstance(data, Mapping) else []


def delete_browsers(invocation_id: str) -> Operation[None]:
    """``DELETE /invocations/{id}/browsers``: stop every browser the run holds."""
    return (yield ApiCall(DELETE_BROWSERS, {"id": invocation_id}, parse=lambda r: None))


def cancel_output(reason: str | None = None) -> str:
    """The ``output`` a cancel PATCH sets: ``{"error": reason}`` as JSON text (Kernel's own wording when None)."""
    return json.dumps({"error": reason}) if reason else CANCEL_OUTPUT


def cancel_steps(invocation_id: str, reason: str | None = None) -> tuple[Operation[Invocation], Operation[None]]:
    """The two independent halves of a cancel, for a caller that runs them concurrently.

    :param invocation_id: the invocation to stop (not checked here; the hook validates it).
    :param reason: text stored in the invocation's output as ``{"error": reason}``; None uses Kernel's wording.
    :returns: ``(patch, delete)``: :func:`update_invocation` to ``failed`` and :func:`delete_browsers`. Neither
        tolerates a 404 by itself; the caller decides (see ``KernelHook.acancel_invocation``).
    """
    return update_invocation(invocation_id, "failed", cancel_output(reason)), delete_browsers(invocation_id)


def cancel_invocation(invocation_id: str, reason: str | None = None) -> Operation[Invocation | None]:
    """Stop a run one step after the other: ``PATCH`` it ``failed`` (Kernel's only cancel), then delete its browsers.

    Browsers are deleted even when the PATCH fails, because a past Kernel regression left them running.
    A 404 on either call is tolerated (already gone). Returns the invocation's state after the PATCH, if any.
    The hook's ``cancel_invocation`` / ``acancel_invocation`` send both halves (:func:`cancel_steps`) at once
    instead, so a slow PATCH cannot hold back the DELETE; this sequential form remains for callers that drive
    a single operation.
    """
    result: Invocation | None = None
    patch_error: KernelApiError | None = None
    try:
        result = yield from update_invocation(invocation_id, "failed", cancel_output(reason))
    except KernelNotFoundError:
        pass
    except KernelApiError as exc:
        patch_error = exc
    try:
        yield from delete_browsers(invocation_id)
    except KernelNotFoundError:
        pass
    if patch_error is not None:
        raise patch_error
    return result


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
) -> Operation[list[Invocation]]:
    """``GET /invocations`` across pages (newest first). ``limit`` caps the total returned; None = all."""
    filters = {
        "app_name": app_name, "version": version, "action_name": action_name, "deployment_id": deployment_id,
        "status": status, "since": since, "query": query,
    }
    items = yield from _paginate(LIST_INVOCATIONS, filters, limit, page_size)
    return [Invocation.from_api(i) for i in items]


def list_apps(
    *, app_name: str | None = None, version: str | None = None, query: str | None = None,
    limit: int | None = None, page_size: int = MAX_PAGE_SIZE,
) -> Operation[list[AppVersion]]:
    items = yield from _paginate(LIST_APPS, {"app_name": app_name, "version": version, "query": query},
                                 limit, page_size)
    return [AppVersion.from_api(i) for i in items if isinstance(i, Mapping)]


def _paginate(endpoint: Endpoint, filters: Mapping[str, Any], limit: int | None,
              page_size: int) -> Operation[list[Any]]:
    page_size = max(1, min(page_size, MAX_PAGE_SIZE))
    items: list[Any] = []
    offset = 0
    while limit is None or len(items) < limit:
        want = page_size if limit is None else min(page_size, limit - len(items))
        response: ApiResponse = yield ApiCall(endpoint, params={**filters, "limit": want, "offset": offset},
                                              parse=lambda r: r)
        page = response.json()
        if not isinstance(page, list):
            raise KernelResponseError(f"{endpoint.path} returned {type(page).__name__}, expected a JSON array")
        items.extend(page)
        next_offset = _int_header(response.headers.get("x-next-offset"))
        has_more = response.headers.get("x-has-more", "").lower() == "true"
        # Stop on an explicit "no more", on the 0 sentinel, or on a server that would make us loop forever.
        if not page or not has_more or not next_offset or next_offset <= offset:
            break
        offset = next_offset
    return items if limit is None else items[:limit]


def _parse_invocation(response: ApiResponse) -> Invocation:
    return Invocation.from_api(response.json())


def _int_header(value: str | None) -> int | None:
    try:
        return int(value) if value not in (None, "") else None  # type: ignore[arg-type]
    except ValueError:
        return None


def _quote(value: str) -> str:
    from urllib.parse import quote

    return quote(str(value), safe="")


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
