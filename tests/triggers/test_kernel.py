"""KernelInvocationTrigger against the local Kernel emulator over real HTTP (no mocks).

Each test drives ``trigger.run()`` / ``trigger.wait()`` on pytest-asyncio's loop, exactly as the triggerer
would, and checks both the event and what the emulator saw (its request log, invocation states, counters).
"""

from __future__ import annotations

import asyncio
import importlib
import json
import time
from typing import Any

import pytest

from kernel_provider.hooks.kernel import KernelHook
from kernel_provider.triggers.kernel import KernelInvocationTrigger
from tests.airflow_helpers import EVENTS, GET_ONE, gated_kernel, kernel_lines, requests_for, seen, wait_until
from tests.helpers import conn_json

EVENT_KEYS = {"status", "invocation_id", "status_reason", "message"}


__all__ = ["gated_kernel"]  # a fixture


def start(action: str, payload: Any = None, app: str = "demo") -> str:
    """Create an async invocation with the worker-side hook; returns its id."""
    return KernelHook().invoke(app, action, payload=payload, invoke_async=True).id


def start_gated(emulator: Any, **payload: Any) -> tuple[str, Any]:
    """Start the ``gated`` app's ``run`` action; returns its id and its (closed) gate."""
    gate = emulator.gate()
    return start("run", gate.payload(**payload), app="gated"), gate


def trigger(invocation_id: str, **kwargs: Any) -> KernelInvocationTrigger:
    kwargs.setdefault("poll_interval", 0.1)
    return KernelInvocationTrigger(invocation_id=invocation_id, **kwargs)


async def run_to_event(t: KernelInvocationTrigger) -> dict[str, Any]:
    """All events of ``run()``: exactly one is allowed."""
    events = [e async for e in t.run()]
    assert len(events) == 1, events
    return events[0].payload


# --- terminal paths -----------------------------------------------------------------------------------------


async def test_succeeded(kernel_conn_env):
    inv_id = start("sleep", {"seconds": 0.3, "result": {"answer": 42}})
    event = await run_to_event(trigger(inv_id))
    assert event["status"] == "succeeded"
    assert event["invocation_id"] == inv_id
    assert set(event) == EVENT_KEYS
    assert kernel_conn_env.invocation(inv_id)["status"] == "succeeded"


async def test_failed_carries_status_reason(kernel_conn_env):
    inv_id = start("fail", {"message": "the page never loaded"})
    event = await run_to_event(trigger(inv_id))
    assert event["status"] == "failed"
    assert event["status_reason"] == kernel_conn_env.invocation(inv_id)["status_reason"]
    assert "ValueError" in event["status_reason"]


async def test_event_is_small_and_has_no_output(kernel_conn_env):
    """Events land in Airflow's metadata DB: the (here 1 MB) output is fetched by the worker, never sent."""
    inv_id = start("big", {"size": 1_000_000})
    event = await run_to_event(trigger(inv_id))
    assert event["status"] == "succeeded"
    assert "output" not in event
    assert len(json.dumps(event)) < 1000
    assert len(kernel_conn_env.invocation(inv_id)["output"]) > 1_000_000


async def test_deadline_in_the_past_times_out_without_any_request(kernel_conn_env):
    inv_id = start("slow")
    before = len(kernel_conn_env.requests())
    event = await run_to_event(trigger(inv_id, end_time=time.time() - 1))
    assert event["status"] == "timeout"
    assert event["invocation_id"] == inv_id
    assert len(kernel_conn_env.requests()) == before  # no GET, no stream: it did not wait at all
    assert kernel_conn_env.invocation(inv_id)["status"] == "running"  # the trigger never cancels


async def test_short_deadline_on_a_slow_action_times_out(kernel_conn_env):
    inv_id = start("slow")
    event = await run_to_event(trigger(inv_id, end_time=time.time() + 1.0))
    assert event["status"] == "timeout"
    assert "deadline" in event["message"]
    # It did wait (it checked and followed the stream) and left the decision to cancel to the task.
    assert any(r["route"] == "/invocations/{id}/events" for r in requests_for(kernel_conn_env, inv_id))
    assert kernel_conn_env.invocation(inv_id)["status"] == "running"
    assert not any(r["method"] == "PATCH" for r in requests_for(kernel_conn_env, inv_id))


