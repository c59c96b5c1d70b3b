"""KernelInvocationTrigger against the local Kernel emulator over real HTTP (no mocks).

Each test drives ``trigger.run()`` / ``trigger.wait()`` on pytest-asyncio's loop, exactly as the triggerer
would, and checks both the event and what the emulator saw (its request log, invocation states, counters).
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from kernel_provider.hooks.kernel import KernelHook
from kernel_provider.triggers.kernel import LOG_CURSOR_XCOM_KEY, KernelInvocationTrigger, _on_kill_budget
from kernel_provider.version_compat import AIRFLOW_V_3_3_PLUS
from tests.airflow_helpers import (
    AF2,
    AF3,
    kernel_lines,
    make_dag,
    requests_for,
    run_dag,
    task,
    ti_map,
    xcom,
)
from tests.helpers import EVENTS, GET_ONE, conn_json, rotate_key, seen, wait_until

EVENT_KEYS = {"status", "invocation_id", "status_reason", "message", "cancelled", "xcom_scheme"}


def start(action: str, payload: Any = None, app: str = "demo") -> str:
    """Create an async invocation with the worker-side hook; returns its id."""
    return KernelHook().invoke(app, action, payload=payload, invoke_async=True).id


def start_gated(emulator: Any, **payload: Any) -> tuple[str, Any]:
    """Start the ``gate`` app's ``wait`` action; returns its id and its (closed) gate."""
    gate = emulator.gate()
    return start("wait", gate.payload(**payload), app="gate"), gate


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


async def test_event_names_the_try_that_deferred(kernel_conn_env):
    """The try number the task deferred with comes back in the event (so a retry can tell it is not its own)."""
    inv_id = start("sleep", {"seconds": 0.1})
    event = await run_to_event(trigger(inv_id, try_number=3))
    assert (event["status"], event["try_number"]) == ("succeeded", 3)
    assert "try_number" not in await run_to_event(trigger(inv_id))  # not given: not echoed


async def test_a_triggerer_wait_reports_no_sooner_than_resume_not_before(kernel_conn_env):
    """A deferred task's wait holds a quick result until ``resume_not_before`` (so the scheduler has seen the
    deferring process exit); a wait without a task instance (a worker's, ``dag.test()``'s) is never held."""
    inv_id = start("echo", {"ok": 1})
    not_before = time.time() + 1.0
    held = trigger(inv_id, mode="poll", resume_not_before=not_before)
    # What the triggerer sets; poll mode keeps no log cursor, so nothing reads through it.
    held.task_instance = SimpleNamespace(dag_id="d", task_id="t", run_id="r", map_index=-1, try_number=1)
    assert (await run_to_event(held))["status"] == "succeeded"
    assert time.time() >= not_before
    never_held = trigger(inv_id, mode="poll", resume_not_before=time.time() + 3600)
    event = await asyncio.wait_for(run_to_event(never_held), timeout=60)
    assert event["status"] == "succeeded"


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
    # 5 s: long enough for the stream to be opened before the deadline on a loaded machine (1 s was not, on 2.11).
    event = await run_to_event(trigger(inv_id, end_time=time.time() + 5.0))
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
    monkeypatch.setenv(
        "AIRFLOW_CONN_KERNEL_DEFAULT", conn_json(kernel_conn_env.url, kernel_conn_env.token, max_retries=0)
    )
    kernel_conn_env.set_faults(
        {
            "rules": [
                {"route": "GET /invocations/{id}", "fault": {"status": 503}},
                {"route": "GET /invocations/{id}/events", "fault": {"status": 503}},
            ]
        }
    )
    event = await run_to_event(trigger(inv_id, mode=mode, poll_interval=0.05, max_consecutive_failures=3))
    assert event["status"] == "error"
    assert "Gave up after 3 failed checks" in event["message"]
    assert "503" in event["message"]
    status_checks = [r for r in requests_for(kernel_conn_env, inv_id) if r["route"] == "/invocations/{id}"]
    assert len(status_checks) == 3  # max_retries=0: one request per check, three checks
    assert all(r["status"] == 503 for r in status_checks)


