"""The emulator's browser replay recordings (Kernel's ``BrowserReplay``), kept per browser session.

A recording is started by ``POST /browsers/{id}/replays`` or by an action through its context
(``ctx.start_replay()``), stopped by ``POST /browsers/{id}/replays/{replay_id}/stop`` or when its browser goes
away, and listed by ``GET /browsers/{id}/replays`` with a ``replay_view_url`` pointing at the emulator's own
replay page (:mod:`~.live_view`). Recordings outlive their browser, as Kernel's do. The replay routes are
:mod:`~.replay_routes`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kernel_provider.testing.live_view_urls import live_view_url
from kernel_provider.testing.timeutil import format_ns, new_id, now_ns

if TYPE_CHECKING:
    from kernel_provider.testing.invocation import InvocationRecord
    from kernel_provider.testing.store import Store


@dataclass
class Recording:
    """One replay recording of a browser session."""

    session_id: str
    replay_id: str
    started_ns: int
    view_url: str
    finished_ns: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The ``BrowserReplay`` object of Kernel's spec."""
        return {
            "replay_id": self.replay_id,
            "started_at": format_ns(self.started_ns),
            "finished_at": None if self.finished_ns is None else format_ns(self.finished_ns),
            "replay_view_url": self.view_url,
        }


class Recordings:
    """Every replay recording of one emulator, by browser session."""

    def __init__(self) -> None:
        self.by_session: dict[str, list[Recording]] = {}

    def start(self, session_id: str, base_url: str) -> Recording | None:
        """Start recording ``session_id``; None when it is recording already (Kernel answers 409)."""
        if any(r.finished_ns is None for r in self.by_session.get(session_id, ())):
            return None
        replay_id = new_id()
        recording = Recording(
            session_id, replay_id, now_ns(), live_view_url(base_url, session_id, f"/replays/{replay_id}")
        )
        self.by_session.setdefault(session_id, []).append(recording)
        return recording

    def of(self, session_id: str) -> list[Recording]:
        """The session's recordings, oldest first."""
        return list(self.by_session.get(session_id, ()))

    def find(self, session_id: str, replay_id: str) -> Recording | None:
        """One recording, or None."""
        return next((r for r in self.by_session.get(session_id, ()) if r.replay_id == replay_id), None)

    def stop(self, session_id: str) -> None:
        """Stop every recording of the session that is still going (its browser went away)."""
        for recording in self.by_session.get(session_id, ()):
            if recording.finished_ns is None:
                recording.finished_ns = now_ns()

    def clear(self) -> None:
        """Forget every recording (emulator reset)."""
        self.by_session.clear()


def start_replay(store: Store, inv: InvocationRecord, session_id: str | None = None) -> dict[str, Any]:
    """What an action's ``ctx.start_replay()`` does: start recording one of its invocation's browsers.

    :param store: the emulator's :class:`~.store.Store`.
    :param inv: the running invocation's record.
    :param session_id: the browser to record (default: the invocation's first). ``ValueError`` when the
        invocation holds no such browser, or it is recording already.
    """
    sessions = [b["session_id"] for b in inv.browsers]
    if session_id is None and sessions:
        session_id = sessions[0]
    if session_id is None or session_id not in sessions:
        raise ValueError(f"invocation {inv.id} holds no browser {session_id!r} to record (create one first)")
    recording = store.replays.start(session_id, store.base_url)
    if recording is None:
        raise ValueError(f"browser {session_id} is recording already")
    return recording.to_dict()
