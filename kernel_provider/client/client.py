"""``KernelClient``: drive Kernel from Python, synchronously or with asyncio, with or without Airflow::

    from kernel_provider.client import KernelClient, KernelSettings

    client = KernelClient(KernelSettings.from_mapping(password="sk_...", extra={"project_id": "proj_..."}))
    invocation = client.invoke("my-app", "scrape", payload={"url": "https://example.com"})
    print(invocation.status, invocation.result)

Every method runs an operation of :mod:`kernel_provider.client.invocations` or
:mod:`~kernel_provider.client.browsers` (each written once) over the sync transport (requests) or the async one
(httpx) of :mod:`kernel_provider.client.transport`, every request under the retry policy of
:mod:`kernel_provider.client.retry`: a request Kernel certainly never acted on, or one that is safe to repeat, is
retried within the policy's bounds; a create that may have reached Kernel is never re-sent
(:class:`~kernel_provider.client.errors.KernelAmbiguousCreateError`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import AsyncGenerator, Callable, Mapping
from datetime import datetime
from typing import Any, TypeVar

import kernel_provider.client.invocations as invocations
import kernel_provider.client.wire as wire
from kernel_provider.client.caller import ApiCaller, deadline_after
from kernel_provider.client.errors import (
    KernelApiError,
    KernelAuthError,
    KernelError,
    KernelTransportError,
)
from kernel_provider.client.models import AppAction, AppVersion, Browser, Invocation, Replay
from kernel_provider.client.retry import RetryPolicy
from kernel_provider.client.trust import require_id
from kernel_provider.client.validation import build_invoke_request, check_seconds
from kernel_provider.client.wire import MAX_PAGE_SIZE, Operation

T = TypeVar("T")
log = logging.getLogger(__name__)

#: The retries of :meth:`KernelClient.check_connection`: a person is waiting for the answer.
CHECK_POLICY = RetryPolicy(max_attempts=2, max_elapsed=10, rate_limit_budget=10)


class KernelClient(ApiCaller):
    """Talks to Kernel's API with one set of settings: one named method per operation, each with an ``a``-twin for
    asyncio (parameters as :class:`~.caller.ApiCaller`'s). Safe to share between threads, and between the tasks of
    one event loop.
    """

    # --- invocations ------------------------------------------------------------------------------------------

    def invoke(
        self,
        app_name: str,
        action_name: str,
        *,
        version: str = "latest",
        payload: Any = None,
        invoke_async: bool = True,
        async_timeout_seconds: int | None = None,
    ) -> Invocation:
        """Start one run of ``app_name``/``action_name`` (``POST /invocations``).

        :param version: the app version label.
        :param payload: the action's input: a dict/list/number/bool (JSON-encoded here) or JSON text.
        :param invoke_async: True (the default, as everywhere in the provider): return at once with a ``queued``
            invocation (Kernel's ``async``). False: Kernel runs the action within the request (capped by Kernel at
            ~100 s) and the invocation comes back finished.
        :param async_timeout_seconds: how long Kernel lets an async run go (10..3600; Kernel's default 900).
        :returns: the created invocation; for a sync invoke its final state and output.
        :raises KernelInputError: before any request, when a parameter is wrong.
        :raises KernelAmbiguousCreateError: the request failed after it may have reached Kernel; not re-sent.
        """
        return self.create_invocation(
            build_invoke_request(
                app_name=app_name,
                action_name=action_name,
                version=version,
                payload=payload,
                invoke_async=invoke_async,
                async_timeout_seconds=async_timeout_seconds,
            )
        )

    async def ainvoke(
        self,
        app_name: str,
        action_name: str,
        *,
        version: str = "latest",
        payload: Any = None,
        invoke_async: bool = True,
        async_timeout_seconds: int | None = None,
    ) -> Invocation:
        """:meth:`invoke` without blocking the event loop."""
        return await self.acreate_invocation(
            build_invoke_request(
                app_name=app_name,
                action_name=action_name,
                version=version,
                payload=payload,
                invoke_async=invoke_async,
                async_timeout_seconds=async_timeout_seconds,
            )
        )

    def create_invocation(
        self,
        request: Mapping[str, Any],
        *,
        retry: RetryPolicy | None = None,
        before_send: Callable[[], None] | None = None,
    ) -> Invocation:
        """``POST /invocations`` with a body from :func:`~kernel_provider.client.validation.build_invoke_request`
        (not checked again here: a bad body is Kernel's to refuse).

        Never re-sent once it may have reached Kernel: such a failure raises
        :class:`~kernel_provider.client.errors.KernelAmbiguousCreateError` (429s and refused connections, which
        certainly created nothing, are retried within the retry budgets).

        :param retry: the retry bounds of this create only (None: :attr:`retry`); e.g. a ``rate_limit_budget`` of 0
            raises the first 429 at once, for a caller that waits it out elsewhere.
        :param before_send: called right before each attempt is sent (see :meth:`execute`).
        """
        return self.execute(invocations.create_invocation(request), retry=retry, before_send=before_send)

    async def acreate_invocation(self, request: Mapping[str, Any]) -> Invocation:
        """:meth:`create_invocation` without blocking the event loop."""
        return await self.aexecute(invocations.create_invocation(request))

    def create_window_seconds(self, request: Mapping[str, Any], *, retry: RetryPolicy | None = None) -> float:
        """The longest a create of ``request`` can take from its first send until it can no longer reach Kernel:
        the retry budgets (429s and refused connections are re-sent) plus the connect and read timeouts. No
        request is made.

        :param retry: the retry bounds the create will use (None: :attr:`retry`)."""
        retry = retry or self.retry
        return (
            max(retry.rate_limit_budget, retry.max_elapsed)
            + retry.retry_after_cap
            + self.create_attempt_seconds(request)
        )

    def create_attempt_seconds(self, request: Mapping[str, Any]) -> float:
        """The longest one attempt of a create of ``request`` can take from its send until Kernel can no longer
        act on it: the connect plus the read timeout. No request is made."""
        read = self.settings.request_timeout if request.get("async") else invocations.SYNC_INVOKE_READ_TIMEOUT
        return self.settings.connect_timeout + read

    def get_invocation(self, invocation_id: str) -> Invocation:
        """``GET /invocations/{id}``: the invocation's current state (and output, once finished).

        :raises KernelInputError: ``invocation_id`` is not a non-empty string; nothing was sent.
        :raises KernelNotFoundError: Kernel does not know it.
        """
        return self.execute(invocations.get_invocation(require_id("invocation_id", invocation_id)))

    async def aget_invocation(self, invocation_id: str) -> Invocation:
        """:meth:`get_invocation` without blocking the event loop."""
        return await self.aexecute(invocations.get_invocation(require_id("invocation_id", invocation_id)))

    def list_invocations(
        self,
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
    ) -> list[Invocation]:
        """``GET /invocations``, newest first, pages followed.

        :param app_name: only this app's runs.
        :param version: only runs of this app version.
        :param action_name: only runs of this action.
        :param deployment_id: only runs of this deployment.
        :param status: only runs in this status (``queued``, ``running``, ``succeeded``, ``failed``).
        :param since: only runs started at or after this time (a datetime, or Kernel's duration/timestamp text).
        :param query: Kernel's free-text search.
        :param limit: the most invocations returned in all; None reads every page.
        :param page_size: invocations asked for per request, at most 100.
        :param offset: how many of the newest to skip.
        """
        return self.execute(
            invocations.list_invocations(
                app_name=app_name,
                version=version,
                action_name=action_name,
                deployment_id=deployment_id,
                status=status,
                since=since,
                query=query,
                limit=limit,
                page_size=page_size,
                offset=offset,
            )
        )

    async def alist_invocations(
        self,
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
    ) -> list[Invocation]:
        """:meth:`list_invocations` without blocking the event loop."""
        return await self.aexecute(
            invocations.list_invocations(
                app_name=app_name,
                version=version,
                action_name=action_name,
                deployment_id=deployment_id,
                status=status,
                since=since,
                query=query,
                limit=limit,
                page_size=page_size,
                offset=offset,
            )
        )

    def cancel_invocation(
        self, invocation_id: str, reason: str | None = None, *, budget: float | None = None
    ) -> Invocation | None:
        """Stop a run: PATCH the invocation ``failed`` and DELETE its browsers, both at once.

        The two requests go out concurrently (the DELETE on a helper thread), so a slow or failing PATCH never
        holds back the DELETE that frees the browsers. A 404 on either is not an error (already gone).

        :param invocation_id: the invocation to stop.
        :param reason: stored as the invocation's output ``{"error": reason}``; None uses Kernel's wording.
            It does not change the ``status_reason`` Kernel reports.
        :param budget: seconds this call may take in all. Each request's connect and read timeouts and its retry
            window are cut to fit, and the call returns when the budget is spent even if a request is still
            out (that request then ends on its own, within its cut timeouts). None: the full timeouts and
            retries, with no overall bound.
        :returns: the invocation as the PATCH left it (``failed``, or its earlier final state when it had already
            ended), or None when Kernel no longer knows it.
        :raises KernelInputError: ``invocation_id`` or ``budget`` is not valid; nothing was sent.
        :raises KernelError: after both requests have ended (or the budget is spent): the PATCH's error when the
            PATCH failed, else the DELETE's. A request still out when the budget ends counts as a
            :class:`KernelTransportError`.
        """
        invocation_id = require_id("invocation_id", invocation_id)
        budget = check_seconds("budget", budget, exclusive=True)
        deadline = deadline_after(budget)
        outcomes: dict[str, tuple[bool, Any]] = {}

        def step(name: str, operation: Operation[Any]) -> None:
            try:
                outcomes[name] = (True, wire.drive(operation, lambda call: self._send(call, deadline)))
            except BaseException as exc:  # handed to the caller below, on its own thread
                outcomes[name] = (False, exc)

        patch, delete = invocations.cancel_steps(invocation_id, reason)
        threads = [
            threading.Thread(
                target=step, args=(name, operation), daemon=True, name=f"kernel-cancel-{name}-{invocation_id}"
            )
            for name, operation in (("delete", delete), ("patch", patch))
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            # Daemon threads: one still waiting for Kernel when the budget ends must not keep the process alive.
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return invocations.cancel_result(invocation_id, budget, outcomes.get("patch"), outcomes.get("delete"))

    async def acancel_invocation(
        self, invocation_id: str, reason: str | None = None, *, budget: float | None = None
    ) -> Invocation | None:
        """:meth:`cancel_invocation` without blocking the event loop: the PATCH and the DELETE run as two tasks at
        once, with the same parameters, result and errors. A request still out when the budget is spent is
        cancelled; when this coroutine is cancelled, both requests are cancelled with it."""
        invocation_id = require_id("invocation_id", invocation_id)
        budget = check_seconds("budget", budget, exclusive=True)
        deadline = deadline_after(budget)

        async def step(operation: Operation[Any]) -> tuple[bool, Any]:
            try:
                return True, await wire.adrive(operation, lambda call: self._asend(call, deadline))
            except KernelError as exc:
                return False, exc

        patch, delete = invocations.cancel_steps(invocation_id, reason)
        tasks = {
            name: asyncio.ensure_future(step(operation)) for name, operation in (("delete", delete), ("patch", patch))
        }
        try:
            await asyncio.wait(
                tasks.values(), timeout=None if deadline is None else max(0.0, deadline - time.monotonic())
            )
        finally:
            for task in tasks.values():
                task.cancel()  # no-op for the finished ones; a request still out ends with the budget
        outcomes = {name: task.result() for name, task in tasks.items() if task.done() and not task.cancelled()}
        return invocations.cancel_result(invocation_id, budget, outcomes.get("patch"), outcomes.get("delete"))

    def list_invocation_browsers(self, invocation_id: str) -> list[Browser]:
        """``GET /invocations/{id}/browsers``: the browsers the invocation holds (none once they are deleted)."""
        return self.execute(invocations.invocation_browsers(require_id("invocation_id", invocation_id)))

    async def alist_invocation_browsers(self, invocation_id: str) -> list[Browser]:
        """:meth:`list_invocation_browsers` without blocking the event loop."""
        return await self.aexecute(invocations.invocation_browsers(require_id("invocation_id", invocation_id)))

    def list_replays(self, browser_id: str) -> list[Replay]:
        """The recordings of a browser session (``GET /browsers/{id}/replays``)."""
        return self.execute(invocations.list_replays(require_id("browser_id", browser_id)))

    async def alist_replays(self, browser_id: str) -> list[Replay]:
        """:meth:`list_replays` without blocking the event loop."""
        return await self.aexecute(invocations.list_replays(require_id("browser_id", browser_id)))

    async def astream_events(
        self, invocation_id: str, *, since: str | None = None, silence_timeout: float = 60.0
    ) -> AsyncGenerator[dict[str, Any], None]:
        """Follow ``GET /invocations/{id}/events``: yields each event's JSON object as it arrives.

        Ends when the server closes the stream (normally right after the terminal ``invocation_state``). Events
        that are not JSON objects are skipped (logged). Raises :class:`KernelTransportError` when the stream cannot
        be opened, breaks, or is silent for longer than ``silence_timeout`` seconds; :class:`KernelApiError` when
        Kernel refuses it. No retries here (the caller decides how to resume), except one: a refused key is read
        again once (see ``refresh``) and, if it changed, the stream is opened once more with it. Close the
        generator (``contextlib.aclosing``) when leaving early, so the response is closed at once.

        :param invocation_id: the invocation to follow.
        :param since: RFC 3339 timestamp; Kernel sends only events from then on (None: from the start).
        :param silence_timeout: seconds without any byte (Kernel sends heartbeats) before the stream counts as
            broken. Not a bound on the whole stream.
        """
        call = invocations.event_stream(require_id("invocation_id", invocation_id), since)
        async with contextlib.AsyncExitStack() as stack:
            data = await self._with_fresh_settings(
                lambda settings: self.async_transport.open_events(stack, call, settings, silence_timeout),
                f"Opening the event stream of {invocation_id} again",
            )
            async for text in data:
                try:
                    event = json.loads(text)
                except ValueError:
                    log.warning("Ignoring an event that is not JSON: %.200r", text)
                    continue
                if isinstance(event, dict):
                    yield event

    def invocation_url(self, invocation_id: str) -> str:
        """The invocation's page in Kernel's dashboard (no request is made; the id is checked and URL-encoded)."""
        return self.settings.invocation_url(invocation_id)

    # --- apps -------------------------------------------------------------------------------------------------

    def list_apps(
        self,
        *,
        app_name: str | None = None,
        version: str | None = None,
        query: str | None = None,
        limit: int | None = None,
        page_size: int = MAX_PAGE_SIZE,
    ) -> list[AppVersion]:
        """``GET /apps``: the deployed app versions and their actions, pages followed.

        :param app_name: only this app (None: every app).
        :param version: only this version label.
        :param query: Kernel's free-text search.
        :param limit: the most versions returned; None reads every page.
        :param page_size: versions asked for per request, at most 100.
        """
        return self.execute(
            invocations.list_apps(app_name=app_name, version=version, query=query, limit=limit, page_size=page_size)
        )

    async def alist_apps(
        self,
        *,
        app_name: str | None = None,
        version: str | None = None,
        query: str | None = None,
        limit: int | None = None,
        page_size: int = MAX_PAGE_SIZE,
    ) -> list[AppVersion]:
        """:meth:`list_apps` without blocking the event loop."""
        return await self.aexecute(
            invocations.list_apps(app_name=app_name, version=version, query=query, limit=limit, page_size=page_size)
        )

    def get_action(self, app_name: str, action_name: str, *, version: str = "latest") -> AppAction:
        """The action's description, from ``GET /apps``.

        :param app_name: the deployed app.
        :param action_name: one of its actions.
        :param version: the app version label.
        :raises KernelInputError: the app, version or action does not exist; the message lists what does (the
            deployed apps, the app's versions, or the version's actions).
        """
        wanted = invocations.ActionName.checked(app_name, action_name, version)
        versions = self.list_apps(app_name=wanted.app_name)
        known = [] if versions else [v.app_name for v in self.list_apps(limit=100)]
        return wanted.pick(versions, known)

    async def aget_action(self, app_name: str, action_name: str, *, version: str = "latest") -> AppAction:
        """:meth:`get_action` without blocking the event loop."""
        wanted = invocations.ActionName.checked(app_name, action_name, version)
        versions = await self.alist_apps(app_name=wanted.app_name)
        known = [] if versions else [v.app_name for v in await self.alist_apps(limit=100)]
        return wanted.pick(versions, known)

    def check_connection(self) -> tuple[bool, str]:
        """One cheap authenticated call (``GET /apps?limit=1``, few retries), answered in words a person
        understands: ``(True, ...)`` when the key is good, else ``(False, why)`` telling a refused key apart from an
        unreachable host. Never raises."""
        url = self.settings.base_url
        try:
            wire.drive(invocations.check_connection(), lambda call: self._send(call, None, CHECK_POLICY))
        except KernelAuthError as exc:
            return False, (
                f"Kernel at {url} rejected the API key (HTTP {exc.status_code}: {exc.message}). "
                "Check the connection's API key (password) and project."
            )
        except KernelApiError as exc:
            return False, f"Kernel at {url} answered with an error: {exc}"
        except KernelTransportError as exc:
            return False, f"Could not reach Kernel at {url}: {exc}"
        except Exception as exc:  # a person reads the answer: any failure is reported, not raised
            return False, f"Connection test failed: {type(exc).__name__}: {exc}"
        return True, f"Connected to Kernel at {url}; the API key is valid."
