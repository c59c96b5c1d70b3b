"""``ApiCaller``: runs any operation (see :mod:`kernel_provider.client.wire`) over the sync transport (requests) or
the async one (httpx), every request under the retry policy of :mod:`kernel_provider.client.retry` and within an
optional time budget; a refused key is read again once on the async side. :class:`~.client.KernelClient` adds
one named method per operation on top.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import tenacity

import kernel_provider.client.wire as wire
from kernel_provider.client.errors import KernelAuthError, KernelError, KernelTransportError
from kernel_provider.client.retry import RetryPolicy
from kernel_provider.client.settings import KernelSettings
from kernel_provider.client.transport import AsyncTransport, SyncTransport
from kernel_provider.client.validation import check_seconds
from kernel_provider.client.wire import ApiCall, Operation

T = TypeVar("T")
log = logging.getLogger(__name__)


class ApiCaller:
    """Talks to Kernel's API with one set of settings; safe to share between threads, and between the tasks of
    one event loop.

    :param settings: where Kernel is and how to reach it. The attribute may be replaced later (the provider's hook
        does, when it reads its connection again); each request uses the settings current when it starts.
    :param retry: replaces ``settings.retry`` for every call, whatever settings are swapped in later. None: the
        settings' own bounds.
    :param refresh: an async callable that reads the settings anew from their source (the hook: the Airflow
        connection). When Kernel refuses the key (401/403) of an async request or event stream, the first refused
        call that still holds the current settings awaits it; if the settings it returns differ in URL, key,
        project or CA bundle, that call is sent once more with them, else the refusal stands. Never a loop, and
        never on the sync side (a worker reads its connection afresh on every task). None: a refusal is final.
    """

    def __init__(
        self,
        settings: KernelSettings,
        *,
        retry: RetryPolicy | None = None,
        refresh: Callable[[], Awaitable[KernelSettings]] | None = None,
    ) -> None:
        self.settings = settings
        self._retry = retry
        self._refresh = refresh
        self._refresh_lock = asyncio.Lock()
        #: The synchronous transport (one keep-alive session).
        self.transport = SyncTransport()
        #: The asynchronous transport (pools shared per event loop, see :class:`~.transport.LoopResources`).
        self.async_transport = AsyncTransport()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.settings.base_url!r})"

    @property
    def retry(self) -> RetryPolicy:
        """The retry bounds in force: the ``retry`` given to the client, else the current settings' own."""
        return self._retry or self.settings.retry

    def close(self) -> None:
        """Close the sync transport's connections. The async pools belong to the event loop, not to one client:
        close them with :func:`~kernel_provider.client.transport.close_loop_resources`."""
        self.transport.close()

    # --- drivers ----------------------------------------------------------------------------------------------

    def execute(
        self,
        operation: Operation[T],
        *,
        budget: float | None = None,
        retry: RetryPolicy | None = None,
        before_send: Callable[[], None] | None = None,
    ) -> T:
        """Run any operation (see :mod:`kernel_provider.client.wire`) on this thread.

        :param operation: e.g. ``invocations.get_invocation("abc")``.
        :param budget: seconds the whole operation may take: each request's timeouts and retries are cut to the
            time left, and no request starts once it is spent (a :class:`KernelTransportError` then). None: the
            settings' full timeouts and retries.
        :param retry: the retry bounds of this operation only (None: :attr:`retry`).
        :param before_send: called right before each attempt of each request is sent; what it raises ends the
            operation without sending (e.g. a create's caller recording the attempt's window first).
        :raises KernelError: what the operation raises once the retry policy gives up.
        """
        deadline = deadline_after(budget)
        return wire.drive(operation, lambda call: self._send(call, deadline, retry, before_send))

    async def aexecute(self, operation: Operation[T], *, budget: float | None = None) -> T:
        """:meth:`execute` without blocking the event loop, with the same retries; a refused key is read again
        once (see ``refresh``)."""
        deadline = deadline_after(budget)
        return await wire.adrive(operation, lambda call: self._asend(call, deadline))

    # --- one request under the retry policy ---------------------------------------------------------------------

    def _retrying(self, call: ApiCall[Any], deadline: float | None, policy: RetryPolicy | None) -> dict[str, Any]:
        """tenacity's arguments for ``call``: the policy, fitted into the time left before ``deadline``."""
        policy = policy or self.retry
        describe = f"{call.endpoint.method} {call.path}"
        if deadline is None:
            return policy.tenacity_kwargs(idempotent=call.endpoint.idempotent, describe=describe)
        retrying = policy.within(deadline - time.monotonic()).tenacity_kwargs(
            idempotent=call.endpoint.idempotent, describe=describe
        )
        stop, wait = retrying["stop"], retrying["wait"]
        # No new attempt once the time is spent, and no backoff that would outlast it.
        retrying["stop"] = lambda state: stop(state) or deadline - time.monotonic() <= 0
        retrying["wait"] = lambda state: max(0.0, min(wait(state), deadline - time.monotonic()))
        return retrying

    def _send(
        self,
        call: ApiCall[T],
        deadline: float | None,
        policy: RetryPolicy | None = None,
        before_send: Callable[[], None] | None = None,
    ) -> T:
        settings = self.settings
        for attempt in tenacity.Retrying(**self._retrying(call, deadline, policy)):
            with attempt:
                if before_send is not None:
                    before_send()
                response = self.transport.request(*_fitted(call, settings, deadline))
                wire.raise_for_status(call, response)
        return call.parse(response)

    async def _asend(self, call: ApiCall[T], deadline: float | None) -> T:
        return await self._with_fresh_settings(
            lambda settings: self._asend_with(call, settings, deadline),
            f"Sending {call.endpoint.method} {call.path} again",
        )

    async def _asend_with(self, call: ApiCall[T], settings: KernelSettings, deadline: float | None) -> T:
        async for attempt in tenacity.AsyncRetrying(**self._retrying(call, deadline, None)):
            with attempt:
                response = await self.async_transport.request(*_fitted(call, settings, deadline))
                wire.raise_for_status(call, response)
        return call.parse(response)

    async def _with_fresh_settings(self, attempt: Callable[[KernelSettings], Awaitable[T]], again: str) -> T:
        """``attempt`` with the current settings; after a refused key, once more with settings read anew (if
        they differ)."""
        settings = self.settings
        try:
            return await attempt(settings)
        except KernelAuthError:
            fresh = await self._refreshed(settings)
            if fresh is None:
                raise
            log.info("%s with the connection read anew.", again)
            return await attempt(fresh)

    async def _refreshed(self, rejected: KernelSettings) -> KernelSettings | None:
        """Kernel refused ``rejected``: the settings to try once more, or None (the refusal is the error).

        Many calls can be refused together after a key rotation: only the first one that still holds the current
        settings reads them again; the others find the newer settings and use them.
        """
        if self._refresh is None:
            return None
        async with self._refresh_lock:
            if self.settings is rejected:
                log.info("Kernel refused the API key of connection %r; reading the connection again.", rejected.conn_id)
                try:
                    self.settings = await self._refresh()
                except KernelError as exc:
                    log.warning("Could not read connection %r again: %s", rejected.conn_id, exc)
                    return None
        current = self.settings
        return None if current.same_credentials(rejected) else current


def deadline_after(budget: float | None) -> float | None:
    """The ``time.monotonic()`` moment a budget of ``budget`` seconds (checked) ends; None for no budget."""
    budget = check_seconds("budget", budget, exclusive=True)
    return None if budget is None else time.monotonic() + budget


def _fitted(call: ApiCall[T], settings: KernelSettings, deadline: float | None) -> tuple[ApiCall[T], KernelSettings]:
    """``call`` and ``settings`` with every timeout cut to the time left; no time left is a transport error that
    certainly sent nothing."""
    if deadline is None:
        return call, settings
    left = deadline - time.monotonic()
    if left <= 0:
        raise KernelTransportError(
            "no time left in the call's budget", request_sent=False, method=call.endpoint.method, path=call.path
        )
    return call.within(left), settings.within(left)
