"""Kernel's texts made safe to print: log lines, ``status_reason``, outputs and error messages.

What an action prints (scraped page text, an agent's thoughts) reaches the task log, and Kernel's texts reach
exception messages. Printed raw, a ``\\r`` or a line separator starts what looks like a new log line (``\\r
Marking task as SUCCESS``), ANSI/OSC sequences recolour, clear or hyperlink a terminal, and bidi overrides
reorder what a reader sees. So every such text goes through :func:`safe_text` (one line) or
:func:`safe_log_lines` (a log message, split at ``\\n``) before it is written anywhere:

- C0 and C1 controls (ESC included, so no CSI/OSC sequence survives), DEL, ``\\r``, U+2028/U+2029 and the bidi
  controls are shown as visible escapes (``\\x1b``, ``\\r``, ``\\u2028``); lone surrogates as ``\\udcXX``. A tab stays.
- Each line is capped at :data:`LINE_LIMIT` characters *after* escaping, ending in ``… [truncated N chars]`` where
  ``N`` counts the characters of the original text left out.

A backslash already in the text is kept as is: the escapes are for reading, not for decoding back.
"""

from __future__ import annotations

import re

__all__ = ["LINE_LIMIT", "safe_log_lines", "safe_text"]

#: The longest line (in characters, escapes included) written to a task log or an exception message.
LINE_LIMIT = 4000

_SHORT = {"\n": "\\n", "\r": "\\r", "\x1b": "\\x1b"}
#: Everything that moves the cursor, starts a line or an escape sequence, or reorders text; ``\t`` excepted.
_UNSAFE = re.compile(
    "[\x00-\x08\x0a-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)


def _escape(char: str) -> str:
    short = _SHORT.get(char)
    if short is not None:
        return short
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def safe_text(text: object, limit: int = LINE_LIMIT) -> str:
    """``text`` as one printable line: every unsafe character (``\\n`` included) escaped, capped at ``limit``.

    :param text: anything; a non-string is taken as its ``str()``.
    :param limit: the longest result, in characters, the truncation marker included.
    """
    raw = text if isinstance(text, str) else str(text)
    # Escaping at most grows a character sixfold, so only this much of a huge text is ever looked at.
    head = raw[:limit]
    escaped = _UNSAFE.sub(lambda m: _escape(m.group()), head)
    if len(escaped) <= limit and len(head) == len(raw):
        return escaped
    kept, used = _fit(head, limit - len(f"… [truncated {len(raw)} chars]"))
    return f"{kept}… [truncated {len(raw) - used} chars]"


def _fit(head: str, room: int) -> tuple[str, int]:
    """The longest escaped prefix of ``head`` within ``room`` characters, and how many raw characters it holds."""
    parts: list[str] = []
    size = 0
    for used, char in enumerate(head):
        piece = _escape(char) if _UNSAFE.match(char) else char
        if size + len(piece) > room:
            return "".join(parts), used
        parts.append(piece)
        size += len(piece)
    return "".join(parts), len(head)


def safe_log_lines(message: object, limit: int = LINE_LIMIT) -> list[str]:
    """A log message from Kernel as the lines to write: split at ``\\n`` (a trailing one dropped), each through
    :func:`safe_text`, so no line can hide another or pose as one of Airflow's. A ``\r`` ending a line (CRLF) is
    dropped.

    :param message: the message (one or more lines).
    :param limit: the longest line written, in characters.
    """
    raw = message if isinstance(message, str) else str(message)
    # A CRLF line ending hides nothing (no text follows its \r), so it is dropped rather than shown.
    return [safe_text(line.removesuffix("\r"), limit) for line in raw.rstrip("\n").split("\n")]
