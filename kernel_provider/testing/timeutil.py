"""IDs, RFC 3339 nanosecond timestamps and the ``since`` parser (RFC 3339 or Go-style durations)."""

from __future__ import annotations

import calendar
import random
import re
import time

_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
_id_rng = random.Random()
_last_ns = 0

_DURATION_UNITS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "μs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_TIMESTAMP = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})"
    r"(?:[Tt ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d{1,9}))?)?)?"
    r"\s*(Z|z|[+-]\d{2}:?\d{2})?$"
)


def new_id() -> str:
    """A fresh 24-character ``[a-z0-9]`` identifier (cuid2-like, as Kernel's)."""
    return "".join(_id_rng.choices(_ALPHABET, k=24))


def now_ns() -> int:
    """Wall-clock nanoseconds, strictly increasing across calls (so log ``since`` filtering is exact)."""
    global _last_ns
    value = time.time_ns()
    if value <= _last_ns:
        value = _last_ns + 1
    _last_ns = value
    return value


def format_ns(ns: int) -> str:
    """RFC 3339 in UTC with exactly 9 fractional digits and ``Z``: ``2026-01-05T10:00:00.120000000Z``."""
    seconds, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{frac:09d}Z"


def parse_duration_ns(text: str) -> int:
    """Parse a Go duration (``5m``, ``1h30m``, ``1.5s``, ``250ms``; no days). Raises ``ValueError``."""
    value = text.strip()
    if value in ("0", "+0"):
        return 0
    if value.startswith("+"):
        value = value[1:]
    if not value or value.startswith("-"):
        raise ValueError(f"invalid duration {text!r}")
    pos = 0
    total = 0.0
    for match in _DURATION_PART.finditer(value):
        if match.start() != pos:
            raise ValueError(f"invalid duration {text!r}")
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if pos != len(value) or pos == 0:
        raise ValueError(f"invalid duration {text!r}")
    return int(total)


def parse_timestamp_ns(text: str) -> int:
    """Parse RFC 3339 (any offset, up to 9 fractional digits) or the CLI's ``2006-01-02[T15:04[:05[.000]]]``.

    A timestamp without an offset is taken as UTC. Raises ``ValueError``.
    """
    match = _TIMESTAMP.match(text.strip())
    if not match:
        raise ValueError(f"invalid timestamp {text!r}")
    year, month, day, hour, minute, second, frac, zone = match.groups()
    try:
        seconds = calendar.timegm(
            (int(year), int(month), int(day), int(hour or 0), int(minute or 0), int(second or 0), 0, 0, 0)
        )
        time.strptime(f"{year}-{month}-{day}", "%Y-%m-%d")  # rejects 2026-02-31 and friends
    except ValueError as exc:
        raise ValueError(f"invalid timestamp {text!r}") from exc
    if int(hour or 0) > 23 or int(minute or 0) > 59 or int(second or 0) > 60:
        raise ValueError(f"invalid timestamp {text!r}")
    nanos = int((frac or "").ljust(9, "0")) if frac else 0
    if zone and zone not in ("Z", "z"):
        sign = 1 if zone[0] == "+" else -1
        digits = zone[1:].replace(":", "")
        seconds -= sign * (int(digits[:2]) * 3600 + int(digits[2:]) * 60)
    return seconds * 1_000_000_000 + nanos


def parse_since(text: str | None, now: int | None = None) -> int | None:
    """``since`` as absolute nanoseconds: a timestamp, or a duration before ``now``. Empty/None = absent."""
    if text is None or not text.strip():
        return None
    value = text.strip()
    if _TIMESTAMP.match(value):
        return parse_timestamp_ns(value)
    duration = parse_duration_ns(value)
    return (now if now is not None else time.time_ns()) - duration
