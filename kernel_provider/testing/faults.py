"""What one injected fault does, for the Kernel API emulator's fault injection (:mod:`~.fault_plan` decides when
one fires).

A :class:`Fault` has two typed parts: an :class:`HttpFault` (status, raw body, drop, truncate, delay), applied by
the middleware, and a :class:`StreamFault` (cut, silent, error event, raw data), applied by the event stream.
``browser_launch`` (``"fail"``, ``"crash"`` or ``"slow"``) is a third kind, for ``POST /browsers`` and a pool's
acquire: the browser does not start (500), its Chromium dies right after the answer, or it takes 2 s longer to start
(the request read, nothing answered yet: what a client interrupted mid-create leaves behind). See
:mod:`~.browser_routes`.

A ``status`` fault answers Kernel's ``Error`` body ``{code, message}`` (``code``/``message`` override the
defaults) plus the optional ``details`` (a list of ``{code, message}``) and ``inner_error`` (``{code, message}``)
when given.

Malformed answers (for clients' error handling): ``body`` answers this raw text instead (with ``status``,
default 200, and ``headers``; non-UTF-8 bytes as ``\\udcXX`` escapes, i.e. surrogateescape); ``truncate``
(an int) lets the request act, announces the full ``Content-Length`` but sends only that many body bytes
and closes the connection; ``raw_sse_data`` sends ``data: <this text>`` verbatim on the event stream (after
the state on connect; ``\\udcXX`` escapes for raw bytes) and then carries on normally.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

_FAULT_KEYS = {
    "status",
    "code",
    "message",
    "retry_after",
    "retry_after_ms",
    "should_retry",
    "headers",
    "after",
    "drop",
    "delay",
    "cut_after_events",
    "silent",
    "error_event",
    "error_then_close",
    "body",
    "truncate",
    "raw_sse_data",
    "details",
    "inner_error",
    "browser_launch",
}

_DEFAULT_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    408: "request_timeout",
    409: "conflict",
    422: "unprocessable_entity",
    429: "rate_limited",
    500: "internal_error",
    502: "bad_gateway",
    503: "service_unavailable",
    504: "gateway_timeout",
}


def check_object(data: Any, kind: str, allowed: set[str]) -> None:
    """Raise ``ValueError`` unless ``data`` is a JSON object whose keys are all ``allowed``.

    :param data: the decoded JSON.
    :param kind: what it should be, for the message (``fault``, ``fault rule``).
    :param allowed: the keys it may have.
    """
    if not isinstance(data, dict):
        raise ValueError(f"a {kind} must be a JSON object, got {data!r}")
    unknown = set(data) - allowed
    if unknown:
        raise ValueError(f"unknown {kind} keys: {sorted(unknown)}")


def default_error_code(status: int) -> str:
    """The ``Error.code`` the emulator uses for an injected status without an explicit ``code``."""
    return _DEFAULT_CODES.get(status, "internal_error" if status >= 500 else "error")


_STREAM_KEYS = {"cut_after_events", "silent", "error_event", "error_then_close", "raw_sse_data"}
_HTTP_KEYS = _FAULT_KEYS - _STREAM_KEYS - {"browser_launch"}
#: Values of the ``browser_launch`` kind (applied by :mod:`~.browser_routes`).
BROWSER_LAUNCH_FAULTS = ("fail", "crash", "slow")


@dataclass
class HttpFault:
    """What the middleware does to a request: delay, answer with a status or a raw body, drop, truncate."""

    status: int | None = None
    code: str | None = None
    message: str | None = None
    details: list[dict[str, Any]] | None = None
    inner_error: dict[str, Any] | None = None
    retry_after: float | None = None
    retry_after_ms: int | None = None
    should_retry: bool | None = None
    headers: dict[str, str] = field(default_factory=dict)
    after: bool = False
    drop: str | None = None
    delay: float = 0.0
    body: str | None = None
    truncate: int | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> HttpFault | None:
        """The HTTP part of a fault's JSON form (None when it has none)."""
        if not set(data) & _HTTP_KEYS:
            return None
        fault = cls()
        if "status" in data:
            status = data["status"]
            if not isinstance(status, int) or not 100 <= status <= 599:
                raise ValueError(f"fault status must be an HTTP status code, got {status!r}")
            fault.status = status
        fault.code = data.get("code")
        fault.message = data.get("message")
        details = data.get("details")
        if details is not None and not (isinstance(details, list) and all(isinstance(d, dict) for d in details)):
            raise ValueError("details must be a list of objects {code?, message?}")
        fault.details = details
        inner = data.get("inner_error")
        if inner is not None and not isinstance(inner, dict):
            raise ValueError("inner_error must be an object {code?, message?}")
        fault.inner_error = inner
        fault.retry_after = data.get("retry_after")
        fault.retry_after_ms = data.get("retry_after_ms")
        fault.should_retry = data.get("should_retry")
        fault.headers = {str(k): str(v) for k, v in (data.get("headers") or {}).items()}
        fault.after = bool(data.get("after", False))
        drop = data.get("drop")
        if drop not in (None, "before", "after"):
            raise ValueError(f"fault drop must be 'before' or 'after', got {drop!r}")
        fault.drop = drop
        fault.delay = float(data.get("delay", 0.0))
        if fault.delay < 0:
            raise ValueError("fault delay must be >= 0")
        if data.get("body") is not None and not isinstance(data["body"], str):
            raise ValueError("body must be a string")
        fault.body = data.get("body")
        truncate = data.get("truncate")
        if truncate is not None and (not isinstance(truncate, int) or isinstance(truncate, bool) or truncate < 0):
            raise ValueError("truncate must be an integer >= 0 (body bytes to send)")
        fault.truncate = truncate
        return fault

    @property
    def acts(self) -> bool:
        """Whether this part does anything on its own (``code`` alone, say, does not)."""
        return bool(self.status or self.drop or self.delay or self.body is not None or self.truncate is not None)

    def error_body(self) -> dict[str, Any]:
        """The ``Error`` JSON body for a status fault (with the optional ``details`` / ``inner_error``)."""
        status = self.status or 500
        body: dict[str, Any] = {
            "code": self.code or default_error_code(status),
            "message": self.message or f"injected fault: HTTP {status}",
        }
        if self.details is not None:
            body["details"] = self.details
        if self.inner_error is not None:
            body["inner_error"] = self.inner_error
        return body

    def response_headers(self) -> dict[str, str]:
        """Extra headers for a status fault (``Retry-After``, ``retry-after-ms``, ``x-should-retry``...)."""
        headers = dict(self.headers)
        if self.retry_after is not None:
            value = self.retry_after
            headers["Retry-After"] = str(int(value)) if float(value).is_integer() else str(value)
        if self.retry_after_ms is not None:
            headers["retry-after-ms"] = str(self.retry_after_ms)
        if self.should_retry is not None:
            headers["x-should-retry"] = "true" if self.should_retry else "false"
        return headers

    def encoded_body(self) -> bytes:
        """The ``body`` fault's bytes (``\\udcXX`` escapes become raw bytes)."""
        return (self.body or "").encode("utf-8", "surrogateescape")


