"""``KernelBrowserHook``: Kernel browsers for any Python task, deleted whatever happens to the task::

    from kernel_provider.hooks.kernel_browser import KernelBrowserHook

    with KernelBrowserHook().browser(headless=True, timeout_seconds=120) as browser:
        pw_browser = playwright.chromium.connect_over_cdp(browser.cdp_ws_url)
        ...

    async with KernelBrowserHook().browser(pool="scrapers") as browser:  # acquired, then released
        ...

The browser is deleted (a pool's released) when the block ends: normally, on an exception, on Airflow's
``execution_timeout`` (raised inside the block), on a kill (SIGTERM: the task's ``on_kill`` calls
:meth:`KernelBrowserHook.close_all`, and the exception Airflow raises unwinds the block). A create interrupted
mid-request (a timeout or kill that lands while ``POST /browsers`` is out) looks its browser up by its marker and
deletes it. What no code can cover is a worker killed with SIGKILL (or losing power): the browser then runs until
Kernel's ``timeout_seconds`` without a CDP connection end it, so that option is the bound (Kernel's default 60 s).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

from kernel_provider.client.browsers import BrowserApi
from kernel_provider.client.client import KernelClient
from kernel_provider.client.errors import KernelError
from kernel_provider.client.files import (
    DEFAULT_MAX_FILE_BYTES,
    DEFAULT_MAX_TOTAL_BYTES,
    DOWNLOAD_DIR,
    FileApi,
    FileInfo,
)
from kernel_provider.client.models import Browser
from kernel_provider.client.retry import RetryPolicy
from kernel_provider.client.validation import BrowserRequest, build_browser_request
from kernel_provider.hooks.base import KernelBaseHook
from kernel_provider.hooks.landing import BrowserFiles, land_files

log = logging.getLogger(__name__)
#: Seconds a delete (or release) at the end of a block may take, retries included.
CLOSE_BUDGET = 30.0
#: Seconds the clean-up of a create interrupted mid-request may take (lookups by marker, then delete).
INTERRUPTED_CREATE_BUDGET = 15.0
#: Pauses before each lookup after an interrupted create: Kernel may still be creating the browser.
INTERRUPTED_LOOKUP_PAUSES = (0.0, 1.0, 2.0, 4.0)


class KernelBrowserSession:
    """The context manager :meth:`KernelBrowserHook.browser` returns; ``with`` and ``async with`` both work.

    Entering creates (or acquires) the browser and returns the :class:`~kernel_provider.client.models.Browser`;
    leaving deletes (or releases) it. :attr:`browser` is None until entered and after it was closed.
    """

    def __init__(self, hook: KernelBrowserHook, request: BrowserRequest) -> None:
        self.hook = hook
        self.request = request
        self.browser: Browser | None = None
        # Re-entrant: on_kill runs in a signal handler on the task's own thread, maybe while that thread is in here.
        self._closed = threading.RLock()

    # --- sync -----------------------------------------------------------------------------------------------

    def __enter__(self) -> Browser:
        api = self.hook.api
        try:
            browser = api.open(self.request)
        except BaseException as exc:
            self._after_failed_open(exc)
            raise
        return self._opened(browser)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close(raise_errors=exc is None)

    def close(self, *, budget: float = CLOSE_BUDGET, raise_errors: bool = True, api: BrowserApi | None = None) -> bool:
        """Delete (or release) the browser now; later calls do nothing. True when this call ended it.

        :param budget: seconds the call may take, retries included.
        :param raise_errors: raise a failure (True), or only log it (the block is already failing).
        :param api: the API to use (None: the hook's). A kill passes one with a client of its own.
        """
        browser = self._take()
        if browser is None:
            return False
        try:
            ended = (api or self.hook.api).close(self.request, browser.session_id, budget=budget)
        except KernelError as exc:
            self._close_failed(browser, exc, raise_errors)
            return False
        self._closed_log(browser, ended)
        return ended

    def _after_failed_open(self, exc: BaseException) -> None:
        """A create that ended without an answer because the task was interrupted (timeout, kill) may still have
        created the browser: find it by its marker and delete it. Kernel's own failures were settled by the
        create operation (refusals created nothing, lost answers were looked up)."""
        if isinstance(exc, KernelError) or not self.request.marker:
            return
        api = BrowserApi(KernelClient(self.hook.settings))  # the hook's client may be mid-request
        deadline = time.monotonic() + INTERRUPTED_CREATE_BUDGET
        try:
            # Kernel may still be creating it: look again a few times before concluding there is none.
            for pause in INTERRUPTED_LOOKUP_PAUSES:
                time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                found = api.find_marked(self.request, budget=left)
                if found is not None:
                    api.close(self.request, found.session_id, budget=max(1.0, deadline - time.monotonic()))
                    log.warning("Deleted Kernel browser %s, created by an interrupted request.", found.session_id)
                    return
        except Exception as cleanup_error:
            log.error(
                "The browser create was interrupted (%s) and its browser could not be looked up and deleted: %s. "
                "Kernel ends it after its timeout_seconds without a connection.",
                type(exc).__name__,
                cleanup_error,
            )

    # --- async ----------------------------------------------------------------------------------------------

    async def __aenter__(self) -> Browser:
        api = await self.hook.aget_api()
        try:
            browser = await api.aopen(self.request)
        except BaseException as exc:
            await self._aafter_failed_open(api, exc)
            raise
        return self._opened(browser)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose(raise_errors=exc is None)

    async def aclose(self, *, budget: float = CLOSE_BUDGET, raise_errors: bool = True) -> bool:
        """:meth:`close` without blocking the event loop."""
        browser = self._take()
        if browser is None:
            return False
        try:
            ended = await (await self.hook.aget_api()).aclose(self.request, browser.session_id, budget=budget)
        except KernelError as exc:
            self._close_failed(browser, exc, raise_errors)
            return False
        self._closed_log(browser, ended)
        return ended

    async def _aafter_failed_open(self, api: BrowserApi, exc: BaseException) -> None:
        if isinstance(exc, KernelError) or not self.request.marker:
            return
        loop_time = asyncio.get_running_loop().time
        deadline = loop_time() + INTERRUPTED_CREATE_BUDGET
        try:
            for pause in INTERRUPTED_LOOKUP_PAUSES:
                await asyncio.sleep(min(pause, max(0.0, deadline - loop_time())))
                left = deadline - loop_time()
                if left <= 0:
                    break
                found = await api.afind_marked(self.request, budget=left)
                if found is not None:
                    await api.aclose(self.request, found.session_id, budget=max(1.0, deadline - loop_time()))
                    log.warning("Deleted Kernel browser %s, created by an interrupted request.", found.session_id)
                    return
        except Exception as cleanup_error:
            log.error("The browser create was interrupted and its clean-up failed: %s", cleanup_error)

    # --- shared ---------------------------------------------------------------------------------------------

    def _opened(self, browser: Browser) -> Browser:
        self.hook.mask_browser_urls([browser])
        self.browser = browser
        self.hook._open_sessions[browser.session_id] = self
        if self.hook.killed:
            # The task was killed while the create was out (Airflow 3 runs on_kill and lets the task go on).
            self.close(budget=INTERRUPTED_CREATE_BUDGET, raise_errors=False)
            raise KernelError(f"Task killed while Kernel browser {browser.session_id} was being created; deleted it.")
        how = f"acquired from pool {self.request.pool!r}" if self.request.pool else "created"
        # Not the listed live-view URL: it steers the browser (see KernelHook.create_live_view for a read-only one).
        view = "headful (live view)" if browser.browser_live_view_url else "headless (no live view)"
        log.info("Kernel browser %s %s; %s.", browser.session_id, how, view)
        return browser

    def _take(self) -> Browser | None:
        """The browser to close, once: a kill's :meth:`KernelBrowserHook.close_all` and the block's end may race."""
        with self._closed:
            browser, self.browser = self.browser, None
        if browser is not None:
            self.hook._open_sessions.pop(browser.session_id, None)
        return browser

    def _closed_log(self, browser: Browser, ended: bool) -> None:
        verb = "released to its pool" if self.request.pool else "deleted"
        if ended:
            log.info("Kernel browser %s %s.", browser.session_id, verb)
        else:
            log.info("Kernel browser %s was already gone.", browser.session_id)

    def _close_failed(self, browser: Browser, exc: KernelError, raise_errors: bool) -> None:
        message = (
            f"Could not end Kernel browser {browser.session_id}: {exc}. Kernel ends it after its "
            f"timeout_seconds ({browser.timeout_seconds or 'default'}) without a connection."
        )
        if raise_errors:
            raise KernelError(message) from exc
        log.error("%s", message)


class KernelBrowserHook(KernelBaseHook):
    """Kernel's standalone browsers and browser pools, through one connection of type ``kernel`` (the sibling of
    :class:`~kernel_provider.hooks.kernel.KernelHook`, which runs invocations).

    :param kernel_conn_id: the Airflow connection (type ``kernel``; default ``kernel_default``).
    :param retry_policy: replaces the retry bounds read from the connection.
    :param component: the Airflow component making the calls, added to the User-Agent.
    :param rate_limit_wait: replaces only the connection's ``rate_limit_wait`` (the 429 budget, seconds).
    """

    def __init__(
        self,
        kernel_conn_id: str = KernelBaseHook.default_conn_name,
        retry_policy: RetryPolicy | None = None,
        component: str | None = None,
        rate_limit_wait: float | None = None,
    ) -> None:
        super().__init__(
            kernel_conn_id=kernel_conn_id,
            retry_policy=retry_policy,
            component=component,
            rate_limit_wait=rate_limit_wait,
        )
        self._open_sessions: dict[str, KernelBrowserSession] = {}
        #: Set by :meth:`close_all`: a browser whose create ends afterwards is deleted at once.
        self.killed = False

    @property
    def api(self) -> BrowserApi:
        """The browser operations on this hook's client (connection looked up synchronously)."""
        return BrowserApi(self.client)

    async def aget_api(self) -> BrowserApi:
        """:attr:`api`, the connection looked up without blocking."""
        return BrowserApi(await self.aget_client())

    def browser(
        self,
        *,
        headless: bool | None = None,
        stealth: bool | None = None,
        timeout_seconds: int | None = None,
        profile: str | Mapping[str, str] | None = None,
        save_profile_changes: bool | None = None,
        proxy_id: str | None = None,
        viewport: Mapping[str, int] | Sequence[int] | None = None,
        start_url: str | None = None,
        kiosk_mode: bool | None = None,
        pool: str | None = None,
        acquire_timeout_seconds: int | None = None,
        reuse: bool | None = None,
    ) -> KernelBrowserSession:
        """A browser for the length of a ``with`` (or ``async with``) block, deleted (or released) at its end.

        Each option is described at :func:`~kernel_provider.client.validation.build_browser_request`; None leaves
        it to Kernel. A standalone browser takes ``headless``, ``stealth``, ``timeout_seconds``, ``profile`` (+
        ``save_profile_changes``), ``proxy_id``, ``viewport``, ``start_url``, ``kiosk_mode``; a browser from a pool
        takes ``pool`` (+ ``acquire_timeout_seconds``, ``reuse``) and nothing else.

        :raises KernelInputError: here, before any request, naming the wrong option.
        """
        request = build_browser_request(
            headless=headless,
            stealth=stealth,
            timeout_seconds=timeout_seconds,
            profile=profile,
            save_profile_changes=save_profile_changes,
            proxy_id=proxy_id,
            viewport=viewport,
            start_url=start_url,
            kiosk_mode=kiosk_mode,
            pool=pool,
            acquire_timeout_seconds=acquire_timeout_seconds,
            reuse=reuse,
        )
        return KernelBrowserSession(self, request)

    def close_all(self, *, budget: float = CLOSE_BUDGET) -> list[str]:
        """End every browser this hook opened and has not closed yet (a task's ``on_kill``); returns their ids.
        Failures are logged, never raised: a kill must go on. A create still out is deleted when it ends."""
        self.killed = True
        if not self._open_sessions:
            return []
        # A client of its own: on_kill runs in a signal handler, maybe while the task's thread is mid-request on
        # the hook's client (its HTTP session is not re-entrant).
        api = BrowserApi(KernelClient(self.settings))
        closed = []
        for session_id, session in list(self._open_sessions.items()):
            if session.close(budget=budget, raise_errors=False, api=api):
                closed.append(session_id)
        return closed

    @property
    def open_session_ids(self) -> list[str]:
        """Session ids of the browsers opened through this hook and not closed yet."""
        return list(self._open_sessions)

    def get_browser(self, session_id: str) -> Browser:
        """``GET /browsers/{id}`` (:class:`~kernel_provider.client.errors.KernelNotFoundError` once gone)."""
        browser = self.api.get(session_id)
        self.mask_browser_urls([browser])
        return browser

    def list_browser_sessions(self, *, status: str = "active", limit: int | None = None) -> list[Browser]:
        """``GET /browsers``: ``status`` ``active`` (default), ``deleted`` or ``all``; ``limit`` caps the count."""
        browsers = self.api.list(status=status, limit=limit)
        self.mask_browser_urls(browsers)
        return browsers

    def delete_browser(self, session_id: str) -> bool:
        """``DELETE /browsers/{id}``; False when it was already gone."""
        return self.api.delete(session_id)

    # --- files --------------------------------------------------------------------------------------------------

    def list_browser_files(self, *, session_id: str, path: str = DOWNLOAD_DIR) -> list[FileInfo]:
        """``GET /browsers/{id}/fs/list_files``: the entries of the absolute directory ``path``, names checked."""
        return FileApi(self.client).list_files(session_id=session_id, path=path)

    def land_browser_files(
        self,
        *,
        session_id: str,
        destination: Any,
        source_dir: str = DOWNLOAD_DIR,
        pattern: str | None = None,
        max_bytes: int = DEFAULT_MAX_FILE_BYTES,
        max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
    ) -> list[dict[str, Any]]:
        """Land the files of a live browser's ``source_dir`` in ``destination`` (an ``ObjectStoragePath``, a URL or
        an absolute local path), each whole or not at all: see :func:`~kernel_provider.hooks.landing.land_files`
        for the parameters, the result (``name``, ``path``, ``source``, ``size``, ``sha256`` per file) and the
        errors. Kernel deletes a browser's files with the browser: land them before it ends."""
        return land_files(
            FileApi(self.client),
            session_id=session_id,
            destination=destination,
            source_dir=source_dir,
            pattern=pattern,
            max_bytes=max_bytes,
            max_total_bytes=max_total_bytes,
        )

    def browser_files(self, *, session_id: str) -> BrowserFiles:
        """The files of browser ``session_id`` as one object (``list_files``, ``wait_for``, ``land``, ``aland``)."""
        return BrowserFiles(self, session_id)