async def test_transient_5xx_is_retried_and_the_wait_succeeds(kernel_conn_env):
    """Poll mode: its checks are the GETs (a stream-mode wait opens the stream without one)."""
    inv_id = start("sleep", {"seconds": 0.3})
    kernel_conn_env.set_faults(
        {
            "rules": [
                {"route": "GET /invocations/{id}", "sequence": [{"status": 503}, {"status": 502}]},
            ]
        }
    )
    event = await run_to_event(trigger(inv_id, mode="poll"))
    assert event["status"] == "succeeded"
    statuses = [r["status"] for r in requests_for(kernel_conn_env, inv_id) if r["route"] == "/invocations/{id}"]
    assert statuses[:3] == [503, 502, 200]


# --- streaming ------------------------------------------------------------------------------------------------


async def test_stream_mode_streams_logs_with_one_request(gated_kernel, caplog, capfd):
    """The stream is opened at once (no GET first: its first event is the current state) and is all it takes."""
    inv_id, gate = start_gated(gated_kernel, before=3, after=2, interval=0.05)
    opened = gate.open_when(seen(gated_kernel, EVENTS), "the trigger to follow the stream")
    event = await run_to_event(trigger(inv_id))
    opened()
    assert event["status"] == "succeeded"
    assert kernel_lines(inv_id, caplog, capfd) == [f"line {i}" for i in range(5)]
    requested = requests_for(gated_kernel, inv_id)
    assert [(r["method"], r["route"]) for r in requested] == [("GET", EVENTS)]


async def test_stream_cut_midway_resumes_without_lost_or_doubled_lines(gated_kernel, caplog, capfd):
    inv_id, gate = start_gated(gated_kernel, before=6, after=6, interval=0.05)
    # Three streams in a row break after 2 events each (the state on connect counts as one); the action only
    # finishes after that, so the lines after the gate come through a resumed stream.
    gated_kernel.set_faults(
        {
            "seed": 1,
            "rules": [
                {"route": "GET /invocations/{id}/events", "times": 3, "fault": {"cut_after_events": 2}},
            ],
        }
    )
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
    gated_kernel.set_faults(
        {
            "rules": [
                {"route": "GET /invocations/{id}/events", "times": 1, "fault": {"silent": True}},
            ]
        }
    )
    opened = gate.open_when(seen(gated_kernel, EVENTS, at_least=2), "a second stream after the silent one")
    event = await run_to_event(trigger(inv_id, silence_timeout=1.0))
    opened()
    assert event["status"] == "succeeded"
    assert kernel_lines(inv_id, caplog, capfd) == [f"line {i}" for i in range(4)]


async def test_error_event_in_stream_is_resumed(gated_kernel):
    """The run ends only once the stream was opened again: exactly one resumed stream, however slow the machine."""
    inv_id, gate = start_gated(gated_kernel, result="ok")
    opened = gate.open_when(seen(gated_kernel, EVENTS, at_least=2), "the stream to be opened again")
    gated_kernel.set_faults(
        {
            "rules": [
                {
                    "route": "GET /invocations/{id}/events",
                    "times": 1,
                    "fault": {
                        "error_event": {"code": "internal_error", "message": "log backend hiccup"},
                        "error_then_close": True,
                    },
                },
            ]
        }
    )
    event = await run_to_event(trigger(inv_id))
    opened()
    assert event["status"] == "succeeded"
    streams = [r for r in requests_for(gated_kernel, inv_id) if r["route"] == EVENTS]
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
    t = KernelInvocationTrigger(
        invocation_id="abc",
        kernel_conn_id="my_kernel",
        end_time=end_time,
        poll_interval=2,
        mode="poll",
        stream_logs=False,
        max_consecutive_failures=7,
        silence_timeout=9,
        max_stream_failures=3,
        cancel_on_kill=False,
        cancel_on_timeout=True,
    )
    classpath, kwargs = t.serialize()
    assert classpath == "kernel_provider.triggers.kernel.KernelInvocationTrigger"
    assert json.loads(json.dumps(kwargs)) == kwargs  # plain JSON, no objects
    assert all(v is None or isinstance(v, (str, int, float, bool)) for v in kwargs.values())
    assert kwargs["cancel_on_timeout"] is True and kwargs["cancel_on_kill"] is False
    # The deadline is wall-clock time, so it means the same thing after a triggerer restart on another host.
    assert kwargs["end_time"] == end_time
    assert abs(kwargs["end_time"] - time.time() - 600) < 60
    module, _, name = classpath.rpartition(".")
    rebuilt = getattr(importlib.import_module(module), name)(**kwargs)
    assert rebuilt.serialize() == (classpath, kwargs)