async def test_unknown_invocation_is_an_error_at_once(kernel_conn_env):
    missing = "doesnotexist0000000000000"
    event = await run_to_event(trigger(missing))
    assert event["status"] == "error"
    assert "404" in event["message"]
    assert len(requests_for(kernel_conn_env, missing)) == 1  # a 404 is not retried


async def test_wrong_api_key_is_an_error_at_once(kernel_conn_env, monkeypatch):
    inv_id = start("slow")
    monkeypatch.setenv("AIRFLOW_CONN_KERNEL_DEFAULT", conn_json(kernel_conn_env.url, "not-the-key"))
    event = await run_to_event(trigger(inv_id))
    assert event["status"] == "error"
    assert "401" in event["message"]
    assert "not-the-key" not in event["message"]
    seen = requests_for(kernel_conn_env, inv_id)
    assert [(r["method"], r["auth"], r["status"]) for r in seen] == [("GET", "invalid", 401)]


@pytest.mark.parametrize("mode", ["stream", "poll"])
async def test_persistent_5xx_gives_up_after_the_failure_budget(kernel_conn_env, monkeypatch, mode):
    inv_id = start("slow")
    monkeypatch.setenv("AIRFLOW_CONN_KERNEL_DEFAULT",
                       conn_json(kernel_conn_env.url, kernel_conn_env.token, max_retries=0))
    kernel_conn_env.set_faults({"rules": [
        {"route": "GET /invocations/{id}", "fault": {"status": 503}},
        {"route": "GET /invocations/{id}/events", "fault": {"status": 503}},
    ]})
    event = await run_to_event(trigger(inv_id, mode=mode, poll_interval=0.05, max_consecutive_failures=3))
    assert event["status"] == "error"
    assert "Gave up after 3 failed checks" in event["message"]
    assert "503" in event["message"]
    status_checks = [r for r in requests_for(kernel_conn_env, inv_id) if r["route"] == "/invocations/{id}"]
    assert len(status_checks) == 3  # max_retries=0: one request per check, three checks
    assert all(r["status"] == 503 for r in status_checks)


async def test_transient_5xx_is_retried_and_the_wait_succeeds(kernel_conn_env):
    inv_id = start("sleep", {"seconds": 0.3})
    kernel_conn_env.set_faults({"rules": [
        {"route": "GET /invocations/{id}", "sequence": [{"status": 503}, {"status": 502}]},
    ]})
    event = await run_to_event(trigger(inv_id))
    assert event["status"] == "succeeded"
    statuses = [r["status"] for r in requests_for(kernel_conn_env, inv_id) if r["route"] == "/invocations/{id}"]
    assert statuses[:3] == [503, 502, 200]


# --- streaming ------------------------------------------------------------------------------------------------


async def test_stream_mode_streams_logs_with_at_most_three_requests(gated_kernel, caplog, capfd):
    inv_id, gate = start_gated(gated_kernel, before=3, after=2, interval=0.05)
    opened = gate.open_when(seen(gated_kernel, EVENTS), "the trigger to follow the stream")
    event = await run_to_event(trigger(inv_id))
    opened()
    assert event["status"] == "succeeded"
    assert kernel_lines(inv_id, caplog, capfd) == [f"line {i}" for i in range(5)]
    requested = requests_for(gated_kernel, inv_id)
    assert 1 <= len(requested) <= 3, [(r["method"], r["path"]) for r in requested]
    assert sum(r["route"] == EVENTS for r in requested) == 1


async def test_stream_cut_midway_resumes_without_lost_or_doubled_lines(gated_kernel, caplog, capfd):
    inv_id, gate = start_gated(gated_kernel, before=6, after=6, interval=0.05)
    # Three streams in a row break after 2 events each (the state on connect counts as one); the action only
    # finishes after that, so the lines after the gate come through a resumed stream.
    gated_kernel.set_faults({"seed": 1, "rules": [
        {"route": "GET /invocations/{id}/events", "times": 3, "fault": {"cut_after_events": 2}},
    ]})
    opened = gate.open_when(seen(gated_kernel, EVENTS, at_least=3), "three cut streams")
    event = await run_to_event(trigger(inv_id))
    opened()
    assert event["status"] == "succeeded"
    assert kernel_lines(inv_id, caplog, capfd) == [f"line {i}" for i in range(12)]
    streams = [r for r in requests_for(gated_kernel, inv_id) if r["route"] == EVENTS]
    assert len(streams) >= 4
    assert "since=" in streams[1]["query"]  # resumed after the last line seen, not from the start


