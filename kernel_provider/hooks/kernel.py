"""``KernelHook``: the Kernel connection and the only place that speaks HTTP to Kernel.

Connection fields:

* **password** - the Kernel API key (required). It is sent only in the ``Authorization`` header, registered
  with Airflow's secret masker, and kept out of reprs, logs and error messages.
* **host** - the API base URL, default ``https://api.onkernel.com``. A host without scheme gets ``https://``,
  except loopback hosts (the local emulator), which get ``http://``. ``port`` is appended when set.
* **extra** - ``project_id`` (sent as ``X-Kernel-Project-Id``), ``dashboard_url`` (base of invocation links),
  ``request_timeout`` (read timeout of ordinary calls, default 30 s; sync invokes always get 130 s, above
  Kernel's 100 s cap), ``connect_timeout`` (default 10 s), ``max_retries`` (default 5), ``max_retry_wait``
  (seconds a call may spend retrying, default 120), ``rate_limit_wait`` (seconds a call may spend waiting out
  429s, default 900), ``ca_bundle`` (path of a CA bundle; TLS verification itself cannot be switched off).

Worker code calls the plain methods (``invoke``, ``get_invocation``, ...), which use a keep-alive
``requests.Session``. Trigger code runs the same operations with ``await hook.aexecute(api.get_invocation(id))``
and follows events with :meth:`KernelHook.stream_events`, over one shared ``httpx.AsyncClient`` per event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import threading
import time
import weakref
import zlib
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
import requests
import tenacity
from airflow.providers.common.compat.sdk import BaseHook

from kernel_provider import __version__
from kernel_provider.exceptions import (
    KernelApiError,
    KernelAuthError,
    KernelConnectionConfigError,
    KernelError,
    KernelInputError,
    KernelNotFoundError,
    KernelTransportError,
)
from kernel_provider.hooks import api
from kernel_provider.hooks.api import ApiCall, ApiResponse, Operation
from kernel_provider.hooks.retry import RetryPolicy
from kernel_provider.models import AppVersion, Invocation
from kernel_provider.validation import build_invoke_request, check_seconds, require_name

T = TypeVar("T")
log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.onkernel.com"
DEFAULT_DASHBOARD_URL = "https://dashboard.onkernel.com"
DEFAULT_REQUEST_TIMEOUT = 30.0
DEFAULT_CONNECT_TIMEOUT = 10.0
#: Seconds a trigger-side hook reuses the connection it fetched before looking it up again.
SETTINGS_TTL = 300.0


@dataclass(frozen=True)
class KernelSettings:
    """Everything the hook reads from the Airflow connection, checked once."""

    conn_id: str
    base_url: str
    api_key: str = field(repr=False)
    project_id: str | None = None
    dashboard_url: str = DEFAULT_DASHBOARD_URL
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    verify: bool | str = True
    #: Which Airflow component sends the requests (e.g. ``"triggerer"``); appended to the User-Agent.
    component: str | None = None

    @classmethod
    def from_connection(cls, conn: Any, extra: Mapping[str, Any] | None = None) -> KernelSettings:
        conn_id = getattr(conn, "conn_id", None) or "kernel_default"
        if extra is None:
            extra = _connection_extra(conn)
        api_key = (getattr(conn, "password", None) or "").strip()
        if not api_key:
            raise KernelConnectionConfigError(
                f"connection {conn_id!r}", "has no API key.",
                "Put your Kernel API key in the connection's password field (API key in the UI).")
        base_url = _base_url(conn_id, getattr(conn, "host", None), getattr(conn, "port", None))
        retry_defaults = RetryPolicy()
        retry = RetryPolicy(
            max_attempts=1 + int(_number(conn_id, extra, "max_retries", retry_defaults.max_attempts - 1, integer=True)),
            max_elapsed=_number(conn_id, extra, "max_retry_wait", retry_defaults.max_elapsed),
            rate_limit_budget=_number(conn_id, extra, "rate_limit_wait", retry_defaults.rate_limit_budget),
        )
        project_id = extra.get("project_id") or None
        if project_id is not None and not isinstance(project_id, str):
            raise KernelConnectionConfigError(f"connection {conn_id!r} extra.project_id",
                                              f"must be a string, got {project_id!r}.", "Use the project's ID.")
        dashboard_url = str(extra.get("dashboard_url") or DEFAULT_DASHBOARD_URL).rstrip("/")
        ca_bundle = extra.get("ca_bundle")
        return cls(
            conn_id=conn_id,
            base_url=base_url,
            api_key=api_key,
            project_id=project_id,
            dashboard_url=dashboard_url,
            request_timeout=_number(conn_id, extra, "request_timeout", DEFAULT_REQUEST_TIMEOUT, positive=True),
            connect_timeout=_number(conn_id, extra, "connect_timeout", DEFAULT_CONNECT_TIMEOUT, positive=True),
            retry=retry,
            verify=str(ca_bundle) if ca_bundle else True,
        )

    def headers(self) -> dict[str, str]:
        headers = {
            "Authorization": f"Bearer {self.api_key}",
            "Accept": "application/json",
            "User-Agent": _user_agent() + (f" ({self.component})" if self.component else ""),
        }
        if self.project_id:
            headers["X-Kernel-Project-Id"] = self.project_id
        return headers

    def invocation_url(self, invocation_id: str) -> str:
        return f"{self.dashboard_url}/invocations/{invocation_id}"


class KernelHook(BaseHook):
    """Talks to Kernel through one Airflow connection (type ``kernel``).

    :param kernel_conn_id: the Airflow connection to use (default ``kernel_default``).
    :param retry_policy: overrides the retry bounds read from the connection (tests and benchmarks use this).
    :param component: the Airflow component making the calls (e.g. ``"triggerer"``), added to the User-Agent
        so Kernel-side request logs show where a request came from.
    """

    conn_name_attr = "kernel_conn_id"
    default_conn_name = "kernel_default"
    conn_type = "kernel"
    hook_name = "Kernel"

    def __init__(self, kernel_conn_id: str = default_conn_name, retry_policy: RetryPolicy | None = None,
                 component: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.kernel_conn_id = kernel_conn_id
        self._retry_override = retry_policy
        self.component = component
        self._async_settings: KernelSettings | None = None
        self._async_settings_at = 0.0
        self._settings_lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(kernel_conn_id={self.kernel_conn_id!r})"

    # --- connection -------------------------------------------------------------------------------------

    @cached_property
    def settings(self) -> KernelSettings:
        """Settings from the connection, fetched synchronously (worker side)."""
        return self._finish_settings(KernelSettings.from_connection(self._get_connection_sync()))

    async def aget_settings(self) -> KernelSettings:
        """Settings fetched without blocking the event loop (trigger side).

        Cached for ``SETTINGS_TTL`` seconds: a triggerer shares one hook per connection among all its waits
        (see :meth:`shared`), and a rotated key must still be picked up. Sooner than that, a request Kernel
        answers with 401/403 makes the hook read the connection again once (see :meth:`_reread_settings`).

        :raises KernelConnectionConfigError: the connection is missing or malformed (no API key, bad extra...).
        """
        cached = self._async_settings
        if cached is not None and time.monotonic() - self._async_settings_at < SETTINGS_TTL:
            return cached
        async with self._settings_lock:
            if self._async_settings is not None and time.monotonic() - self._async_settings_at < SETTINGS_TTL:
                return self._async_settings
            return await self._load_settings_locked()

    async def _load_settings_locked(self) -> KernelSettings:
        """Look the connection up now and cache it; the caller holds ``_settings_lock``."""
        from airflow.providers.common.compat.connection import get_async_connection

        try:
            conn = await get_async_connection(self.kernel_conn_id)
        except KernelError:
            raise
        except Exception as exc:
            raise KernelConnectionConfigError(
                f"kernel_conn_id={self.kernel_conn_id!r}", f"could not be loaded ({type(exc).__name__}).",
                "Create the connection (type Kernel) or set AIRFLOW_CONN_"
                f"{self.kernel_conn_id.upper()}.") from None
        extra = conn.extra_dejson if not hasattr(conn, "aextra_dejson") else await conn.aextra_dejson()
        settings = self._finish_settings(KernelSettings.from_connection(conn, extra))
        self._async_settings = settings
        self._async_settings_at = time.monotonic()
        return settings

    async def _reread_settings(self, rejected: KernelSettings) -> KernelSettings | None:
        """Kernel refused ``rejected`` (401/403): read the connection again, at once instead of after the TTL.

        Every wait on a triggerer shares this hook, so after a key rotation many requests fail together: only
        the first one that still holds the cached settings looks the connection up; the others find the newer
        settings in the cache and use them.

        :returns: the settings to retry with, or None when the connection still says what Kernel refused
            (retrying could only be refused again) or could not be read (then the refusal is the error to report).
        """
        async with self._settings_lock:
            current = self._async_settings
            if current is None or current is rejected:
                log.info("Kernel refused the API key of connection %r; reading the connection again.",
                         self.kernel_conn_id)
                self._async_settings = None  # dropped even if the lookup fails: the next call looks again
                try:
                    current = await self._load_settings_locked()
                except KernelError as exc:
                    log.warning("Could not read connection %r again: %s", self.kernel_conn_id, exc)
                    return None
        return None if _credentials(current) == _credentials(rejected) else current

    @classmethod
    def shared(cls, kernel_conn_id: str, component: str | None = None) -> KernelHook:
        """The hook all waits on the running event loop share for this connection (one lookup, one pool)."""
        per_loop = _SHARED_HOOKS.setdefault(asyncio.get_running_loop(), {})
        hook = per_loop.get((kernel_conn_id, component))
        if hook is None:
            hook = per_loop[(kernel_conn_id, component)] = cls(kernel_conn_id=kernel_conn_id, component=component)
        return hook

    def _get_connection_sync(self) -> Any:
        try:
            return self.get_connection(self.kernel_conn_id)
        except Exception as exc:
            raise KernelConnectionConfigError(
                f"kernel_conn_id={self.kernel_conn_id!r}", f"could not be loaded ({type(exc).__name__}).",
                f"Create the connection (type Kernel) or set AIRFLOW_CONN_{self.kernel_conn_id.upper()}.",
            ) from None

    def _finish_settings(self, settings: KernelSettings) -> KernelSettings:
        _mask(settings.api_key)
        _warn_if_plain_http(settings.base_url)
        from dataclasses import replace

        if self._retry_override is not None:
            settings = replace(settings, retry=self._retry_override)
        if self.component:
            settings = replace(settings, component=self.component)
        return settings

    # --- the worker-side API ------------------------------------------------------------------------------

    def invoke(
        self,
        app_name: str,
        action_name: str,
        *,
        version: str = "latest",
        payload: Any = None,
        invoke_async: bool = False,
        async_timeout_seconds: int | None = None,
    ) -> Invocation:
        """Start one run of ``app_name``/``action_name`` (``POST /invocations``).

        :param payload: the action's input: a dict/list/number/bool (JSON-encoded here) or JSON text.
        :param invoke_async: return at once with a ``queued`` invocation instead of waiting (Kernel's ``async``).
        :param async_timeout_seconds: how long Kernel lets an async run go (10..3600; Kernel's default 900).
        :returns: the created invocation; for a sync invoke its final state and output.
        :raises KernelInputError: before any request, when a parameter is wrong.
        :raises KernelAmbiguousCreateError: the request failed after it may have reached Kernel; not re-sent.
        """
        body = build_invoke_request(app_name=app_name, action_name=action_name, version=version,
                                    payload=payload, invoke_async=invoke_async,
                                    async_timeout_seconds=async_timeout_seconds)
        return self.create_invocation(body)

    def create_invocation(self, request: Mapping[str, Any]) -> Invocation:
        """``POST /invocations`` with a body checked by :func:`~kernel_provider.validation.build_invoke_request`.

        Never re-sent once it may have reached Kernel: such a failure raises
        :class:`~kernel_provider.exceptions.KernelAmbiguousCreateError` (429s and refused connections, which
        certainly created nothing, are retried within the connection's budgets).
        """
        return self.execute(api.create_invocation(request))

    def create_window_seconds(self, request: Mapping[str, Any]) -> float:
        """The longest a create of ``request`` can take from its first send until it can no longer reach Kernel:
        the retry budgets (429s and refused connections are re-sent) plus the connect and read timeouts."""
        settings = self.settings
        read = settings.request_timeout if request.get("async") else api.SYNC_INVOKE_READ_TIMEOUT
        retrying = max(settings.retry.rate_limit_budget, settings.retry.max_elapsed) + settings.retry.retry_after_cap
        return retrying + settings.connect_timeout + read

    def get_invocation(self, invocation_id: str) -> Invocation:
        return self.execute(api.get_invocation(require_name("invocation_id", invocation_id)))

    def list_invocations(self, **filters: Any) -> list[Invocation]:
        """All invocations matching the filters of ``GET /invocations`` (pages followed; ``limit`` caps)."""
        return self.execute(api.list_invocations(**filters))

    def cancel_invocation(self, invocation_id: str, reason: str | None = None, *,
                          budget: float | None = None) -> Invocation | None:
        """Stop a run (worker side): PATCH the invocation ``failed`` and DELETE its browsers, both at once.

        The two requests go out concurrently (the DELETE on a helper thread), so a slow or failing PATCH never
        holds back the DELETE that frees the browsers. A 404 on either is not an error (already gone).

        :param invocation_id: the invocation to stop.
        :param reason: stored as the invocation's output ``{"error": reason}``; None uses Kernel's wording.
            It does not change the ``status_reason`` Kernel reports.
        :param budget: seconds this call may take in all. Each request's connect and read timeouts and its retry
            window are cut to fit, and the call returns when the budget is spent even if a request is still
            out (that request then ends on its own, within its cut timeouts). None: the connection's full
            timeouts and retries, with no overall bound.
        :returns: the invocation as the PATCH left it (``failed``, or its earlier final state when it had already
            ended), or None when Kernel no longer knows it.
        :raises KernelInputError: ``invocation_id`` or ``budget`` is not valid; nothing was sent.
        :raises KernelError: after both requests have ended (or the budget is spent): the PATCH's error when the
            PATCH failed, else the DELETE's. A request still out when the budget ends counts as a
            :class:`KernelTransportError`.
        """
        invocation_id = require_name("invocation_id", invocation_id)
        budget = check_seconds("budget", budget, exclusive=True)
        deadline = None if budget is None else time.monotonic() + budget
        settings = self.settings
        patch, delete = api.cancel_steps(invocation_id, reason)
        outcomes: dict[str, tuple[bool, Any]] = {}

        def step(name: str, operation: Operation[Any]) -> None:
            try:
                outcomes[name] = (True, self._execute_within(operation, settings, deadline))
            except KernelNotFoundError:
                outcomes[name] = (True, None)
            except BaseException as exc:  # handed to the caller below, on its own thread
                outcomes[name] = (False, exc)

        threads = [threading.Thread(target=step, args=(name, operation), daemon=True,
                                    name=f"kernel-cancel-{name}-{invocation_id}")
                   for name, operation in (("delete", delete), ("patch", patch))]
        for thread in threads:
            thread.start()
        for thread in threads:
            # Daemon threads: one still waiting for Kernel when the budget ends must not keep the worker alive.
            thread.join(None if deadline is None else max(0.0, _time_left(deadline)))
        return _cancel_outcome(invocation_id, budget, outcomes.get("patch"), outcomes.get("delete"))

    async def acancel_invocation(self, invocation_id: str, reason: str | None = None, *,
                                 budget: float | None = None) -> Invocation | None:
        """Stop a run without blocking the event loop (trigger side); the async twin of :meth:`cancel_invocation`.

        The PATCH (``failed``) and the DELETE of the browsers run as two tasks at once, so a slow or failing PATCH
        never holds back the DELETE. A 404 on either is not an error (already gone). When this coroutine is
        cancelled (e.g. by the triggerer's ``on_kill`` timeout), both requests are cancelled with it.

        :param invocation_id: the invocation to stop.
        :param reason: stored as the invocation's output ``{"error": reason}``; None uses Kernel's wording.
            It does not change the ``status_reason`` Kernel reports.
        :param budget: seconds this call may take in all, the connection lookup included. Each attempt's connect
            and read timeouts are cut to the time left, retries stop when it is spent, and a request still out
            at the end is cancelled. None: the connection's full timeouts and retries, with no overall bound.
        :returns: the invocation as the PATCH left it, or None when Kernel no longer knows it.
        :raises KernelInputError: ``invocation_id`` or ``budget`` is not valid; nothing was sent.
        :raises KernelError: after both requests have ended (or the budget is spent): the PATCH's error when the
            PATCH failed, else the DELETE's; a request cut off by the budget counts as a
            :class:`KernelTransportError`.
        """
        invocation_id = require_name("invocation_id", invocation_id)
        budget = check_seconds("budget", budget, exclusive=True)
        deadline = None if budget is None else time.monotonic() + budget
        try:
            settings = await asyncio.wait_for(self.aget_settings(), None if deadline is None else _time_left(deadline))
        except asyncio.TimeoutError:
            raise KernelTransportError(f"the connection lookup took longer than the cancel budget ({budget:g}s)",
                                       request_sent=False, method="PATCH",
                                       path=f"/invocations/{invocation_id}") from None
        patch, delete = api.cancel_steps(invocation_id, reason)

        async def step(operation: Operation[Any]) -> tuple[bool, Any]:
            try:
                return True, await self._adrive(operation, settings, deadline)
            except KernelNotFoundError:
                return True, None
            except KernelError as exc:
                return False, exc

        tasks = {name: asyncio.ensure_future(step(operation)) for name, operation in
                 (("delete", delete), ("patch", patch))}
        try:
            await asyncio.wait(tasks.values(), timeout=None if deadline is None else max(0.0, _time_left(deadline)))
        finally:
            for task in tasks.values():
                task.cancel()  # no-op for the finished ones; a request still out ends with the budget
        outcomes = {name: task.result() for name, task in tasks.items() if task.done() and not task.cancelled()}
        return _cancel_outcome(invocation_id, budget, outcomes.get("patch"), outcomes.get("delete"))

    def list_browsers(self, invocation_id: str) -> list[dict[str, Any]]:
        return self.execute(api.list_browsers(require_name("invocation_id", invocation_id)))

    def list_apps(self, **filters: Any) -> list[AppVersion]:
        return self.execute(api.list_apps(**filters))

    def get_action(self, app_name: str, action_name: str, version: str = "latest") -> Any:
        """The action's description; raises :class:`KernelInputError` listing what exists when it does not."""
        app_name = require_name("app_name", app_name)
        action_name = require_name("action_name", action_name)
        version = require_name("version", version)
        versions = self.list_apps(app_name=app_name)
        if not versions:
            known = sorted({a.app_name for a in self.list_apps(limit=100)})
            raise KernelInputError("app_name", f"no app {app_name!r} is deployed.",
                                   f"Deployed apps: {', '.join(known) or 'none'}.")
        match = next((v for v in versions if v.version == version), None)
        if match is None:
            raise KernelInputError("version", f"app {app_name!r} has no version {version!r}.",
                                   f"Versions: {', '.join(sorted(v.version for v in versions))}.")
        action = next((a for a in match.actions if a.name == action_name), None)
        if action is None:
            raise KernelInputError("action_name", f"{app_name}@{version} has no action {action_name!r}.",
                                   f"Actions: {', '.join(sorted(match.action_names)) or 'none'}.")
        return action

    def invocation_url(self, invocation_id: str) -> str:
        return self.settings.invocation_url(invocation_id)

    def test_connection(self) -> tuple[bool, str]:
        """One cheap authenticated call (``GET /apps?limit=1``), answered in words a person understands."""
        try:
            settings = self.settings
        except KernelError as exc:
            return False, str(exc)
        quick = RetryPolicy(max_attempts=2, max_elapsed=10, rate_limit_budget=10)
        try:
            self._send(ApiCall(api.LIST_APPS, params={"limit": 1}), settings, quick)
        except KernelAuthError as exc:
            return False, (f"Kernel at {settings.base_url} rejected the API key (HTTP {exc.status_code}: "
                           f"{exc.message}). Check the connection's API key (password) and project.")
        except KernelApiError as exc:
            return False, f"Kernel at {settings.base_url} answered with an error: {exc}"
        except KernelTransportError as exc:
            return False, f"Could not reach Kernel at {settings.base_url}: {exc}"
        except Exception as exc:
            return False, f"Connection test failed: {type(exc).__name__}: {exc}"
        return True, f"Connected to Kernel at {settings.base_url}; the API key is valid."

    # --- drivers: run an operation over the sync or async transport -----------------------------------

    def execute(self, operation: Operation[T]) -> T:
        """Run an operation from :mod:`kernel_provider.hooks.api` on this thread (worker side)."""
        settings = self.settings
        outcome: tuple[bool, Any] = (True, None)
        while True:
            try:
                call = operation.send(outcome[1]) if outcome[0] else operation.throw(outcome[1])
            except StopIteration as done:
                return done.value
            try:
                outcome = (True, self._send(call, settings))
            except KernelError as exc:
                outcome = (False, exc)

    async def aexecute(self, operation: Operation[T]) -> T:
        """Run an operation without blocking the event loop (trigger side); same retries as :meth:`execute`.

        A request Kernel refuses with 401/403 makes the hook read the connection again (the cached settings may
        hold a key that was rotated since) and, when the connection has changed, send it once more.

        :param operation: an operation from :mod:`kernel_provider.hooks.api`, e.g. ``api.get_invocation(id)``.
        :returns: the operation's result.
        :raises KernelError: what the operation raises once the retry policy gives up.
        """
        return await self._adrive(operation, await self.aget_settings())

    async def _adrive(self, operation: Operation[T], settings: KernelSettings, deadline: float | None = None) -> T:
        """Drive ``operation`` over httpx; ``deadline`` (``time.monotonic()``) bounds every request's retries."""
        outcome: tuple[bool, Any] = (True, None)
        while True:
            try:
                call = operation.send(outcome[1]) if outcome[0] else operation.throw(outcome[1])
            except StopIteration as done:
                return done.value
            try:
                outcome = (True, await self._asend(call, settings, deadline=deadline))
            except KernelError as exc:
                outcome = (False, exc)

    def _execute_within(self, operation: Operation[T], settings: KernelSettings, deadline: float | None) -> T:
        """Drive ``operation`` over requests with each call's timeouts and retries cut to the time left."""
        outcome: tuple[bool, Any] = (True, None)
        while True:
            try:
                call = operation.send(outcome[1]) if outcome[0] else operation.throw(outcome[1])
            except StopIteration as done:
                return done.value
            try:
                if deadline is None:
                    outcome = (True, self._send(call, settings))
                else:
                    left = _time_left(deadline)
                    if left <= 0:
                        raise _out_of_budget(call)
                    outcome = (True, self._send(_call_within(call, left), _settings_within(settings, left),
                                                _policy_within(settings.retry, left)))
            except KernelError as exc:
                outcome = (False, exc)

    # --- transports --------------------------------------------------------------------------------------

    @cached_property
    def _session(self) -> requests.Session:
        session = requests.Session()
        # urllib3 must not retry on its own: the retry policy decides, and never repeats a create.
        adapter = requests.adapters.HTTPAdapter(max_retries=0, pool_maxsize=16)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        return session

    def _send(self, call: ApiCall[T], settings: KernelSettings, policy: RetryPolicy | None = None) -> T:
        policy = policy or settings.retry
        describe = f"{call.endpoint.method} {call.path}"
        for attempt in tenacity.Retrying(**policy.tenacity_kwargs(idempotent=call.endpoint.idempotent,
                                                                   describe=describe)):
            with attempt:
                response = self._request_sync(call, settings)
                api.raise_for_status(call, response)
        return call.parse(response)

    async def _asend(self, call: ApiCall[T], settings: KernelSettings, *, deadline: float | None = None) -> T:
        """One request under the retry policy. A 401/403 re-reads the connection once (the cached settings may
        hold a rotated key) and, when the connection has changed, sends the request once more with it."""
        try:
            return await self._asend_retrying(call, settings, deadline)
        except KernelAuthError:
            fresh = await self._reread_settings(settings)
            if fresh is None:
                raise
            log.info("Sending %s %s again with the connection read anew.", call.endpoint.method, call.path)
            return await self._asend_retrying(call, fresh, deadline)

    async def _asend_retrying(self, call: ApiCall[T], settings: KernelSettings, deadline: float | None) -> T:
        describe = f"{call.endpoint.method} {call.path}"
        if deadline is None:
            retrying = settings.retry.tenacity_kwargs(idempotent=call.endpoint.idempotent, describe=describe)
        else:
            retrying = _policy_within(settings.retry, _time_left(deadline)).tenacity_kwargs(
                idempotent=call.endpoint.idempotent, describe=describe)
            stop, wait = retrying["stop"], retrying["wait"]
            # No new attempt once the time is spent, and no backoff that would outlast it.
            retrying["stop"] = lambda state: stop(state) or _time_left(deadline) <= 0
            retrying["wait"] = lambda state: max(0.0, min(wait(state), _time_left(deadline)))
        async for attempt in tenacity.AsyncRetrying(**retrying):
            with attempt:
                this_call, this_settings = call, settings
                if deadline is not None:
                    left = _time_left(deadline)
                    if left <= 0:
                        raise _out_of_budget(call)
                    this_call, this_settings = _call_within(call, left), _settings_within(settings, left)
                async with _request_slots():
                    response = await self._request_async(this_call, this_settings)
                api.raise_for_status(call, response)
        return call.parse(response)

    def _request_sync(self, call: ApiCall[Any], settings: KernelSettings) -> ApiResponse:
        method, path = call.endpoint.method, call.path
        try:
            r = self._session.request(
                method, settings.base_url + path, params=call.query,
                data=None if call.body is None else json.dumps(call.body),
                headers=_body_headers(settings, call),
                timeout=(settings.connect_timeout, call.read_timeout or settings.request_timeout),
                verify=settings.verify,
            )
        except requests.exceptions.RequestException as exc:
            raise KernelTransportError(_describe_requests_error(exc), request_sent=_requests_error_sent(exc),
                                       method=method, path=path) from None
        return ApiResponse(r.status_code, {k.lower(): v for k, v in r.headers.items()}, r.content)

    async def _request_async(self, call: ApiCall[Any], settings: KernelSettings) -> ApiResponse:
        method, path = call.endpoint.method, call.path
        client = _shared_async_client(settings, str(call.path_params.get("id", "")))
        try:
            r = await client.request(
                method, settings.base_url + path, params=call.query,
                content=None if call.body is None else json.dumps(call.body),
                headers=_body_headers(settings, call),
                timeout=httpx.Timeout(call.read_timeout or settings.request_timeout,
                                      connect=settings.connect_timeout),
            )
        except httpx.HTTPError as exc:
            raise KernelTransportError(_describe_httpx_error(exc), request_sent=_httpx_error_sent(exc),
                                       method=method, path=path) from None
        return ApiResponse(r.status_code, {k.lower(): v for k, v in r.headers.items()}, r.content)

    async def stream_events(self, invocation_id: str, *, since: str | None = None,
                            silence_timeout: float = 60.0) -> AsyncGenerator[dict[str, Any], None]:
        """Follow ``GET /invocations/{id}/events``: yields each event's JSON object as it arrives.

        Ends when the server closes the stream (normally right after the terminal ``invocation_state``).
        Raises :class:`KernelTransportError` when the stream cannot be opened, breaks, or is silent for longer
        than ``silence_timeout`` seconds; :class:`KernelApiError` when Kernel refuses it. No retries here
        (the caller decides how to resume, see the trigger), except one: when Kernel refuses the key (401/403)
        the connection is read again and, if it changed (a rotated key), the stream is opened once more with it.

        :param invocation_id: the invocation to follow.
        :param since: RFC 3339 timestamp; Kernel sends only events from then on (None: from the start).
        :param silence_timeout: seconds without any byte (Kernel sends heartbeats) before the stream counts as
            broken. Not a bound on the whole stream.
        """
        from httpx_sse import SSEError

        settings = await self.aget_settings()
        call: ApiCall[Any] = ApiCall(api.INVOCATION_EVENTS, {"id": invocation_id},
                                     params={"since": since} if since else {})
        try:
            async with contextlib.AsyncExitStack() as stack:
                try:
                    source = await self._open_event_stream(stack, call, settings, silence_timeout)
                except KernelAuthError:
                    fresh = await self._reread_settings(settings)
                    if fresh is None:
                        raise
                    log.info("Opening the event stream of %s again with the connection read anew.", invocation_id)
                    source = await self._open_event_stream(stack, call, fresh, silence_timeout)
                async for message in source.aiter_sse():
                    if not message.data:
                        continue
                    try:
                        event = json.loads(message.data)
                    except ValueError:
                        log.warning("Ignoring an event that is not JSON: %.200r", message.data)
                        continue
                    if isinstance(event, dict):
                        yield event
        except (httpx.HTTPError, SSEError) as exc:
            raise KernelTransportError(_describe_httpx_error(exc), request_sent=True, method="GET",
                                       path=call.path) from None

    async def _open_event_stream(self, stack: contextlib.AsyncExitStack, call: ApiCall[Any], settings: KernelSettings,
                                 silence_timeout: float) -> Any:
        """Open the SSE response of ``call`` (closed with ``stack``); raises :class:`KernelApiError` on a refusal,
        after closing that refused response."""
        from httpx_sse import aconnect_sse

        client = _shared_async_client(settings, str(call.path_params.get("id", "")))
        headers = {**settings.headers(), "Accept": "text/event-stream", "Cache-Control": "no-cache"}
        async with contextlib.AsyncExitStack() as attempt:
            async with _request_slots():  # only while opening: an open stream holds no slot
                source = await attempt.enter_async_context(aconnect_sse(
                    client, "GET", settings.base_url + call.path, params=call.query, headers=headers,
                    timeout=httpx.Timeout(silence_timeout, connect=settings.connect_timeout)))
            if source.response.status_code >= 400:
                body = await source.response.aread()
                api.raise_for_status(call, ApiResponse(source.response.status_code,
                                                       {k.lower(): v for k, v in source.response.headers.items()},
                                                       body))
            stack.push_async_exit(attempt.pop_all())  # opened: the caller's stack closes it from now on
        return source

    # --- connection form (Airflow < 3.2; newer versions read get_provider_info) ----------------------------

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """Provider info's kebab-case ``ui-field-behaviour`` in the snake-case keys Airflow < 3.2 validates.

        Airflow 2.x checks this answer against ``customized_form_field_behaviours.schema.json`` (``hidden_fields``,
        ``relabeling``, ``placeholders``) and silently drops a form customisation that does not match it.
        """
        from kernel_provider.get_provider_info import get_provider_info

        behaviour = get_provider_info()["connection-types"][0]["ui-field-behaviour"]
        return {key.replace("-", "_"): value for key, value in behaviour.items()}

    @classmethod
    def get_connection_form_widgets(cls) -> dict[str, Any]:
        from flask_appbuilder.fieldwidgets import BS3TextFieldWidget
        from flask_babel import lazy_gettext
        from wtforms import IntegerField, StringField
        from wtforms.validators import Optional

        return {
            "project_id": StringField(lazy_gettext("Project ID"), widget=BS3TextFieldWidget()),
            "dashboard_url": StringField(lazy_gettext("Dashboard URL"), widget=BS3TextFieldWidget()),
            "request_timeout": IntegerField(lazy_gettext("Request timeout (s)"), validators=[Optional()],
                                            widget=BS3TextFieldWidget()),
            "max_retries": IntegerField(lazy_gettext("Max retries"), validators=[Optional()],
                                        widget=BS3TextFieldWidget()),
        }


# --- helpers -----------------------------------------------------------------------------------------------

_ASYNC_CLIENTS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[str, str, int], httpx.AsyncClient]] = (
    weakref.WeakKeyDictionary()
)
_SHARED_HOOKS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[str, str | None], KernelHook]] = (
    weakref.WeakKeyDictionary()
)
_REQUEST_SLOTS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = weakref.WeakKeyDictionary()
#: Requests one event loop has in flight at once (open event streams excluded). A triggerer that (re)starts
#: 1,000 waits would otherwise build and send 1,000 requests in one loop iteration: the loop stalls for a
#: fraction of a second and Kernel sees a burst that invites 429s.
MAX_REQUESTS_IN_FLIGHT = 32
_SSL_CONTEXTS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, Any]] = weakref.WeakKeyDictionary()
#: Connection pools per event loop and Kernel host. httpcore's pool walks all its connections (and, for each
#: idle one, all of them again) whenever a request starts or ends, and closes every idle connection once it
#: holds more than max_keepalive_connections: one pool with 1,000 open event streams cost O(n^2) CPU per request
#: and no keep-alive (see bench/bench_trigger.py). Small shards keyed by invocation id keep each pool small.
_POOL_SHARDS = 64


