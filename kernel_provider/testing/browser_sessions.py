"""The emulator's registry of Kernel browsers (standalone and pool ones), each backed by a real local Chromium
(:mod:`~kernel_provider.testing.chromium`), with Kernel's idle timeout and the counters of ``/_emulator/stats``.

Touched only from the emulator's event loop; starting and stopping Chromium runs on worker threads.
"""

from __future__ import annotations

import asyncio
import atexit
import weakref
from typing import Any

from kernel_provider.testing.chromium import ChromiumProcess
from kernel_provider.testing.live_view_urls import LiveViewGrants, live_view_url
from kernel_provider.testing.timeutil import format_ns, new_id, now_ns, parse_timestamp_ns

DEFAULT_TIMEOUT = 60
TIMEOUT_RANGE = (10, 259_200)
POOL_TIMEOUT_RANGE = (60, 86_400)
EXPIRY_CHECK_SECONDS = 1.0
_ALL_MANAGERS: weakref.WeakSet[BrowserSessions] = weakref.WeakSet()


def with_usage(browser: dict[str, Any]) -> dict[str, Any]:
    """A copy of a ``Browser`` object with Kernel's ``usage.uptime_ms``: the time from its ``created_at`` to its
    ``deleted_at`` (now, for a session still running)."""
    created = parse_timestamp_ns(browser["created_at"])
    deleted = browser.get("deleted_at")
    end = parse_timestamp_ns(deleted) if deleted else now_ns()
    return {**browser, "usage": {"uptime_ms": max(0, end - created) // 1_000_000}}


class BrowserSession:
    """One emulated Kernel browser and its Chromium."""

    def __init__(self, request: dict[str, Any], process: ChromiumProcess, pool: Pool | None, base_url: str) -> None:
        self.session_id = new_id()
        self.request = request
        self.process = process
        self.pool = pool
        self.created_ns = now_ns()
        self.last_active_ns = self.created_ns
        self.deleted_ns: int | None = None
        self.end_reason = ""
        self.base_url = base_url.rstrip("/")
        self.timeout_seconds = int(pool.timeout_seconds if pool else request.get("timeout_seconds", DEFAULT_TIMEOUT))

    def to_dict(self) -> dict[str, Any]:
        """The ``Browser`` object of Kernel's spec."""
        req = self.request
        out: dict[str, Any] = {
            "session_id": self.session_id,
            "created_at": format_ns(self.created_ns),
            "cdp_ws_url": self.process.cdp_ws_url,
            "webdriver_ws_url": f"ws://127.0.0.1:{self.process.port}/session",
            # Kernel lists no live view for a headless browser.
            "browser_live_view_url": None if req.get("headless") else live_view_url(self.base_url, self.session_id),
            "base_url": f"{self.base_url}/browsers/{self.session_id}",
            "headless": bool(req.get("headless", False)),
            "stealth": bool(req.get("stealth", False)),
            "gpu": False,
            "kiosk_mode": bool(req.get("kiosk_mode", False)),
            "timeout_seconds": self.timeout_seconds,
        }
        for key in ("proxy_id", "start_url", "viewport", "profile"):
            if req.get(key) is not None:
                out[key] = req[key]
        if self.pool is not None:
            out["pool"] = {"id": self.pool.id, "name": self.pool.name}
        if self.deleted_ns is not None:
            out["deleted_at"] = format_ns(self.deleted_ns)
        return with_usage(out)


class Pool:
    """A browser pool: at most ``size`` browsers held at once; an acquire waits for a release."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.id = new_id()
        self.name: str | None = body.get("name")
        self.size = int(body["size"])
        self.timeout_seconds = int(body.get("timeout_seconds", 600))
        self.config = {k: body[k] for k in ("headless", "stealth", "kiosk_mode", "viewport", "start_url") if k in body}
        self.held: set[str] = set()
        self.freed = asyncio.Event()
        self.created_ns = now_ns()

    def to_dict(self) -> dict[str, Any]:
        """The ``BrowserPool`` object (the fields the emulator keeps)."""
        return {
            "id": self.id,
            "name": self.name,
            "created_at": format_ns(self.created_ns),
            "acquired_count": len(self.held),
            "available_count": self.size - len(self.held),
            "browser_pool_config": {"size": self.size, "timeout_seconds": self.timeout_seconds, **self.config},
        }


class BrowserSessions:
    """Every standalone and pool browser of one emulator, with the expiry loop and the counters."""

    def __init__(self) -> None:
        self.live: dict[str, BrowserSession] = {}
        self.ended: dict[str, BrowserSession] = {}
        self.pools: dict[str, Pool] = {}
        self.created = 0
        self.ended_by_reason: dict[str, int] = {}
        #: Live-view URLs minted by ``POST /browsers/{id}/live_view`` (any browser: an invocation's too).
        self.live_views = LiveViewGrants()
        self._expiry: asyncio.Task[None] | None = None
        _ALL_MANAGERS.add(self)

    def find(self, session_id: str) -> BrowserSession | None:
        """A browser by session id, live or ended."""
        return self.live.get(session_id) or self.ended.get(session_id)

    def pool(self, id_or_name: str) -> Pool | None:
        """A pool by id or name."""
        return self.pools.get(id_or_name) or next((p for p in self.pools.values() if p.name == id_or_name), None)

    async def launch(self, request: dict[str, Any], pool: Pool | None, base_url: str) -> BrowserSession:
        """Start a Chromium (on a worker thread) and register the browser."""
        viewport = request.get("viewport")
        start_url = request.get("start_url")
        # Chromium opens only web URLs given on its command line as a page (``about:blank#...`` would become its new
        # tab page); Kernel also records start_url as asked, whatever the browser loaded.
        opened = start_url if isinstance(start_url, str) and start_url.startswith(("http://", "https://")) else None
        process = ChromiumProcess(opened, (viewport["width"], viewport["height"]) if viewport else None)
        await asyncio.to_thread(process.start)
        session = BrowserSession(request, process, pool, base_url)
        self.live[session.session_id] = session
        self.created += 1
        if pool is not None:
            pool.held.add(session.session_id)
        if self._expiry is None or self._expiry.done():
            self._expiry = asyncio.get_running_loop().create_task(self._expire_loop())
        return session

    async def end(self, session: BrowserSession, reason: str) -> None:
        """Stop the browser's Chromium and move it to the ended ones (idempotent)."""
        if self.live.pop(session.session_id, None) is None:
            return
        session.deleted_ns = now_ns()
        session.end_reason = reason
        self.ended[session.session_id] = session
        self.ended_by_reason[reason] = self.ended_by_reason.get(reason, 0) + 1
        if session.pool is not None:
            session.pool.held.discard(session.session_id)
            session.pool.freed.set()
        await asyncio.to_thread(session.process.stop)

    async def _expire_loop(self) -> None:
        while self.live:
            await asyncio.sleep(EXPIRY_CHECK_SECONDS)
            now = now_ns()
            for session in list(self.live.values()):
                if not session.process.alive:
                    await self.end(session, "crashed")
                elif session.process.cdp_connections():
                    session.last_active_ns = now
                elif now - session.last_active_ns >= session.timeout_seconds * 1_000_000_000:
                    await self.end(session, "timeout")

    def stop_all(self) -> None:
        """Kill every Chromium at once (emulator stopping or reset; also at interpreter exit)."""
        for session in list(self.live.values()):
            session.deleted_ns = now_ns()
            session.end_reason = "emulator stopped"
            self.ended[session.session_id] = session
            session.process.stop(grace=1.0)
        self.live.clear()
        if self._expiry is not None:
            self._expiry.cancel()

    def reset(self) -> None:
        """Stop every browser and forget browsers, pools and counters."""
        self.stop_all()
        self.ended.clear()
        self.pools.clear()
        self.created = 0
        self.ended_by_reason = {}
        self.live_views.clear()

    def stats(self) -> dict[str, Any]:
        """Counters for ``/_emulator/stats``: ``live`` is the number of running Chromium-backed browsers."""
        return {
            "live": len(self.live),
            "created": self.created,
            "ended": dict(self.ended_by_reason),
            "chromium_running": sum(1 for s in self.live.values() if s.process.alive),
            "pools": {p.name or p.id: len(p.held) for p in self.pools.values()},
        }


@atexit.register
def _kill_leftovers() -> None:
    for manager in list(_ALL_MANAGERS):
        manager.stop_all()