async def test_silent_stream_is_detected_and_the_wait_recovers(gated_kernel, caplog, capfd):
    inv_id, gate = start_gated(gated_kernel, before=2, after=2, interval=0.05)
    gated_kernel.set_faults({"rules": [
        {"route": "GET /invocations/{id}/events", "times": 1, "fault": {"silent": True}},
    ]})
    opened = gate.open_when(seen(gated_kernel, EVENTS, at_least=2), "a second stream after the silent one")
    event = await run_to_event(trigger(inv_id, silence_timeout=1.0))
    opened()
    assert event["status"] == "succeeded"
    assert kernel_lines(inv_id, caplog, capfd) == [f"line {i}" for i in range(4)]


async def test_error_event_in_stream_is_resumed(kernel_conn_env):
    inv_id = start("sleep", {"seconds": 0.5})
    kernel_conn_env.set_faults({"rules": [
        {"route": "GET /invocations/{id}/events", "times": 1,
         "fault": {"error_event": {"code": "internal_error", "message": "log backend hiccup"},
                   "error_then_close": True}},
    ]})
    event = await run_to_event(trigger(inv_id))
    assert event["status"] == "succeeded"
    streams = [r for r in requests_for(kernel_conn_env, inv_id) if r["route"] == "/invocations/{id}/events"]
    assert len(streams) == 2


async def test_poll_mode(gated_kernel):
    inv_id, gate = start_gated(gated_kernel, result="ok")
    opened = gate.open_when(seen(gated_kernel, GET_ONE, at_least=2), "two status checks")
    event = await run_to_event(trigger(inv_id, mode="poll", poll_interval=0.1))
    opened()
    assert event["status"] == "succeeded"
    requested = requests_for(gated_kernel, inv_id)
    assert all(r["route"] == GET_ONE and r["method"] == "GET" for r in requested)
    assert len(requested) >= 3  # polled while running, then saw it finished


async def test_poll_mode_failed(kernel_conn_env):
    inv_id = start("fail", {"message": "nope"})
    event = await run_to_event(trigger(inv_id, mode="poll", poll_interval=0.1))
    assert event["status"] == "failed"
    assert event["status_reason"]


# --- serialization and restarts --------------------------------------------------------------------------------


def test_serialize_is_primitives_only_and_deadline_is_absolute():
    end_time = time.time() + 600
    t = KernelInvocationTrigger(invocation_id="abc", kernel_conn_id="my_kernel", end_time=end_time,
                                poll_interval=2, mode="poll", stream_logs=False, max_consecutive_failures=7,
                                silence_timeout=9, max_stream_failures=3, cancel_on_kill=False)
    classpath, kwargs = t.serialize()
    assert classpath == "kernel_provider.triggers.kernel.KernelInvocationTrigger"
    assert json.loads(json.dumps(kwargs)) == kwargs  # plain JSON, no objects
    assert all(v is None or isinstance(v, (str, int, float, bool)) for v in kwargs.values())
    # The deadline is wall-clock time, so it means the same thing after a triggerer restart on another host.
    assert kwargs["end_time"] == end_time
    assert abs(kwargs["end_time"] - time.time() - 600) < 60
    module, _, name = classpath.rpartition(".")
    rebuilt = getattr(importlib.import_module(module), name)(**kwargs)
    assert rebuilt.serialize() == (classpath, kwargs)


def test_unknown_mode_is_rejected():
    with pytest.raises(ValueError, match="mode"):
        KernelInvocationTrigger(invocation_id="abc", mode="carrier-pigeon")


