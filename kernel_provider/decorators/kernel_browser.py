"""``@task.kernel_browser``: a Python task that gets a Kernel browser, connected, and never leaves it behind::

    from airflow.sdk import task  # Airflow 2.11: from airflow.decorators import task


    @task.kernel_browser(headless=True, timeout_seconds=120)
    def title(url: str, page) -> str:
        page.goto(url)
        return page.title()


    title("https://example.com")

Before the function runs, a browser is created (``POST /browsers``, or acquired from a Kernel browser pool with
``browser_pool=``; ``pool=`` is Airflow's pool, as for every task) with the
decorator's browser options (those of :meth:`~kernel_provider.hooks.kernel_browser.KernelBrowserHook.browser`,
checked before any request; ``start_url`` is templated). The function receives, by parameter name (declare the
ones you need; no default is needed):

* ``page``: a Playwright ``Page`` of the browser (its first page), connected over CDP;
* ``browser``: the Playwright ``Browser`` itself;
* ``kernel_browser``: the :class:`~kernel_provider.client.models.Browser` (session id, CDP URL, live-view URL);
* ``cdp_url``: the CDP websocket URL (text);
* ``kernel_files``: the browser's files (:class:`~kernel_provider.hooks.landing.BrowserFiles`):
  ``kernel_files.wait_for(pattern="*.csv")`` polls its download directory, ``kernel_files.land(destination)``
  lands them in Airflow object storage (whole or not at all, with size caps and sha256), while the browser lives.

Without Playwright (``pip install "airflow-provider-kernel[browser]"``), ``page`` and ``browser`` receive the CDP URL
instead, and the task log says so. An ``async def`` function gets Playwright's async objects.

The browser is deleted (released to its pool) when the function returns or raises, on ``execution_timeout`` and
when the task is killed (``on_kill``); a worker killed outright (SIGKILL) leaves it to Kernel's
``timeout_seconds`` without a connection. ``live_view`` decides what is published of a headful browser's live view
(logged, pushed as XCom ``kernel_browser_live_view_url`` and shown as the task's **Kernel browser live view**
link): ``"read"`` (default) a read-only URL minted with ``POST /browsers/{id}/live_view`` for the task's
``execution_timeout`` (at most an hour), ``"control"`` a control URL (masked, not logged), False/``"off"`` nothing
(see :mod:`kernel_provider.client.browser_watch`). A headless browser has no live view: nothing is published. The
function's return value is the task's (XCom ``return_value``).

Airflow finds the decorator through the provider info's ``task-decorators`` entry (name ``kernel_browser``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, ClassVar

from airflow.providers.common.compat.sdk import (
    BaseOperator,
    DecoratedOperator,
    TaskDecorator,
    context_merge,
    determine_kwargs,
    task_decorator_factory,
)

from kernel_provider.client.browser_watch import LiveViewPublisher, check_live_view
from kernel_provider.client.models import Browser
from kernel_provider.client.validation import BROWSER_OPTIONS as OPTIONS
from kernel_provider.decorators.output import XComPushForDecorators
from kernel_provider.hooks.kernel_browser import KernelBrowserHook
from kernel_provider.links import XCOM_BROWSER_LIVE_VIEW_URL, XCOM_BROWSER_SESSION_ID, KernelBrowserLiveViewLink
from kernel_provider.utils.secrets import mask_url

#: Parameter names the decorator fills in (see the module docstring).
INJECTED = ("page", "browser", "kernel_browser", "cdp_url", "kernel_files")
#: The decorator's browser keywords and the browser option each one sets. Kernel's browser pool is
#: ``browser_pool``: ``pool`` (like ``queue``, ``retries``...) stays ``BaseOperator``'s, the Airflow pool.
BROWSER_KEYWORDS = {**{name: name for name in OPTIONS if name != "pool"}, "browser_pool": "pool"}
#: Options that only mean something with ``browser_pool``.
POOL_ONLY = ("acquire_timeout_seconds", "reuse")
#: Seconds ``on_kill`` may spend deleting: the worker is stopping the task and will not wait long.
ON_KILL_BUDGET = 15.0
NO_PLAYWRIGHT = (
    "Playwright is not installed, so {names} receive(s) the browser's CDP URL (text) instead of Playwright "
    "objects. Install it with: pip install 'airflow-provider-kernel[browser]'."
)


def playwright_available() -> bool:
    """Whether Playwright can be imported (the ``[browser]`` extra)."""
    try:
        import playwright  # noqa: F401
    except ImportError:
        return False
    return True


class _KernelBrowserTask(BaseOperator):
    """What runs around the function: the browser's life, Playwright, the link. (The decorated class below adds
    the function handling of ``DecoratedOperator``.)"""

    python_callable: Callable[..., Any]
    op_args: Collection[Any]
    op_kwargs: Mapping[str, Any]
    kernel_conn_id: str
    browser_options: dict[str, Any]
    live_view: bool | str
    live_view_url: str | None

    def execute(self, context: Any) -> Any:
        """Create the browser, run the function with what it asks for, delete the browser; return its result."""
        hook = KernelBrowserHook(kernel_conn_id=self.kernel_conn_id)
        self._browser_hook = hook
        session = hook.browser(**self.browser_options)  # options checked here, before any request
        self._publisher = LiveViewPublisher(check_live_view(self.live_view), self._deadline(), self.log, mask_url)
        context_merge(context, self.op_kwargs)
        kwargs = dict(determine_kwargs(self.python_callable, self.op_args, context))
        wanted = [name for name in INJECTED if name in inspect.signature(self.python_callable).parameters]
        function = getattr(self.python_callable, "__wrapped__", self.python_callable)
        if inspect.iscoroutinefunction(function):
            return asyncio.run(self._arun(session, context, kwargs, wanted))
        with session as browser:
            self._announce(context, browser)
            playwright_wanted = [n for n in wanted if n in ("page", "browser")]
            if not playwright_wanted or not playwright_available():
                self._warn_without_playwright(playwright_wanted)
                kwargs.update(self._plain(browser, wanted))
                return self.python_callable(*self.op_args, **kwargs)
            from playwright.sync_api import sync_playwright

            with sync_playwright() as pw:
                pw_browser = pw.chromium.connect_over_cdp(browser.cdp_ws_url)
                try:
                    kwargs.update(self._plain(browser, wanted))
                    if "browser" in wanted:
                        kwargs["browser"] = pw_browser
                    if "page" in wanted:
                        contexts = pw_browser.contexts or [pw_browser.new_context()]
                        kwargs["page"] = contexts[0].pages[0] if contexts[0].pages else contexts[0].new_page()
                    return self.python_callable(*self.op_args, **kwargs)
                finally:
                    # Over CDP this only disconnects (the session ends below); after a kill or timeout the
                    # connection may be broken already, and that must not hide the task's own error.
                    with contextlib.suppress(Exception):
                        pw_browser.close()

    async def _arun(self, session: Any, context: Any, kwargs: dict[str, Any], wanted: list[str]) -> Any:
        async with session as browser:
            self._announce(context, browser)
            playwright_wanted = [n for n in wanted if n in ("page", "browser")]
            if not playwright_wanted or not playwright_available():
                self._warn_without_playwright(playwright_wanted)
                kwargs.update(self._plain(browser, wanted))
                return await self.python_callable(*self.op_args, **kwargs)
            from playwright.async_api import async_playwright

            async with async_playwright() as pw:
                pw_browser = await pw.chromium.connect_over_cdp(browser.cdp_ws_url)
                try:
                    kwargs.update(self._plain(browser, wanted))
                    if "browser" in wanted:
                        kwargs["browser"] = pw_browser
                    if "page" in wanted:
                        contexts = pw_browser.contexts or [await pw_browser.new_context()]
                        kwargs["page"] = contexts[0].pages[0] if contexts[0].pages else await contexts[0].new_page()
                    return await self.python_callable(*self.op_args, **kwargs)
                finally:
                    with contextlib.suppress(Exception):
                        await pw_browser.close()

    def _plain(self, browser: Browser, wanted: list[str]) -> dict[str, Any]:
        """The injections that need no Playwright (``page``/``browser`` get the CDP URL; Playwright replaces it)."""
        values: dict[str, Any] = {"kernel_browser": browser, "cdp_url": browser.cdp_ws_url, "page": browser.cdp_ws_url}
        values["browser"] = browser.cdp_ws_url
        if "kernel_files" in wanted:
            values["kernel_files"] = self._browser_hook.browser_files(session_id=browser.session_id)
        return {name: values[name] for name in wanted}

    def _warn_without_playwright(self, names: list[str]) -> None:
        if names:
            self.log.warning(NO_PLAYWRIGHT.format(names=", ".join(names)))

    def _deadline(self) -> float | None:
        timeout = self.execution_timeout
        return None if timeout is None else time.time() + timeout.total_seconds()

    def _announce(self, context: Any, browser: Browser) -> None:
        ti = context["ti"]
        ti.xcom_push(key=XCOM_BROWSER_SESSION_ID, value=browser.session_id)
        url = self._publisher.url(self._browser_hook, browser)
        if url:
            self.live_view_url = url
            self.log.info("%s", self._publisher.publish_line(browser, url))
            ti.xcom_push(key=XCOM_BROWSER_LIVE_VIEW_URL, value=url)
            link_key = getattr(KernelBrowserLiveViewLink(), "xcom_key", None)
            if link_key:
                # Airflow 3 reads extra links from this XCom, which it writes only when the task ends: written now,
                # the button works while the task runs.
                ti.xcom_push(key=link_key, value=url)

    def on_kill(self) -> None:
        """Delete the task's browser at once (bounded), whatever the function is doing."""
        hook = getattr(self, "_browser_hook", None)
        if hook is not None:
            closed = hook.close_all(budget=ON_KILL_BUDGET)
            if closed:
                self.log.info("Task killed: deleted Kernel browser(s) %s.", ", ".join(closed))


