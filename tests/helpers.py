"""Small helpers shared by tests (no fixtures with side effects here)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from kernel_provider.client.retry import RetryPolicy
from kernel_provider.testing.config import airflow_connection

#: Retry bounds that keep tests quick while still exercising every retry path.
FAST_RETRY = RetryPolicy(
    max_attempts=4, max_elapsed=30, backoff_initial=0.05, backoff_max=0.2, retry_after_cap=5, rate_limit_budget=30
)


#: The JSON form of AIRFLOW_CONN_<ID> for an emulator (one builder, the emulator's own).
conn_json = airflow_connection


def live_page(url: str) -> str:
    """A live-view URL without the signed ``?jwt=...`` the emulator adds, to compare with ``<emulator>/live/<id>``."""
    page, _, query = url.partition("?")
    assert query.startswith("jwt="), f"an unsigned live-view URL: {url}"
    return page


def posts(emulator: Any) -> list[dict[str, Any]]:
    """Every ``POST /invocations`` the emulator recorded (creates and refusals), in order."""
    return emulator.requests(path="/invocations", method="POST")


def only_invocation(emulator: Any) -> dict[str, Any]:
    """The emulator's one invocation (fails when there are none or several)."""
    invocations = emulator.invocations()
    assert len(invocations) == 1, invocations
    return invocations[0]


def wait_until(predicate: Any, what: str, timeout: float = 20.0) -> Any:
    """Poll ``predicate`` until it returns something truthy (a readiness wait, never an assertion on time)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.02)


GATED_APP = str(Path(__file__).parent / "apps" / "gate_app.py")


class Gate:
    """A closed gate for the ``gate`` app's ``wait`` action; ``open()`` lets the invocation finish."""

    def __init__(self, directory: Any, name: str = "gate") -> None:
        self.path = str(directory / name)

    def payload(self, **kwargs: Any) -> dict[str, Any]:
        return {"gate": self.path, **kwargs}

    def open(self) -> None:
        with open(self.path, "w"):
            pass

    def open_when(self, predicate: Any, what: str, timeout: float = 120.0) -> Any:
        """Open the gate from a background thread once ``predicate()`` is true (e.g. a request was seen)."""
        import threading

        errors: list[BaseException] = []

        def watch() -> None:
            try:
                wait_until(predicate, what, timeout)
            except BaseException as exc:  # reported by join()
                errors.append(exc)
            self.open()

        thread = threading.Thread(target=watch, daemon=True)
        thread.start()

        def join() -> None:
            thread.join(timeout)
            if errors:
                raise errors[0]

        return join


def count_requests(emulator: Any, route: str, method: str = "GET", status: int | None = None) -> int:
    """How many requests of a templated route (e.g. ``/invocations/{id}/events``) the emulator has seen."""
    return sum(1 for r in emulator.requests(route=route, method=method) if status is None or r["status"] == status)


def seen(emulator: Any, route: str, at_least: int = 1, method: str = "GET") -> Any:
    """A predicate for :meth:`Gate.open_when`: the route was requested ``at_least`` times."""
    return lambda: count_requests(emulator, route, method) >= at_least


EVENTS = "/invocations/{id}/events"
GET_ONE = "/invocations/{id}"
