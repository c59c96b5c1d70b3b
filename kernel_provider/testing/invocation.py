"""One invocation as the emulator keeps it (:class:`InvocationRecord`), its statuses and the JSON forms Kernel's
API answers with. The state machine that moves a record between statuses is the :class:`~.store.Store`'s.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, Any

from kernel_provider.testing.timeutil import format_ns, new_id, now_ns

if TYPE_CHECKING:
    from kernel_provider.testing.capture import LogSink

#: The statuses an invocation never leaves.
TERMINAL = frozenset({"succeeded", "failed"})
#: Every status, in the order an invocation goes through them.
STATUSES = ("queued", "running", "succeeded", "failed")
#: The ``status_reason`` older Kernel deployments sent for statuses that have none today (fault plan toggle
#: ``legacy_status_reason``).
LEGACY_REASONS = {
    "queued": "Invocation queued for execution",
    "running": "Invocation is running",
    "succeeded": "Invocation completed successfully",
}
#: Log lines kept per invocation (the oldest go first).
MAX_LOG_LINES = 20_000

#: A message queued for one follower of the event stream: (the event's JSON, whether it is the terminal state).
StreamItem = tuple[str, bool]


class InvocationRecord:
    """One invocation as the emulator keeps it, with its attachments (the provider's model is ``Invocation``)."""

    __slots__ = (
        "action_name",
        "app_name",
        "browsers",
        "deployment_id",
        "done",
        "finished_at",
        "finished_ns",
        "id",
        "is_async",
        "logs",
        "output",
        "payload",
        "project_id",
        "sink",
        "started_at",
        "started_ns",
        "status",
        "status_reason",
        "subscribers",
        "task",
        "timeout_seconds",
        "timer",
        "version",
    )

    def __init__(
        self,
        app_name: str,
        version: str,
        action_name: str,
        payload: str | None,
        is_async: bool,
        timeout_seconds: int,
        project_id: str | None,
        deployment_id: str,
    ) -> None:
        self.id = new_id()
        self.app_name = app_name
        self.version = version
        self.action_name = action_name
        self.payload = payload
        self.is_async = is_async
        self.timeout_seconds = timeout_seconds
        self.project_id = project_id
        self.deployment_id = deployment_id
        self.status = "queued"
        self.output: str | None = None
        self.status_reason: str | None = None
        self.started_ns = now_ns()
        self.started_at = format_ns(self.started_ns)
        self.finished_ns: int | None = None
        self.finished_at: str | None = None
        self.logs: deque[tuple[int, str]] = deque(maxlen=MAX_LOG_LINES)
        self.subscribers: list[asyncio.Queue[StreamItem]] = []
        self.task: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.browsers: list[dict[str, Any]] = []
        self.done = asyncio.Event()
        self.sink: LogSink | None = None

    @property
    def terminal(self) -> bool:
        """Whether the invocation has finished (succeeded or failed)."""
        return self.status in TERMINAL

    def _reason(self, legacy: bool) -> str | None:
        if self.status_reason is not None:
            return self.status_reason
        return LEGACY_REASONS.get(self.status) if legacy else None

    def to_dict(self, legacy: bool = False) -> dict[str, Any]:
        """Kernel's ``Invocation`` JSON object."""
        out: dict[str, Any] = {
            "id": self.id,
            "app_name": self.app_name,
            "version": self.version,
            "action_name": self.action_name,
            "status": self.status,
        }
        if self.payload is not None:
            out["payload"] = self.payload
        if self.output is not None:
            out["output"] = self.output
        reason = self._reason(legacy)
        if reason is not None:
            out["status_reason"] = reason
        out["started_at"] = self.started_at
        if self.finished_at is not None:
            out["finished_at"] = self.finished_at
        return out

    def invoke_response(self, legacy: bool = False) -> dict[str, Any]:
        """The ``InvokeResponse`` JSON object (POST /invocations)."""
        out: dict[str, Any] = {"id": self.id, "action_name": self.action_name, "status": self.status}
        reason = self._reason(legacy)
        if reason is not None:
            out["status_reason"] = reason
        if self.output is not None:
            out["output"] = self.output
        return out

    def admin_dict(self) -> dict[str, Any]:
        """Kernel's ``Invocation`` plus emulator-only details (admin routes)."""
        out = self.to_dict()
        out["_emulator"] = {
            "async": self.is_async,
            "async_timeout_seconds": self.timeout_seconds,
            "project_id": self.project_id,
            "deployment_id": self.deployment_id,
            "browsers": list(self.browsers),
            "log_lines": len(self.logs),
            "subscribers": len(self.subscribers),
            "action_running": self.task is not None and not self.task.done(),
        }
        return out
