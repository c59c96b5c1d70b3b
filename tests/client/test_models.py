"""Parsing of Kernel objects: once, tolerant of what Kernel may add later."""

from __future__ import annotations

from datetime import timezone

import pytest

from kernel_provider.client.models import (
    TERMINAL_STATUSES,
    AppVersion,
    Invocation,
    InvocationStatus,
    parse_output,
    parse_timestamp,
)
from kernel_provider.exceptions import KernelResponseError


def test_invocation_parses_every_field_and_keeps_unknown_ones() -> None:
    inv = Invocation.from_api(
        {
            "id": "rr33xuugxj9h0bkf1rdt2bet",
            "app_name": "a",
            "version": "1",
            "action_name": "x",
            "status": "succeeded",
            "payload": '{"a":1}',
            "output": '{"b": 2}',
            "started_at": "2026-01-05T10:00:00.123456789Z",
            "finished_at": "2026-01-05T10:00:21Z",
            "brand_new_field": 7,
        }
    )
    assert inv.status is InvocationStatus.SUCCEEDED and inv.is_terminal and inv.succeeded
    assert inv.result == {"b": 2}
    assert inv.started_at is not None and inv.started_at.microsecond == 123456
    assert inv.started_at.tzinfo is not None and inv.started_at.utcoffset() == timezone.utc.utcoffset(None)
    assert inv.extra == {"brand_new_field": 7}


def test_unknown_status_is_tolerated_as_not_finished() -> None:
    inv = Invocation.from_api({"id": "i", "status": "paused_for_captcha"})
    assert inv.status is InvocationStatus.UNKNOWN
    assert not inv.is_terminal
    assert inv.raw_status == "paused_for_captcha"


def test_terminal_set_is_exactly_succeeded_and_failed() -> None:
    assert {s.value for s in TERMINAL_STATUSES} == {"succeeded", "failed"}


def test_invocation_without_id_is_a_response_error() -> None:
    with pytest.raises(KernelResponseError):
        Invocation.from_api({"status": "queued"})
    with pytest.raises(KernelResponseError):
        Invocation.from_api(["not", "an", "object"])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ('{"a": [1, 2]}', {"a": [1, 2]}),
        ("42", 42),
        ('"text"', "text"),
        ("Traceback: boom", "Traceback: boom"),
        (None, None),
        ("", ""),
    ],
)
def test_parse_output_falls_back_to_raw_text(output: str | None, expected: object) -> None:
    assert parse_output(output) == expected


def test_timestamps_with_nanoseconds_offsets_and_garbage() -> None:
    assert parse_timestamp("2024-05-19T15:30:00.000000000Z") is not None
    assert parse_timestamp("2024-05-19T15:30:00+02:00") is not None
    assert parse_timestamp("2024-05-19T15:30:00.5Z").microsecond == 500000  # type: ignore[union-attr]
    assert parse_timestamp("2024-05-19T15:30:00Z07:00") is None  # the spec's malformed example
    assert parse_timestamp(None) is None


def test_app_version_lists_actions() -> None:
    app = AppVersion.from_api(
        {
            "id": "v1",
            "app_name": "shop",
            "version": "latest",
            "region": "aws.us-east-1a",
            "actions": [{"name": "scrape", "input_schema": None}, {"name": "buy"}],
        }
    )
    assert app.action_names == ["scrape", "buy"]
    assert app.extra["region"] == "aws.us-east-1a"
