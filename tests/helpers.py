"""Small helpers shared by tests that never import Airflow (no fixtures with side effects here): the emulator's
connection and request log, gates, bounded waits, and canned answers for the client's sans-IO operations.

Helpers that need Airflow are in ``tests/airflow_helpers.py``; stand-ins for Airflow objects in
``tests/standins.py``; the Kernel browser tests' own in ``tests/kernel_browsers.py``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kernel_provider.client.errors import KernelApiError, api_error_for_status
from kernel_provider.client.retry import RetryPolicy
from kernel_provider.client.wire import ApiCall, ApiResponse
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

    def open_when(self, predicate: Any, what: str, timeout: float = 300.0) -> Any:
        """Open the gate from a background thread once ``predicate()`` is true (e.g. a request was seen). The timeout
        is generous: it only matters when the predicate never comes true, and a loaded CI leg has taken over 120 s
        to reach a predicate that takes seconds alone."""
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


def rotate_key(emulator: Any, monkeypatch: Any, new_key: str, *, connection_key: str | None) -> None:
    """Kernel now accepts only ``new_key``; the Airflow connection is changed to ``connection_key`` (None: left
    alone). The emulator has no route for this: its accepted tokens are changed in-process."""
    emulator._call(lambda: setattr(emulator.store.config, "tokens", (new_key,)))
    if connection_key is not None:
        monkeypatch.setenv("AIRFLOW_CONN_KERNEL_DEFAULT", conn_json(emulator.url, connection_key))


# --- canned answers for the client's sans-IO operations (``kernel_provider.client.wire``) ---------------

#: What a canned ``send`` answers a call with: a response, or a transport error to raise.
Answer = ApiResponse | BaseException


def answer(status: int = 200, body: Any = None, **headers: str) -> ApiResponse:
    """A canned response; ``body`` is JSON-encoded unless it is bytes. Header names as Kernel sends them."""
    raw = body if isinstance(body, bytes) else b"" if body is None else json.dumps(body).encode()
    return ApiResponse(status, {k.replace("_", "-").lower(): v for k, v in headers.items()}, raw)


def canned(*answers: Answer) -> tuple[Callable[[ApiCall[Any]], Any], list[ApiCall[Any]]]:
    """A ``send`` for :func:`~kernel_provider.client.wire.drive` answering each call with the next canned
    answer, and the calls it saw."""
    queue = list(answers)
    calls: list[ApiCall[Any]] = []

    def send(call: ApiCall[Any]) -> Any:
        calls.append(call)
        assert queue, f"unexpected call {call.endpoint.method} {call.path}"
        reply = queue.pop(0)
        if isinstance(reply, BaseException):
            raise reply
        return call.result(reply)

    return send, calls


def api_error(status: int, **headers: str) -> KernelApiError:
    """The error Kernel's answer with ``status`` (and ``headers``) becomes."""
    return api_error_for_status(status)(status, "code", "message", headers=headers)