def _request_slots() -> asyncio.Semaphore:
    loop = asyncio.get_running_loop()
    slots = _REQUEST_SLOTS.get(loop)
    if slots is None:
        slots = _REQUEST_SLOTS[loop] = asyncio.Semaphore(MAX_REQUESTS_IN_FLIGHT)
    return slots


def _shared_async_client(settings: KernelSettings, key: str = "") -> httpx.AsyncClient:
    """One client per event loop, Kernel host and pool shard (picked by ``key``, the invocation id), shared by
    every trigger on that loop; all shards share one SSL context."""
    loop = asyncio.get_running_loop()
    per_loop = _ASYNC_CLIENTS.setdefault(loop, {})
    verify = str(settings.verify)
    shard = zlib.crc32(key.encode()) % _POOL_SHARDS
    client = per_loop.get((settings.base_url, verify, shard))
    if client is None or client.is_closed:
        contexts = _SSL_CONTEXTS.setdefault(loop, {})
        ssl_context = contexts.get(verify)
        if ssl_context is None:
            ssl_context = contexts[verify] = httpx.create_ssl_context(verify=settings.verify)
        client = httpx.AsyncClient(
            verify=ssl_context,
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=None),
            follow_redirects=False,
        )
        per_loop[(settings.base_url, verify, shard)] = client
    return client