class _KernelBrowserDecoratedOperator(XComPushForDecorators, DecoratedOperator, _KernelBrowserTask):  # type: ignore[misc]
    """Runs ``python_callable`` with a Kernel browser injected (see the module docstring).

    :param python_callable: the decorated function.
    :param op_args: positional arguments of the function (templated; XComArgs resolved).
    :param op_kwargs: keyword arguments of the function (templated; XComArgs resolved).
    :param kernel_conn_id: the Kernel connection (default ``kernel_default``).
    :param browser_options: the browser's options (the decorator's keywords; ``start_url`` is templated).
    :param live_view: ``"read"`` (default), ``"control"`` or False/``"off"``: see the module docstring.
    :param kwargs: ``BaseOperator`` parameters (``task_id``, ``retries``, ``execution_timeout``...).
    """

    template_fields: Sequence[str] = (*DecoratedOperator.template_fields, "browser_options")
    template_fields_renderers: ClassVar[dict[str, str]] = {
        **DecoratedOperator.template_fields_renderers,
        "browser_options": "json",
    }
    custom_operator_name: str = "@task.kernel_browser"
    operator_extra_links = (KernelBrowserLiveViewLink(),)

    def __init__(
        self,
        *,
        python_callable: Callable[..., Any],
        op_args: Collection[Any] | None = None,
        op_kwargs: Mapping[str, Any] | None = None,
        kernel_conn_id: str = "kernel_default",
        browser_options: Mapping[str, Any] | None = None,
        live_view: bool | str = "read",
        **kwargs: Any,
    ) -> None:
        self.kernel_conn_id = kernel_conn_id
        self.browser_options = dict(browser_options or {})
        self.live_view = check_live_view(live_view)  # a wrong value fails at DAG parse
        #: The published live-view URL once the browser is up (the link reads its XCom only then).
        self.live_view_url = None
        super().__init__(python_callable=python_callable, op_args=op_args, op_kwargs=op_kwargs, **kwargs)


