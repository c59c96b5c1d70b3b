"""Bad input, as a table: every mistake a user (or a misbehaving server) can make gets a clear message naming
the field or the server's code, costs no request when the client can know beforehand, and never crashes a
trigger's wait (the trigger returns an event).

Real HTTP to the emulator on 127.0.0.1; the malformed server answers come from its fault plan (``body``,
``truncate``, ``raw_sse_data`` and status faults).
"""

from __future__ import annotations

import asyncio
import datetime
import json
from collections.abc import Callable
from typing import Any

import pytest

from kernel_provider.exceptions import (
    KernelAmbiguousCreateError,
    KernelApiError,
    KernelConnectionConfigError,
    KernelError,
    KernelInputError,
    KernelInvocationFailed,
    KernelResponseError,
    KernelTransportError,
)
from kernel_provider.hooks.kernel import KernelHook
from kernel_provider.operators.kernel import KernelInvokeOperator
from kernel_provider.sensors.kernel import KernelInvocationSensor
from kernel_provider.triggers.kernel import KernelInvocationTrigger
from tests.helpers import FAST_RETRY, conn_json
from tests.standins import DictStateStore, FakeTI

GET_ONE = "GET /invocations/{id}"
EVENTS = "GET /invocations/{id}/events"
CREATE = "POST /invocations"


def context() -> dict[str, Any]:
    return {"ti": FakeTI(dag_id="bad_input"), "task_state_store": DictStateStore()}


def kernel_requests(emulator: Any) -> list[dict[str, Any]]:
    """Requests that reached Kernel's API (the admin routes are not recorded)."""
    return emulator.requests()


@pytest.fixture
def hook(kernel_conn_env: Any) -> KernelHook:
    return KernelHook(retry_policy=FAST_RETRY)


# --------------------------------------------------------------------------------------------- client-side
def _invoke(**kwargs: Any) -> Callable[[KernelHook], Any]:
    kwargs.setdefault("app_name", "demo")
    kwargs.setdefault("action_name", "echo")
    return lambda hook: hook.invoke(**kwargs)


def _operator(**kwargs: Any) -> Callable[[KernelHook], Any]:
    kwargs.setdefault("app_name", "demo")
    kwargs.setdefault("action_name", "echo")

    def run(hook: KernelHook) -> Any:
        op = KernelInvokeOperator(task_id="bad_input_op", **kwargs)
        return op.execute(context())

    return run


def _sensor(**kwargs: Any) -> Callable[[KernelHook], Any]:
    def run(hook: KernelHook) -> Any:
        sensor = KernelInvocationSensor(task_id="bad_input_sensor", **kwargs)
        return sensor.execute(context())

    return run


