"""IDs, timestamps and ``since`` parsing."""

from __future__ import annotations

import re

import pytest

from kernel_provider.testing.timeutil import (
    format_ns,
    new_id,
    now_ns,
    parse_duration_ns,
    parse_since,
    parse_timestamp_ns,
)


def test_ids_and_timestamps() -> None:
    assert re.fullmatch(r"[a-z0-9]{24}", new_id())
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z", format_ns(now_ns()))
    assert now_ns() < now_ns()


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("5m", 300 * 10**9),
        ("1h30m", 5400 * 10**9),
        ("10s", 10**10),
        ("1.5s", 15 * 10**8),
        ("250ms", 25 * 10**7),
        ("3us", 3000),
        ("0", 0),
    ],
)
def test_durations(text: str, ns: int) -> None:
    assert parse_duration_ns(text) == ns


@pytest.mark.parametrize("text", ["5d", "abc", "-5m", "1h5", "m", "2026-13-01", "2026-02-30T00:00:00Z"])
def test_invalid_since(text: str) -> None:
    with pytest.raises(ValueError):
        parse_since(text)


def test_timestamps() -> None:
    base = parse_timestamp_ns("2026-01-05T10:00:00Z")
    assert parse_timestamp_ns("2026-01-05T10:00:00.120000000Z") == base + 120_000_000
    assert parse_timestamp_ns("2026-01-05T12:00:00+02:00") == base
    assert parse_timestamp_ns("2026-01-05T10:00") == base
    assert format_ns(parse_timestamp_ns("2026-01-05")) == "2026-01-05T00:00:00.000000000Z"
    assert parse_since("", 10) is None and parse_since(None) is None
    assert parse_since("1s", 5 * 10**9) == 4 * 10**9