def _with_injected_parameters(function: Callable[..., Any]) -> Callable[..., Any]:
    """``function`` with its injected parameters defaulting to None in its signature, so Airflow's check that a
    call binds (at DAG parse) does not ask the DAG author for them."""
    signature = inspect.signature(function)
    parameters = [
        p.replace(default=None) if p.name in INJECTED and p.default is inspect.Parameter.empty else p
        for p in signature.parameters.values()
    ]
    # Parameters with a default may not precede ones without: move the injected ones after the others.
    ordinary = [p for p in parameters if p.name not in INJECTED]
    injected = [p for p in parameters if p.name in INJECTED]
    kinds = inspect.Parameter
    head = [p for p in ordinary if p.kind in (kinds.POSITIONAL_ONLY, kinds.POSITIONAL_OR_KEYWORD)]
    tail = [p for p in ordinary if p not in head]
    keyword_injected = [p.replace(kind=kinds.KEYWORD_ONLY) for p in injected]
    var_positional = [p for p in tail if p.kind is kinds.VAR_POSITIONAL]
    rest = [p for p in tail if p.kind is not kinds.VAR_POSITIONAL]
    keyword_only = [p for p in rest if p.kind is kinds.KEYWORD_ONLY]
    var_keyword = [p for p in rest if p.kind is kinds.VAR_KEYWORD]
    new_signature = signature.replace(
        parameters=[*head, *var_positional, *keyword_injected, *keyword_only, *var_keyword]
    )

    if inspect.iscoroutinefunction(function):

        @functools.wraps(function)
        async def acall(*args: Any, **kwargs: Any) -> Any:
            return await function(*args, **kwargs)

        acall.__signature__ = new_signature  # type: ignore[attr-defined]
        return acall

    @functools.wraps(function)
    def call(*args: Any, **kwargs: Any) -> Any:
        return function(*args, **kwargs)

    call.__signature__ = new_signature  # type: ignore[attr-defined]
    return call


