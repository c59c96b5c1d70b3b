"""The action runner: runs an invocation's action as a task on the emulator's loop, captures what it prints,
and enforces the async timeout and the sync cap. State changes go through the :class:`~.store.Store`.
"""

from __future__ import annotations

import asyncio
import threading
from functools import partial
from typing import TYPE_CHECKING, Any

from kernel_provider.testing import capture
from kernel_provider.testing.actions import ActionSpec, failure_text
from kernel_provider.testing.replays import start_replay
from kernel_provider.testing.wire import dumps

if TYPE_CHECKING:
    from kernel_provider.testing.store import InvocationRecord, Store


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


class ActionRunner:
    """Starts, times out and cancels the actions of a :class:`~.store.Store`'s invocations."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def start(self, inv: InvocationRecord, spec: ActionSpec, payload: Any) -> None:
        """Schedule the action (and, for async invocations, the ``async_timeout_seconds`` timer)."""
        loop = self.store.loop
        assert loop is not None
        inv.task = loop.create_task(self.run(inv, spec, payload))
        if inv.is_async:
            inv.timer = loop.call_later(inv.timeout_seconds, self.on_timeout, inv)

    async def run(self, inv: InvocationRecord, spec: ActionSpec, payload: Any) -> None:
        if inv.terminal:
            return
        self.store.set_status(inv, "running")
        capture.install()
        sink = capture.LogSink(partial(self._log_from_any_thread, inv))
        inv.sink = sink
        capture.current_sink.set(sink)
        try:
            result = await spec.fn(_Context(self.store, inv), payload)
        except asyncio.CancelledError:
            sink.flush()
            if inv.terminal:
                return
            self.store.finish(inv, "failed", None, "Invocation cancelled")
            raise
        except Exception as exc:
            sink.flush()
            if not inv.terminal:
                text = failure_text(exc, self.store.faults.plain_text_failure_output)
                self.store.finish(inv, "failed", text, f"Action failed: {type(exc).__name__}")
            return
        sink.flush()
        if inv.terminal:
            return
        try:
            output = dumps(result)
        except (TypeError, ValueError) as exc:
            self.store.finish(
                inv,
                "failed",
                f"TypeError: action result is not JSON serializable: {exc}",
                "Action returned a value that is not JSON serializable",
            )
        else:
            self.store.finish(inv, "succeeded", output, None)

    def on_timeout(self, inv: InvocationRecord) -> None:
        if inv.terminal:
            return
        reason = f"invocation timed out after {inv.timeout_seconds} seconds"
        self.store.terminate(inv, "failed", reason, self._failure_output(reason), destroy_browsers=True)

    def sync_cap_exceeded(self, inv: InvocationRecord) -> None:
        """Fail a synchronous invocation that ran past ``config.sync_timeout``."""
        if inv.terminal:
            return
        reason = f"synchronous invocation exceeded {self.store.config.sync_timeout:g}s"
        self.store.terminate(inv, "failed", reason, self._failure_output(reason), destroy_browsers=True)

    def _failure_output(self, reason: str) -> str:
        return reason if self.store.faults.plain_text_failure_output else dumps({"error": reason})

    def _log_from_any_thread(self, inv: InvocationRecord, line: str) -> None:
        if threading.get_ident() == self.store.loop_thread:
            self.store.add_log(inv, line)
            return
        loop = self.store.loop
        if loop is None:
            return
        try:
            loop.call_soon_threadsafe(self.store.add_log, inv, line)
        except RuntimeError:  # loop closed
            pass