async def close_shared_clients() -> None:
    """Close this event loop's shared clients: for short-lived loops, such as a wait run on a worker."""
    loop = asyncio.get_running_loop()
    _SHARED_HOOKS.pop(loop, None)
    _REQUEST_SLOTS.pop(loop, None)
    _SSL_CONTEXTS.pop(loop, None)
    for client in _ASYNC_CLIENTS.pop(loop, {}).values():
        await client.aclose()


def _credentials(settings: KernelSettings) -> tuple[Any, ...]:
    """What decides whether Kernel accepts a request: a re-read connection that differs here is worth a retry."""
    return settings.base_url, settings.api_key, settings.project_id, settings.verify


#: Shortest timeout a budgeted request gets: a zero or negative timeout means "none" or an error to the clients.
_MIN_TIMEOUT = 0.05


def _time_left(deadline: float) -> float:
    return deadline - time.monotonic()


def _out_of_budget(call: ApiCall[Any]) -> KernelTransportError:
    return KernelTransportError("no time left in the call's budget", request_sent=False,
                                method=call.endpoint.method, path=call.path)


def _call_within(call: ApiCall[T], left: float) -> ApiCall[T]:
    """``call`` with its own read timeout (if it has one, e.g. a sync create) cut to ``left`` seconds."""
    if call.read_timeout is None or call.read_timeout <= left:
        return call
    return replace(call, read_timeout=max(_MIN_TIMEOUT, left))