@pytest.mark.parametrize(("given", "kept"), [(True, "read"), (False, "off"), ("control", "control")])
def test_live_view_is_serialized_as_its_mode(given, kept):
    """An older provider serialized a bool: it still rebuilds, as the mode it meant."""
    _, kwargs = KernelInvocationTrigger(invocation_id="abc", live_view=given, log_cursor_seeded=False).serialize()
    assert (kwargs["live_view"], kwargs["log_cursor_seeded"]) == (kept, False)
    assert KernelInvocationTrigger(**kwargs).serialize()[1] == kwargs
    with pytest.raises(ValueError, match="live_view"):
        KernelInvocationTrigger(invocation_id="abc", live_view="write")


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
    opened = gate.open_when(
        lambda: len(requests_for(gated_kernel, inv_id)) > before_restart, "the rebuilt trigger to follow the stream"
    )
    event = await run_to_event(second)
    opened()

    assert event["status"] == "succeeded"
    assert event["invocation_id"] == inv_id
    after = requests_for(gated_kernel, inv_id)[before_restart:]
    # First, at once: the stream, whose first event is the current state (no GET before it).
    assert [(r["method"], r["route"]) for r in after] == [("GET", EVENTS)]
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


#: What Airflow 3.3's triggerer cancels a trigger with when a user marks or clears its task (its
#: ``_USER_ACTION_CANCEL_MSG``); on_kill is called only when the CancelledError leaving run() still carries it.
USER_ACTION = "__airflow_user_action__"


@pytest.mark.parametrize("mode", ["stream", "poll"])
@pytest.mark.parametrize("moment", ["during the connection lookup", "while following"])
async def test_a_user_action_cancel_leaves_run_with_its_reason(kernel_conn_env, mode, moment):
    """The reason must survive whatever the wait was awaiting: asgiref's sync_to_async (behind the connection
    lookup) re-raises a cancellation without it, which once made a mark-failed leave the run going."""
    if AIRFLOW_V_3_3_PLUS:  # the triggerer that calls on_kill
        from airflow.jobs.triggerer_job_runner import _USER_ACTION_CANCEL_MSG

        assert _USER_ACTION_CANCEL_MSG == USER_ACTION
    inv_id = start("slow")
    t = trigger(inv_id, mode=mode)
    consuming = asyncio.ensure_future(run_to_event(t))
    if moment == "while following":
        for _ in range(300):  # until the trigger's first request (the create's path names no id)
            if requests_for(kernel_conn_env, inv_id):
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.2)
    else:
        await asyncio.sleep(0)  # a fresh loop has no cached settings: the first await is the connection lookup
    consuming.cancel(USER_ACTION)
    with pytest.raises(asyncio.CancelledError) as cancelled:
        await consuming
    assert cancelled.value.args == (USER_ACTION,)
    assert kernel_conn_env.invocation(inv_id)["status"] == "running"  # cancelling the wait never stops the run


async def test_on_kill_still_cancels_when_the_triggerer_cancels_the_trigger_again(kernel_conn_env):
    """Airflow 3.3's triggerer can cancel a trigger it is stopping a second time while on_kill runs (seen: a mark
    failed that left the run going, on_kill cut short 2 ms after it started): on_kill still stops the run."""
    inv_id = start("slow")
    t = trigger(inv_id)
    killing = asyncio.ensure_future(t.on_kill())
    await asyncio.sleep(0)  # on_kill has started its work
    killing.cancel(USER_ACTION)
    await asyncio.sleep(0)
    killing.cancel(USER_ACTION)
    await asyncio.wait_for(killing, timeout=30)  # returns once the cancel is through, within its budget
    assert kernel_conn_env.invocation(inv_id)["status"] == "failed"


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
    # One request: the finished invocation's stream replays its lines, then its final state.
    assert [r["route"] for r in requests_for(kernel_conn_env, inv_id)] == [EVENTS]


async def test_no_log_lines_when_log_streaming_is_off(kernel_conn_env, caplog, capfd):
    inv_id = start("logs", {"lines": 2, "interval": 0.01})
    kernel_conn_env.wait_for(inv_id)
    assert (await run_to_event(trigger(inv_id, stream_logs=False)))["status"] == "succeeded"
    assert kernel_lines(inv_id, caplog, capfd) == []
    assert [r["route"] for r in requests_for(kernel_conn_env, inv_id)] == [EVENTS]


