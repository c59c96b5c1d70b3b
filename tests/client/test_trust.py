"""What the client accepts from outside: ids, names, URLs and header text (pure logic)."""

from __future__ import annotations

from typing import Any

import pytest

from kernel_provider.client.errors import (
    KernelApiError,
    KernelInputError,
    KernelRedirectError,
    KernelServerError,
    api_error_for_status,
    is_error_status,
)
from kernel_provider.client.trust import (
    SOCKET_SCHEMES,
    absolute_url,
    describe_value,
    is_id,
    is_name,
    is_printable_ascii,
    origin,
    require_id,
    require_path_name,
)


def test_ids_and_names() -> None:
    assert is_id("rr33xuugxj9h0bkf1rdt2bet") and is_id("inv-1_A") and is_id("x" * 64)
    for bad in ("", ".", "..", "a.b", "a/b", "a b", "x" * 65, "é", None, 1):
        assert not is_id(bad)
    assert is_name("my.pool") and is_name("p" * 255) and is_name("...")
    for bad in ("", ".", "..", "a/b", "p" * 256, "a b"):
        assert not is_name(bad)
    assert require_id("invocation_id", "abc") == "abc" and require_path_name("pool", "p.1") == "p.1"
    with pytest.raises(KernelInputError, match="pool"):
        require_path_name("pool", "..")


@pytest.mark.parametrize(
    ("value", "expected"),
    [("..", "'..'"), ("", "empty"), ("a\nb", "not shown"), ("x" * 100, "100 characters"), (3, "a int")],
)
def test_values_are_echoed_only_when_short_and_printable(value: Any, expected: str) -> None:
    assert expected in describe_value(value)
    with pytest.raises(KernelInputError) as raised:
        require_id("session_id", value)
    assert raised.value.field == "session_id" and "\n" not in str(raised.value)


def test_header_text() -> None:
    assert is_printable_ascii("Bearer sk_live_abc-~!") and is_printable_ascii("")
    for bad in ("a\n", "a\r", "a\x00", "a\t", "a\x7f", "é", "\u2019", "a\u2028"):
        assert not is_printable_ascii(bad)


def test_urls() -> None:
    assert absolute_url("https://k.example/x?y=1#z") == "https://k.example/x?y=1#z"
    assert absolute_url("HTTP://k.example") == "HTTP://k.example"
    assert absolute_url("wss://k.example/cdp", SOCKET_SCHEMES) == "wss://k.example/cdp"
    for bad in (
        "javascript:alert(1)",
        "data:,x",
        "/x",
        "//k.example",
        "https://",
        "https://k.example:99999",
        "https://k .example",
        "https://k.example/\u2028",
        "wss://k.example",
        None,
        1,
    ):
        assert absolute_url(bad) is None, bad
    assert absolute_url("https://k.example", SOCKET_SCHEMES) is None


@pytest.mark.parametrize(
    ("location", "expected"),
    [
        ("https://evil.example/steal?token=1", "https://evil.example"),
        ("http://user:pw@evil.example:8080/x", "http://evil.example:8080"),
        ("https://[::1]:9/x", "https://[::1]:9"),
        ("/login?next=x", "a relative location"),
        ("https://evil.example:notaport/", "an unreadable location"),
        ("https://ev\x00il.example/", "an unreadable location"),
    ],
)
def test_origin_names_scheme_host_and_port_only(location: str, expected: str) -> None:
    assert origin(location) == expected


def test_statuses_outside_2xx_are_errors_and_3xx_is_a_redirect() -> None:
    assert not is_error_status(200) and not is_error_status(204)
    for status in (301, 302, 303, 304, 307, 308):
        assert is_error_status(status) and api_error_for_status(status) is KernelRedirectError
    assert issubclass(KernelRedirectError, KernelApiError)
    assert api_error_for_status(502) is KernelServerError and api_error_for_status(413) is KernelApiError