def _settings_within(settings: KernelSettings, left: float) -> KernelSettings:
    """``settings`` with connect and read timeouts cut to ``left`` seconds."""
    left = max(_MIN_TIMEOUT, left)
    return replace(settings, request_timeout=min(settings.request_timeout, left),
                   connect_timeout=min(settings.connect_timeout, left))


def _policy_within(policy: RetryPolicy, budget: float) -> RetryPolicy:
    """A retry policy that fits ``budget`` seconds: the same attempts, with the retry window, the backoffs and the
    honoured ``Retry-After`` shrunk so that several attempts fit (a 30 s cancel budget is not spent on one wait)."""
    budget = max(_MIN_TIMEOUT, budget)
    return RetryPolicy(
        max_attempts=policy.max_attempts,
        max_elapsed=min(policy.max_elapsed, budget),
        backoff_initial=min(policy.backoff_initial, budget / 8),
        backoff_max=min(policy.backoff_max, budget / 4),
        retry_after_cap=min(policy.retry_after_cap, budget / 4),
        rate_limit_budget=min(policy.rate_limit_budget, budget),
    )


def _cancel_outcome(invocation_id: str, budget: float | None, patch: tuple[bool, Any] | None,
                    delete: tuple[bool, Any] | None) -> Invocation | None:
    """The result of a cancel from its two halves (``(ok, value or error)``; None: still out at the deadline)."""
    for endpoint, outcome in ((api.UPDATE_INVOCATION, patch), (api.DELETE_BROWSERS, delete)):
        if outcome is None:
            path = ApiCall(endpoint, {"id": invocation_id}).path
            raise KernelTransportError(f"no answer within the cancel budget ({budget or 0:g}s)", request_sent=True,
                                       method=endpoint.method, path=path)
        if not outcome[0]:
            raise outcome[1]
    assert patch is not None
    return patch[1]


