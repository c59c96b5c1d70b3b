"""What an action is to the emulator: an :class:`ActionSpec` whose ``fn(ctx, payload)`` the runner awaits, the
context it gets, how a failure becomes the invocation's ``output``, and how a blocking handler runs without blocking
the emulator. The apps that hold actions are in :mod:`~.apps`; the built-in ``demo`` app is :mod:`~.demo_app`.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from kernel_provider.testing.capture import current_sink


class ActionContext(Protocol):
    """What the emulator passes to its own action functions."""

    invocation_id: str

    def create_browser(self, headless: bool = False) -> dict[str, Any]:
        """Create a fake browser session bound to the invocation and return its JSON form (a headless one has
        no ``browser_live_view_url``, as on Kernel)."""
        ...

    def start_replay(self, session_id: str | None = None) -> dict[str, Any]:
        """Start recording one of the invocation's browsers (default: its first) and return the
        ``BrowserReplay``; it is listed by ``GET /browsers/{id}/replays`` with a ``replay_view_url``."""
        ...


#: An action function as the emulator calls it: ``await fn(ctx, payload)`` gives the action's result.
ActionFn = Callable[[ActionContext, Any], Awaitable[Any]]


class PlainTextFailure(Exception):
    """Raised by an action whose failure ``output`` must be this exact (non-JSON) text."""


@dataclass
class ActionSpec:
    """A runnable action: ``fn(ctx, payload)`` is awaited by the emulator.

    :param name: the action's name within its app.
    :param fn: the function the runner awaits.
    :param source: where it comes from: ``demo`` (built in), ``kernel`` (a ``kernel.App``) or ``module`` (an
        ``ACTIONS`` table).
    """

    name: str
    fn: ActionFn
    source: str = "demo"


def failure_text(exc: BaseException, plain_text: bool) -> str:
    """The ``output`` of an invocation whose handler raised ``exc``.

    :param exc: what the handler raised (a :class:`PlainTextFailure` gives its own text).
    :param plain_text: the whole traceback (fault plan toggle ``plain_text_failure_output``), else ``Type: message``.
    """
    if isinstance(exc, PlainTextFailure):
        return str(exc)
    if plain_text:
        return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return f"{type(exc).__name__}: {exc}"


def _resolve(fut: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    if fut.done():
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(value)


async def run_sync_in_thread(func: Callable[..., Any], *args: Any) -> Any:
    """Run a blocking callable in a fresh daemon thread (a copy of the current context).

    Unlike ``asyncio.to_thread`` the thread is not part of the loop's default executor, so thousands of
    blocking
    handlers can run at once and a handler that never returns cannot block the emulator's shutdown. When the
    awaiting task is cancelled the thread keeps running to completion; its result is discarded.
    """
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[Any] = loop.create_future()
    ctx = contextvars.copy_context()

    def worker() -> None:
        value: Any = None
        error: BaseException | None = None
        try:
            value = ctx.run(func, *args)
        except BaseException as exc:
            error = exc
        finally:
            sink = ctx.run(current_sink.get)
            if sink is not None:
                sink.flush()
        try:
            loop.call_soon_threadsafe(_resolve, fut, value, error)
        except RuntimeError:  # loop closed: the emulator stopped meanwhile
            pass

    threading.Thread(target=worker, name="kernel-emulator-action", daemon=True).start()
    return await fut