@dataclass
class StreamFault:
    """What the event stream does: cut after N events, fall silent, send an ``error`` event or raw data."""

    cut_after_events: int | None = None
    silent: bool = False
    error_event: dict[str, Any] | None = None
    error_then_close: bool = False
    raw_sse_data: str | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StreamFault | None:
        """The stream part of a fault's JSON form (None when it has none)."""
        if not set(data) & _STREAM_KEYS:
            return None
        fault = cls()
        cut = data.get("cut_after_events")
        if cut is not None and (not isinstance(cut, int) or cut < 0):
            raise ValueError("cut_after_events must be an integer >= 0")
        fault.cut_after_events = cut
        fault.silent = bool(data.get("silent", False))
        err = data.get("error_event")
        if err is not None:
            if err is True:
                err = {}
            if not isinstance(err, dict):
                raise ValueError("error_event must be an object {code, message}")
            err = {"code": err.get("code", "internal_error"), "message": err.get("message", "injected error")}
        fault.error_event = err
        fault.error_then_close = bool(data.get("error_then_close", False))
        if data.get("raw_sse_data") is not None and not isinstance(data["raw_sse_data"], str):
            raise ValueError("raw_sse_data must be a string")
        fault.raw_sse_data = data.get("raw_sse_data")
        return fault

    @property
    def acts(self) -> bool:
        """Whether this part changes the stream at all."""
        return bool(
            self.cut_after_events is not None or self.silent or self.error_event or self.raw_sse_data is not None
        )


@dataclass
class Fault:
    """One injected misbehaviour, as one JSON object of a plan: an HTTP part, a stream part, or both.

    Several kinds may be combined (e.g. ``delay`` + ``status``, or ``delay`` + ``cut_after_events``). The
    middleware applies :attr:`http`; the event stream applies :attr:`stream`.
    """

    http: HttpFault | None = None
    stream: StreamFault | None = None
    raw: dict[str, Any] = field(default_factory=dict)
    #: ``"fail"``: the browser of a ``POST /browsers`` or pool acquire does not start (500); ``"crash"``: it
    #: starts and its Chromium dies half a second after the answer; ``"slow"``: it takes 2 s more to start.
    browser_launch: str | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Fault:
        """Build and validate a fault from its JSON form."""
        check_object(data, "fault", _FAULT_KEYS)
        launch = data.get("browser_launch")
        if launch is not None and launch not in BROWSER_LAUNCH_FAULTS:
            raise ValueError(f"browser_launch must be one of {BROWSER_LAUNCH_FAULTS}, got {launch!r}")
        fault = cls(HttpFault.from_json(data), StreamFault.from_json(data), dict(data), launch)
        if launch is None and not any(part is not None and part.acts for part in (fault.http, fault.stream)):
            raise ValueError(f"fault {data!r} does nothing")
        return fault
