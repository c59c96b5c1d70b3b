"""Invocations and apps as operations (sans-IO, see :mod:`kernel_provider.client.wire`): create, read, list,
follow, cancel, and the app listing; each written once, driven sync or async by the client."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

from kernel_provider.client.errors import (
    KernelAmbiguousCreateError,
    KernelApiError,
    KernelError,
    KernelInputError,
    KernelServerError,
    KernelTransportError,
)
from kernel_provider.client.models import AppAction, AppVersion, Browser, Invocation, Replay
from kernel_provider.client.trust import require_id
from kernel_provider.client.validation import require_name
from kernel_provider.client.wire import (
    MAX_PAGE_SIZE,
    ApiCall,
    ApiResponse,
    Endpoint,
    Operation,
    paginate,
    unless_gone,
)

T = TypeVar("T")

#: Kernel caps a synchronous invocation at about 100 s; the read timeout of a sync create must outlast it.
SYNC_INVOKE_CAP_SECONDS = 100.0
SYNC_INVOKE_READ_TIMEOUT = SYNC_INVOKE_CAP_SECONDS + 30.0
CANCEL_OUTPUT = json.dumps({"error": "Invocation cancelled by user"})


CREATE_INVOCATION = Endpoint("POST", "/invocations", idempotent=False)
GET_INVOCATION = Endpoint("GET", "/invocations/{id}")
UPDATE_INVOCATION = Endpoint("PATCH", "/invocations/{id}")  # setting a final state twice is harmless
LIST_INVOCATIONS = Endpoint("GET", "/invocations")
INVOCATION_EVENTS = Endpoint("GET", "/invocations/{id}/events", stream=True)
LIST_BROWSERS = Endpoint("GET", "/invocations/{id}/browsers")
DELETE_BROWSERS = Endpoint("DELETE", "/invocations/{id}/browsers")
LIST_APPS = Endpoint("GET", "/apps")
LIST_REPLAYS = Endpoint("GET", "/browsers/{id}/replays")


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
        unless_gone(update_invocation(invocation_id, "failed", cancel_output(reason))),
        unless_gone(delete_browsers(invocation_id)),
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


def _parse_invocation(response: ApiResponse) -> Invocation:
    return Invocation.from_api(response.json())


@dataclass(frozen=True)
class ActionName:
    """An action asked for by name (``get_action``): checked once, then looked up in ``GET /apps`` answers."""

    app_name: str
    action_name: str
    version: str

    @classmethod
    def checked(cls, app_name: Any, action_name: Any, version: Any) -> ActionName:
        """The three names, each checked (:class:`KernelInputError` naming the field) before any request."""
        return cls(
            require_name("app_name", app_name),
            require_name("action_name", action_name),
            require_name("version", version),
        )

    def pick(self, versions: list[AppVersion], known_apps: list[str]) -> AppAction:
        """The action among the app's ``versions``; :class:`KernelInputError` listing what exists when it does not
        (``known_apps``: the deployed apps, listed only when the app has no version at all)."""
        if not versions:
            raise KernelInputError(
                "app_name",
                f"no app {self.app_name!r} is deployed.",
                f"Deployed apps: {', '.join(sorted(set(known_apps))) or 'none'}.",
            )
        match = next((v for v in versions if v.version == self.version), None)
        if match is None:
            raise KernelInputError(
                "version",
                f"app {self.app_name!r} has no version {self.version!r}.",
                f"Versions: {', '.join(sorted(v.version for v in versions))}.",
            )
        action = next((a for a in match.actions if a.name == self.action_name), None)
        if action is None:
            raise KernelInputError(
                "action_name",
                f"{self.app_name}@{self.version} has no action {self.action_name!r}.",
                f"Actions: {', '.join(sorted(match.action_names)) or 'none'}.",
            )
        return action
