"""What one run cost: its wall duration and its browser-seconds, computed from what Kernel reports.

Pure and Airflow-free. **Browser-seconds** are summed over the run's browsers: for each, Kernel's
``usage.uptime_ms`` when Kernel sent it (what Kernel measures as the session's running time), else the span from
its ``created_at`` to its ``deleted_at`` (or to "now" for a session still alive when the figures were taken).
The **duration** is the invocation's ``finished_at`` - ``started_at``.

A wait learns the run's browsers while it runs (``GET /invocations/{id}/browsers`` lists only active ones, so they
cannot be listed afterwards); :class:`BrowserLedger` keeps what it saw, for a running estimate (the
``max_browser_seconds`` budget), and the final figures come from one ``GET /browsers/{id}?include_deleted=true``
per browser seen (see :mod:`kernel_provider.client.browser_usage`). The wait hands them to the task as primitives
(:func:`browser_to_event`, :func:`browsers_from_event`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

from kernel_provider.client.models import Browser, Invocation

#: Where a run's browser-seconds came from: Kernel's ``usage.uptime_ms`` of every browser; the browsers'
#: ``created_at``/``deleted_at`` (Kernel sent no usage); some of each; the run had no browser; or the run's
#: browsers were not watched (``track_usage=False``, a synchronous run, a poking sensor), so they are unknown.
SOURCE_UPTIME, SOURCE_TIMES, SOURCE_MIXED, SOURCE_NO_BROWSERS, SOURCE_UNTRACKED = (
    "kernel_uptime",
    "created_deleted_times",
    "mixed",
    "no_browsers",
    "untracked",
)
#: How the summary line names each source.
SOURCE_WORDS = {
    SOURCE_UPTIME: "Kernel's uptime",
    SOURCE_TIMES: "from the browsers' create/delete times",
    SOURCE_MIXED: "Kernel's uptime where reported, else create/delete times",
    SOURCE_NO_BROWSERS: "no browser",
    SOURCE_UNTRACKED: "browsers not tracked",
}


@dataclass(frozen=True)
class RunUsage:
    """The cost of one invocation.

    :param invocation_id: the invocation.
    :param app: its app's name ("" when unknown).
    :param version: its app version.
    :param action: its action's name.
    :param status: its status (``succeeded``, ``failed``, or Kernel's word for a run not finished).
    :param duration_seconds: ``finished_at`` - ``started_at``; None when Kernel sent either not (or a run that
        has not finished).
    :param browser_seconds: the sum over the run's browsers (see the module docstring); 0.0 when none or untracked.
    :param browsers: how many browsers the figure covers.
    :param browser_seconds_source: one of ``kernel_uptime``, ``created_deleted_times``, ``mixed``,
        ``no_browsers``, ``untracked``.
    """

    invocation_id: str
    app: str
    version: str
    action: str
    status: str
    duration_seconds: float | None
    browser_seconds: float
    browsers: int
    browser_seconds_source: str

    def as_dict(self) -> dict[str, Any]:
        """The figures as JSON primitives (the XCom ``kernel_usage``; an asset event's extra)."""
        return asdict(self)

    def summary(self) -> str:
        """The one line a task logs at the end of its run."""
        took = "?" if self.duration_seconds is None else f"{self.duration_seconds:.1f} s"
        count = "1 browser" if self.browsers == 1 else f"{self.browsers} browsers"
        words = SOURCE_WORDS.get(self.browser_seconds_source, self.browser_seconds_source)
        return (
            f"Kernel usage: invocation {self.invocation_id} ({self.app}/{self.action}@{self.version}) "
            f"{self.status} in {took}; {count}, {self.browser_seconds:.1f} browser-seconds ({words})"
        )


def browser_seconds(browser: Browser, now: datetime) -> tuple[float, bool]:
    """One browser's seconds, and whether they are Kernel's uptime (True) or from its timestamps (False).

    :param browser: the browser as Kernel last reported it.
    :param now: the end of a session Kernel has not deleted (when it reported no uptime).
    """
    if browser.uptime_ms is not None:
        return browser.uptime_ms / 1000.0, True
    if browser.created_at is None:
        return 0.0, False
    end = browser.deleted_at or now
    return max(0.0, (_aware(end) - _aware(browser.created_at)).total_seconds()), False


def compute_usage(
    invocation: Invocation, browsers: Sequence[Browser] | None, *, now: datetime | None = None
) -> RunUsage:
    """The :class:`RunUsage` of ``invocation`` with ``browsers``.

    :param invocation: the invocation as last read (its app, action, version, status and times).
    :param browsers: the run's browsers (each counted once by session id); None when they were not tracked.
    :param now: the end of a browser still alive without Kernel's uptime (default: the current time).
    """
    now = now or datetime.now(timezone.utc)
    duration = None
    if invocation.started_at is not None and invocation.finished_at is not None:
        duration = max(0.0, (_aware(invocation.finished_at) - _aware(invocation.started_at)).total_seconds())
    unique = {b.session_id: b for b in browsers or ()}
    figures = [browser_seconds(b, now) for b in unique.values()]
    if browsers is None:
        source = SOURCE_UNTRACKED
    elif not figures:
        source = SOURCE_NO_BROWSERS
    elif all(kernel for _, kernel in figures):
        source = SOURCE_UPTIME
    elif not any(kernel for _, kernel in figures):
        source = SOURCE_TIMES
    else:
        source = SOURCE_MIXED
    return RunUsage(
        invocation_id=invocation.id,
        app=invocation.app_name,
        version=invocation.version,
        action=invocation.action_name,
        status=invocation.raw_status or invocation.status.value,
        duration_seconds=None if duration is None else round(duration, 3),
        browser_seconds=round(sum(seconds for seconds, _ in figures), 3),
        browsers=len(figures),
        browser_seconds_source=source,
    )


class BrowserLedger:
    """The browsers a wait has seen while the run goes on, and their browser-seconds so far (an estimate).

    A browser listed at time *t* with Kernel's uptime counts that uptime plus the time since *t*; one without,
    the time since its ``created_at`` (or since it was first seen). A browser missing from a later list (deleted)
    stops counting at that list's time, an upper bound of when it went.
    """

    def __init__(self) -> None:
        #: session id -> (the browser as last listed, when it was listed (epoch seconds), when it was first seen).
        self.listed: dict[str, tuple[Browser, float, float]] = {}
        #: session id -> the time of the first list it was missing from.
        self.gone: dict[str, float] = {}

    def observe(self, browsers: Iterable[Browser], at: float) -> None:
        """Record a complete list of the run's active browsers, taken at ``at`` (epoch seconds)."""
        present = set()
        for browser in browsers:
            present.add(browser.session_id)
            first = self.listed[browser.session_id][2] if browser.session_id in self.listed else at
            self.listed[browser.session_id] = (browser, at, first)
            self.gone.pop(browser.session_id, None)
        for session_id in self.listed.keys() - present:
            self.gone.setdefault(session_id, at)

    def seconds(self, now: float) -> float:
        """The browser-seconds so far at ``now`` (epoch seconds)."""
        total = 0.0
        for session_id, (browser, at, first) in self.listed.items():
            end = min(now, self.gone.get(session_id, now))
            if browser.uptime_ms is not None:
                total += browser.uptime_ms / 1000.0 + max(0.0, end - at)
            else:
                start = browser.created_at.timestamp() if browser.created_at is not None else first
                total += max(0.0, end - start)
        return total


def browser_to_event(browser: Browser) -> dict[str, Any]:
    """What a wait's event carries of one browser (primitives only; no URL: they are credentials)."""
    return {
        "session_id": browser.session_id,
        "created_at": _iso(browser.created_at),
        "deleted_at": _iso(browser.deleted_at),
        "usage": None if browser.uptime_ms is None else {"uptime_ms": browser.uptime_ms},
    }


def browsers_from_event(items: Any) -> list[Browser] | None:
    """The browsers a wait's event carried (see :func:`browser_to_event`); None when it carried none (not
    tracked). Items that are not browsers are dropped: the event is checked, not trusted."""
    if not isinstance(items, list):
        return None
    found = []
    for item in items:
        if isinstance(item, Mapping):
            try:
                found.append(Browser.from_api(item))
            except Exception:  # an unusable item costs its figure, never the task
                continue
    return found


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else _aware(moment).isoformat().replace("+00:00", "Z")
