"""The API key and project id are printable ASCII or refused at connection load, without echo (issue 25, finding 2).

Before: a pasted key with ``\\n`` reached requests/httpx/h11, which refused the header and quoted it; that text went
into every retry warning and the final error (unmasked: the masker knows the key, not its escaped form), and the
refusal counted as "request sent", so a create was reported ambiguous, reconciled and retried.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx
import pytest
import requests

from kernel_provider.client import KernelClient, KernelSettings
from kernel_provider.client.errors import KernelAmbiguousCreateError, KernelConnectionConfigError
from kernel_provider.client.transport import (
    close_loop_resources,
    describe_httpx_error,
    describe_requests_error,
    httpx_error_sent,
    requests_error_sent,
)
from kernel_provider.hooks.kernel import KernelHook
from tests.helpers import FAST_RETRY, conn_json

KEY = "sk_live_canary0123456789abcdef"
BAD_KEYS = {
    "newline": f"{KEY[:14]}\n{KEY[14:]}",
    "nul": f"{KEY[:14]}\x00{KEY[14:]}",
    "non-latin-1": f"{KEY[:14]}\u2019{KEY[14:]}",
    "latin-1": f"{KEY[:14]}\u00e9{KEY[14:]}",
    "tab": f"{KEY[:14]}\t{KEY[14:]}",
}


def _no_trace_of(text: str) -> None:
    for needle in (KEY, KEY[:14], KEY[14:], "canary"):
        assert needle not in text


@pytest.mark.parametrize("kind", sorted(BAD_KEYS))
def test_a_bad_key_is_refused_at_load_before_any_request(
    kind: str, kernel_emulator: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_KERNEL_DEFAULT", conn_json(kernel_emulator.url, BAD_KEYS[kind]))
    texts: list[str] = []
    with caplog.at_level(logging.DEBUG):
        for call in (
            lambda h: h.get_invocation("a" * 24),
            lambda h: h.invoke("demo", "echo", payload={"n": 1}, invoke_async=False),
        ):
            with pytest.raises(KernelConnectionConfigError) as raised:
                call(KernelHook(retry_policy=FAST_RETRY))
            assert not isinstance(raised.value, KernelAmbiguousCreateError)
            assert "password" in str(raised.value) and "printable ASCII" in str(raised.value)
            texts += [str(raised.value), repr(raised.value)]

        async def from_the_triggerer() -> None:
            with pytest.raises(KernelConnectionConfigError) as raised:
                await KernelHook(retry_policy=FAST_RETRY).aget_invocation("a" * 24)
            texts.append(str(raised.value))

        asyncio.run(from_the_triggerer())
        ok, message = KernelHook().test_connection()
        assert not ok and "password" in message
        texts.append(message)
    texts.append(caplog.text)
    _no_trace_of("\n".join(texts))
    assert kernel_emulator.requests() == []


def test_a_bad_project_id_is_refused_at_load(kernel_emulator: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_KERNEL_DEFAULT", conn_json(kernel_emulator.url, kernel_emulator.token, project_id="proj\r\nX: y")
    )
    with pytest.raises(KernelConnectionConfigError) as raised:
        KernelHook().get_invocation("a" * 24)
    assert "extra.project_id" in str(raised.value) and "X: y" not in str(raised.value)
    assert kernel_emulator.requests() == []


@pytest.mark.parametrize("kind", ["newline", "nul", "non-latin-1"])
def test_settings_that_slipped_past_the_check_are_stopped_before_the_wire(
    kind: str, kernel_emulator: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Defence in depth: the transports check every header themselves, with a non-retried config error."""
    settings = KernelSettings.from_mapping(host=kernel_emulator.url, password=KEY)
    object.__setattr__(settings, "api_key", BAD_KEYS[kind])  # past the frozen dataclass's own check
    client = KernelClient(settings, retry=FAST_RETRY)
    texts = []
    with caplog.at_level(logging.DEBUG):
        for call in (
            lambda: client.invoke("demo", "echo", invoke_async=False),
            lambda: client.get_invocation("a" * 24),
        ):
            with pytest.raises(KernelConnectionConfigError) as raised:
                call()
            texts.append(str(raised.value))

        async def run() -> None:
            try:
                with pytest.raises(KernelConnectionConfigError) as raised:
                    await client.ainvoke("demo", "echo", invoke_async=False)
                texts.append(str(raised.value))
                with pytest.raises(KernelConnectionConfigError):
                    async for _ in client.astream_events("a" * 24):
                        pass
            finally:
                await close_loop_resources()

        asyncio.run(run())
    assert all("header Authorization" in t for t in texts)
    assert "retrying" not in caplog.text  # no retry storm
    _no_trace_of("\n".join(texts) + caplog.text)
    assert kernel_emulator.requests() == []


def test_the_libraries_header_errors_are_never_quoted_nor_counted_as_sent() -> None:
    """What requests and h11 raise for a bad header quotes the value; the descriptions must not."""
    sync_error = requests.exceptions.InvalidHeader(f"Invalid return character in header value: 'Bearer {KEY}\\n'")
    assert not requests_error_sent(sync_error)
    _no_trace_of(describe_requests_error(sync_error))
    async_error = httpx.LocalProtocolError(f"Illegal header value b'Bearer {KEY}\\x00'")
    assert not httpx_error_sent(async_error)
    _no_trace_of(describe_httpx_error(async_error))
