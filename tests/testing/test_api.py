"""HTTP-level behaviour of the emulator: validation, errors, limits, lifecycle, lists, SSE details."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from kernel_provider.testing import KernelEmulator
from kernel_provider.testing.timeutil import parse_timestamp_ns

SSE = Callable[[httpx.Response], list[dict[str, Any]]]


def create(http: httpx.Client, action: str = "echo", payload: Any = None, **extra: Any) -> httpx.Response:
    body: dict[str, Any] = {"app_name": "demo", "version": "latest", "action_name": action, **extra}
    if payload is not None:
        body["payload"] = payload if isinstance(payload, str) else json.dumps(payload)
    return http.post("/invocations", json=body)


# ------------------------------------------------------------------------------------------ auth & errors
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic test-token"}])
def test_unauthorized(kernel_emulator: KernelEmulator, headers: dict[str, str]) -> None:
    response = httpx.get(f"{kernel_emulator.url}/apps", headers=headers)
    assert response.status_code == 401
    assert response.json() == {"code": "unauthorized", "message": "missing or invalid authorization token"}
    entry = kernel_emulator.requests(path="/apps")[-1]
    assert entry["auth"] in ("missing", "invalid") and entry["status"] == 401
    assert "nope" not in json.dumps(kernel_emulator.requests())


def test_several_tokens(kernel_emulator_factory: Callable[..., KernelEmulator]) -> None:
    emu = kernel_emulator_factory(tokens=["a", "b"])
    for token in ("a", "b"):
        assert httpx.get(f"{emu.url}/apps", headers={"Authorization": f"Bearer {token}"}).status_code == 200


V = {"version": "latest"}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"version": "latest", "action_name": "echo"}, "app_name"),
        ({"app_name": "", **V, "action_name": "echo"}, "app_name"),
        ({"app_name": "demo", **V}, "action_name"),
        ({"app_name": 3, **V, "action_name": "echo"}, "app_name"),
        ({"app_name": "demo", "action_name": "echo"}, "version"),  # required by the spec
        ({"app_name": "demo", "version": "", "action_name": "echo"}, "version"),
        ({"app_name": "demo", "version": None, "action_name": "echo"}, "version"),
        ({"app_name": "demo", **V, "action_name": "echo", "payload": {"a": 1}}, "payload"),
        ({"app_name": "demo", **V, "action_name": "echo", "payload": "{not json"}, "payload"),
        ({"app_name": "demo", **V, "action_name": "echo", "payload": "\u001d"}, "payload"),  # raw control char
        ({"app_name": "demo", **V, "action_name": "echo", "payload": '"a\u001db"'}, "payload"),
        ({"app_name": "demo", **V, "action_name": "echo", "payload": "NaN"}, "payload"),
        ({"app_name": "demo", **V, "action_name": "echo", "payload": "  "}, "payload"),
        ({"app_name": "demo", **V, "action_name": "echo", "async": "yes"}, "async"),
        ({"app_name": "demo", **V, "action_name": "echo", "async": None}, "async"),
        ({"app_name": "demo", **V, "action_name": "echo", "async_timeout_seconds": None}, "async_timeout_seconds"),
        ({"app_name": "demo", **V, "action_name": "echo", "async_timeout_seconds": 9}, "async_timeout_seconds"),
        ({"app_name": "demo", **V, "action_name": "echo", "async_timeout_seconds": 3601}, "async_timeout_seconds"),
        ({"app_name": "demo", **V, "action_name": "echo", "async_timeout_seconds": "60"}, "async_timeout_seconds"),
    ],
)
def test_create_validation(http: httpx.Client, body: dict[str, Any], field: str) -> None:
    response = http.post("/invocations", json=body)
    assert response.status_code == 400
    error = response.json()
    assert error["code"] == "bad_request" and field in error["message"]


def test_create_rejects_non_json_body(http: httpx.Client) -> None:
    response = http.post("/invocations", content=b"nope", headers={"content-type": "application/json"})
    assert response.status_code == 400 and response.json()["code"] == "bad_request"


def test_empty_payload_is_accepted(http: httpx.Client) -> None:
    response = create(http, "echo", payload="")
    assert response.status_code == 200
    assert response.json()["output"] == "null"


@pytest.mark.parametrize(
    ("app", "version", "action", "words"),
    [
        ("nope", "latest", "echo", "app 'nope'"),
        ("demo", "9.9.9", "echo", "version '9.9.9'"),
        ("demo", "latest", "nope", "action 'nope'"),
    ],
)
def test_unknown_app_version_action(http: httpx.Client, app: str, version: str, action: str, words: str) -> None:
    response = http.post("/invocations", json={"app_name": app, "version": version, "action_name": action})
    assert response.status_code == 404
    assert response.json()["code"] == "not_found" and words in response.json()["message"]


@pytest.mark.parametrize(
    ("method", "suffix"),
    [("GET", ""), ("PATCH", ""), ("GET", "/events"), ("GET", "/browsers"), ("DELETE", "/browsers")],
)
def test_unknown_invocation_404(http: httpx.Client, method: str, suffix: str) -> None:
    body = {"status": "failed"} if method == "PATCH" else None
    response = http.request(method, f"/invocations/aaaaaaaaaaaaaaaaaaaaaaaa{suffix}", json=body)
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    assert response.json()["code"] == "not_found"


def test_project_header_recorded_and_unknown_project(
    kernel_emulator_factory: Callable[..., KernelEmulator],
) -> None:
    emu = kernel_emulator_factory(unknown_projects=["proj_gone"])
    auth = {"Authorization": f"Bearer {emu.token}"}
    ok = httpx.get(f"{emu.url}/apps", headers={**auth, "X-Kernel-Project-Id": "proj_1"})
    assert ok.status_code == 200
    assert emu.requests(path="/apps")[-1]["project_id"] == "proj_1"
    gone = httpx.get(f"{emu.url}/apps", headers={**auth, "X-Kernel-Project-Id": "proj_gone"})
    assert gone.status_code == 404 and gone.json()["code"] == "project_not_found"


# ------------------------------------------------------------------------------------------ concurrency
def test_concurrency_limits_429(kernel_emulator_factory: Callable[..., KernelEmulator]) -> None:
    emu = kernel_emulator_factory(org_concurrency=3, app_concurrency=2, retry_after=1)
    with httpx.Client(base_url=emu.url, headers={"Authorization": f"Bearer {emu.token}"}) as http:
        ids = [create(http, "slow", **{"async": True}).json()["id"] for _ in range(2)]
        limited = create(http, "slow", **{"async": True})
        assert limited.status_code == 429
        assert limited.headers["retry-after"] == "1"
        assert limited.json()["code"] == "rate_limited" and "app" in limited.json()["message"]
        assert emu.stats()["live"] == 2 and emu.created_count(action="slow") == 2
        http.patch(f"/invocations/{ids[0]}", json={"status": "failed"})
        assert create(http, "slow", **{"async": True}).status_code == 202
        emu.configure(app_concurrency=None, org_concurrency=2)
        org_limited = create(http, "slow", **{"async": True})
        assert org_limited.status_code == 429 and "organization" in org_limited.json()["message"]


# ------------------------------------------------------------------------------------------ lifecycle
def test_async_lifecycle_and_timestamps(http: httpx.Client, kernel_emulator: KernelEmulator) -> None:
    created = create(http, "sleep", {"seconds": 0.2, "result": {"ok": True}}, **{"async": True})
    assert created.status_code == 202
    body = created.json()
    assert body == {"id": body["id"], "action_name": "sleep", "status": "queued"}
    running = kernel_emulator.wait_for(body["id"], ("running",))
    assert "finished_at" not in running and "status_reason" not in running
    done = kernel_emulator.wait_for(body["id"])
    assert done["status"] == "succeeded" and json.loads(done["output"]) == {"ok": True}
    inv = http.get(f"/invocations/{body['id']}").json()
    assert set(inv) == {
        "id",
        "app_name",
        "version",
        "action_name",
        "status",
        "payload",
        "output",
        "started_at",
        "finished_at",
    }
    assert inv["started_at"] <= inv["finished_at"]


def test_failure_output_and_reason(http: httpx.Client) -> None:
    failed = create(http, "fail", {"message": "kaputt"}).json()
    assert failed["status"] == "failed"
    assert failed["output"] == "ValueError: kaputt"
    assert failed["status_reason"]
    plain = create(http, "plain_fail").json()
    assert plain["status"] == "failed" and plain["output"].startswith("Error: boom\n")
    with pytest.raises(ValueError):
        json.loads(plain["output"])


def test_sync_cap(kernel_emulator_factory: Callable[..., KernelEmulator]) -> None:
    emu = kernel_emulator_factory(sync_timeout=0.5)
    with httpx.Client(base_url=emu.url, headers={"Authorization": f"Bearer {emu.token}"}) as http:
        response = create(http, "browse", {"seconds": 30})
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "failed"
    assert body["status_reason"] == "synchronous invocation exceeded 0.5s"
    assert emu.stats()["live"] == 0 and emu.stats()["browsers_live"] == 0


def test_patch_cancel_stops_action_and_destroys_browsers(http: httpx.Client, kernel_emulator: KernelEmulator) -> None:
    inv_id = create(http, "browse", {"seconds": 60}, **{"async": True}).json()["id"]
    deadline = time.monotonic() + 5
    while not http.get(f"/invocations/{inv_id}/browsers").json()["browsers"]:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert kernel_emulator.stats()["browsers_live"] == 1
    response = http.patch(f"/invocations/{inv_id}", json={"status": "failed", "output": '{"error":"bye"}'})
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "failed" and body["output"] == '{"error":"bye"}' and body["status_reason"]
    assert http.get(f"/invocations/{inv_id}/browsers").json() == {"browsers": []}
    deadline = time.monotonic() + 5
    while kernel_emulator.invocation(inv_id)["_emulator"]["action_running"]:  # type: ignore[index]
        assert time.monotonic() < deadline
        time.sleep(0.01)
    stats = kernel_emulator.stats()
    assert stats["live"] == 0 and stats["browsers_live"] == 0
    # PATCH on a terminal invocation: unchanged, 200
    again = http.patch(f"/invocations/{inv_id}", json={"status": "succeeded"})
    assert again.status_code == 200 and again.json() == body


@pytest.mark.parametrize(
    "body", [{}, {"status": "running"}, {"status": "failed", "output": 3}, {"status": "failed", "output": None}]
)
def test_patch_validation(http: httpx.Client, body: dict[str, Any]) -> None:
    inv_id = create(http, "echo").json()["id"]
    response = http.patch(f"/invocations/{inv_id}", json=body)
    assert response.status_code == 400 and response.json()["code"] == "bad_request"


def test_patch_succeeded_on_running(http: httpx.Client, kernel_emulator: KernelEmulator) -> None:
    inv_id = create(http, "slow", **{"async": True}).json()["id"]
    body = http.patch(f"/invocations/{inv_id}", json={"status": "succeeded", "output": '"done"'}).json()
    assert body["status"] == "succeeded" and body["output"] == '"done"' and "status_reason" not in body


def test_async_timeout_enforced(http: httpx.Client, kernel_emulator: KernelEmulator) -> None:
    inv_id = create(http, "slow", async_timeout_seconds=10, **{"async": True}).json()["id"]
    done = kernel_emulator.wait_for(inv_id, timeout=20)
    assert done["status"] == "failed"
    assert done["status_reason"] == "invocation timed out after 10 seconds"


# ------------------------------------------------------------------------------------------ lists
def test_list_pagination_headers_and_filters(http: httpx.Client) -> None:
    ids = [create(http, "echo", i).json()["id"] for i in range(5)]
    create(http, "fail")
    first = http.get("/invocations", params={"limit": 2, "action_name": "echo"})
    assert [i["id"] for i in first.json()] == ids[::-1][:2]  # newest first
    assert first.headers["x-limit"] == "2" and first.headers["x-offset"] == "0"
    assert first.headers["x-next-offset"] == "2" and first.headers["x-has-more"] == "true"
    last = http.get("/invocations", params={"limit": 2, "offset": 4, "action_name": "echo"})
    assert [i["id"] for i in last.json()] == [ids[0]]
    assert last.headers["x-next-offset"] == "0" and last.headers["x-has-more"] == "false"
    assert len(http.get("/invocations", params={"status": "failed"}).json()) == 1
    assert len(http.get("/invocations", params={"query": ids[2][:10]}).json()) == 1
    assert len(http.get("/invocations", params={"query": "ech"}).json()) == 5
    assert http.get("/invocations").headers["x-limit"] == "20"
    for bad in ({"limit": 0}, {"limit": 101}, {"offset": -1}, {"status": "bogus"}, {"since": "yesterday"}):
        response = http.get("/invocations", params=bad)
        assert response.status_code == 400 and response.json()["code"] == "bad_request", bad


def test_list_since_duration_and_timestamp(http: httpx.Client) -> None:
    old = create(http, "echo").json()["id"]
    time.sleep(0.3)
    cutoff = http.get(f"/invocations/{old}").json()["finished_at"]
    new = create(http, "echo").json()["id"]
    assert [i["id"] for i in http.get("/invocations", params={"since": "1h"}).json()] == [new, old]
    assert [i["id"] for i in http.get("/invocations", params={"since": "200ms"}).json()] == [new]
    assert [i["id"] for i in http.get("/invocations", params={"since": cutoff}).json()] == [new]
    assert len(http.get("/invocations", params={"since": ""}).json()) == 2


def test_apps_list_filters_and_versions(kernel_emulator_factory: Callable[..., KernelEmulator]) -> None:
    emu = kernel_emulator_factory(demo_versions=["latest", "1.0.0"], env_vars={"demo": {"SECRET": "s3cr3t"}})
    with httpx.Client(base_url=emu.url, headers={"Authorization": f"Bearer {emu.token}"}) as http:
        everything = http.get("/apps")
        assert [a["version"] for a in everything.json()] == ["latest", "1.0.0"]
        assert everything.json()[0]["env_vars"] == {"SECRET": ""}
        assert everything.headers["x-has-more"] == "false" and everything.headers["x-next-offset"] == "0"
        assert [a["version"] for a in http.get("/apps", params={"version": "1.0.0"}).json()] == ["1.0.0"]
        assert http.get("/apps", params={"app_name": "other"}).json() == []
        page = http.get("/apps", params={"limit": 1})
        assert page.headers["x-has-more"] == "true" and page.headers["x-next-offset"] == "1"
        assert create(http, "echo", version="1.0.0").json()["status"] == "succeeded"


# ------------------------------------------------------------------------------------------ SSE
def test_sse_late_subscriber_and_since(sse_events: SSE, http: httpx.Client, kernel_emulator: KernelEmulator) -> None:
    inv_id = create(http, "logs", {"lines": 3, "interval": 0.05}).json()["id"]
    events = sse_events(http.get(f"/invocations/{inv_id}/events"))
    assert [e["event"] for e in events] == ["log", "log", "log", "invocation_state"]
    assert events[-1]["invocation"]["status"] == "succeeded"
    second = events[1]["timestamp"]
    resumed = sse_events(http.get(f"/invocations/{inv_id}/events", params={"since": second}))
    assert [e.get("message") for e in resumed] == ["line 2\n", None]
    assert [e["event"] for e in sse_events(http.get(f"/invocations/{inv_id}/events", params={"since": "1h"}))] == [
        "log",
        "log",
        "log",
        "invocation_state",
    ]
    assert http.get(f"/invocations/{inv_id}/events", params={"since": "bogus"}).status_code == 400


def test_sse_heartbeats(sse_events: SSE, kernel_emulator_factory: Callable[..., KernelEmulator]) -> None:
    emu = kernel_emulator_factory(heartbeat=0.1)
    with httpx.Client(base_url=emu.url, headers={"Authorization": f"Bearer {emu.token}"}) as http:
        # 3 s of run for 0.1 s heartbeats: the stream is open long before the run ends, however busy the machine.
        inv_id = create(http, "sleep", {"seconds": 3.0}, **{"async": True}).json()["id"]
        events = sse_events(http.get(f"/invocations/{inv_id}/events"))
    kinds = [e["event"] for e in events]
    assert kinds[0] == "invocation_state" and kinds[-1] == "invocation_state"
    assert "sse_heartbeat" in kinds
    assert all(set(e) == {"event", "timestamp"} for e in events if e["event"] == "sse_heartbeat")


def test_many_concurrent_streams(sse_events: SSE, http: httpx.Client, kernel_emulator: KernelEmulator) -> None:
    import asyncio

    inv_id = create(http, "sleep", {"seconds": 1.0}, **{"async": True}).json()["id"]

    async def follow(client: httpx.AsyncClient) -> str:
        response = await client.get(f"/invocations/{inv_id}/events")
        return str(sse_events(response)[-1]["invocation"]["status"])

    async def main() -> list[str]:
        limits = httpx.Limits(max_connections=200)
        headers = {"Authorization": f"Bearer {kernel_emulator.token}"}
        async with httpx.AsyncClient(base_url=kernel_emulator.url, headers=headers, limits=limits, timeout=30) as c:
            return await asyncio.gather(*(follow(c) for _ in range(150)))

    assert asyncio.run(main()) == ["succeeded"] * 150
    assert kernel_emulator.stats()["open_streams"] == 0


def test_user_print_from_blocking_thread_is_logged(sse_events: SSE, http: httpx.Client) -> None:
    inv_id = create(http, "blocking", {"seconds": 0.05}).json()["id"]
    events = sse_events(http.get(f"/invocations/{inv_id}/events"))
    assert [e["message"] for e in events if e["event"] == "log"] == ["blocking action started\n"]


def test_reset_and_admin_routes(http: httpx.Client, kernel_emulator: KernelEmulator) -> None:
    slow = create(http, "slow", **{"async": True}).json()["id"]
    create(http, "echo", {"k": 1})
    admin = kernel_emulator.client
    assert admin.health()["status"] == "ok"
    assert admin.stats()["created"] == 2
    assert admin.created_count(app="demo", action="echo", payload={"k": 1}) == 1
    assert admin.created_count(payload='{"k": 1}') == 1
    assert {i["id"] for i in admin.invocations()} >= {slow}
    assert admin.invocation(slow)["status"] in ("queued", "running")  # type: ignore[index]
    assert [r["route"] for r in admin.requests(method="POST")] == ["/invocations", "/invocations"]
    admin.reset()
    assert admin.stats()["created"] == 0 and admin.invocations() == [] and admin.requests() == []
    assert http.get(f"/invocations/{slow}").status_code == 404


def test_client_disconnect_releases_stream(http: httpx.Client, kernel_emulator: KernelEmulator) -> None:
    inv_id = create(http, "slow", **{"async": True}).json()["id"]
    with http.stream("GET", f"/invocations/{inv_id}/events") as response:
        lines = response.iter_lines()  # keep a reference: a collected iterator closes the response
        first = next(lines)
        assert json.loads(first[len("data: ") :])["event"] == "invocation_state"
        assert kernel_emulator.stats()["open_streams"] == 1
    deadline = time.monotonic() + 5
    while kernel_emulator.stats()["open_streams"]:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert kernel_emulator.invocation(inv_id)["_emulator"]["subscribers"] == 0  # type: ignore[index]


# ------------------------------------------------------------------------------------------ retention
def test_retention_evicts_finished_invocations_and_keeps_the_counters(
    kernel_emulator_factory: Callable[..., KernelEmulator],
) -> None:
    emu = kernel_emulator_factory(retention_count=3, retention_seconds=0)
    headers = {"Authorization": f"Bearer {emu.token}"}
    body = {"app_name": "demo", "version": "latest", "action_name": "echo", "payload": '{"n":1}'}
    ids = [httpx.post(f"{emu.url}/invocations", json=body, headers=headers).json()["id"] for _ in range(5)]
    failing = {**body, "action_name": "fail", "payload": "{}"}
    ids.append(httpx.post(f"{emu.url}/invocations", json=failing, headers=headers).json()["id"])
    live = httpx.post(f"{emu.url}/invocations", json={**body, "action_name": "slow", "async": True}, headers=headers)
    stats = emu.stats()
    assert stats["created"] == 7 and stats["live"] == 1
    assert stats["by_status"] == {"queued": 0, "running": 1, "succeeded": 5, "failed": 1}
    assert stats["retained"] == 4 and stats["evicted"] == 3  # 3 finished kept + the live one
    assert emu.created_count(action="echo", payload={"n": 1}) == 5
    for gone in ids[:3]:
        assert httpx.get(f"{emu.url}/invocations/{gone}", headers=headers).status_code == 404
    for kept in [*ids[3:], live.json()["id"]]:
        assert httpx.get(f"{emu.url}/invocations/{kept}", headers=headers).status_code == 200
    listed = httpx.get(f"{emu.url}/invocations", headers=headers, params={"limit": 100}).json()
    assert len(listed) == 4
    # a live invocation is never evicted, whatever its age; by age, finished ones go (the create below is live
    # too, so no finished run's age decides the figures: a loaded machine may take its time)
    emu.configure(retention_count=0, retention_seconds=0.2)
    time.sleep(0.3)
    httpx.post(f"{emu.url}/invocations", json={**body, "action_name": "slow", "async": True}, headers=headers)
    stats = emu.stats()
    assert stats["retained"] == 2 and stats["evicted"] == 6  # the two live slow ones
    assert stats["created"] == 8 and stats["by_status"] == {"queued": 0, "running": 2, "succeeded": 5, "failed": 1}


def test_retention_defaults_keep_a_suite_worth() -> None:
    from kernel_provider.testing import EmulatorConfig

    config = EmulatorConfig()
    assert config.retention_count == 10_000 and config.retention_seconds == 3600


def test_an_invocations_browser_reports_its_usage_and_is_found_deleted_only_when_asked(http: httpx.Client) -> None:
    """As Kernel's spec says: a session has ``usage.uptime_ms``; ``GET /browsers/{id}`` finds a deleted one only
    with ``include_deleted=true``, then with its ``deleted_at``; an invocation lists only its active ones."""
    inv_id = create(http, "browse", {"seconds": 60}, **{"async": True}).json()["id"]
    deadline = time.monotonic() + 5
    while not (listed := http.get(f"/invocations/{inv_id}/browsers").json()["browsers"]):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    session_id = listed[0]["session_id"]
    assert isinstance(listed[0]["usage"]["uptime_ms"], int) and "deleted_at" not in listed[0]
    time.sleep(0.3)
    live = http.get(f"/browsers/{session_id}").json()
    assert live["session_id"] == session_id and live["usage"]["uptime_ms"] >= 300 and "deleted_at" not in live
    http.patch(f"/invocations/{inv_id}", json={"status": "failed"})  # the cancel deletes the run's browsers
    assert http.get(f"/invocations/{inv_id}/browsers").json() == {"browsers": []}
    assert http.get(f"/browsers/{session_id}").status_code == 404
    gone = http.get(f"/browsers/{session_id}", params={"include_deleted": "true"}).json()
    created, deleted = parse_timestamp_ns(gone["created_at"]), parse_timestamp_ns(gone["deleted_at"])
    assert gone["usage"]["uptime_ms"] == (deleted - created) // 1_000_000 >= 300
    time.sleep(0.1)  # a deleted session's uptime no longer grows
    assert http.get(f"/browsers/{session_id}", params={"include_deleted": "true"}).json()["usage"] == gone["usage"]