def _body_headers(settings: KernelSettings, call: ApiCall[Any]) -> dict[str, str]:
    headers = settings.headers()
    if call.body is not None:
        headers["Content-Type"] = "application/json"
    return headers


def _requests_error_sent(exc: requests.exceptions.RequestException) -> bool:
    if isinstance(exc, (requests.exceptions.ConnectTimeout, requests.exceptions.SSLError,
                        requests.exceptions.InvalidURL, requests.exceptions.MissingSchema)):
        return False
    if isinstance(exc, requests.exceptions.ConnectionError):
        import urllib3.exceptions as u3

        cause: BaseException | None = exc
        seen = 0
        while cause is not None and seen < 10:
            if isinstance(cause, (u3.NewConnectionError, u3.NameResolutionError, ConnectionRefusedError)):
                return False
            reason = getattr(cause, "reason", None)
            cause = reason if isinstance(reason, BaseException) else (cause.__cause__ or cause.__context__)
            seen += 1
        for arg in exc.args:
            if isinstance(arg, u3.MaxRetryError) and isinstance(arg.reason, u3.NewConnectionError):
                return False
    return True


def _httpx_error_sent(exc: httpx.HTTPError) -> bool:
    return not isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout,
                                httpx.UnsupportedProtocol, httpx.InvalidURL))