async def test_rebuilt_from_serialize_continues_the_same_wait(gated_kernel, caplog, capfd):
    """A triggerer restart: the trigger is rebuilt from its kwargs and resumes; nothing is invoked again."""
    inv_id, gate = start_gated(gated_kernel, before=3, after=3, interval=0.02)
    first = trigger(inv_id)
    gen = first.run()
    waiting = asyncio.ensure_future(gen.__anext__())
    while not any(r["route"] == EVENTS for r in requests_for(gated_kernel, inv_id)):
        assert not waiting.done()
        await asyncio.sleep(0.02)
    waiting.cancel()  # the triggerer goes away mid-wait
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await gen.aclose()
    before_restart = len(requests_for(gated_kernel, inv_id))
    assert gated_kernel.invocation(inv_id)["status"] == "running"

    classpath, kwargs = first.serialize()
    module, _, name = classpath.rpartition(".")
    second = getattr(importlib.import_module(module), name)(**json.loads(json.dumps(kwargs)))
    opened = gate.open_when(lambda: len(requests_for(gated_kernel, inv_id)) > before_restart + 1,
                            "the rebuilt trigger to check and follow")
    event = await run_to_event(second)
    opened()

    assert event["status"] == "succeeded"
    assert event["invocation_id"] == inv_id
    after = requests_for(gated_kernel, inv_id)[before_restart:]
    assert (after[0]["method"], after[0]["route"]) == ("GET", GET_ONE)  # first: one immediate check
    assert gated_kernel.created_count() == 1
    assert len(gated_kernel.requests(path="/invocations", method="POST")) == 1
    assert set(kernel_lines(inv_id, caplog, capfd)) == {f"line {i}" for i in range(6)}


# --- on_kill ----------------------------------------------------------------------------------------------------


async def test_on_kill_cancels_the_invocation_and_deletes_its_browsers(kernel_conn_env):
    inv_id = start("browse", {"count": 2, "seconds": 3600})
    wait_until(lambda: len(kernel_conn_env.invocation(inv_id)["_emulator"]["browsers"]) == 2, "2 browsers")
    t = trigger(inv_id)
    waiting = asyncio.ensure_future(run_to_event(t))
    await asyncio.sleep(0.3)
    assert not waiting.done()

    await t.on_kill()

    inv = kernel_conn_env.invocation(inv_id)
    assert inv["status"] == "failed"
    assert inv["_emulator"]["browsers"] == []
    methods = [(r["method"], r["route"]) for r in requests_for(kernel_conn_env, inv_id)]
    assert ("PATCH", "/invocations/{id}") in methods
    assert ("DELETE", "/invocations/{id}/browsers") in methods
    event = await asyncio.wait_for(waiting, timeout=30)
    assert event["status"] == "failed"


async def test_on_kill_does_nothing_when_disabled(kernel_conn_env):
    inv_id = start("slow")
    await trigger(inv_id, cancel_on_kill=False).on_kill()
    assert kernel_conn_env.invocation(inv_id)["status"] == "running"
    assert not any(r["method"] in ("PATCH", "DELETE") for r in requests_for(kernel_conn_env, inv_id))


async def test_cleanup_never_cancels(kernel_conn_env):
    inv_id = start("slow")
    t = trigger(inv_id)
    await t.cleanup()
    assert kernel_conn_env.invocation(inv_id)["status"] == "running"


async def test_logs_of_a_run_that_ended_before_the_wait_are_replayed(kernel_conn_env, caplog, capfd):
    inv_id = start("logs", {"lines": 3, "interval": 0.01})
    kernel_conn_env.wait_for(inv_id)
    event = await run_to_event(trigger(inv_id))
    assert event["status"] == "succeeded"
    assert kernel_lines(inv_id, caplog, capfd) == ["line 0", "line 1", "line 2"]
    routes = [r["route"] for r in requests_for(kernel_conn_env, inv_id) if r["method"] == "GET"]
    assert routes.count(EVENTS) == 1 and len(routes) <= 3


async def test_no_replay_when_log_streaming_is_off(kernel_conn_env):
    inv_id = start("logs", {"lines": 2, "interval": 0.01})
    kernel_conn_env.wait_for(inv_id)
    assert (await run_to_event(trigger(inv_id, stream_logs=False)))["status"] == "succeeded"
    assert EVENTS not in [r["route"] for r in requests_for(kernel_conn_env, inv_id)]
