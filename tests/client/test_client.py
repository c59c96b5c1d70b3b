"""``KernelClient`` used directly, as a Python user outside Airflow would: real HTTP to the emulator."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import Any

import pytest

from kernel_provider.client import KernelClient, KernelSettings, RetryPolicy, invocations
from kernel_provider.client.errors import KernelAuthError, KernelInputError, KernelTransportError
from kernel_provider.client.transport import close_loop_resources, loop_resources
from tests.helpers import FAST_RETRY


def client_for(emulator: Any, key: str | None = None, **kwargs: Any) -> KernelClient:
    settings = KernelSettings.from_mapping(host=emulator.url, password=key or emulator.token)
    return KernelClient(settings, retry=kwargs.pop("retry", FAST_RETRY), **kwargs)


def test_sync_calls(kernel_emulator: Any) -> None:
    client = client_for(kernel_emulator)
    done = client.invoke("demo", "echo", payload={"n": 1}, invoke_async=False)
    assert done.succeeded and done.result == {"n": 1}
    assert client.get_invocation(done.id).app_name == "demo"
    assert [i.id for i in client.list_invocations(app_name="demo")] == [done.id]
    assert client.get_action("demo", "echo").name == "echo"
    assert client.invocation_url(done.id).endswith(f"/invocations/{done.id}")
    assert "apache-airflow" not in kernel_emulator.requests(method="POST")[0]["user_agent"]
    assert client.check_connection()[0]
    client.close()


async def test_async_calls_and_the_event_stream(kernel_emulator: Any) -> None:
    client = client_for(kernel_emulator)
    started = await client.ainvoke("demo", "logs", payload={"lines": 2, "interval": 0.01}, invoke_async=True)
    events = [e async for e in client.astream_events(started.id, silence_timeout=10)]
    assert [e["message"].strip() for e in events if e["event"] == "log"] == ["line 0", "line 1"]
    assert (await client.aget_invocation(started.id)).succeeded
    assert [i.id for i in await client.alist_invocations(app_name="demo")] == [started.id]
    assert await client.acancel_invocation(started.id, budget=5) is not None  # finished: Kernel keeps its state
    assert loop_resources().clients  # pools live on the loop, shared by every client on it
    await close_loop_resources()


async def test_a_refused_key_is_read_again_through_refresh(kernel_emulator: Any) -> None:
    done = await asyncio.to_thread(client_for(kernel_emulator).invoke, "demo", "echo")
    reads: list[int] = []

    async def refresh() -> KernelSettings:
        reads.append(1)
        return KernelSettings.from_mapping(host=kernel_emulator.url, password=kernel_emulator.token)

    client = client_for(kernel_emulator, key="stale-key", refresh=refresh)
    assert (await client.aget_invocation(done.id)).succeeded
    assert client.settings.api_key == kernel_emulator.token and reads == [1]
    seen = kernel_emulator.requests(path=f"/invocations/{done.id}", method="GET")
    assert [(r["auth"], r["status"]) for r in seen] == [("invalid", 401), ("valid", 200)]
    await close_loop_resources()


async def test_without_refresh_a_refusal_is_final(kernel_emulator: Any) -> None:
    with pytest.raises(KernelAuthError):
        await client_for(kernel_emulator, key="wrong").aget_invocation("a" * 24)
    assert len(kernel_emulator.requests()) == 1
    ok, message = await asyncio.to_thread(client_for(kernel_emulator, key="wrong").check_connection)
    assert not ok and "rejected the API key" in message and "wrong" not in message
    await close_loop_resources()


def test_retry_override_and_the_create_window(kernel_emulator: Any) -> None:
    settings = KernelSettings.from_mapping(host=kernel_emulator.url, password="k", extra={"max_retries": 1})
    assert KernelClient(settings).retry is settings.retry
    custom = RetryPolicy(max_attempts=9, max_elapsed=5, retry_after_cap=1, rate_limit_budget=7)
    client = KernelClient(settings, retry=custom)
    assert client.retry is custom
    client.settings = KernelSettings.from_mapping(host=kernel_emulator.url, password="k2")
    assert client.retry is custom  # the override outlives swapped settings
    assert client.create_window_seconds({"async": True}) == 7 + 1 + 10 + 30
    assert client.create_window_seconds({}) == 7 + 1 + 10 + 130


def test_a_budget_bounds_a_call_that_cannot_connect() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = KernelClient(
        KernelSettings.from_mapping(host=f"http://127.0.0.1:{port}", password="k"),
        retry=RetryPolicy(max_attempts=100, max_elapsed=100, backoff_initial=0.2),
    )
    started = time.monotonic()
    with pytest.raises(KernelTransportError) as raised:
        client.execute(invocations.get_invocation("a" * 24), budget=0.5)
    assert not raised.value.request_sent and time.monotonic() - started < 2.0
    with pytest.raises(KernelInputError, match="budget"):
        client.cancel_invocation("a" * 24, budget=0)


def test_events_that_are_not_json_objects_are_skipped(kernel_emulator: Any, caplog: Any) -> None:
    done = client_for(kernel_emulator).invoke("demo", "echo", invoke_async=False)
    kernel_emulator.set_faults(
        [{"route": "GET /invocations/{id}/events", "times": 1, "fault": {"raw_sse_data": "not json"}}]
    )

    async def follow() -> list[dict[str, Any]]:
        try:
            return [e async for e in client_for(kernel_emulator).astream_events(done.id, silence_timeout=10)]
        finally:
            await close_loop_resources()

    with caplog.at_level(logging.WARNING):
        events = asyncio.run(follow())
    assert all(isinstance(e, dict) for e in events)
    assert "not JSON" in caplog.text
