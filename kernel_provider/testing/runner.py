"""Running actions: an invocation's action runs as a task on the emulator's loop, what it prints becomes the
invocation's log, and the async timeout and the sync cap end it. Every state change goes through the
:class:`~.store.Store`, which calls :func:`start_action` for each invocation it creates.
"""

from __future__ import annotations

import asyncio
import threading
from functools import partial
from typing import TYPE_CHECKING, Any

from kernel_provider.testing.actions import ActionSpec, failure_text
from kernel_provider.testing.capture import LogSink, current_sink
from kernel_provider.testing.capture import install as install_capture
from kernel_provider.testing.replays import start_replay
from kernel_provider.testing.wire import dumps

if TYPE_CHECKING:
    from kernel_provider.testing.invocation import InvocationRecord
    from kernel_provider.testing.store import Store


class _Context:
    """The ``ctx`` handed to the emulator's own action functions."""

    def __init__(self, store: Store, inv: InvocationRecord) -> None:
        self.invocation_id = inv.id
        self._store = store
        self._inv = inv

    def create_browser(self, headless: bool = False) -> dict[str, Any]:
        return self._store.create_browser(self._inv, headless)

    def start_replay(self, session_id: str | None = None) -> dict[str, Any]:
        return start_replay(self._store, self._inv, session_id)


def start_action(store: Store, inv: InvocationRecord, spec: ActionSpec, payload: Any) -> None:
    """Schedule an invocation's action on the store's loop (and, for an async invocation, its
    ``async_timeout_seconds`` timer).

    :param store: the store that created the invocation (its loop must be bound).
    :param inv: the new, queued invocation.
    :param spec: the action to run.
    :param payload: the decoded payload handed to the action.
    """
    loop = store.loop
    assert loop is not None
    inv.task = loop.create_task(_run(store, inv, spec, payload))
    if inv.is_async:
        inv.timer = loop.call_later(inv.timeout_seconds, _on_timeout, store, inv)


async def _run(store: Store, inv: InvocationRecord, spec: ActionSpec, payload: Any) -> None:
    """Run the action with its output captured, then record how it ended (unless something ended it first)."""
    if inv.terminal:
        return
    store.set_status(inv, "running")
    install_capture()
    sink = LogSink(partial(_log_from_any_thread, store, inv))
    inv.sink = sink
    current_sink.set(sink)
    try:
        result = await spec.fn(_Context(store, inv), payload)
    except asyncio.CancelledError:
        sink.flush()
        if inv.terminal:
            return
        store.finish(inv, "failed", None, "Invocation cancelled")
        raise
    except Exception as exc:
        sink.flush()
        if not inv.terminal:
            text = failure_text(exc, store.faults.plain_text_failure_output)
            store.finish(inv, "failed", text, f"Action failed: {type(exc).__name__}")
        return
    sink.flush()
    if inv.terminal:
        return
    try:
        output = dumps(result)
    except (TypeError, ValueError) as exc:
        store.finish(
            inv,
            "failed",
            f"TypeError: action result is not JSON serializable: {exc}",
            "Action returned a value that is not JSON serializable",
        )
    else:
        store.finish(inv, "succeeded", output, None)


def _on_timeout(store: Store, inv: InvocationRecord) -> None:
    if inv.terminal:
        return
    reason = f"invocation timed out after {inv.timeout_seconds} seconds"
    store.terminate(inv, "failed", reason, _failure_output(store, reason), destroy_browsers=True)


def sync_cap_exceeded(store: Store, inv: InvocationRecord) -> None:
    """Fail a synchronous invocation that ran past ``config.sync_timeout`` (and cancel its action).

    :param store: the store holding the invocation.
    :param inv: the synchronous invocation its caller stopped waiting for.
    """
    if inv.terminal:
        return
    reason = f"synchronous invocation exceeded {store.config.sync_timeout:g}s"
    store.terminate(inv, "failed", reason, _failure_output(store, reason), destroy_browsers=True)


def _failure_output(store: Store, reason: str) -> str:
    return reason if store.faults.plain_text_failure_output else dumps({"error": reason})


def _log_from_any_thread(store: Store, inv: InvocationRecord, line: str) -> None:
    """Add a log line from the loop thread directly, or hand it to the loop from an action's worker thread."""
    if threading.get_ident() == store.loop_thread:
        store.add_log(inv, line)
        return
    loop = store.loop
    if loop is None:
        return
    try:
        loop.call_soon_threadsafe(store.add_log, inv, line)
    except RuntimeError:  # the loop closed: the emulator stopped meanwhile
        pass