# --- A. on_kill cancels within the triggerer's on_kill_timeout ----------------------------------------------------


def browsing(emulator: Any, count: int = 2) -> str:
    """An invocation holding ``count`` browsers for an hour."""
    inv_id = start("browse", {"count": count, "seconds": 3600})
    wait_until(lambda: len(emulator.invocation(inv_id)["_emulator"]["browsers"]) == count, f"{count} browsers")
    return inv_id


@pytest.mark.parametrize(("setting", "budget"), [(None, 24.0), ("10", 8.0), ("0.5", 1.0)])
def test_on_kill_budget_is_read_from_the_triggerer_setting(monkeypatch, setting, budget):
    if setting is None:
        monkeypatch.delenv("AIRFLOW__TRIGGERER__ON_KILL_TIMEOUT", raising=False)
    else:
        monkeypatch.setenv("AIRFLOW__TRIGGERER__ON_KILL_TIMEOUT", setting)
    assert _on_kill_budget() == pytest.approx(budget)


async def test_on_kill_deletes_the_browsers_within_its_budget_while_the_patch_hangs(kernel_conn_env, monkeypatch):
    """The PATCH hangs longer than on_kill may take: the DELETE still reaches Kernel and on_kill returns in time."""
    monkeypatch.setenv("AIRFLOW__TRIGGERER__ON_KILL_TIMEOUT", "2")  # budget: 80% = 1.6 s
    inv_id = browsing(kernel_conn_env)
    t = trigger(inv_id)
    waiting = asyncio.ensure_future(run_to_event(t))
    await asyncio.to_thread(wait_until, lambda: seen(kernel_conn_env, EVENTS)(), "the trigger to follow the stream")
    kernel_conn_env.set_faults({"rules": [{"route": "PATCH /invocations/{id}", "fault": {"delay": 10}}]})

    started = time.monotonic()
    await t.on_kill()
    assert time.monotonic() - started < 2.0  # inside [triggerer] on_kill_timeout, far below the PATCH's 10 s

    deletes = [r for r in requests_for(kernel_conn_env, inv_id) if r["method"] == "DELETE"]
    assert [(r["route"], r["status"]) for r in deletes] == [("/invocations/{id}/browsers", 204)]
    assert kernel_conn_env.invocation(inv_id)["_emulator"]["browsers"] == []
    patches = [r for r in requests_for(kernel_conn_env, inv_id) if r["method"] == "PATCH"]
    assert patches and all(r["status"] is None for r in patches)  # sent, never answered within the budget
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting


# --- B. cancel at the deadline ------------------------------------------------------------------------------------


async def test_deadline_with_cancel_on_timeout_stops_the_run_before_the_event(kernel_conn_env):
    inv_id = browsing(kernel_conn_env, count=1)
    event = await run_to_event(trigger(inv_id, end_time=time.time() + 1.0, cancel_on_timeout=True))
    assert event["status"] == "timeout" and event["cancelled"] is True
    assert "cancelled it" in event["message"]
    inv = kernel_conn_env.invocation(inv_id)
    assert inv["status"] == "failed" and inv["_emulator"]["browsers"] == []
    methods = [(r["method"], r["route"], r["status"]) for r in requests_for(kernel_conn_env, inv_id)]
    assert ("PATCH", "/invocations/{id}", 200) in methods
    assert ("DELETE", "/invocations/{id}/browsers", 204) in methods


async def test_deadline_already_passed_cancels_without_waiting(kernel_conn_env):
    inv_id = start("slow")
    event = await run_to_event(trigger(inv_id, end_time=time.time() - 1, cancel_on_timeout=True))
    assert event["status"] == "timeout" and event["cancelled"] is True
    assert sorted(r["method"] for r in requests_for(kernel_conn_env, inv_id)) == ["DELETE", "PATCH"]  # no GET
    assert kernel_conn_env.invocation(inv_id)["status"] == "failed"


