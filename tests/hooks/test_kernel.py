"""KernelHook over real HTTP against the emulator: every method, every retry class, and the create rule."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import subprocess
import sys
import time
from typing import Any

import pytest

from kernel_provider.client.models import InvocationStatus
from kernel_provider.exceptions import (
    KernelAmbiguousCreateError,
    KernelApiError,
    KernelAuthError,
    KernelConnectionConfigError,
    KernelInputError,
    KernelTransportError,
)
from kernel_provider.hooks.kernel import KernelHook
from tests.helpers import EVENTS, FAST_RETRY, conn_json, posts, rotate_key, seen


@pytest.fixture
def hook(kernel_conn_env: Any) -> KernelHook:
    return KernelHook(retry_policy=FAST_RETRY)


# --- methods --------------------------------------------------------------------------------------------


def test_sync_invoke_returns_the_final_state_and_output(hook: KernelHook, kernel_emulator: Any) -> None:
    inv = hook.invoke("demo", "echo", payload={"hello": "world"}, invoke_async=False)
    assert inv.status is InvocationStatus.SUCCEEDED
    assert inv.result == {"hello": "world"}
    assert kernel_emulator.created_count("demo", "echo") == 1


def test_async_invoke_then_get_until_finished(hook: KernelHook, kernel_emulator: Any) -> None:
    inv = hook.invoke(
        "demo", "sleep", payload={"seconds": 0.2, "result": [1, 2]}, invoke_async=True, async_timeout_seconds=60
    )
    assert inv.status is InvocationStatus.QUEUED
    assert len(inv.id) == 24
    kernel_emulator.wait_for(inv.id)
    final = hook.get_invocation(inv.id)
    assert final.succeeded and final.result == [1, 2]
    assert final.app_name == "demo" and final.action_name == "sleep" and final.finished_at is not None
    body = json.loads(kernel_emulator.invocation(inv.id)["payload"])
    assert body == {"seconds": 0.2, "result": [1, 2]}


def test_failed_invocation_carries_status_reason(hook: KernelHook) -> None:
    inv = hook.invoke("demo", "fail", payload={"message": "no such product"}, invoke_async=False)
    assert inv.failed
    assert inv.status_reason
    assert "no such product" in (inv.output or "")


def test_list_invocations_follows_pages(hook: KernelHook, kernel_emulator: Any) -> None:
    ids = {hook.invoke("demo", "echo", payload={"i": i}, invoke_async=False).id for i in range(45)}
    listed = hook.list_invocations(app_name="demo", action_name="echo", page_size=20)
    assert [i.id for i in listed if i.id in ids] and {i.id for i in listed} == ids
    assert len(listed) == 45
    assert len(kernel_emulator.requests(path="/invocations", method="GET")) == 3
    assert len(hook.list_invocations(app_name="demo", limit=7)) == 7
    assert hook.list_invocations(app_name="no-such-app") == []


def test_list_invocations_filters_by_status_and_since(hook: KernelHook) -> None:
    hook.invoke("demo", "echo", payload=1, invoke_async=False)
    hook.invoke("demo", "fail", invoke_async=False)
    failed = hook.list_invocations(app_name="demo", status="failed", since="5m")
    assert [i.action_name for i in failed] == ["fail"]


def test_cancel_patches_failed_and_deletes_browsers(hook: KernelHook, kernel_emulator: Any) -> None:
    inv = hook.invoke("demo", "browse", payload={"seconds": 300}, invoke_async=True)
    kernel_emulator.wait_for(inv.id, ("running",))
    deadline = time.monotonic() + 5
    while not hook.list_invocation_browsers(inv.id) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert hook.list_invocation_browsers(inv.id), "the browse action should hold a browser"
    cancelled = hook.cancel_invocation(inv.id, reason="test cancel")
    assert cancelled is not None and cancelled.failed
    assert hook.get_invocation(inv.id).failed
    assert hook.list_invocation_browsers(inv.id) == []
    methods = [r["method"] for r in kernel_emulator.requests(path=f"/invocations/{inv.id}/browsers")]
    assert "DELETE" in methods
    patch = kernel_emulator.requests(path=f"/invocations/{inv.id}", method="PATCH")
    assert len(patch) == 1


def test_cancel_of_unknown_invocation_is_tolerated(hook: KernelHook) -> None:
    assert hook.cancel_invocation("a" * 24) is None


def test_get_unknown_invocation_surfaces_kernel_code_and_message(hook: KernelHook) -> None:
    with pytest.raises(KernelApiError) as info:
        hook.get_invocation("b" * 24)
    assert info.value.status_code == 404
    assert info.value.code == "not_found"
    assert info.value.message
    assert "404" in str(info.value) and info.value.code in str(info.value)


def test_server_validation_error_surfaces_details(hook: KernelHook) -> None:
    # Bypass client-side validation to see how a 400 from Kernel reads.
    with pytest.raises(KernelApiError) as info:
        hook.create_invocation({"app_name": "demo", "version": "latest", "action_name": "echo", "payload": "{not json"})
    assert info.value.status_code == 400 and info.value.code == "bad_request"
    assert "payload" in str(info.value)


def test_unknown_action_is_a_404_from_kernel(hook: KernelHook) -> None:
    with pytest.raises(KernelApiError) as info:
        hook.invoke("demo", "no_such_action", invoke_async=False)
    assert info.value.status_code == 404


def test_list_apps_and_get_action(hook: KernelHook) -> None:
    apps = hook.list_apps()
    demo = next(a for a in apps if a.app_name == "demo")
    assert {"echo", "sleep", "fail"} <= set(demo.action_names)
    assert hook.get_action("demo", "echo").name == "echo"
    with pytest.raises(KernelInputError) as info:
        hook.get_action("demo", "ecko")
    assert info.value.field == "action_name" and "echo" in str(info.value)
    with pytest.raises(KernelInputError) as info:
        hook.get_action("demo", "echo", version="v9")
    assert info.value.field == "version" and "latest" in str(info.value)
    with pytest.raises(KernelInputError) as info:
        hook.get_action("nope", "echo")
    assert info.value.field == "app_name" and "demo" in str(info.value)


def test_project_header_is_sent(kernel_emulator: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_KERNEL_DEFAULT", conn_json(kernel_emulator.url, kernel_emulator.token, project_id="proj_123")
    )
    KernelHook().invoke("demo", "echo", invoke_async=False)
    assert [r["project_id"] for r in posts(kernel_emulator)] == ["proj_123"]


def test_user_agent_and_no_key_in_repr(hook: KernelHook) -> None:
    settings = hook.settings
    assert settings.headers()["User-Agent"].startswith("airflow-provider-kernel/")
    assert "apache-airflow/" in settings.headers()["User-Agent"]
    assert settings.api_key not in repr(settings) and settings.api_key not in repr(hook)


# --- retries ----------------------------------------------------------------------------------------------


def test_reads_retry_5xx_with_exact_attempts(hook: KernelHook, kernel_emulator: Any) -> None:
    inv = hook.invoke("demo", "echo", invoke_async=False)
    kernel_emulator.set_faults(
        {"rules": [{"route": "GET /invocations/{id}", "sequence": [{"status": 503}, {"status": 502}, {"status": 500}]}]}
    )
    assert hook.get_invocation(inv.id).succeeded
    statuses = [r["status"] for r in kernel_emulator.requests(path=f"/invocations/{inv.id}", method="GET")]
    assert statuses == [503, 502, 500, 200]


def test_reads_give_up_after_max_attempts(hook: KernelHook, kernel_emulator: Any) -> None:
    inv = hook.invoke("demo", "echo", invoke_async=False)
    kernel_emulator.set_faults({"rules": [{"route": "GET /invocations/{id}", "fault": {"status": 503}}]})
    with pytest.raises(KernelApiError) as info:
        hook.get_invocation(inv.id)
    assert info.value.status_code == 503
    assert len(kernel_emulator.requests(path=f"/invocations/{inv.id}", method="GET")) == FAST_RETRY.max_attempts


def test_429_waits_for_retry_after(hook: KernelHook, kernel_emulator: Any) -> None:
    kernel_emulator.set_faults(
        {"rules": [{"route": "POST /invocations", "sequence": [{"status": 429, "retry_after": 1}]}]}
    )
    started = time.monotonic()
    inv = hook.invoke("demo", "echo", payload={"n": 1}, invoke_async=False)
    waited = time.monotonic() - started
    assert inv.succeeded
    assert [r["status"] for r in posts(kernel_emulator)] == [429, 200]
    assert waited >= 0.95, "the Retry-After: 1 pause was not honoured"
    assert kernel_emulator.created_count("demo", "echo") == 1


def test_retry_after_ms_is_honoured(hook: KernelHook, kernel_emulator: Any) -> None:
    kernel_emulator.set_faults(
        {"rules": [{"route": "POST /invocations", "sequence": [{"status": 429, "retry_after_ms": 400}]}]}
    )
    started = time.monotonic()
    hook.invoke("demo", "echo", invoke_async=False)
    assert time.monotonic() - started >= 0.38
    assert [r["status"] for r in posts(kernel_emulator)] == [429, 200]


def test_concurrency_limit_429s_are_waited_out(kernel_emulator_factory: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    emulator = kernel_emulator_factory(org_concurrency=1)
    monkeypatch.setenv("AIRFLOW_CONN_KERNEL_DEFAULT", conn_json(emulator.url, emulator.token))
    hook = KernelHook(retry_policy=FAST_RETRY)
    first = hook.invoke("demo", "sleep", payload={"seconds": 1.5}, invoke_async=True)
    second = hook.invoke("demo", "echo", payload={"second": True}, invoke_async=True)
    statuses = [r["status"] for r in posts(emulator)]
    assert statuses[0] == 202 and statuses[-1] == 202 and 429 in statuses
    assert emulator.created_count() == 2
    assert first.id != second.id


@pytest.mark.parametrize("fault", [{"status": 500}, {"status": 503}, {"status": 502}])
def test_create_is_never_replayed_after_a_5xx(hook: KernelHook, kernel_emulator: Any, fault: dict[str, Any]) -> None:
    kernel_emulator.set_faults({"rules": [{"route": "POST /invocations", "sequence": [fault]}]})
    with pytest.raises(KernelAmbiguousCreateError) as info:
        hook.invoke("demo", "echo", payload={"x": 1}, invoke_async=True)
    assert len(posts(kernel_emulator)) == 1
    assert info.value.app_name == "demo" and info.value.action_name == "echo"
    assert info.value.window_start < info.value.window_end
    assert "NOT re-sent" in str(info.value)


def test_create_dropped_after_the_server_acted_is_ambiguous_and_not_replayed(
    hook: KernelHook, kernel_emulator: Any
) -> None:
    kernel_emulator.set_faults({"rules": [{"route": "POST /invocations", "sequence": [{"drop": "after"}]}]})
    with pytest.raises(KernelAmbiguousCreateError) as info:
        hook.invoke("demo", "echo", payload={"x": 2}, invoke_async=True)
    assert isinstance(info.value.cause, KernelTransportError)
    assert len(posts(kernel_emulator)) == 1
    assert kernel_emulator.created_count("demo", "echo") == 1
    # The caller can reconcile: the run is found by listing the window with the same payload.
    found = [
        i
        for i in hook.list_invocations(app_name="demo", action_name="echo", since=info.value.window_start)
        if i.payload == info.value.payload
    ]
    assert len(found) == 1


def test_create_dropped_before_acting_is_still_not_replayed(hook: KernelHook, kernel_emulator: Any) -> None:
    kernel_emulator.set_faults({"rules": [{"route": "POST /invocations", "sequence": [{"drop": "before"}]}]})
    with pytest.raises(KernelAmbiguousCreateError):
        hook.invoke("demo", "echo", invoke_async=True)
    assert len(posts(kernel_emulator)) == 1
    assert kernel_emulator.created_count() == 0


def test_create_is_retried_when_kernel_says_it_is_safe(hook: KernelHook, kernel_emulator: Any) -> None:
    kernel_emulator.set_faults(
        {"rules": [{"route": "POST /invocations", "sequence": [{"status": 503, "should_retry": True}]}]}
    )
    assert hook.invoke("demo", "echo", invoke_async=True).id
    assert [r["status"] for r in posts(kernel_emulator)] == [503, 202]
    assert kernel_emulator.created_count() == 1


def test_should_retry_false_stops_a_read_retry(hook: KernelHook, kernel_emulator: Any) -> None:
    inv = hook.invoke("demo", "echo", invoke_async=False)
    kernel_emulator.set_faults(
        {"rules": [{"route": "GET /invocations/{id}", "sequence": [{"status": 503, "should_retry": False}]}]}
    )
    with pytest.raises(KernelApiError):
        hook.get_invocation(inv.id)
    assert len(kernel_emulator.requests(path=f"/invocations/{inv.id}", method="GET")) == 1


def test_read_timeout_on_a_read_is_retried(kernel_emulator: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_KERNEL_DEFAULT", conn_json(kernel_emulator.url, kernel_emulator.token, request_timeout=0.3)
    )
    hook = KernelHook(retry_policy=FAST_RETRY)
    inv = hook.invoke("demo", "echo", invoke_async=True)
    kernel_emulator.set_faults({"rules": [{"route": "GET /invocations/{id}", "sequence": [{"delay": 1.0}]}]})
    assert hook.get_invocation(inv.id).id == inv.id
    assert len(kernel_emulator.requests(path=f"/invocations/{inv.id}", method="GET")) == 2


def test_read_timeout_on_create_is_ambiguous(kernel_emulator: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_KERNEL_DEFAULT", conn_json(kernel_emulator.url, kernel_emulator.token, request_timeout=0.3)
    )
    kernel_emulator.set_faults({"rules": [{"route": "POST /invocations", "sequence": [{"delay": 1.0}]}]})
    with pytest.raises(KernelAmbiguousCreateError):
        KernelHook(retry_policy=FAST_RETRY).invoke("demo", "echo", invoke_async=True)
    assert len(posts(kernel_emulator)) == 1


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_connection_refused_is_retried_even_for_create(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_KERNEL_DEFAULT", conn_json(f"http://127.0.0.1:{_closed_port()}", "k"))
    attempts: list[int] = []
    hook = KernelHook(retry_policy=FAST_RETRY)
    transport = hook.client.transport
    original = transport.request

    def counting(call: Any, settings: Any) -> Any:
        attempts.append(1)
        return original(call, settings)

    monkeypatch.setattr(transport, "request", counting)
    with pytest.raises(KernelTransportError) as info:
        hook.invoke("demo", "echo", invoke_async=False)
    assert info.value.request_sent is False
    assert len(attempts) == FAST_RETRY.max_attempts


# --- async side -------------------------------------------------------------------------------------------


async def test_async_transport_runs_the_same_operations_and_retries(hook: KernelHook, kernel_emulator: Any) -> None:
    inv = await asyncio.to_thread(hook.invoke, "demo", "echo", payload=[1])
    kernel_emulator.set_faults(
        {
            "rules": [
                {"route": "GET /invocations/{id}", "sequence": [{"status": 502}, {"status": 429, "retry_after_ms": 50}]}
            ]
        }
    )
    again = await KernelHook(retry_policy=FAST_RETRY).aget_invocation(inv.id)
    assert again.succeeded and again.result == [1]
    statuses = [r["status"] for r in kernel_emulator.requests(path=f"/invocations/{inv.id}", method="GET")]
    assert statuses == [502, 429, 200]
    listed = await KernelHook(retry_policy=FAST_RETRY).alist_invocations(app_name="demo")
    assert [i.id for i in listed] == [inv.id]


async def test_async_create_ambiguity_matches_the_sync_side(hook: KernelHook, kernel_emulator: Any) -> None:
    kernel_emulator.set_faults({"rules": [{"route": "POST /invocations", "sequence": [{"drop": "after"}]}]})
    body = {"app_name": "demo", "version": "latest", "action_name": "echo", "async": True}
    with pytest.raises(KernelAmbiguousCreateError):
        await KernelHook(retry_policy=FAST_RETRY).acreate_invocation(body)
    assert len(posts(kernel_emulator)) == 1 and kernel_emulator.created_count() == 1


async def test_stream_events_yields_state_on_connect_then_logs_then_terminal_state(gated_kernel: Any) -> None:
    # Gated, so the run is still going when the stream connects however slow the machine: a run that has already
    # ended answers with its log history and the terminal state only.
    gate = gated_kernel.gate()
    inv = await asyncio.to_thread(
        KernelHook(retry_policy=FAST_RETRY).invoke,
        "gate",
        "wait",
        payload=gate.payload(after=3, interval=0.01),
        invoke_async=True,
    )
    opened = gate.open_when(seen(gated_kernel, EVENTS), "the stream to connect")
    events = [e async for e in KernelHook().astream_events(inv.id, silence_timeout=10)]
    opened()
    kinds = [e["event"] for e in events]
    assert kinds[0] == "invocation_state" and kinds[-1] == "invocation_state"
    assert events[-1]["invocation"]["status"] == "succeeded"
    assert [e["message"].strip() for e in events if e["event"] == "log"] == ["line 0", "line 1", "line 2"]


# --- cancel within a budget ----------------------------------------------------------------------------------

PATCH_ONE = "PATCH /invocations/{id}"


def _browsing(hook: KernelHook, emulator: Any, count: int = 2) -> str:
    """An invocation holding ``count`` browsers for an hour."""
    inv = hook.invoke("demo", "browse", payload={"count": count, "seconds": 3600}, invoke_async=True)
    deadline = time.monotonic() + 10
    while len(emulator.invocation(inv.id)["_emulator"]["browsers"]) < count:
        assert time.monotonic() < deadline, "the browse action should hold its browsers"
        time.sleep(0.02)
    return inv.id


def _cancel_requests(emulator: Any, inv_id: str) -> list[tuple[str, int | None]]:
    return [
        (r["method"], r["status"])
        for r in emulator.requests(path=f"/invocations/{inv_id}/browsers")
        if r["method"] == "DELETE"
    ] + [(r["method"], r["status"]) for r in emulator.requests(path=f"/invocations/{inv_id}", method="PATCH")]


def test_cancel_within_budget_deletes_browsers_while_the_patch_hangs(hook: KernelHook, kernel_emulator: Any) -> None:
    """A PATCH slower than the budget: the call returns when the budget is spent, the DELETE has gone through."""
    inv_id = _browsing(hook, kernel_emulator)
    kernel_emulator.set_faults({"rules": [{"route": PATCH_ONE, "fault": {"delay": 10}}]})
    started = time.monotonic()
    with pytest.raises(KernelTransportError) as info:
        hook.cancel_invocation(inv_id, reason="stop", budget=1.0)
    elapsed = time.monotonic() - started
    assert elapsed < 2.0, elapsed  # the budget (1 s) plus scheduling slack, far below the PATCH's 10 s
    assert info.value.method == "PATCH"
    assert kernel_emulator.invocation(inv_id)["_emulator"]["browsers"] == []
    assert ("DELETE", 204) in _cancel_requests(kernel_emulator, inv_id)


async def test_async_cancel_within_budget_deletes_browsers_while_the_patch_hangs(
    hook: KernelHook, kernel_emulator: Any
) -> None:
    inv_id = await asyncio.to_thread(_browsing, hook, kernel_emulator)
    kernel_emulator.set_faults({"rules": [{"route": PATCH_ONE, "fault": {"delay": 10}}]})
    started = time.monotonic()
    with pytest.raises(KernelTransportError) as info:
        await KernelHook(retry_policy=FAST_RETRY).acancel_invocation(inv_id, reason="stop", budget=1.0)
    assert time.monotonic() - started < 2.0
    assert info.value.method == "PATCH"
    assert kernel_emulator.invocation(inv_id)["_emulator"]["browsers"] == []
    assert ("DELETE", 204) in _cancel_requests(kernel_emulator, inv_id)


@pytest.mark.parametrize("side", ["sync", "async"])
async def test_cancel_with_a_failing_patch_still_deletes_and_raises_the_patch_error(
    hook: KernelHook, kernel_emulator: Any, side: str
) -> None:
    inv_id = await asyncio.to_thread(_browsing, hook, kernel_emulator)
    kernel_emulator.set_faults({"rules": [{"route": PATCH_ONE, "fault": {"status": 500}}]})
    with pytest.raises(KernelApiError) as info:
        if side == "sync":
            await asyncio.to_thread(hook.cancel_invocation, inv_id, None, budget=5.0)
        else:
            await KernelHook(retry_policy=FAST_RETRY).acancel_invocation(inv_id, budget=5.0)
    assert info.value.status_code == 500 and info.value.method == "PATCH"
    assert kernel_emulator.invocation(inv_id)["_emulator"]["browsers"] == []
    patches = kernel_emulator.requests(path=f"/invocations/{inv_id}", method="PATCH")
    assert 1 < len(patches) <= FAST_RETRY.max_attempts  # retried within the budget, then given up


@pytest.mark.parametrize("side", ["sync", "async"])
async def test_cancel_without_budget_keeps_the_full_retries(hook: KernelHook, kernel_emulator: Any, side: str) -> None:
    inv_id = await asyncio.to_thread(_browsing, hook, kernel_emulator)
    kernel_emulator.set_faults({"rules": [{"route": PATCH_ONE, "sequence": [{"status": 503}, {"status": 502}]}]})
    if side == "sync":
        cancelled = await asyncio.to_thread(hook.cancel_invocation, inv_id, "no budget")
    else:
        cancelled = await KernelHook(retry_policy=FAST_RETRY).acancel_invocation(inv_id, "no budget")
    assert cancelled is not None and cancelled.failed
    assert json.loads(kernel_emulator.invocation(inv_id)["output"]) == {"error": "no budget"}
    assert [r["status"] for r in kernel_emulator.requests(path=f"/invocations/{inv_id}", method="PATCH")] == [
        503,
        502,
        200,
    ]
    assert kernel_emulator.invocation(inv_id)["_emulator"]["browsers"] == []


async def test_async_cancel_of_unknown_invocation_is_tolerated(hook: KernelHook) -> None:
    assert await KernelHook().acancel_invocation("a" * 24, budget=5) is None


@pytest.mark.parametrize("budget", [0, -1, "5", float("nan"), True])
async def test_cancel_budget_is_checked_before_any_request(hook: KernelHook, kernel_emulator: Any, budget: Any) -> None:
    with pytest.raises(KernelInputError, match="budget"):
        hook.cancel_invocation("a" * 24, budget=budget)
    with pytest.raises(KernelInputError, match="budget"):
        await KernelHook().acancel_invocation("a" * 24, budget=budget)
    assert kernel_emulator.requests() == []


# --- a rotated API key (trigger side) -------------------------------------------------------------------------


async def test_rotated_key_is_read_again_and_the_request_retried_once(
    hook: KernelHook, kernel_emulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    inv = await asyncio.to_thread(hook.invoke, "demo", "echo", payload=1)
    shared = KernelHook.shared("kernel_default")
    await shared.aget_settings()  # cached with the old key, as a long-running triggerer would have it
    rotate_key(kernel_emulator, monkeypatch, "rotated-key", connection_key="rotated-key")
    assert (await shared.aget_invocation(inv.id)).succeeded
    seen = kernel_emulator.requests(path=f"/invocations/{inv.id}", method="GET")
    assert [(r["auth"], r["status"]) for r in seen] == [("invalid", 401), ("valid", 200)]
    # The stream now opens with the settings read again (no second refusal).
    events = [e async for e in shared.astream_events(inv.id, silence_timeout=10)]
    assert events[-1]["invocation"]["status"] == "succeeded"


async def test_rotated_key_on_opening_the_event_stream(
    hook: KernelHook, kernel_emulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    inv = await asyncio.to_thread(
        hook.invoke, "demo", "logs", payload={"lines": 2, "interval": 0.01}, invoke_async=True
    )
    shared = KernelHook.shared("kernel_default")
    await shared.aget_settings()
    rotate_key(kernel_emulator, monkeypatch, "rotated-key", connection_key="rotated-key")
    events = [e async for e in shared.astream_events(inv.id, silence_timeout=10)]
    assert [e["message"].strip() for e in events if e["event"] == "log"] == ["line 0", "line 1"]
    streams = kernel_emulator.requests(path=f"/invocations/{inv.id}/events")
    assert [(r["auth"], r["status"]) for r in streams] == [("invalid", 401), ("valid", 200)]


@pytest.mark.parametrize("connection_key", [None, "another-wrong-key"])
async def test_refused_key_is_read_again_once_then_the_error_stands(
    hook: KernelHook,
    kernel_emulator: Any,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    connection_key: str | None,
) -> None:
    """Unchanged connection: one re-read, no second request. Changed but still wrong: one retry, then the 401."""
    inv = await asyncio.to_thread(hook.invoke, "demo", "echo", payload=1)
    shared = KernelHook.shared("kernel_default")
    await shared.aget_settings()
    rotate_key(kernel_emulator, monkeypatch, "rotated-key", connection_key=connection_key)
    with caplog.at_level(logging.INFO, logger="kernel_provider"):
        with pytest.raises(KernelAuthError):
            await shared.aget_invocation(inv.id)
        with pytest.raises(KernelAuthError):
            async for _ in shared.astream_events(inv.id, silence_timeout=10):
                pass
    gets = kernel_emulator.requests(path=f"/invocations/{inv.id}", method="GET")
    streams = kernel_emulator.requests(path=f"/invocations/{inv.id}/events")
    expected = 1 if connection_key is None else 2
    assert [r["status"] for r in gets] == [401] * expected
    # The stream starts from the settings read again: refused once, re-read once more, not retried again.
    assert [r["status"] for r in streams] == [401]
    rereads = [r for r in caplog.records if "reading the connection again" in r.getMessage()]
    assert len(rereads) == 2  # one per refused call, never a loop
    assert not any(key in caplog.text for key in ("rotated-key", "another-wrong-key", kernel_emulator.token))


async def test_refused_key_with_a_connection_that_cannot_be_read_again_reports_the_refusal(
    hook: KernelHook, kernel_emulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    inv = await asyncio.to_thread(hook.invoke, "demo", "echo", payload=1)
    shared = KernelHook.shared("kernel_default")
    await shared.aget_settings()
    rotate_key(kernel_emulator, monkeypatch, "rotated-key", connection_key=None)
    monkeypatch.setenv("AIRFLOW_CONN_KERNEL_DEFAULT", json.dumps({"conn_type": "kernel", "host": kernel_emulator.url}))
    with pytest.raises(KernelAuthError):  # the 401, not the broken connection met while reading it again
        await shared.aget_invocation(inv.id)
    with pytest.raises(KernelConnectionConfigError):  # the settings were dropped: the next call looks again
        await shared.aget_settings()


# --- connection handling ------------------------------------------------------------------------------------


def test_connection_without_key_is_a_clear_error(kernel_emulator: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_KERNEL_DEFAULT", json.dumps({"conn_type": "kernel", "host": kernel_emulator.url}))
    with pytest.raises(KernelConnectionConfigError) as info:
        KernelHook().get_invocation("x" * 24)
    assert "API key" in str(info.value) and "password" in str(info.value)
    assert kernel_emulator.requests() == []


@pytest.mark.parametrize("host", ["ftp://example.com", "https://[bad", "https://example.com:99999"])
def test_malformed_base_url_is_a_clear_error(host: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_KERNEL_DEFAULT", conn_json(host, "k"))
    with pytest.raises(KernelConnectionConfigError) as info:
        KernelHook().get_invocation("x" * 24)
    assert "host" in str(info.value)


def test_unknown_connection_is_a_clear_error() -> None:
    with pytest.raises(KernelConnectionConfigError) as info:
        KernelHook(kernel_conn_id="no_such_kernel_conn").get_invocation("x" * 24)
    assert "no_such_kernel_conn" in str(info.value) and "AIRFLOW_CONN_NO_SUCH_KERNEL_CONN" in str(info.value)


def test_bad_extra_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_KERNEL_DEFAULT", conn_json("http://127.0.0.1:1", "k", request_timeout="fast"))
    with pytest.raises(KernelConnectionConfigError) as info:
        KernelHook().get_invocation("x" * 24)
    assert "extra.request_timeout" in str(info.value)


def test_base_url_forms(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    cases = {
        "": "https://api.onkernel.com",
        "api.onkernel.com": "https://api.onkernel.com",
        "https://api.onkernel.com/": "https://api.onkernel.com",
        "127.0.0.1:8080": "http://127.0.0.1:8080",
        "localhost": "http://localhost",
    }
    for host, expected in cases.items():
        monkeypatch.setenv("AIRFLOW_CONN_KERNEL_DEFAULT", conn_json(host, "k"))
        assert KernelHook().settings.base_url == expected
    monkeypatch.setenv("AIRFLOW_CONN_KERNEL_DEFAULT", conn_json("http://kernel.internal", "k"))
    with pytest.raises(KernelConnectionConfigError, match="allow_insecure_http"):
        KernelHook().settings  # noqa: B018
    monkeypatch.setenv(
        "AIRFLOW_CONN_KERNEL_DEFAULT", conn_json("http://kernel.internal", "k", allow_insecure_http=True)
    )
    with caplog.at_level(logging.WARNING):
        KernelHook().settings  # noqa: B018
    assert "plain http" in caplog.text


def test_uri_form_of_the_connection(kernel_emulator: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    host, port = kernel_emulator.url.removeprefix("http://").split(":")
    monkeypatch.setenv(
        "AIRFLOW_CONN_KERNEL_DEFAULT", f"kernel://:{kernel_emulator.token}@{host}:{port}/?project_id=proj_uri"
    )
    assert KernelHook().invoke("demo", "echo", invoke_async=False).succeeded
    assert posts(kernel_emulator)[0]["project_id"] == "proj_uri"


def test_test_connection_messages(kernel_emulator: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_KERNEL_DEFAULT", conn_json(kernel_emulator.url, kernel_emulator.token))
    ok, message = KernelHook().test_connection()
    assert ok and "valid" in message
    assert [r["query"] for r in kernel_emulator.requests(path="/apps")] == ["limit=1"]
    monkeypatch.setenv("AIRFLOW_CONN_KERNEL_DEFAULT", conn_json(kernel_emulator.url, "wrong-key"))
    ok, message = KernelHook().test_connection()
    assert not ok and "rejected the API key" in message and "401" in message
    monkeypatch.setenv("AIRFLOW_CONN_KERNEL_DEFAULT", conn_json(f"http://127.0.0.1:{_closed_port()}", "k"))
    ok, message = KernelHook().test_connection()
    assert not ok and "Could not reach" in message


# --- the key never leaks ------------------------------------------------------------------------------------


def test_canary_key_never_appears_in_logs_or_errors(
    kernel_emulator_factory: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    canary = "sk_canary_" + "7f3a9b2c4d5e6f708192a3b4c5d6e7f8"
    emulator = kernel_emulator_factory(token=canary)
    monkeypatch.setenv("AIRFLOW_CONN_KERNEL_DEFAULT", conn_json(emulator.url, canary))
    texts: list[str] = []
    with caplog.at_level(logging.DEBUG):
        hook = KernelHook(retry_policy=FAST_RETRY)
        texts += [repr(hook), str(hook), repr(hook.settings)]
        inv = hook.invoke("demo", "fail", payload={"message": "boom"}, invoke_async=False)
        texts.append(repr(inv))
        emulator.set_faults({"rules": [{"route": "*", "fault": {"status": 500}}]})
        for action in (lambda: hook.get_invocation(inv.id), lambda: hook.invoke("demo", "echo", invoke_async=False)):
            with pytest.raises(Exception) as info:
                action()
            texts += [str(info.value), repr(info.value)]
        monkeypatch.setenv("AIRFLOW_CONN_KERNEL_DEFAULT", conn_json(emulator.url, canary + "x"))
        emulator.clear_faults()
        with pytest.raises(KernelApiError) as info:
            KernelHook(retry_policy=FAST_RETRY).get_invocation(inv.id)
        texts += [str(info.value), KernelHook().test_connection()[1]]
    texts.append(caplog.text)
    texts.append(json.dumps(emulator.requests()))
    blob = "\n".join(texts)
    for needle in (canary, canary[:12], canary[-12:]):
        assert needle not in blob


def test_provider_is_registered_and_connections_test_works(kernel_emulator: Any, tmp_path: Any) -> None:
    import os

    env = {
        **os.environ,
        "AIRFLOW__CORE__TEST_CONNECTION": "Enabled",
        "AIRFLOW_CONN_KERNEL_DEFAULT": conn_json(kernel_emulator.url, kernel_emulator.token),
        "AIRFLOW_CONN_KERNEL_WRONG": conn_json(kernel_emulator.url, "wrong-key"),
    }
    # The three commands through Airflow's own CLI entry point, in one process: an Airflow CLI start costs seconds.
    commands = [["providers", "list", "-o", "plain"], ["connections", "test", "kernel_default"]]
    commands.append(["connections", "test", "kernel_wrong"])
    driver = (
        "import sys\n"
        "from airflow.__main__ import main\n"
        f"for argv in {commands!r}:\n"
        "    sys.argv = ['airflow', *argv]\n"
        "    print('=== airflow', *argv, flush=True)\n"
        "    try:\n"
        "        main()\n"
        "        code = 0\n"
        "    except SystemExit as stop:\n"
        "        code = stop.code\n"
        "    print('=== exit', code, flush=True)\n"
    )
    ran = subprocess.run([sys.executable, "-c", driver], env=env, capture_output=True, text=True, timeout=180)
    outputs = ran.stdout.split("=== airflow ")[1:]
    assert len(outputs) == 3, ran.stdout[-2000:] + ran.stderr[-2000:]
    listed, good, bad = outputs
    assert "airflow-provider-kernel" in listed and listed.rstrip().endswith("=== exit 0"), listed[-2000:]
    assert "Connection success!" in good and good.rstrip().endswith("=== exit 0"), good[-2000:]
    assert "Connection failed!" in bad and "rejected the API key" in bad, bad[-2000:]  # 2.11 exits 0 on it