def _describe_requests_error(exc: requests.exceptions.RequestException) -> str:
    kind = type(exc).__name__
    if isinstance(exc, requests.exceptions.ReadTimeout):
        return f"{kind}: no answer within the read timeout"
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return f"{kind}: could not connect within the connect timeout"
    return f"{kind}: {exc}"


def _describe_httpx_error(exc: Exception) -> str:
    text = str(exc) or "no details"
    return f"{type(exc).__name__}: {text}"


def _connection_extra(conn: Any) -> Mapping[str, Any]:
    try:
        extra = conn.extra_dejson
    except Exception:
        extra = None
    if extra is None:
        raw = getattr(conn, "extra", None)
        extra = json.loads(raw) if raw else {}
    return extra if isinstance(extra, Mapping) else {}


def _base_url(conn_id: str, host: str | None, port: int | None) -> str:
    text = (host or "").strip().rstrip("/") or DEFAULT_BASE_URL
    if "://" not in text:
        text = f"{'http' if _is_loopback(text.split('/')[0].split(':')[0]) else 'https'}://{text}"
    try:
        parts = urlsplit(text)
        parsed_port = parts.port
    except ValueError as exc:
        raise KernelConnectionConfigError(f"connection {conn_id!r} host", f"is not a valid URL: {exc}.",
                                          "Use e.g. https://api.onkernel.com") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise KernelConnectionConfigError(f"connection {conn_id!r} host", f"is not a valid base URL: {text!r}.",
                                          "Use e.g. https://api.onkernel.com")
    if port and not parsed_port:
        text = f"{parts.scheme}://{parts.netloc}:{int(port)}{parts.path}"
    return text.rstrip("/")


