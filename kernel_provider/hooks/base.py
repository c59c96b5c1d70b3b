"""``KernelBaseHook``: what every Kernel hook shares: the Airflow connection, the settings read from it, the one
:class:`~kernel_provider.client.client.KernelClient` every call goes through, secret masking and
``airflow connections test`` (the connection form is drawn by ``KernelHook``, the ``kernel`` type's hook).

:class:`~kernel_provider.hooks.kernel.KernelHook` (invocations and apps) and
:class:`~kernel_provider.hooks.kernel_browser.KernelBrowserHook` (standalone browsers and pools) are siblings over
it. Workers call the plain methods, triggers the ``a``-methods.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import replace
from functools import cached_property, partial
from typing import Any, TypeVar

from airflow.providers.common.compat.sdk import BaseHook, mask_secret

from kernel_provider.client.browsers import BrowserApi, LiveView
from kernel_provider.client.client import KernelClient
from kernel_provider.client.errors import KernelConnectionConfigError, KernelError
from kernel_provider.client.models import Browser
from kernel_provider.client.retry import RetryPolicy
from kernel_provider.client.settings import KernelSettings
from kernel_provider.client.transport import close_loop_resources, loop_resources
from kernel_provider.version_compat import AIRFLOW_VERSION

log = logging.getLogger(__name__)
#: Seconds a hook reuses the connection it looked up without blocking before looking it up again.
SETTINGS_TTL = 300.0
H = TypeVar("H", bound="KernelBaseHook")


class KernelBaseHook(BaseHook):
    """Talks to Kernel through one Airflow connection (type ``kernel``), by way of a :class:`KernelClient`.

    :param kernel_conn_id: the Airflow connection to use (default ``kernel_default``).
    :param retry_policy: replaces the retry bounds read from the connection (tests and benchmarks use this).
    :param component: the Airflow component making the calls (e.g. ``"triggerer"``), added to the User-Agent
        so Kernel-side request logs show where a request came from. It changes nothing else.
    :param rate_limit_wait: replaces only the connection's ``rate_limit_wait`` (the 429 budget, seconds); its
        other retry settings stay in force. Ignored when ``retry_policy`` is given.
    :param kwargs: Airflow's own ``BaseHook`` arguments (``logger_name``).
    """

    conn_name_attr = "kernel_conn_id"
    default_conn_name = "kernel_default"
    conn_type = "kernel"
    hook_name = "Kernel"

    def __init__(
        self,
        kernel_conn_id: str = default_conn_name,
        retry_policy: RetryPolicy | None = None,
        component: str | None = None,
        rate_limit_wait: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.kernel_conn_id = kernel_conn_id
        self.component = component
        self.rate_limit_wait = rate_limit_wait
        self._retry_override = retry_policy
        self._client: KernelClient | None = None
        self._async_settings: KernelSettings | None = None
        self._async_settings_at = 0.0
        self._settings_lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(kernel_conn_id={self.kernel_conn_id!r})"

    @classmethod
    def shared(cls: type[H], kernel_conn_id: str, component: str | None = None) -> H:
        """The hook all waits on the running event loop share for this connection (one lookup, one pool)."""
        hooks, key = loop_resources().shared, (cls, kernel_conn_id, component)
        if key not in hooks:
            hooks[key] = cls(kernel_conn_id=kernel_conn_id, component=component)
        return hooks[key]  # type: ignore[no-any-return]

    @cached_property
    def settings(self) -> KernelSettings:
        """Settings from the connection, looked up synchronously once (worker side)."""
        try:
            conn = self.get_connection(self.kernel_conn_id)
        except Exception as exc:
            raise self._not_found(exc) from None
        return self._settings_from(conn, conn.extra_dejson)

    async def aget_settings(self) -> KernelSettings:
        """Settings looked up without blocking the loop, cached ``SETTINGS_TTL`` seconds: all waits of a triggerer
        share one hook (:meth:`shared`) and a rotated key must still be picked up (sooner: after a refusal).
        :raises KernelConnectionConfigError: the connection is missing or malformed (no API key, bad extra...)."""
        return self._cached_settings() or await self._load_settings()

    def _cached_settings(self) -> KernelSettings | None:
        return self._async_settings if time.monotonic() - self._async_settings_at < SETTINGS_TTL else None

    async def _load_settings(self, reread: bool = False) -> KernelSettings:
        """Look the connection up once for all waiters; ``reread`` (the client's ``refresh``, after Kernel refused
        the key) looks even when the cached settings are fresh."""
        from airflow.providers.common.compat.connection import get_async_connection

        async with self._settings_lock:
            if reread:
                self._async_settings = None  # dropped even if the lookup fails: the next call looks again
            elif cached := self._cached_settings():
                return cached
            try:
                conn = await get_async_connection(self.kernel_conn_id)
            except Exception as exc:
                raise self._not_found(exc) from None
            extra = await conn.aextra_dejson() if hasattr(conn, "aextra_dejson") else conn.extra_dejson
            settings = self._async_settings = self._settings_from(conn, extra)
            self._async_settings_at = time.monotonic()
            if self._client is not None:
                self._client.settings = settings
            return settings

    def _settings_from(self, conn: Any, extra: Mapping[str, Any]) -> KernelSettings:
        settings = KernelSettings.from_mapping(
            conn_id=getattr(conn, "conn_id", None) or self.default_conn_name,
            host=conn.host,
            port=conn.port,
            password=conn.password,
            extra=extra,
            airflow_version=AIRFLOW_VERSION,
            component=self.component,
        )
        if self.rate_limit_wait is not None:
            # Only the 429 budget is the caller's: max_retries, max_retry_wait... stay the connection's.
            settings = replace(settings, retry=replace(settings.retry, rate_limit_budget=float(self.rate_limit_wait)))
        _mask(settings.api_key)
        if settings.plain_http:  # only with allow_insecure_http: true (refused otherwise)
            log.warning("Kernel base URL %s is plain http: the API key travels unencrypted.", settings.base_url)
        return settings

    @staticmethod
    def mask_browser_urls(browsers: Iterable[Browser]) -> None:
        """Register the URLs that control each browser (``cdp_ws_url``, ``webdriver_ws_url``) with Airflow's
        secret masker, so a log line or error that quotes one shows ``***``. The live-view URL is left to the
        code that decides what to publish (see :mod:`kernel_provider.client.browser_watch`)."""
        for browser in browsers:
            for url in (browser.cdp_ws_url, browser.webdriver_ws_url):
                if url:
                    _mask(url)

    def _not_found(self, exc: Exception) -> KernelConnectionConfigError:
        return KernelConnectionConfigError(
            f"kernel_conn_id={self.kernel_conn_id!r}",
            f"could not be loaded ({type(exc).__name__}).",
            f"Create the connection (type Kernel) or set AIRFLOW_CONN_{self.kernel_conn_id.upper()}.",
        )

    @property
    def client(self) -> KernelClient:
        """The :class:`KernelClient` every method delegates to (the connection looked up synchronously on first
        use); use it for anything the hook does not wrap."""
        return self._client or self._new_client(self.settings)

    async def aget_client(self) -> KernelClient:
        """The same client, its settings looked up without blocking (and replaced after ``SETTINGS_TTL``)."""
        settings = await self.aget_settings()
        return self._client or self._new_client(settings)

    def _new_client(self, settings: KernelSettings) -> KernelClient:
        self._client = KernelClient(settings, retry=self._retry_override, refresh=partial(self._load_settings, True))
        return self._client

    def create_live_view(self, *, session_id: str, access: str, ttl_seconds: int | None = None) -> LiveView:
        """``POST /browsers/{id}/live_view``: a ``read`` or ``control`` live-view URL of a headful browser, valid
        ``ttl_seconds`` (None: until the browser is deleted). The URL is a credential."""
        return BrowserApi(self.client).live_view(session_id=session_id, access=access, ttl_seconds=ttl_seconds)

    async def acreate_live_view(self, *, session_id: str, access: str, ttl_seconds: int | None = None) -> LiveView:
        """:meth:`create_live_view` without blocking the event loop."""
        api = BrowserApi(await self.aget_client())
        return await api.alive_view(session_id=session_id, access=access, ttl_seconds=ttl_seconds)

    def test_connection(self) -> tuple[bool, str]:
        """One cheap authenticated call (``GET /apps?limit=1``), answered in words a person understands."""
        try:
            return self.client.check_connection()
        except KernelError as exc:  # the connection itself is missing or malformed
            return False, str(exc)


def _mask(secret: str) -> None:
    try:
        mask_secret(secret)
    except Exception:  # masking is defence in depth; secrets are never logged on purpose anyway
        log.debug("Could not register a secret with the secret masker.")


async def close_shared_clients() -> None:
    """Close the running event loop's shared hooks and HTTP clients (short-lived loops: a wait on a worker)."""
    await close_loop_resources()
