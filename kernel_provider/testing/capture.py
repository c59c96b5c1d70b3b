"""Route ``print()``/``logging`` output of a running action to that invocation's log.

A context variable holds the current invocation's :class:`LogSink`. ``sys.stdout``/``sys.stderr`` are wrapped
once by :class:`StreamProxy`: a write goes to the sink when the variable is set (inside an action, including
its
worker thread, which runs in a copy of the context) and to the wrapped stream otherwise. A root ``logging``
handler does the same for log records that reach it.
"""

from __future__ import annotations

import contextvars
import logging
import sys
import threading
from collections.abc import Callable
from typing import Any, TextIO

MAX_LINE = 64 * 1024

current_sink: contextvars.ContextVar[LogSink | None] = contextvars.ContextVar("kernel_emulator_sink", default=None)


class LogSink:
    """Line-buffers text written by one invocation and hands complete lines to ``emit`` (thread-safe)."""

    def __init__(self, emit: Callable[[str], None]) -> None:
        self._emit = emit
        self._buffer = ""
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        """Buffer ``text``; emit every complete line (with its trailing newline)."""
        if not text:
            return 0
        with self._lock:
            data = self._buffer + text
            lines = data.split("\n")
            self._buffer = lines.pop()
            ready = lines
        for line in ready:
            self._emit_line(line + "\n")
        return len(text)

    def flush(self) -> None:
        """Emit a trailing partial line, if any (as a line ending with a newline)."""
        with self._lock:
            rest, self._buffer = self._buffer, ""
        if rest:
            self._emit_line(rest + "\n")

    def _emit_line(self, line: str) -> None:
        if len(line) > MAX_LINE:
            line = line[: MAX_LINE - 1] + "\n"
        self._emit(line)


class StreamProxy:
    """A text stream that forwards to the current invocation's sink, or to the wrapped stream."""

    def __init__(self, wrapped: TextIO, fallback: TextIO | None) -> None:
        self._wrapped = wrapped
        self._fallback = fallback

    def write(self, text: str) -> int:
        """Write to the current invocation's sink, else to the wrapped stream."""
        sink = current_sink.get()
        if sink is not None:
            return sink.write(text)
        try:
            return self._wrapped.write(text)
        except ValueError:  # the wrapped stream was closed (e.g. a finished pytest capture)
            if self._fallback is not None:
                return self._fallback.write(text)
            return len(text)

    def writelines(self, lines: Any) -> None:
        """Write each line as :meth:`write` does."""
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        """Flush the wrapped stream; inside an action nothing (its sink emits whole lines, the rest at its end)."""
        sink = current_sink.get()
        if sink is not None:
            return
        try:
            self._wrapped.flush()
        except ValueError:
            pass

    def __getattr__(self, name: str) -> Any:
        """Everything else is the wrapped stream's (``encoding``, ``fileno``...)."""
        return getattr(self._wrapped, name)


class _SinkHandler(logging.Handler):
    """Sends log records emitted inside an action to its sink (unless a proxy-backed handler already does)."""

    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self.setFormatter(logging.Formatter("%(levelname)s:%(name)s:%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        sink = current_sink.get()
        if sink is None or _root_prints_to_proxy():
            return
        try:
            sink.write(self.format(record) + "\n")
        except Exception:  # pragma: no cover - never break the action because of logging
            self.handleError(record)


def _root_prints_to_proxy() -> bool:
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and isinstance(handler.stream, StreamProxy):
            return True
    return False


_install_lock = threading.Lock()
_handler: _SinkHandler | None = None


def install() -> None:
    """Install the stdout/stderr proxies and the logging handler (idempotent; re-wraps replaced streams)."""
    global _handler
    with _install_lock:
        if not isinstance(sys.stdout, StreamProxy) and sys.stdout is not None:
            sys.stdout = StreamProxy(sys.stdout, sys.__stdout__)  # type: ignore[assignment]
        if not isinstance(sys.stderr, StreamProxy) and sys.stderr is not None:
            sys.stderr = StreamProxy(sys.stderr, sys.__stderr__)  # type: ignore[assignment]
        if _handler is None:
            _handler = _SinkHandler()
            logging.getLogger().addHandler(_handler)
