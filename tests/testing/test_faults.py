"""Fault injection provably happens, and is reproducible with a seed."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import requests

from kernel_provider.testing import FaultPlan, KernelEmulator

SSE = Callable[[httpx.Response], list[dict[str, Any]]]
ASYNC_ECHO = {"app_name": "demo", "version": "latest", "action_name": "echo", "async": True}


def client(emu: KernelEmulator) -> httpx.Client:
    return httpx.Client(base_url=emu.url, headers={"Authorization": f"Bearer {emu.token}"}, timeout=10)


def test_sequence_503_429_then_pass(kernel_emulator: KernelEmulator) -> None:
    kernel_emulator.set_faults(
        {
            "rules": [
                {
                    "route": "POST /invocations",
                    "sequence": [{"status": 503}, {"status": 429, "retry_after": 1}, None],
                }
            ]
        }
    )
    with client(kernel_emulator) as http:
        first, second, third, fourth = (http.post("/invocations", json=ASYNC_ECHO) for _ in range(4))
    assert first.status_code == 503 and first.json()["code"] == "service_unavailable"
    assert second.status_code == 429 and second.headers["retry-after"] == "1"
    assert second.json()["code"] == "rate_limited"
    assert third.status_code == 202 and fourth.status_code == 202
    assert kernel_emulator.created_count() == 2
    log = kernel_emulator.requests(route="/invocations", method="POST")
    assert [e["status"] for e in log] == [503, 429, 202, 202]
    assert [e["fault"] is not None for e in log] == [True, True, False, False]


def test_status_fault_headers(kernel_emulator: KernelEmulator) -> None:
    fault = {"status": 500, "retry_after_ms": 250, "should_retry": False, "code": "boom", "message": "nope"}
    kernel_emulator.set_faults([{"route": "GET /invocations/{id}", "times": 1, "fault": fault}])
    with client(kernel_emulator) as http:
        inv_id = http.post("/invocations", json=ASYNC_ECHO).json()["id"]
        failed = http.get(f"/invocations/{inv_id}")
        ok = http.get(f"/invocations/{inv_id}")
    assert failed.status_code == 500 and failed.json() == {"code": "boom", "message": "nope"}
    assert failed.headers["retry-after-ms"] == "250" and failed.headers["x-should-retry"] == "false"
    assert ok.status_code == 200


def test_drop_after_creates_but_never_answers(kernel_emulator: KernelEmulator) -> None:
    kernel_emulator.set_faults([{"route": "POST /invocations", "times": 1, "fault": {"drop": "after"}}])
    with client(kernel_emulator) as http, pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        http.post("/invocations", json=ASYNC_ECHO)
    assert kernel_emulator.created_count(app="demo", action="echo") == 1
    assert kernel_emulator.requests(method="POST")[-1]["dropped"] == "after"
    # the next request goes through normally
    with client(kernel_emulator) as http:
        assert http.post("/invocations", json=ASYNC_ECHO).status_code == 202
    assert kernel_emulator.created_count() == 2


def test_drop_before_with_requests_library(kernel_emulator: KernelEmulator) -> None:
    kernel_emulator.set_faults([{"route": "POST /invocations", "times": 1, "fault": {"drop": "before"}}])
    with pytest.raises(requests.ConnectionError):
        requests.post(
            f"{kernel_emulator.url}/invocations",
            json=ASYNC_ECHO,
            headers={"Authorization": f"Bearer {kernel_emulator.token}"},
            timeout=10,
        )
    assert kernel_emulator.created_count() == 0


def test_status_after_acts_then_fails(kernel_emulator: KernelEmulator) -> None:
    kernel_emulator.set_faults([{"route": "POST /invocations", "times": 1, "fault": {"status": 502, "after": True}}])
    with client(kernel_emulator) as http:
        assert http.post("/invocations", json=ASYNC_ECHO).status_code == 502
    assert kernel_emulator.created_count() == 1


def _run_rate_plan(factory: Callable[..., KernelEmulator], seed: int) -> list[int]:
    plan = {"seed": seed, "rules": [{"route": "GET /apps", "rate": 0.5, "fault": {"status": 500}}]}
    emu = factory(faults=plan)
    with client(emu) as http:
        return [http.get("/apps").status_code for _ in range(40)]


def test_seeded_rate_is_reproducible(kernel_emulator_factory: Callable[..., KernelEmulator]) -> None:
    first = _run_rate_plan(kernel_emulator_factory, 7)
    second = _run_rate_plan(kernel_emulator_factory, 7)
    other = _run_rate_plan(kernel_emulator_factory, 8)
    assert first == second
    assert 500 in first and 200 in first
    assert first != other


def test_delay_fault(kernel_emulator: KernelEmulator) -> None:
    kernel_emulator.set_faults([{"route": "*", "times": 1, "fault": {"delay": 0.2}}])
    with client(kernel_emulator) as http:
        assert http.get("/apps").status_code == 200
    entry = kernel_emulator.requests(path="/apps")[-1]
    assert entry["fault"] == {"delay": 0.2} and entry["duration_ms"] >= 150


def test_sse_cut_after_events(kernel_emulator: KernelEmulator, sse_events: SSE) -> None:
    kernel_emulator.set_faults(
        [{"route": "GET /invocations/{id}/events", "times": 1, "fault": {"cut_after_events": 2}}]
    )
    with client(kernel_emulator) as http:
        inv_id = http.post(
            "/invocations",
            json={**ASYNC_ECHO, "action_name": "logs", "payload": '{"lines": 5, "interval": 0.05}'},
        ).json()["id"]
        cut = sse_events(http.get(f"/invocations/{inv_id}/events"))
        assert len(cut) == 2
        assert not any(e["event"] == "invocation_state" and e["invocation"]["status"] == "succeeded" for e in cut)
        full = sse_events(http.get(f"/invocations/{inv_id}/events"))
        assert full[-1]["invocation"]["status"] == "succeeded"


def test_sse_silent_stream(kernel_emulator: KernelEmulator) -> None:
    kernel_emulator.configure(heartbeat=0.1)
    kernel_emulator.set_faults([{"route": "GET /invocations/{id}/events", "fault": {"silent": True}}])
    with client(kernel_emulator) as http:
        inv_id = http.post(
            "/invocations",
            json={**ASYNC_ECHO, "action_name": "logs", "payload": '{"lines": 3, "interval": 0.05}'},
        ).json()["id"]
        chunks: list[bytes] = []
        with (
            pytest.raises(httpx.ReadTimeout),
            http.stream("GET", f"/invocations/{inv_id}/events", timeout=httpx.Timeout(10, read=0.6)) as response,
        ):
            for chunk in response.iter_raw():
                chunks.append(chunk)
                if sum(map(len, chunks)) > 65536:  # a flood (e.g. ": ping" comments) never times out: stop it here
                    break
    body = b"".join(chunks).decode()
    messages = [m for m in body.split("\n\n") if m]
    assert len(messages) == 1 and json.loads(messages[0][6:])["event"] == "invocation_state"


def test_sse_error_event(kernel_emulator: KernelEmulator, sse_events: SSE) -> None:
    fault = {"error_event": {"code": "internal_error", "message": "stream broke"}, "error_then_close": True}
    kernel_emulator.set_faults([{"route": "GET /invocations/{id}/events", "fault": fault}])
    with client(kernel_emulator) as http:
        inv_id = http.post("/invocations", json={**ASYNC_ECHO, "action_name": "slow"}).json()["id"]
        events = sse_events(http.get(f"/invocations/{inv_id}/events"))
    assert [e["event"] for e in events] == ["invocation_state", "error"]
    assert events[1]["error"] == {"code": "internal_error", "message": "stream broke"}


def test_legacy_status_reason_and_plain_text_output(kernel_emulator: KernelEmulator) -> None:
    kernel_emulator.set_faults({"legacy_status_reason": True, "plain_text_failure_output": True})
    with client(kernel_emulator) as http:
        queued = http.post("/invocations", json=ASYNC_ECHO).json()
        assert queued["status_reason"] == "Invocation queued for execution"
        kernel_emulator.wait_for(queued["id"])
        done = http.get(f"/invocations/{queued['id']}").json()
        assert done["status_reason"] == "Invocation completed successfully"
        failed = http.post("/invocations", json={**ASYNC_ECHO, "action_name": "fail", "async": False}).json()
        assert failed["output"].startswith("Traceback (most recent call last)")
    kernel_emulator.clear_faults()
    with client(kernel_emulator) as http:
        assert "status_reason" not in http.get(f"/invocations/{queued['id']}").json()


def test_admin_fault_route_and_validation(kernel_emulator: KernelEmulator) -> None:
    admin = kernel_emulator.client
    plan = admin.set_faults({"seed": 3, "rules": [{"route": "GET /apps", "sequence": [{"status": 500}]}]})
    assert plan["seed"] == 3 and plan["rules"][0]["position"] == 0
    with client(kernel_emulator) as http:
        assert http.get("/apps").status_code == 500
        assert http.get("/apps").status_code == 200
    assert admin.faults()["rules"][0]["fired"] == 1
    bad = httpx.post(
        f"{kernel_emulator.url}/_emulator/faults",
        json={"rules": [{"route": "*", "fault": {"x": 1}}]},
        headers={"Authorization": f"Bearer {kernel_emulator.token}"},
    )
    assert bad.status_code == 400
    with pytest.raises(ValueError):
        FaultPlan.from_json({"rules": [{"route": "*", "fault": {"drop": "sideways"}}]})
    admin.set_faults(None)
    assert admin.faults()["rules"] == []


def test_route_matching() -> None:
    plan = FaultPlan.from_json(
        {
            "rules": [
                {"route": "GET /invocations/*", "fault": {"status": 500}},
                {"route": "/apps", "fault": {"status": 502}},
            ]
        }
    )
    pick = plan.pick
    assert pick("GET", "/invocations/{id}/events").http.status == 500  # type: ignore[union-attr]
    assert pick("POST", "/invocations") is None
    assert pick("DELETE", "/apps").http.status == 502  # type: ignore[union-attr]


# --- malformed answers: raw bodies, truncated bodies, raw SSE data lines ----------------------------------


def test_body_fault_answers_raw_text_and_raw_bytes(kernel_emulator: KernelEmulator) -> None:
    kernel_emulator.set_faults(
        [
            {"route": "GET /invocations/{id}", "times": 1, "fault": {"body": "<html>502</html>"}},
            {"route": "GET /invocations/{id}", "times": 1, "fault": {"body": "\udcff\udcfe", "status": 503}},
        ]
    )
    with client(kernel_emulator) as http:
        inv_id = http.post("/invocations", json=ASYNC_ECHO).json()["id"]
        html = http.get(f"/invocations/{inv_id}")
        raw = http.get(f"/invocations/{inv_id}")
        ok = http.get(f"/invocations/{inv_id}")
    assert (html.status_code, html.text, html.headers["content-type"].split(";")[0]) == (
        200,
        "<html>502</html>",
        "text/plain",
    )
    assert (raw.status_code, raw.content) == (503, b"\xff\xfe")
    assert ok.status_code == 200 and ok.json()["id"] == inv_id


def test_body_fault_after_acting_creates_then_answers_garbage(kernel_emulator: KernelEmulator) -> None:
    kernel_emulator.set_faults(
        [{"route": "POST /invocations", "times": 1, "fault": {"status": 502, "body": "bad gateway", "after": True}}]
    )
    with client(kernel_emulator) as http:
        answer = http.post("/invocations", json=ASYNC_ECHO)
    assert (answer.status_code, answer.text) == (502, "bad gateway")
    assert kernel_emulator.created_count() == 1


def test_truncate_fault_acts_then_sends_a_short_body(kernel_emulator: KernelEmulator) -> None:
    kernel_emulator.set_faults([{"route": "POST /invocations", "times": 1, "fault": {"truncate": 7}}])
    with client(kernel_emulator) as http, pytest.raises(httpx.RemoteProtocolError):
        http.post("/invocations", json=ASYNC_ECHO)
    assert kernel_emulator.created_count() == 1
    entry = kernel_emulator.requests(route="/invocations", method="POST")[0]
    assert entry["status"] == 202 and entry["dropped"] == "truncated"
    headers = {"Authorization": f"Bearer {kernel_emulator.token}"}
    kernel_emulator.set_faults([{"route": "GET /apps", "times": 1, "fault": {"truncate": 3}}])
    with pytest.raises(requests.exceptions.ChunkedEncodingError, match="IncompleteRead"):
        requests.get(f"{kernel_emulator.url}/apps", headers=headers, timeout=10)
    assert requests.get(f"{kernel_emulator.url}/apps", headers=headers, timeout=10).status_code == 200


def test_raw_sse_data_is_sent_verbatim_then_the_stream_carries_on(kernel_emulator: KernelEmulator) -> None:
    kernel_emulator.set_faults(
        [{"route": "GET /invocations/{id}/events", "times": 1, "fault": {"raw_sse_data": "{not json \udcff"}}]
    )
    with client(kernel_emulator) as http:
        inv_id = http.post(
            "/invocations", json={**ASYNC_ECHO, "action_name": "sleep", "payload": '{"seconds": 0.2}'}
        ).json()["id"]
        with http.stream("GET", f"/invocations/{inv_id}/events") as response:
            body = response.read()
    blocks = body.split(b"\n\n")
    assert b"data: {not json \xff" in blocks
    last = json.loads(blocks[-2][len(b"data: ") :])
    assert last["event"] == "invocation_state" and last["invocation"]["status"] == "succeeded"


@pytest.mark.parametrize(
    "fault",
    [{"truncate": -1}, {"truncate": True}, {"body": 5}, {"raw_sse_data": ["x"]}],
    ids=["truncate-negative", "truncate-bool", "body-not-text", "raw-sse-not-text"],
)
def test_malformed_answer_faults_are_validated(fault: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        FaultPlan.from_json([{"route": "*", "fault": fault}])


def test_http_and_stream_faults_are_distinct_parts() -> None:
    from kernel_provider.testing.faults import Fault, HttpFault, StreamFault

    status = Fault.from_json({"status": 503, "retry_after": 2})
    assert isinstance(status.http, HttpFault) and status.stream is None
    assert status.http.response_headers() == {"Retry-After": "2"}
    cut = Fault.from_json({"cut_after_events": 1})
    assert cut.http is None and isinstance(cut.stream, StreamFault) and cut.stream.cut_after_events == 1
    both = Fault.from_json({"delay": 0.01, "error_event": True})
    assert both.http is not None and both.http.delay == 0.01
    assert both.stream is not None and both.stream.error_event == {
        "code": "internal_error",
        "message": "injected error",
    }
    with pytest.raises(ValueError, match="does nothing"):
        Fault.from_json({"code": "only_a_code"})