def _is_loopback(hostname: str | None) -> bool:
    if not hostname:
        return False
    if hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(hostname.strip("[]")).is_loopback
    except ValueError:
        return False


def _warn_if_plain_http(base_url: str) -> None:
    parts = urlsplit(base_url)
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        log.warning("The Kernel base URL %s uses plain http: the API key would cross the network unencrypted.",
                    base_url)


def _number(conn_id: str, extra: Mapping[str, Any], key: str, default: float, *, integer: bool = False,
            positive: bool = False) -> float:
    value = extra.get(key)
    if value is None or value == "":
        return default
    try:
        number = float(value)
        if integer and number != int(number):
            raise ValueError
    except (TypeError, ValueError):
        raise KernelConnectionConfigError(f"connection {conn_id!r} extra.{key}",
                                          f"must be a {'whole ' if integer else ''}number, got {value!r}.",
                                          "Fix or remove it in the connection's extra.") from None
    if number < 0 or (positive and number == 0):
        raise KernelConnectionConfigError(f"connection {conn_id!r} extra.{key}", f"is {value}; it must be > 0.",
                                          "Fix or remove it in the connection's extra.")
    return number


def _mask(secret: str) -> None:
    try:
        from airflow.providers.common.compat.sdk import mask_secret

        mask_secret(secret)
    except Exception:  # masking is defence in depth; the key is never logged anyway
        log.debug("Could not register the API key with the secret masker.")


_USER_AGENT: str | None = None


def _user_agent() -> str:
    global _USER_AGENT
    if _USER_AGENT is None:
        try:
            from airflow import __version__ as airflow_version
        except Exception:
            airflow_version = "unknown"
        _USER_AGENT = f"airflow-provider-kernel/{__version__} apache-airflow/{airflow_version}"
    return _USER_AGENT