#: (case id, call, exception type, words the message must contain)
CLIENT_CASES: list[tuple[str, Callable[[KernelHook], Any], type[BaseException], tuple[str, ...]]] = [
    ("hook-app-missing", _invoke(app_name=None), KernelInputError, ("app_name", "required")),
    ("hook-app-empty", _invoke(app_name=""), KernelInputError, ("app_name", "empty")),
    ("hook-app-blank", _invoke(app_name="   "), KernelInputError, ("app_name", "empty")),
    ("hook-app-int", _invoke(app_name=123), KernelInputError, ("app_name", "string", "int")),
    ("hook-app-spaces", _invoke(app_name=" demo"), KernelInputError, ("app_name", "spaces")),
    ("hook-action-empty", _invoke(action_name=""), KernelInputError, ("action_name", "empty")),
    ("hook-action-list", _invoke(action_name=["echo"]), KernelInputError, ("action_name", "list")),
    ("hook-version-empty", _invoke(version=""), KernelInputError, ("version", "empty")),
    ("hook-version-float", _invoke(version=1.0), KernelInputError, ("version", "string", "float")),
    ("hook-payload-bad-json-text", _invoke(payload='{"url": '), KernelInputError, ("payload", "not valid JSON")),
    (
        "hook-payload-datetime",
        _invoke(payload={"when": datetime.date(2024, 1, 1)}),
        KernelInputError,
        ("payload['when']", "date", "not JSON-serializable"),
    ),
    ("hook-payload-set", _invoke(payload={"tags": {"a"}}), KernelInputError, ("payload['tags']", "set")),
    ("hook-payload-int-key", _invoke(payload={1: "x"}), KernelInputError, ("payload[1]", "key")),
    ("hook-payload-nan", _invoke(payload={"x": float("nan")}), KernelInputError, ("payload['x']", "nan")),
    ("hook-payload-bytes", _invoke(payload=b"{}"), KernelInputError, ("payload", "bytes")),
    (
        "hook-payload-too-big",
        _invoke(payload={"blob": "x" * 4_600_000}),
        KernelInputError,
        ("payload", "bytes", "4500000"),
    ),
    (
        "hook-async-timeout-low",
        _invoke(invoke_async=True, async_timeout_seconds=5),
        KernelInputError,
        ("async_timeout_seconds", "10..3600"),
    ),
    (
        "hook-async-timeout-high",
        _invoke(invoke_async=True, async_timeout_seconds=3601),
        KernelInputError,
        ("async_timeout_seconds", "3601"),
    ),
    (
        "hook-async-timeout-without-async",
        _invoke(invoke_async=False, async_timeout_seconds=60),
        KernelInputError,
        ("async_timeout_seconds", "asynchronous"),
    ),
    (
        "hook-async-timeout-str",
        _invoke(invoke_async=True, async_timeout_seconds="60"),
        KernelInputError,
        ("async_timeout_seconds", "whole number"),
    ),
    ("hook-invoke-async-str", _invoke(invoke_async="yes"), KernelInputError, ("invoke_async", "True or False")),
    ("hook-get-empty-id", lambda h: h.get_invocation(""), KernelInputError, ("invocation_id", "empty")),
    ("hook-get-none-id", lambda h: h.get_invocation(None), KernelInputError, ("invocation_id", "required")),
    ("hook-cancel-int-id", lambda h: h.cancel_invocation(42), KernelInputError, ("invocation_id", "string")),
    ("op-poll-interval-negative", _operator(poll_interval=-1), KernelInputError, ("poll_interval", "-1")),
    ("op-poll-interval-zero", _operator(poll_interval=0), KernelInputError, ("poll_interval", "greater than 0")),
    ("op-timeout-negative", _operator(timeout=-5), KernelInputError, ("timeout", "-5")),
    ("op-timeout-text", _operator(timeout="soon"), KernelInputError, ("timeout", "number of seconds", "soon")),
    ("op-rate-limit-wait-negative", _operator(rate_limit_wait=-1), KernelInputError, ("rate_limit_wait",)),
    ("op-wait-mode", _operator(wait_mode="push"), KernelError, ("wait_mode", "stream", "poll", "push")),
    ("op-app-missing", _operator(app_name=""), KernelInputError, ("app_name", "empty")),
    ("op-payload-bad-json-text", _operator(payload="{not json}"), KernelInputError, ("payload", "JSON")),
    (
        "op-async-timeout-range",
        _operator(async_timeout_seconds=4000),
        KernelInputError,
        ("async_timeout_seconds", "4000"),
    ),
    (
        "op-async-timeout-sync",
        _operator(invoke_async=False, async_timeout_seconds=60),
        KernelInputError,
        ("async_timeout_seconds", "invoke_async=True"),
    ),
    ("sensor-id-empty", _sensor(invocation_id=""), KernelError, ("invocation_id", "non-empty")),
    ("sensor-id-none", _sensor(invocation_id=None), KernelError, ("invocation_id", "None")),
    ("sensor-id-int", _sensor(invocation_id=42), KernelError, ("invocation_id", "42")),
    ("sensor-wait-mode", _sensor(invocation_id="abc", wait_mode="sse"), KernelError, ("wait_mode", "sse")),
]


@pytest.mark.parametrize(("call", "error", "words"), [c[1:] for c in CLIENT_CASES], ids=[c[0] for c in CLIENT_CASES])
def test_client_side_mistakes_fail_before_any_request(
    hook: KernelHook, kernel_conn_env: Any, call: Any, error: type[BaseException], words: tuple[str, ...]
) -> None:
    with pytest.raises(error) as raised:
        call(hook)
    message = str(raised.value)
    for word in words:
        assert word in message, message
    assert kernel_requests(kernel_conn_env) == []  # the client knew: nothing was sent
    assert kernel_conn_env.token not in message


def test_sensor_negative_poke_interval_is_refused_at_construction() -> None:
    with pytest.raises(Exception, match="poke_interval"):
        KernelInvocationSensor(task_id="s", invocation_id="abc", poke_interval=-1)


