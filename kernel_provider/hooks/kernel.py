"""``KernelHook``: Kernel's invocations and apps from Airflow, through one connection of type ``kernel``.

Everything connection-related (settings, the client, masking, the connection form and test) comes from
:class:`~kernel_provider.hooks.base.KernelBaseHook`. Each method has an ``a``-twin with the same parameters for
asyncio (triggers); the twins return the same types.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, Callable, Mapping
from datetime import datetime
from typing import Any

from kernel_provider.client.errors import KernelTransportError
from kernel_provider.client.models import AppAction, AppVersion, Browser, Invocation, Replay
from kernel_provider.client.retry import MIN_BUDGET, RetryPolicy
from kernel_provider.client.validation import check_seconds
from kernel_provider.client.wire import MAX_PAGE_SIZE
from kernel_provider.hooks.base import SETTINGS_TTL, KernelBaseHook, close_shared_clients

__all__ = ["SETTINGS_TTL", "KernelHook", "close_shared_clients"]


class KernelHook(KernelBaseHook):
    """Starts, reads, lists, follows and cancels Kernel invocations; lists apps and their actions.

    :param kernel_conn_id: the Airflow connection to use (default ``kernel_default``).
    :param retry_policy: replaces the retry bounds read from the connection (tests and benchmarks use this).
    :param component: the Airflow component making the calls (e.g. ``"triggerer"``), added to the User-Agent.
    :param rate_limit_wait: replaces only the connection's ``rate_limit_wait`` (the 429 budget, seconds).
    """

    # --- the connection form (on this class itself: Airflow 2 reads them only from the connection type's hook) -----

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """Provider info's kebab-case ``ui-field-behaviour`` in the snake-case keys Airflow < 3.2 validates (2.x
        silently drops a form customisation that does not match ``customized_form_field_behaviours.schema.json``)."""
        from kernel_provider.get_provider_info import get_provider_info

        behaviour = get_provider_info()["connection-types"][0]["ui-field-behaviour"]
        return {key.replace("-", "_"): value for key, value in behaviour.items()}

    @classmethod
    def get_connection_form_widgets(cls) -> dict[str, Any]:
        """The extra fields of the connection form in Airflow < 3.2 (stored in the connection's extra): one per
        extra of provider info's ``conn-fields``. Seconds are whole numbers there (Airflow 2 takes no FloatField);
        the extra itself takes fractions."""
        from flask_appbuilder.fieldwidgets import BS3TextFieldWidget
        from flask_babel import lazy_gettext
        from wtforms import BooleanField, IntegerField, StringField
        from wtforms.validators import Optional

        from kernel_provider.get_provider_info import CONNECTION_FIELDS

        by_type = {"string": StringField, "number": IntegerField, "integer": IntegerField}
        widgets: dict[str, Any] = {}
        for key, field in CONNECTION_FIELDS.items():
            kind = field["schema"]["type"][0]
            label = lazy_gettext(field["label"])
            if kind == "boolean":
                widgets[key] = BooleanField(label, description=field["description"], default=False)
            else:
                validators = [] if kind == "string" else [Optional()]
                widgets[key] = by_type[kind](
                    label, validators=validators, widget=BS3TextFieldWidget(), description=field["description"]
                )
        return widgets

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
        """Start one run of ``app_name``/``action_name`` (``POST /invocations``); never sent twice.

        :param app_name: the deployed app.
        :param action_name: the action to run.
        :param version: the app version label.
        :param payload: the action's input: a dict/list/number/bool (JSON-encoded here) or JSON text.
        :param invoke_async: True (the default, as in ``KernelInvokeOperator``): return at once with a ``queued``
            invocation. False: Kernel runs the action within the request (capped by Kernel at ~100 s) and the
            invocation comes back finished.
        :param async_timeout_seconds: how long Kernel lets an async run go (10..3600; Kernel's default 900).
        :raises KernelInputError: before any request, naming the wrong parameter.
        :raises KernelAmbiguousCreateError: the request failed after it may have reached Kernel; not re-sent.
        """
        return self.client.invoke(
            app_name,
            action_name,
            version=version,
            payload=payload,
            invoke_async=invoke_async,
            async_timeout_seconds=async_timeout_seconds,
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
        client = await self.aget_client()
        return await client.ainvoke(
            app_name,
            action_name,
            version=version,
            payload=payload,
            invoke_async=invoke_async,
            async_timeout_seconds=async_timeout_seconds,
        )

    def create_invocation(
        self,
        request: Mapping[str, Any],
        *,
        retry: RetryPolicy | None = None,
        before_send: Callable[[], None] | None = None,
    ) -> Invocation:
        """``POST /invocations`` with a body from :func:`~kernel_provider.client.validation.build_invoke_request`;
        never re-sent once it may have reached Kernel.

        :param request: the checked request body.
        :param retry: the retry bounds of this create only (None: the hook's).
        :param before_send: called right before each attempt is sent (the operator records its window there).
        """
        return self.client.create_invocation(request, retry=retry, before_send=before_send)

    async def acreate_invocation(self, request: Mapping[str, Any]) -> Invocation:
        """:meth:`create_invocation` without blocking the event loop (the hook's retry bounds)."""
        return await (await self.aget_client()).acreate_invocation(request)

    def create_attempt_seconds(self, request: Mapping[str, Any]) -> float:
        """The longest one attempt of a create of ``request`` can take before Kernel can no longer act on it (no
        request is made)."""
        return self.client.create_attempt_seconds(request)

    def get_invocation(self, invocation_id: str) -> Invocation:
        """The invocation's current state (``GET /invocations/{id}``)."""
        return self.client.get_invocation(invocation_id)

    async def aget_invocation(self, invocation_id: str) -> Invocation:
        """:meth:`get_invocation` without blocking the event loop."""
        return await (await self.aget_client()).aget_invocation(invocation_id)

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
        return self.client.list_invocations(
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
        client = await self.aget_client()
        return await client.alist_invocations(
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

    def cancel_invocation(
        self, invocation_id: str, reason: str | None = None, *, budget: float | None = None
    ) -> Invocation | None:
        """Stop a run: PATCH it ``failed`` and DELETE its browsers at once, within ``budget`` seconds.

        :param invocation_id: the invocation to stop.
        :param reason: stored as the invocation's output ``{"error": reason}``; None uses Kernel's wording.
        :param budget: seconds for both requests, retries included (None: unbounded).
        :returns: the invocation as Kernel left it; None when Kernel no longer knows it.
        """
        return self.client.cancel_invocation(invocation_id, reason, budget=budget)

    async def acancel_invocation(
        self, invocation_id: str, reason: str | None = None, *, budget: float | None = None
    ) -> Invocation | None:
        """:meth:`cancel_invocation` without blocking the loop; ``budget`` also bounds the connection lookup."""
        budget = check_seconds("budget", budget, exclusive=True)
        started = time.monotonic()
        try:
            client = await asyncio.wait_for(self.aget_client(), budget)
        except asyncio.TimeoutError:
            raise KernelTransportError(
                f"the connection lookup took longer than the cancel budget ({budget:g}s)", request_sent=False
            ) from None
        left = None if budget is None else max(MIN_BUDGET, budget - (time.monotonic() - started))
        return await client.acancel_invocation(invocation_id, reason, budget=left)

    async def astream_events(
        self, invocation_id: str, *, since: str | None = None, silence_timeout: float = 60.0
    ) -> AsyncGenerator[dict[str, Any], None]:
        """Follow the invocation's event stream (one connection; no retries: the caller resumes with ``since``).

        :param invocation_id: the invocation to follow.
        :param since: RFC 3339 timestamp; Kernel sends only events from then on (None: from the start).
        :param silence_timeout: seconds without any byte (Kernel sends heartbeats) before the stream counts as
            broken. Not a bound on the whole stream.
        """
        client = await self.aget_client()
        events = client.astream_events(invocation_id, since=since, silence_timeout=silence_timeout)
        async with contextlib.aclosing(events):
            async for event in events:
                yield event

    def invocation_url(self, invocation_id: str) -> str:
        """The invocation's page in Kernel's dashboard (no request)."""
        return self.client.invocation_url(invocation_id)

    # --- the browsers of an invocation ------------------------------------------------------------------------

    def list_invocation_browsers(self, invocation_id: str) -> list[Browser]:
        """The browsers the invocation holds (``GET /invocations/{id}/browsers``), their control URLs masked."""
        browsers = self.client.list_invocation_browsers(invocation_id)
        self.mask_browser_urls(browsers)
        return browsers

    async def alist_invocation_browsers(self, invocation_id: str) -> list[Browser]:
        """:meth:`list_invocation_browsers` without blocking the event loop."""
        browsers = await (await self.aget_client()).alist_invocation_browsers(invocation_id)
        self.mask_browser_urls(browsers)
        return browsers

    async def aget_browser(self, session_id: str, *, include_deleted: bool = False) -> Browser:
        """One browser session (``GET /browsers/{id}``), its control URLs masked; with ``include_deleted``, a
        deleted one too (with its ``deleted_at`` and Kernel's ``usage``). :class:`KernelNotFoundError` otherwise."""
        from kernel_provider.client.browsers import BrowserApi

        browser = await BrowserApi(await self.aget_client()).aget(session_id, include_deleted=include_deleted)
        self.mask_browser_urls([browser])
        return browser

    def list_replays(self, browser_id: str) -> list[Replay]:
        """The recordings of a browser session; :class:`KernelNotFoundError` when Kernel no longer knows it."""
        return self.client.list_replays(browser_id)

    async def alist_replays(self, browser_id: str) -> list[Replay]:
        """:meth:`list_replays` without blocking the event loop."""
        return await (await self.aget_client()).alist_replays(browser_id)

    # --- apps ---------------------------------------------------------------------------------------------------

    def list_apps(
        self,
        *,
        app_name: str | None = None,
        version: str | None = None,
        query: str | None = None,
        limit: int | None = None,
        page_size: int = MAX_PAGE_SIZE,
    ) -> list[AppVersion]:
        """The deployed app versions and their actions (``GET /apps``), pages followed.

        :param app_name: only this app (None: every app).
        :param version: only this version label.
        :param query: Kernel's free-text search.
        :param limit: the most versions returned; None reads every page.
        :param page_size: versions asked for per request, at most 100.
        """
        return self.client.list_apps(app_name=app_name, version=version, query=query, limit=limit, page_size=page_size)

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
        client = await self.aget_client()
        return await client.alist_apps(
            app_name=app_name, version=version, query=query, limit=limit, page_size=page_size
        )

    def get_action(self, app_name: str, action_name: str, *, version: str = "latest") -> AppAction:
        """The action's description; :class:`KernelInputError` listing what exists when it does not."""
        return self.client.get_action(app_name, action_name, version=version)

    async def aget_action(self, app_name: str, action_name: str, *, version: str = "latest") -> AppAction:
        """:meth:`get_action` without blocking the event loop."""
        return await (await self.aget_client()).aget_action(app_name, action_name, version=version)