async def test_deadline_cancel_that_fails_is_reported_in_the_event(kernel_conn_env, monkeypatch):
    inv_id = start("slow")
    monkeypatch.setenv(
        "AIRFLOW_CONN_KERNEL_DEFAULT", conn_json(kernel_conn_env.url, kernel_conn_env.token, max_retries=0)
    )
    kernel_conn_env.set_faults({"rules": [{"route": "PATCH /invocations/{id}", "fault": {"status": 500}}]})
    event = await run_to_event(trigger(inv_id, end_time=time.time() - 1, cancel_on_timeout=True))
    assert event["status"] == "timeout" and event["cancelled"] is False
    assert "could not cancel" in event["message"]
    assert kernel_conn_env.invocation(inv_id)["status"] == "running"  # the task's own cancel is still to come


# --- real task instances (C and E) --------------------------------------------------------------------------------


@pytest.fixture
def airflow_ti(airflow_db: Any) -> Iterator[tuple[Any, Any]]:
    """``(task instance as the triggerer hands it to a trigger, its DagRun)``, from a real ``dag.test()`` run.

    Airflow 2 gives triggers the ORM TaskInstance. Airflow 3 gives them a ``TaskInstanceDTO`` and serves their XCom
    calls through the triggerer's supervisor; here the in-process supervisor that ``dag.test()`` itself uses for
    triggers serves them (same request handlers, execution API and DB).
    """
    dag = make_dag("kernel_trigger_ti")
    with dag:

        @task
        def noop() -> None:
            return None

        noop()
    dr = run_dag(dag)
    ti = ti_map(dr)["noop"]
    if AF2:
        yield ti, dr
        return
    import psutil
    import structlog

    try:
        from airflow.executors.workloads.task import TaskInstanceDTO
    except ImportError:  # Airflow 3.0-3.2: one workloads module, the same model under its old name
        from airflow.executors.workloads import TaskInstance as TaskInstanceDTO  # type: ignore[no-redef]
    from airflow.sdk.execution_time.supervisor import (
        InProcessSupervisorComms,
        InProcessTestSupervisor,
        set_supervisor_comms,
    )

    dto = TaskInstanceDTO.model_validate(ti, from_attributes=True)
    supervisor = InProcessTestSupervisor(
        id=dto.id,
        pid=os.getpid(),
        process=psutil.Process(),
        process_log=structlog.get_logger(logger_name="task").bind(),
        client=InProcessTestSupervisor._api_client(),
    )
    supervisor.comms = InProcessSupervisorComms(supervisor=supervisor)
    with set_supervisor_comms(supervisor.comms):
        yield dto, dr