# --------------------------------------------------------------------------------------------- connections
CONNECTION_CASES = [
    ("no-key", {"conn_type": "kernel", "host": "{url}", "password": ""}, ("has no API key", "password")),
    ("blank-key", {"conn_type": "kernel", "host": "{url}", "password": "   "}, ("has no API key",)),
    ("bad-url", {"conn_type": "kernel", "host": "http://[::1", "password": "k"}, ("host", "not a valid URL")),
    (
        "bad-scheme",
        {"conn_type": "kernel", "host": "ftp://example.com", "password": "k"},
        ("host", "not a valid base URL", "ftp://"),
    ),
    (
        "bad-max-retries",
        {"conn_type": "kernel", "host": "{url}", "password": "k", "extra": {"max_retries": "lots"}},
        ("extra.max_retries", "whole number", "lots"),
    ),
    (
        "zero-timeout",
        {"conn_type": "kernel", "host": "{url}", "password": "k", "extra": {"request_timeout": 0}},
        ("extra.request_timeout", "> 0"),
    ),
    (
        "project-id-number",
        {"conn_type": "kernel", "host": "{url}", "password": "k", "extra": {"project_id": 7}},
        ("extra.project_id", "string"),
    ),
]


@pytest.mark.parametrize(("conn", "words"), [c[1:] for c in CONNECTION_CASES], ids=[c[0] for c in CONNECTION_CASES])
def test_bad_connection_is_named_and_costs_no_request(
    kernel_emulator: Any, monkeypatch: pytest.MonkeyPatch, conn: dict[str, Any], words: tuple[str, ...]
) -> None:
    conn = {k: (v.replace("{url}", kernel_emulator.url) if isinstance(v, str) else v) for k, v in conn.items()}
    monkeypatch.setenv("AIRFLOW_CONN_KERNEL_BAD", json.dumps(conn))
    with pytest.raises(KernelConnectionConfigError) as raised:
        KernelHook("kernel_bad", retry_policy=FAST_RETRY).invoke("demo", "echo", invoke_async=False)
    for word in words:
        assert word in str(raised.value), str(raised.value)
    assert kernel_requests(kernel_emulator) == []


def test_unknown_connection_is_named(kernel_emulator: Any) -> None:
    with pytest.raises(KernelConnectionConfigError, match=r"kernel_conn_id='kernel_nope'.*AIRFLOW_CONN_KERNEL_NOPE"):
        KernelHook("kernel_nope").invoke("demo", "echo", invoke_async=False)
    assert kernel_requests(kernel_emulator) == []


async def test_trigger_with_unknown_connection_returns_an_error_event(kernel_emulator: Any) -> None:
    event = await KernelInvocationTrigger("abc", kernel_conn_id="kernel_nope", poll_interval=0.1).wait()
    assert event["status"] == "error" and "kernel_nope" in event["message"]
    assert kernel_requests(kernel_emulator) == []


