"""Bad input is refused before any request, with the field and the fix in the message."""

from __future__ import annotations

import json
from datetime import date
from typing import Any

import pytest

from kernel_provider.client.validation import build_invoke_request, check_seconds, encode_payload
from kernel_provider.exceptions import KernelInputError

GOOD = {"app_name": "shop", "action_name": "scrape"}


def test_a_good_request_is_built_as_kernel_expects() -> None:
    body = build_invoke_request(
        **GOOD, payload={"url": "https://example.com", "n": 1}, invoke_async=True, async_timeout_seconds=600
    )
    assert body == {
        "app_name": "shop",
        "version": "latest",
        "action_name": "scrape",
        "payload": '{"url":"https://example.com","n":1}',
        "async": True,
        "async_timeout_seconds": 600,
    }
    assert "payload" not in build_invoke_request(**GOOD)
    assert build_invoke_request(**GOOD)["async"] is True  # the provider's one default, as in the operator
    assert "async" not in build_invoke_request(**GOOD, invoke_async=False)


@pytest.mark.parametrize("payload", [[1, 2], 3, 2.5, True, "[1,2]", '{"a": "b"}', '"text"', "null"])
def test_payloads_become_json_text(payload: Any) -> None:
    text = encode_payload(payload)
    assert text is not None
    json.loads(text)


class Weird:
    pass


BAD_INPUT = [
    ({"app_name": None, "action_name": "x"}, "app_name", "is required"),
    ({"app_name": "", "action_name": "x"}, "app_name", "must not be empty"),
    ({"app_name": "   ", "action_name": "x"}, "app_name", "must not be empty"),
    ({"app_name": 5, "action_name": "x"}, "app_name", "must be a string"),
    ({"app_name": " shop", "action_name": "x"}, "app_name", "leading or trailing spaces"),
    ({"app_name": "shop", "action_name": None}, "action_name", "is required"),
    ({"app_name": "shop", "action_name": ""}, "action_name", "must not be empty"),
    ({"app_name": "shop", "action_name": ["x"]}, "action_name", "must be a string"),
    ({**GOOD, "version": ""}, "version", "must not be empty"),
    ({**GOOD, "version": 2}, "version", "must be a string"),
    ({**GOOD, "payload": "{not json"}, "payload", "not valid JSON"),
    ({**GOOD, "payload": "hello"}, "payload", "not valid JSON"),
    ({**GOOD, "payload": {"when": date(2026, 1, 1)}}, "payload['when']", "not JSON-serializable"),
    ({**GOOD, "payload": {"x": [1, Weird()]}}, "payload['x'][1]", "not JSON-serializable"),
    ({**GOOD, "payload": {1: "a"}}, "payload[1]", "keys are strings"),
    ({**GOOD, "payload": {"x": float("nan")}}, "payload['x']", "JSON cannot represent"),
    ({**GOOD, "payload": b"{}"}, "payload", "is bytes"),
    ({**GOOD, "payload": "x" * 10 + json.dumps("y" * 4_600_000)}, "payload", "not valid JSON"),
    ({**GOOD, "payload": ["y" * 4_600_000]}, "payload", "Kernel accepts at most"),
    ({**GOOD, "invoke_async": True, "async_timeout_seconds": 9}, "async_timeout_seconds", "10..3600"),
    ({**GOOD, "invoke_async": True, "async_timeout_seconds": 3601}, "async_timeout_seconds", "10..3600"),
    ({**GOOD, "invoke_async": True, "async_timeout_seconds": 60.5}, "async_timeout_seconds", "whole number"),
    ({**GOOD, "invoke_async": True, "async_timeout_seconds": True}, "async_timeout_seconds", "whole number"),
    (
        {**GOOD, "invoke_async": False, "async_timeout_seconds": 60},
        "async_timeout_seconds",
        "only applies to asynchronous",
    ),
    ({**GOOD, "invoke_async": "yes"}, "invoke_async", "must be True or False"),
]


@pytest.mark.parametrize(("kwargs", "field", "words"), BAD_INPUT, ids=[f"{c[1]}:{c[2]}" for c in BAD_INPUT])
def test_bad_input_names_the_field_and_the_fix(kwargs: dict[str, Any], field: str, words: str) -> None:
    with pytest.raises(KernelInputError) as info:
        build_invoke_request(**kwargs)
    assert info.value.field == field
    assert words in str(info.value)
    assert info.value.fix, "every input error says how to fix it"


@pytest.mark.parametrize(
    ("value", "kwargs", "words"),
    [
        (-1, {}, "at least 0"),
        (0, {"exclusive": True}, "greater than 0"),
        ("5", {}, "number of seconds"),
        (float("inf"), {}, "number of seconds"),
        (None, {"allow_none": False}, "is required"),
    ],
)
def test_seconds_checks(value: Any, kwargs: dict[str, Any], words: str) -> None:
    with pytest.raises(KernelInputError) as info:
        check_seconds("poll_interval", value, **kwargs)
    assert words in str(info.value)