def set_ti_state(dr: Any, state: str | None, next_method: str | None) -> None:
    """What a user action or the scheduler leaves in the metadata DB (mark, clear, timeout sweep, event)."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.query(TaskInstance).filter_by(dag_id=dr.dag_id, run_id=dr.run_id, task_id="noop").one()
        row.state = state
        row.next_method = next_method


def cancel_requests(emulator: Any, inv_id: str) -> list[str]:
    return sorted(r["method"] for r in requests_for(emulator, inv_id) if r["method"] in ("PATCH", "DELETE"))


# --- C. Airflow 2: cleanup() stops the run when the task was stopped from outside ----------------------------------

STOPPED = [("failed", None), ("success", None), (None, None), ("up_for_retry", None), ("scheduled", "__fail__")]
NOT_STOPPED = [("deferred", "execute_complete"), ("scheduled", "execute_complete"), ("queued", "execute_complete")]


@pytest.mark.skipif(AF3, reason="Airflow 3 cancels in on_kill; cleanup() never does")
@pytest.mark.parametrize(("state", "next_method"), STOPPED + NOT_STOPPED)
async def test_airflow2_cleanup_cancels_only_when_the_task_was_stopped(kernel_conn_env, airflow_ti, state, next_method):
    """Marked success/failed, cleared, or failed by the deferral-timeout sweep: cancel. Still deferred (triggerer
    shutdown or handover) or resuming with an event: leave the run alone."""
    ti, dr = airflow_ti
    inv_id = browsing(kernel_conn_env, count=1)
    set_ti_state(dr, state, next_method)
    t = trigger(inv_id)
    t.task_instance = ti
    await t.cleanup()  # the wait was cancelled before it fired any event
    inv = kernel_conn_env.invocation(inv_id)
    if (state, next_method) in STOPPED:
        assert cancel_requests(kernel_conn_env, inv_id) == ["DELETE", "PATCH"]
        assert inv["status"] == "failed" and inv["_emulator"]["browsers"] == []
        assert "Airflow task instance" in json.loads(inv["output"])["error"]
    else:
        assert cancel_requests(kernel_conn_env, inv_id) == []
        assert inv["status"] == "running"


@pytest.mark.skipif(AF3, reason="Airflow 2 only")
async def test_airflow2_cleanup_removes_the_record_of_the_run_it_cancelled_only(kernel_conn_env, airflow_ti):
    """A marked task's record Variable would stay for ever; a newer try's record (naming another run) stays."""
    from airflow.models import Variable

    from kernel_provider.utils.run_record import VARIABLE_PREFIX, RunRecord

    ti, dr = airflow_ti
    key = VARIABLE_PREFIX + ".".join(str(p) for p in (ti.dag_id, ti.task_id, ti.run_id, ti.map_index))
    set_ti_state(dr, "success", None)
    for recorded, kept in (("mine", False), ("newer-try", True)):
        inv_id = start("slow")
        Variable.set(key, RunRecord(inv_id if recorded == "mine" else "someoneelse0000000000000", 1, 0).to_json())
        t = trigger(inv_id)
        t.task_instance = ti
        await t.cleanup()
        assert kernel_conn_env.invocation(inv_id)["status"] == "failed"
        assert (Variable.get(key, default_var=None) is not None) is kept
    Variable.delete(key)


@pytest.mark.skipif(AF3, reason="Airflow 2 only")
async def test_airflow2_deadline_cancel_removes_the_record_only_when_the_cancel_held(kernel_conn_env, airflow_ti):
    """Airflow 2 fails a try resumed after its execution_timeout before execute_complete runs, so the trigger that
    cancelled the run at its deadline removes the record; a cancel Kernel refused leaves it for the task."""
    from airflow.models import Variable

    from kernel_provider.utils.run_record import VARIABLE_PREFIX, RunRecord

    ti, _ = airflow_ti
    key = VARIABLE_PREFIX + ".".join(str(p) for p in (ti.dag_id, ti.task_id, ti.run_id, ti.map_index))
    for refused in (True, False):
        inv_id = start("slow")
        Variable.set(key, RunRecord(inv_id, 1, 0).to_json())
        rules = [{"route": "PATCH /invocations/{id}", "fault": {"status": 409}}] if refused else []
        kernel_conn_env.set_faults({"rules": rules})
        t = trigger(inv_id, end_time=time.time() - 1, cancel_on_timeout=True)
        t.task_instance = ti
        assert (await run_to_event(t))["cancelled"] is not refused
        assert (Variable.get(key, default_var=None) is not None) is refused
    Variable.delete(key)


@pytest.mark.skipif(AF3, reason="Airflow 2 only")
async def test_airflow2_cleanup_after_the_event_or_without_cancel_on_kill_never_cancels(kernel_conn_env, airflow_ti):
    ti, dr = airflow_ti
    set_ti_state(dr, "scheduled", "__fail__")
    finished = start("echo", {"x": 1})
    t = trigger(finished)
    t.task_instance = ti
    assert (await run_to_event(t))["status"] == "succeeded"
    await t.cleanup()
    running = start("slow")
    quiet = trigger(running, cancel_on_kill=False)
    quiet.task_instance = ti
    await quiet.cleanup()
    assert cancel_requests(kernel_conn_env, finished) == [] and cancel_requests(kernel_conn_env, running) == []


@pytest.mark.skipif(AF3, reason="Airflow 2 only")
async def test_airflow2_cleanup_with_an_unreadable_task_instance_leaves_the_run(kernel_conn_env, caplog):
    inv_id = start("slow")
    t = trigger(inv_id)
    t.task_instance = SimpleNamespace(task_id="t")  # no dag_id/run_id: nothing to look up
    await t.cleanup()
    assert kernel_conn_env.invocation(inv_id)["status"] == "running"


@pytest.mark.skipif(AF2, reason="Airflow 3: on_kill does the job")
async def test_airflow3_cleanup_never_cancels_even_for_a_stopped_task(kernel_conn_env, airflow_ti):
    ti, dr = airflow_ti
    set_ti_state(dr, "failed", None)
    inv_id = start("slow")
    t = trigger(inv_id)
    t.task_instance = ti
    await t.cleanup()
    assert cancel_requests(kernel_conn_env, inv_id) == []


# --- D. a rotated API key -----------------------------------------------------------------------------------------


async def test_key_rotated_during_the_wait_is_read_again_and_the_wait_completes(
    gated_kernel, monkeypatch, caplog, capfd
):
    inv_id, gate = start_gated(gated_kernel, before=2, after=2, interval=0.02)
    # silence_timeout: the stream opened with the old key breaks while the action waits at its gate, so the
    # trigger must send new requests (GET, then a new stream) with settings cached under the old key.
    t = trigger(inv_id, silence_timeout=1.0)
    waiting = asyncio.ensure_future(run_to_event(t))
    await asyncio.to_thread(wait_until, seen(gated_kernel, EVENTS), "the first stream")
    rotated_at = len(requests_for(gated_kernel, inv_id))
    rotate_key(gated_kernel, monkeypatch, "rotated-key", connection_key="rotated-key")
    opened = gate.open_when(
        lambda: any(
            r["route"] == EVENTS and r["status"] == 200 for r in requests_for(gated_kernel, inv_id)[rotated_at:]
        ),
        "a stream opened with the new key",
    )
    event = await asyncio.wait_for(waiting, timeout=60)
    opened()
    assert event["status"] == "succeeded"
    after = [(r["route"], r["auth"], r["status"]) for r in requests_for(gated_kernel, inv_id)[rotated_at:]]
    # The first request the emulator refuses (a GET or the new stream, whichever the wait sent first once the key
    # had changed; a loaded machine may answer one more with the old key before) is sent again with the new key,
    # once, and the wait goes on.
    [refused] = [i for i, (_, _, status) in enumerate(after) if status == 401]
    assert all(status == 200 for _, _, status in after[:refused]), after
    assert after[refused : refused + 2] == [(after[refused][0], "invalid", 401), (after[refused][0], "valid", 200)]
    assert (EVENTS, "valid", 200) in after[refused + 1 :], after
    assert kernel_lines(inv_id, caplog, capfd) == [f"line {i}" for i in range(4)]


@pytest.mark.parametrize("connection_key", [None, "another-wrong-key"])
async def test_key_refused_during_the_wait_fails_after_one_reread(gated_kernel, monkeypatch, connection_key):
    inv_id, gate = start_gated(gated_kernel, before=1)
    t = trigger(inv_id, silence_timeout=1.0)
    waiting = asyncio.ensure_future(run_to_event(t))
    await asyncio.to_thread(wait_until, seen(gated_kernel, EVENTS), "the first stream")
    rotated_at = len(requests_for(gated_kernel, inv_id))
    rotate_key(gated_kernel, monkeypatch, "rotated-key", connection_key=connection_key)
    event = await asyncio.wait_for(waiting, timeout=60)
    gate.open()
    assert event["status"] == "error" and "401" in event["message"]
    assert "wrong-key" not in event["message"] and gated_kernel.token not in event["message"]
    after = [(r["route"], r["status"]) for r in requests_for(gated_kernel, inv_id)[rotated_at:]]
    # Unchanged connection: re-read once, nothing re-sent. Changed (still wrong): re-sent once, then the error.
    assert after == [(GET_ONE, 401)] * (1 if connection_key is None else 2)


# --- E. no duplicated log lines across trigger restarts -----------------------------------------------------------


async def test_restarted_trigger_logs_only_the_lines_the_first_did_not(gated_kernel, airflow_ti, caplog, capfd):
    ti, dr = airflow_ti
    set_ti_state(dr, "deferred", "execute_complete")  # a restart happens while the task is deferred
    inv_id, gate = start_gated(gated_kernel, before=3, after=3, interval=0.02)
    first = trigger(inv_id)
    first.task_instance = ti
    gen = first.run()
    waiting = asyncio.ensure_future(gen.__anext__())
    # The position is saved while the wait goes on, not only when the trigger stops.
    while await asyncio.to_thread(xcom, dr, "noop", LOG_CURSOR_XCOM_KEY) is None:
        assert not waiting.done()
        await asyncio.sleep(0.05)
    waiting.cancel()  # the triggerer goes away mid-stream...
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await gen.aclose()
    await first.cleanup()  # ...and, as it always does, calls cleanup(), which writes the latest position
    first_lines = kernel_lines(inv_id, caplog, capfd)
    caplog.clear()
    cursor = await asyncio.to_thread(xcom, dr, "noop", LOG_CURSOR_XCOM_KEY)
    assert cursor["invocation_id"] == inv_id and cursor["since"] and cursor["try_number"] == ti.try_number
    assert len(json.dumps(cursor)) < 500  # small: a timestamp and a few digests, never the lines themselves
    assert first_lines and gated_kernel.invocation(inv_id)["status"] == "running"

    classpath, kwargs = first.serialize()
    module, _, name = classpath.rpartition(".")
    second = getattr(importlib.import_module(module), name)(**json.loads(json.dumps(kwargs)))
    second.task_instance = ti  # the same task instance try, picked up again by a (new) triggerer
    restarted_at = len(requests_for(gated_kernel, inv_id))
    opened = gate.open_when(
        lambda: any(r["route"] == EVENTS for r in requests_for(gated_kernel, inv_id)[restarted_at:]),
        "the second trigger to follow the stream",
    )
    event = await run_to_event(second)
    opened()
    await second.cleanup()
    second_lines = kernel_lines(inv_id, caplog, capfd)

    assert event["status"] == "succeeded"
    assert first_lines + second_lines == [f"line {i}" for i in range(6)]  # every line once, in order
    streams = [r for r in requests_for(gated_kernel, inv_id)[restarted_at:] if r["route"] == EVENTS]
    assert "since=" in streams[0]["query"]  # resumed where the first trigger stopped logging


async def test_log_cursor_is_not_kept_for_a_wait_without_task_instance(gated_kernel, airflow_ti):
    """Workers run wait() directly (no task instance): nothing is read or written."""
    _ti, dr = airflow_ti
    inv_id, gate = start_gated(gated_kernel, before=1, after=1)
    gate.open()
    t = trigger(inv_id)
    assert (await t.wait())["status"] == "succeeded"
    await t.cleanup()
    assert await asyncio.to_thread(xcom, dr, "noop", LOG_CURSOR_XCOM_KEY) is None


async def test_a_log_cursor_that_cannot_be_stored_never_fails_the_wait(gated_kernel, airflow_ti, caplog, capfd):
    """A task instance whose DAG run does not exist: reading finds nothing, writing fails; the wait succeeds."""
    inv_id, gate = start_gated(gated_kernel, before=2, after=2, interval=0.02)
    gate.open()
    t = trigger(inv_id)
    t.task_instance = SimpleNamespace(
        dag_id="no_such_dag", task_id="noop", run_id="no_such_run", map_index=-1, try_number=1
    )
    event = await run_to_event(t)
    await t.cleanup()
    assert event["status"] == "succeeded"
    assert kernel_lines(inv_id, caplog, capfd) == [f"line {i}" for i in range(4)]


@pytest.mark.skipif(not AF3, reason="Airflow 3's triggerer reads XComs through its supervisor, which logs a miss")
async def test_a_sensor_started_in_the_triggerer_reads_no_cursor_it_never_seeded(
    gated_kernel, airflow_ti, caplog, capfd
):
    """A sensor that starts in the triggerer has no worker to seed the log position: its trigger must not read
    it (a miss logs "XCom not found" as an ERROR in the triggerer), and still saves it as the lines go."""
    import logging

    from kernel_provider.sensors.kernel import STARTS_FROM_TRIGGER, KernelInvocationSensor

    if not STARTS_FROM_TRIGGER:
        pytest.skip("sensors start in the triggerer from Airflow 3.3")
    ti, dr = airflow_ti
    inv_id, gate = start_gated(gated_kernel, before=2, after=2, interval=0.02)
    gate.open()
    sensor = KernelInvocationSensor(task_id="watch", invocation_id=inv_id, deferrable=True, live_view=False)
    assert sensor.start_from_trigger
    t = KernelInvocationTrigger(**sensor.start_trigger_args.trigger_kwargs)
    t.task_instance = ti  # what the triggerer hands it
    capfd.readouterr()
    with caplog.at_level(logging.INFO):
        event = await run_to_event(t)
        await t.cleanup()
    assert event["status"] == "succeeded"
    printed = capfd.readouterr()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    errors += [line for line in (printed.out + printed.err).splitlines() if "[error" in line]
    assert errors == []
    cursor = await asyncio.to_thread(xcom, dr, "noop", LOG_CURSOR_XCOM_KEY)
    assert cursor["invocation_id"] == inv_id and cursor["since"]  # written all the same