async def test_trigger_with_a_rejected_key_returns_an_error_event(
    kernel_emulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_KERNEL_WRONG", conn_json(kernel_emulator.url, "not-the-key"))
    trigger = KernelInvocationTrigger("abc", kernel_conn_id="kernel_wrong", poll_interval=0.1)
    event = await trigger.wait()
    assert event["status"] == "error" and "401" in event["message"] and "unauthorized" in event["message"]
    assert "not-the-key" not in event["message"]
    assert len(kernel_requests(kernel_emulator)) == 1  # 401 is final: no retry, no stream


# --------------------------------------------------------------------------------------------- server errors
STATUS_CASES = [
    (400, "bad_request", "invalid payload: field url is required"),
    (401, "unauthorized", "invalid API key"),
    (403, "forbidden", "API key has no access to project p-1"),
    (404, "not_found", "app 'demo' version 'v9' not found"),
    (409, "conflict", "an invocation is already being created"),
    (413, "payload_too_large", "payload exceeds 64 KB"),
    (422, "unprocessable_entity", "payload does not match the action's input schema"),
]


@pytest.mark.parametrize(("status", "code", "message"), STATUS_CASES, ids=[str(c[0]) for c in STATUS_CASES])
def test_create_refused_with_a_4xx_names_status_code_and_message(
    hook: KernelHook, kernel_conn_env: Any, status: int, code: str, message: str
) -> None:
    kernel_conn_env.set_faults([{"route": CREATE, "fault": {"status": status, "code": code, "message": message}}])
    with pytest.raises(KernelApiError) as raised:
        hook.invoke("demo", "echo", payload={"x": 1}, invoke_async=True)
    error = raised.value
    assert (error.status_code, error.code, error.message) == (status, code, message)
    assert f"Kernel API error {status} (POST /invocations): {code}: {message}" in str(error)
    assert not isinstance(error, KernelAmbiguousCreateError)
    assert len(kernel_requests(kernel_conn_env)) == 1  # a refusal is never repeated
    assert kernel_conn_env.created_count() == 0


@pytest.mark.parametrize(("status", "code", "message"), STATUS_CASES, ids=[str(c[0]) for c in STATUS_CASES])
async def test_trigger_survives_a_4xx_on_every_check(
    kernel_conn_env: Any, status: int, code: str, message: str
) -> None:
    inv_id = KernelHook().invoke("demo", "sleep", payload={"seconds": 30}, invoke_async=True).id
    kernel_conn_env.set_faults([{"route": "GET *", "fault": {"status": status, "code": code, "message": message}}])
    trigger = KernelInvocationTrigger(inv_id, poll_interval=0.05, mode="poll", max_consecutive_failures=2)
    trigger._hook = KernelHook(retry_policy=FAST_RETRY)
    event = await trigger.wait()
    assert event["status"] == "error" and event["invocation_id"] == inv_id
    assert str(status) in event["message"] and code in event["message"]


def test_non_json_200_body_is_a_clear_response_error(hook: KernelHook, kernel_conn_env: Any) -> None:
    inv_id = hook.invoke("demo", "echo", payload={"x": 1}, invoke_async=True).id
    kernel_conn_env.set_faults(
        [{"route": GET_ONE, "times": 1, "fault": {"body": "<html><body>502 Bad Gateway</body></html>"}}]
    )
    with pytest.raises(KernelResponseError, match=r"not JSON \(HTTP 200\): <html><body>502 Bad Gateway"):
        hook.get_invocation(inv_id)


def test_non_json_error_body_still_names_the_status(hook: KernelHook, kernel_conn_env: Any) -> None:
    kernel_conn_env.set_faults([{"route": CREATE, "fault": {"status": 403, "body": "Forbidden by proxy"}}])
    with pytest.raises(KernelApiError, match=r"Kernel API error 403 .*Forbidden by proxy"):
        hook.invoke("demo", "echo", invoke_async=False)


def test_json_that_is_not_an_invocation_is_rejected(hook: KernelHook, kernel_conn_env: Any) -> None:
    inv_id = hook.invoke("demo", "echo", payload={"x": 1}, invoke_async=True).id
    kernel_conn_env.set_faults(
        [
            {
                "route": GET_ONE,
                "times": 1,
                "fault": {"body": "[1, 2, 3]", "headers": {"content-type": "application/json"}},
            }
        ]
    )
    with pytest.raises(KernelError):
        hook.get_invocation(inv_id)


def test_truncated_read_is_retried_then_reported_as_transport_error(hook: KernelHook, kernel_conn_env: Any) -> None:
    inv_id = hook.invoke("demo", "echo", payload={"x": 1}, invoke_async=True).id
    kernel_conn_env.set_faults([{"route": GET_ONE, "times": 1, "fault": {"truncate": 10}}])
    assert hook.get_invocation(inv_id).id == inv_id  # a GET is safe to repeat: one truncation is absorbed
    kernel_conn_env.set_faults([{"route": GET_ONE, "fault": {"truncate": 10}}])
    with pytest.raises(KernelTransportError, match=f"GET /invocations/{inv_id}"):
        hook.get_invocation(inv_id)
    assert len(kernel_conn_env.requests(route="/invocations/{id}")) == 2 + FAST_RETRY.max_attempts


def test_truncated_create_answer_is_ambiguous_never_reposted(hook: KernelHook, kernel_conn_env: Any) -> None:
    kernel_conn_env.set_faults([{"route": CREATE, "fault": {"truncate": 5}}])
    with pytest.raises(KernelAmbiguousCreateError, match=r"may have been created.*NOT re-sent"):
        hook.invoke("demo", "echo", payload={"n": 7}, invoke_async=True)
    assert len(kernel_conn_env.requests(route="/invocations", method="POST")) == 1
    assert kernel_conn_env.created_count("demo", "echo", {"n": 7}) == 1  # it was created: list to find it


async def test_unknown_status_is_waited_through(kernel_conn_env: Any, caplog: pytest.LogCaptureFixture) -> None:
    hook = KernelHook()
    inv = hook.invoke("demo", "sleep", payload={"seconds": 0.3, "result": "ok"}, invoke_async=True)
    weird = json.dumps(
        {
            "id": inv.id,
            "app_name": "demo",
            "version": "latest",
            "action_name": "sleep",
            "status": "hibernating",
            "started_at": "2024-01-01T00:00:00Z",
        }
    )
    kernel_conn_env.set_faults(
        [{"route": GET_ONE, "times": 3, "fault": {"body": weird, "headers": {"content-type": "application/json"}}}]
    )
    unknown = hook.get_invocation(inv.id)
    assert unknown.raw_status == "hibernating" and not unknown.is_terminal
    event = await KernelInvocationTrigger(inv.id, mode="poll", poll_interval=0.05).wait()
    assert event["status"] == "succeeded"  # not a crash, not a false finish: it waited for a real final state


async def test_trigger_survives_persistent_non_json_answers(kernel_conn_env: Any) -> None:
    inv_id = KernelHook().invoke("demo", "sleep", payload={"seconds": 30}, invoke_async=True).id
    kernel_conn_env.set_faults([{"route": GET_ONE, "fault": {"body": "<html>maintenance</html>"}}])
    trigger = KernelInvocationTrigger(inv_id, mode="poll", poll_interval=0.05, max_consecutive_failures=3)
    event = await trigger.wait()
    assert event["status"] == "error" and "not JSON" in event["message"] and "maintenance" in event["message"]


# --------------------------------------------------------------------------------------------- streams
BAD_LINES = [
    ("invalid-json", '{"event": "log", "message": '),
    ("not-an-object", "[1, 2, 3]"),
    ("non-utf8", "\udcff\udcfe\udc80 garbage"),
    ("unknown-event", '{"event": "telemetry", "timestamp": "2024-01-01T00:00:00Z"}'),
    ("log-without-fields", '{"event": "log"}'),
    ("state-without-invocation", '{"event": "invocation_state", "invocation": "nope"}'),
]


@pytest.mark.parametrize("line", [c[1] for c in BAD_LINES], ids=[c[0] for c in BAD_LINES])
async def test_bad_stream_lines_never_break_the_wait(kernel_conn_env: Any, line: str) -> None:
    inv = KernelHook().invoke("demo", "logs", payload={"lines": 3, "interval": 0.1}, invoke_async=True)
    kernel_conn_env.set_faults([{"route": EVENTS, "times": 1, "fault": {"raw_sse_data": line}}])
    event = await KernelInvocationTrigger(inv.id, mode="stream", poll_interval=0.1, silence_timeout=5).wait()
    assert event["status"] == "succeeded" and event["invocation_id"] == inv.id
    assert kernel_conn_env.faults.rules[0].fired == 1  # the bad line really was sent


# --------------------------------------------------------------------------------------------- huge output
def test_huge_output_is_returned_whole_and_kept_out_of_messages(kernel_conn_env: Any) -> None:
    hook = KernelHook()
    inv = hook.invoke("demo", "big", payload={"size": 3_000_000}, invoke_async=True)
    kernel_conn_env.wait_for(inv.id)
    sensor = KernelInvocationSensor(task_id="s", invocation_id=inv.id, poke_interval=0.1)
    result = sensor.poke(context())
    assert result.is_done and result.xcom_value == "x" * 3_000_000  # type: ignore[union-attr]

    failing = hook.invoke("demo", "fail", payload={"message": "y" * 2_000_000}, invoke_async=True)
    kernel_conn_env.wait_for(failing.id)
    with pytest.raises(KernelInvocationFailed) as raised:
        KernelInvocationSensor(task_id="s2", invocation_id=failing.id, poke_interval=0.1).poke(context())
    assert failing.id in str(raised.value) and len(str(raised.value)) < 5_000
    event = asyncio.run(KernelInvocationTrigger(failing.id, mode="stream").wait())
    assert event["status"] == "failed" and len(json.dumps(event)) < 5_000  # events stay small in the DB