def kernel_browser_task(
    python_callable: Callable[..., Any] | None = None,
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
    browser_pool: str | None = None,
    acquire_timeout_seconds: int | None = None,
    reuse: bool | None = None,
    live_view: bool | str = "read",
    kernel_conn_id: str = "kernel_default",
    **kwargs: Any,
) -> TaskDecorator:
    """``@task.kernel_browser``: run the function with a Kernel browser (see the module docstring).

    The browser options (``headless`` ... ``reuse``) are those of
    :func:`~kernel_provider.client.validation.build_browser_request`, None leaving each to Kernel, except that
    Kernel's browser pool is ``browser_pool``: ``pool`` stays ``BaseOperator``'s, the Airflow pool the task runs in.
    ``start_url`` is templated.

    :param python_callable: the function (``@task.kernel_browser`` without parentheses uses Kernel's defaults).
    :param live_view: ``"read"`` (default), ``"control"`` or False: see the module docstring.
    :param kernel_conn_id: the Kernel connection.
    :param kwargs: ``BaseOperator``'s parameters (``task_id``, ``retries``, ``pool``, ``execution_timeout``...).
    """
    chosen = {
        "headless": headless,
        "stealth": stealth,
        "timeout_seconds": timeout_seconds,
        "profile": profile,
        "save_profile_changes": save_profile_changes,
        "proxy_id": proxy_id,
        "viewport": viewport,
        "start_url": start_url,
        "kiosk_mode": kiosk_mode,
        "browser_pool": browser_pool,
        "acquire_timeout_seconds": acquire_timeout_seconds,
        "reuse": reuse,
    }
    browser_options = {BROWSER_KEYWORDS[name]: value for name, value in chosen.items() if value is not None}
    kwargs.update(live_view=live_view, kernel_conn_id=kernel_conn_id)
    orphans = [name for name in POOL_ONLY if name in browser_options and browser_options.get("pool") is None]
    if orphans:
        raise TypeError(
            f"@task.kernel_browser: {orphans[0]} applies only to a Kernel browser pool: pass "
            "browser_pool=<Kernel browser pool name or id> (pool= is the Airflow pool the task runs in), or drop it."
        )
    kwargs.setdefault("multiple_outputs", False)

    def wrap(function: Callable[..., Any]) -> Any:
        return task_decorator_factory(
            python_callable=_with_injected_parameters(function),
            decorated_operator_class=_KernelBrowserDecoratedOperator,
            browser_options=browser_options,
            **kwargs,
        )

    if python_callable is not None:
        return wrap(python_callable)  # type: ignore[no-any-return]
    return wrap  # type: ignore[return-value]
