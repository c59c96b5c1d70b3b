"""The emulator's store: the invocations (:mod:`~.invocation`) and their state machine and logs, the browsers they
hold, counters, retention, the request log. Running the actions is not its job: it hands each new invocation to the
``start_action`` callback it was given (the emulator gives it :func:`~.runner.start_action`).

Everything here is touched only from the emulator's event-loop thread (action worker threads hand their log
lines over with ``call_soon_threadsafe``), so no locking is needed. In-process callers on other threads go
through :meth:`KernelEmulator._call`, which runs the accessor on the loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

from kernel_provider.testing.actions import ActionSpec
from kernel_provider.testing.apps import AppRegistry
from kernel_provider.testing.browser_sessions import BrowserSessions
from kernel_provider.testing.capture import install as install_capture
from kernel_provider.testing.config import EmulatorConfig
from kernel_provider.testing.fault_plan import FaultPlan
from kernel_provider.testing.invocation import STATUSES, InvocationRecord
from kernel_provider.testing.live_view_urls import live_view_url
from kernel_provider.testing.replays import Recordings
from kernel_provider.testing.timeutil import format_ns, new_id, now_ns
from kernel_provider.testing.wire import dumps

#: What the store calls with each invocation it creates: ``start_action(store, record, spec, payload)`` schedules
#: the run (payload: the decoded JSON value).
StartAction = Callable[["Store", InvocationRecord, ActionSpec, Any], None]


class FoundBrowser(NamedTuple):
    """A browser found by :meth:`Store.find_browser`."""

    session_id: str
    data: dict[str, Any]
    invocation_id: str | None
    invocation: InvocationRecord | None
    live: bool


class Store:
    """The emulator's state and the invocation state machine.

    :param config: the emulator's settings (read live: ``POST /_emulator/config`` changes them in place).
    :param registry: the apps and actions invocations may name.
    :param faults: the fault plan (default: an empty one seeded from ``config.seed``).
    :param start_action: schedules the run of each new invocation (see :data:`StartAction`).
    """

    def __init__(
        self,
        config: EmulatorConfig,
        registry: AppRegistry,
        faults: FaultPlan | None = None,
        *,
        start_action: StartAction,
    ) -> None:
        self.config = config
        self.registry = registry
        self.faults = faults or FaultPlan(seed=config.seed)
        self.invocations: dict[str, InvocationRecord] = {}
        #: Finished invocations, oldest finish first: what retention evicts (``retention_count``/``_seconds``).
        self.finished: deque[InvocationRecord] = deque()
        self.evicted_total = 0
        #: Invocations per status, kept as counters so that they survive eviction.
        self.by_status: Counter[str] = Counter({s: 0 for s in STATUSES})
        self.live_total = 0
        self.live_by_app: Counter[str] = Counter()
        self.created_total = 0
        self.created_by_key: Counter[tuple[str, str, str | None]] = Counter()
        self.request_log: deque[dict[str, Any]] = deque(maxlen=config.request_log_size)
        self.request_seq = 0
        self.open_streams = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self.loop_thread = 0
        self.stopping: asyncio.Event | None = None
        self.start_action = start_action
        #: Standalone and pool browsers, each a real Chromium (:mod:`~.browser_sessions`).
        self.browser_sessions = BrowserSessions()
        #: The emulator's own address (set when the server starts): live-view and replay URLs point there.
        self.base_url = "http://kernel-emulator.invalid"
        #: Replay recordings by browser session (:mod:`~.replays`).
        self.replays = Recordings()
        #: Every invocation browser ever created: session id -> (its JSON form, its invocation's id). Kept after
        #: the browser is deleted, so its live page and replays still answer.
        self.invocation_browsers: dict[str, tuple[dict[str, Any], str]] = {}

    # ------------------------------------------------------------------ lifecycle of the store
    def bind_loop(self) -> None:
        """Remember the running loop (called at server start-up, on the loop)."""
        self.loop = asyncio.get_running_loop()
        self.loop_thread = threading.get_ident()
        self.stopping = asyncio.Event()
        install_capture()

    def shutdown(self) -> None:
        """Fail every live invocation (server stopping) so open streams get a terminal state and end."""
        if self.stopping is not None:
            self.stopping.set()
        self.browser_sessions.stop_all()
        for inv in list(self.invocations.values()):
            if not inv.terminal:
                self.terminate(inv, "failed", "emulator shutting down", None, destroy_browsers=True)

    def reset(self) -> None:
        """Forget invocations, counters, request log and faults (live ones are failed first)."""
        for inv in list(self.invocations.values()):
            if not inv.terminal:
                self.terminate(inv, "failed", "emulator reset", None, destroy_browsers=True)
        self.invocations.clear()
        self.finished.clear()
        self.evicted_total = 0
        self.by_status = Counter({s: 0 for s in STATUSES})
        self.live_total = 0
        self.live_by_app.clear()
        self.created_total = 0
        self.created_by_key.clear()
        self.request_log.clear()
        self.faults = FaultPlan(seed=self.config.seed)
        self.browser_sessions.reset()
        self.replays.clear()
        self.invocation_browsers.clear()

    @property
    def legacy(self) -> bool:
        """Whether answers carry the ``status_reason`` of older Kernel deployments (a fault plan toggle)."""
        return self.faults.legacy_status_reason

    # ------------------------------------------------------------------ request log
    def record_request(self, entry: dict[str, Any]) -> None:
        """Append one request to the log, numbering it (``seq``); the middleware fills in its answer later."""
        self.request_seq += 1
        entry["seq"] = self.request_seq
        self.request_log.append(entry)

    def requests(
        self, path: str | None = None, method: str | None = None, route: str | None = None
    ) -> list[dict[str, Any]]:
        """Recorded requests (oldest first); ``path`` matches the concrete or the templated path."""
        out = []
        for entry in self.request_log:
            if method and entry["method"] != method.upper():
                continue
            if path and path not in (entry["path"], entry["route"]):
                continue
            if route and entry["route"] != route:
                continue
            out.append(dict(entry))
        return out

    # ------------------------------------------------------------------ creation
    def capacity_error(self, app_name: str) -> str | None:
        """Why a new invocation of ``app_name`` would exceed a concurrency limit, or None."""
        org = self.config.org_concurrency
        if org is not None and self.live_total >= org:
            return f"concurrent invocation limit reached for organization ({self.live_total}/{org} live)"
        per_app = self.config.app_concurrency
        if per_app is not None and self.live_by_app[app_name] >= per_app:
            live = self.live_by_app[app_name]
            return f"concurrent invocation limit reached for app {app_name!r} ({live}/{per_app} live)"
        return None

    def create(
        self,
        spec: ActionSpec,
        app_name: str,
        version: str,
        payload: str | None,
        payload_value: Any,
        is_async: bool,
        timeout_seconds: int,
        project_id: str | None,
    ) -> InvocationRecord:
        """Record a new queued invocation and schedule its run."""
        inv = InvocationRecord(
            app_name,
            version,
            spec.name,
            payload,
            is_async,
            timeout_seconds,
            project_id,
            self.registry.deployment_of(app_name, version),
        )
        while inv.id in self.invocations:  # astronomically unlikely
            inv.id = new_id()
        self.invocations[inv.id] = inv
        self.by_status["queued"] += 1
        self.live_total += 1
        self.live_by_app[app_name] += 1
        self.created_total += 1
        self.created_by_key[(app_name, spec.name, payload)] += 1
        self.start_action(self, inv, spec, payload_value)
        if self.finished:
            self.evict()
        return inv

    # ------------------------------------------------------------------ retention
    def evict(self) -> int:
        """Forget the oldest finished invocations beyond ``retention_count`` or older than ``retention_seconds``.

        Counters (``created``, ``by_status``, ``created_by_key``) are kept; an evicted invocation answers 404.
        Returns how many were evicted now.
        """
        finished, before = self.finished, self.evicted_total
        cap = self.config.retention_count
        if cap:
            while len(finished) > cap:
                self._forget(finished.popleft())
        age = self.config.retention_seconds
        if age and finished:
            cutoff = now_ns() - int(age * 1e9)
            while finished and (finished[0].finished_ns or 0) < cutoff:
                self._forget(finished.popleft())
        return self.evicted_total - before

    def _forget(self, inv: InvocationRecord) -> None:
        if self.invocations.get(inv.id) is inv:
            del self.invocations[inv.id]
            self.evicted_total += 1

    def add_log(self, inv: InvocationRecord, line: str) -> None:
        """Append one log line (ending with a newline) and push it to the followers."""
        if inv.terminal:
            return
        ns = now_ns()
        data = dumps({"event": "log", "timestamp": format_ns(ns), "message": line})
        inv.logs.append((ns, data))
        self._broadcast(inv, data, False)

    def state_event(self, inv: InvocationRecord) -> str:
        """The ``invocation_state`` event of the follow stream for the invocation as it is now."""
        return dumps(
            {
                "event": "invocation_state",
                "timestamp": format_ns(now_ns()),
                "invocation": inv.to_dict(self.legacy),
            }
        )

    def _broadcast(self, inv: InvocationRecord, data: str, terminal: bool) -> None:
        for queue in inv.subscribers:
            queue.put_nowait((data, terminal))

    def set_status(self, inv: InvocationRecord, status: str) -> None:
        """Move a live invocation to another live status (``running``) and tell its followers."""
        self.by_status[inv.status] -= 1
        self.by_status[status] += 1
        inv.status = status
        if inv.subscribers:
            self._broadcast(inv, self.state_event(inv), False)

    def finish(self, inv: InvocationRecord, status: str, output: str | None, reason: str | None) -> None:
        """Move a live invocation to a terminal state and notify everyone."""
        if inv.terminal:
            return
        self.by_status[inv.status] -= 1
        self.by_status[status] += 1
        inv.status = status
        if output is not None:
            inv.output = output
        inv.status_reason = reason if status == "failed" else None
        if status == "failed" and not inv.status_reason:
            inv.status_reason = "Invocation failed"
        inv.finished_ns = now_ns()
        inv.finished_at = format_ns(inv.finished_ns)
        self.live_total -= 1
        self.live_by_app[inv.app_name] -= 1
        if self.live_by_app[inv.app_name] <= 0:
            del self.live_by_app[inv.app_name]
        if inv.timer is not None:
            inv.timer.cancel()
            inv.timer = None
        inv.sink = None
        inv.done.set()
        if inv.subscribers:
            self._broadcast(inv, self.state_event(inv), True)
        self.finished.append(inv)
        self.evict()

    def terminate(
        self, inv: InvocationRecord, status: str, reason: str | None, output: str | None, destroy_browsers: bool
    ) -> None:
        """End a live invocation from outside (PATCH, timeout, sync cap, reset) and cancel its run."""
        if inv.terminal:
            return
        if inv.sink is not None:
            inv.sink.flush()
        self.finish(inv, status, output, reason)
        if destroy_browsers:
            self.drop_browsers(inv)
        task = inv.task
        if task is not None and not task.done() and task is not _current_task():
            task.cancel()

    # ------------------------------------------------------------------ browsers
    def create_browser(self, inv: InvocationRecord, headless: bool = False) -> dict[str, Any]:
        """A fake browser held by ``inv`` (headful by default, as Kernel's; a headless one has no live view)."""
        session = new_id()
        host = f"browser-{session[:8]}.kernel-emulator.invalid"
        browser: dict[str, Any] = {
            "session_id": session,
            "created_at": format_ns(now_ns()),
            "cdp_ws_url": f"wss://{host}:8443/browser/cdp?session={session}",
            "webdriver_ws_url": f"wss://{host}:8443/browser/webdriver/session?session={session}",
            "browser_live_view_url": None if headless else live_view_url(self.base_url, session),
            "base_url": f"https://{host}:8443/browser/kernel",
            "headless": headless,
            "stealth": False,
            "gpu": False,
            "kiosk_mode": False,
            "memory": "1GiB",
            "region": "us-east",
            "timeout_seconds": 60,
        }
        inv.browsers.append(browser)
        self.invocation_browsers[session] = (browser, inv.id)
        return browser

    def drop_browsers(self, inv: InvocationRecord) -> None:
        """Delete every browser the invocation holds (cancel, ``DELETE .../browsers``); their recordings stop."""
        for browser in inv.browsers:
            self.replays.stop(browser["session_id"])
            browser["deleted_at"] = format_ns(now_ns())  # GET /browsers/{id}?include_deleted=true shows it
        inv.browsers.clear()

    def find_browser(self, session_id: str) -> FoundBrowser | None:
        """Any browser the emulator ever created, by session id: an invocation's or a standalone/pool one."""
        known = self.invocation_browsers.get(session_id)
        if known is not None:
            data, invocation_id = known
            inv = self.invocations.get(invocation_id)
            live = inv is not None and any(b is data for b in inv.browsers)
            return FoundBrowser(session_id, data, invocation_id, inv, live)
        session = self.browser_sessions.find(session_id)
        if session is not None:
            return FoundBrowser(session_id, session.to_dict(), None, None, session.deleted_ns is None)
        return None

    # ------------------------------------------------------------------ queries
    def iter_newest_first(self) -> Iterator[InvocationRecord]:
        """The retained invocations, newest first."""
        return reversed(self.invocations.values())

    def search(
        self,
        *,
        app_name: str | None = None,
        version: str | None = None,
        action_name: str | None = None,
        deployment_id: str | None = None,
        status: str | None = None,
        since_ns: int | None = None,
        query: str | None = None,
        limit: int = 20,
        offset: int = 0,
    ) -> tuple[list[InvocationRecord], bool]:
        """One page of invocations (newest first) and whether more exist."""
        needle = query.lower() if query else None
        page: list[InvocationRecord] = []
        skipped = 0
        for inv in self.iter_newest_first():
            if app_name and inv.app_name != app_name:
                continue
            if version and inv.version != version:
                continue
            if action_name and inv.action_name != action_name:
                continue
            if deployment_id and inv.deployment_id != deployment_id:
                continue
            if status and inv.status != status:
                continue
            if since_ns is not None and inv.started_ns < since_ns:
                continue
            if needle and not (needle in inv.id or needle in inv.app_name.lower() or needle in inv.action_name.lower()):
                continue
            if skipped < offset:
                skipped += 1
                continue
            if len(page) == limit:
                return page, True
            page.append(inv)
        return page, False

    def stats(self) -> dict[str, Any]:
        """Counters since start (or reset), evicted invocations included."""
        self.evict()
        browsers = sum(len(inv.browsers) for inv in self.invocations.values() if inv.browsers)
        return {
            "created": self.created_total,
            "created_by_key": [
                {"app_name": app, "action_name": action, "payload": payload, "count": count}
                for (app, action, payload), count in self.created_by_key.items()
            ],
            "live": self.live_total,
            "live_by_app": dict(self.live_by_app),
            "by_status": dict(self.by_status),
            "retained": len(self.invocations),
            "evicted": self.evicted_total,
            "browsers_live": browsers + len(self.browser_sessions.live),
            "browser_sessions": self.browser_sessions.stats(),
            "open_streams": self.open_streams,
            "requests_recorded": len(self.request_log),
        }


def _current_task() -> asyncio.Task[Any] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:
        return None
