"""The official ``kernel`` SDK (0.131) against the emulator: every call must parse without errors."""

from __future__ import annotations

import json
from typing import Any, cast

import pytest
from pydantic import TypeAdapter

kernel = pytest.importorskip("kernel")
from kernel import AsyncKernel, Kernel  # noqa: E402
from kernel.types import InvocationRetrieveResponse, InvocationUpdateResponse  # noqa: E402
from kernel.types.app_list_response import AppListResponse  # noqa: E402
from kernel.types.invocation_follow_response import InvocationFollowResponse  # noqa: E402
from kernel.types.invocation_list_browsers_response import InvocationListBrowsersResponse  # noqa: E402
from kernel.types.invocation_list_response import InvocationListResponse  # noqa: E402

from kernel_provider.testing import DEMO_APP_NAME, KernelEmulator  # noqa: E402

EVENT: TypeAdapter[Any] = TypeAdapter(cast(Any, InvocationFollowResponse))


@pytest.fixture
def sdk(kernel_emulator: KernelEmulator) -> Kernel:
    return Kernel(api_key=kernel_emulator.token, base_url=kernel_emulator.url, max_retries=0)


def _strict(model: Any, data: Any) -> Any:
    """Validate raw JSON with the SDK's pydantic model (the SDK itself parses leniently)."""
    return model.model_validate(data)


def test_create_sync_and_retrieve(sdk: Kernel, kernel_emulator: KernelEmulator) -> None:
    created = sdk.invocations.create(
        app_name=DEMO_APP_NAME, version="latest", action_name="echo", payload=json.dumps({"x": [1, 2]})
    )
    assert created.status == "succeeded"
    assert json.loads(created.output or "") == {"x": [1, 2]}
    assert len(created.id) == 24 and created.id.isalnum() and created.id.islower()
    got = sdk.invocations.retrieve(created.id)
    assert got.status == "succeeded" and got.finished_at is not None and got.status_reason is None
    raw = sdk.invocations.with_raw_response.retrieve(created.id).http_response.json()
    _strict(InvocationRetrieveResponse, raw)
    assert raw["started_at"].endswith("Z") and len(raw["started_at"].split(".")[1]) == 10


def test_create_async_follow_logs_in_order(sdk: Kernel) -> None:
    created = sdk.invocations.create(
        app_name=DEMO_APP_NAME,
        version="latest",
        action_name="logs",
        payload=json.dumps({"lines": 5, "interval": 0.02}),
        async_=True,
    )
    assert created.status == "queued"
    events = list(sdk.invocations.follow(created.id))
    kinds = [e.event for e in events]
    assert kinds[0] == "invocation_state"
    assert kinds[-1] == "invocation_state"
    logs = [e.message for e in events if e.event == "log"]
    assert logs == [f"line {i}\n" for i in range(5)]
    final = cast(Any, events[-1])
    assert final.invocation.status == "succeeded"
    assert json.loads(final.invocation.output or "") == {"lines": 5}


def test_follow_raw_events_validate_strictly(sdk: Kernel, kernel_emulator: KernelEmulator) -> None:
    created = sdk.invocations.create(
        app_name=DEMO_APP_NAME, version="latest", action_name="logs", payload='{"lines": 2}', async_=True
    )
    kernel_emulator.wait_for(created.id)
    import httpx

    with httpx.Client(base_url=kernel_emulator.url) as http:
        response = http.get(
            f"/invocations/{created.id}/events", headers={"Authorization": f"Bearer {kernel_emulator.token}"}
        )
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["x-sse-content-type"] == "application/json"
    for block in filter(None, response.text.split("\n\n")):
        EVENT.validate_python(json.loads(block.removeprefix("data: ")))


def test_cancel_with_update(sdk: Kernel, kernel_emulator: KernelEmulator) -> None:
    created = sdk.invocations.create(app_name=DEMO_APP_NAME, version="latest", action_name="slow", async_=True)
    kernel_emulator.wait_for(created.id, ("running",))
    updated = sdk.invocations.update(
        created.id, status="failed", output=json.dumps({"error": "Invocation cancelled by user"})
    )
    assert updated.status == "failed"
    assert updated.status_reason
    assert updated.finished_at is not None
    raw = sdk.invocations.with_raw_response.retrieve(created.id).http_response.json()
    _strict(InvocationUpdateResponse, raw)
    assert kernel_emulator.stats()["live"] == 0


def test_list_auto_pagination_sees_each_id_once(sdk: Kernel) -> None:
    ids = {
        sdk.invocations.create(
            app_name=DEMO_APP_NAME, version="latest", action_name="echo", payload=json.dumps(i), async_=True
        ).id
        for i in range(45)
    }
    seen: list[str] = [inv.id for inv in sdk.invocations.list(limit=20)]
    assert sorted(seen) == sorted(ids)
    assert len(seen) == len(set(seen)) == 45
    page = sdk.invocations.list(limit=20, app_name=DEMO_APP_NAME)
    for item in page.items:
        _strict(InvocationListResponse, item.model_dump(mode="json", exclude_none=True))


def test_browsers_list_and_delete(sdk: Kernel, kernel_emulator: KernelEmulator) -> None:
    created = sdk.invocations.create(
        app_name=DEMO_APP_NAME, version="latest", action_name="browse", payload='{"count": 2}'
    )
    assert created.status == "succeeded"
    browsers = sdk.invocations.list_browsers(created.id)
    assert len(browsers.browsers) == 2
    raw = sdk.invocations.with_raw_response.list_browsers(created.id).http_response.json()
    _strict(InvocationListBrowsersResponse, raw)
    assert kernel_emulator.stats()["browsers_live"] == 2
    assert sdk.invocations.with_raw_response.delete_browsers(created.id).http_response.status_code == 204
    assert sdk.invocations.list_browsers(created.id).browsers == []


def test_apps_list(sdk: Kernel) -> None:
    apps = list(sdk.apps.list())
    assert [a.app_name for a in apps] == [DEMO_APP_NAME]
    demo = apps[0]
    assert demo.region == "aws.us-east-1a" and demo.version == "latest"
    assert {"echo", "sleep", "logs", "fail", "slow", "browse", "big", "plain_fail"} <= {a.name for a in demo.actions}
    raw = sdk.apps.with_raw_response.list().http_response.json()
    for item in raw:
        _strict(AppListResponse, item)


def test_sdk_errors_map_to_sdk_exceptions(kernel_emulator: KernelEmulator) -> None:
    bad = Kernel(api_key="wrong", base_url=kernel_emulator.url, max_retries=0)
    with pytest.raises(kernel.AuthenticationError):
        bad.apps.list()
    good = Kernel(api_key=kernel_emulator.token, base_url=kernel_emulator.url, max_retries=0)
    with pytest.raises(kernel.NotFoundError) as info:
        good.invocations.retrieve("doesnotexist0000000000000")
    assert info.value.body["code"] == "not_found"  # type: ignore[index]
    with pytest.raises(kernel.BadRequestError):
        good.invocations.create(app_name="demo", version="latest", action_name="echo", payload="{nope")


async def test_async_client_follow(kernel_emulator: KernelEmulator) -> None:
    client = AsyncKernel(api_key=kernel_emulator.token, base_url=kernel_emulator.url, max_retries=0)
    async with client:
        created = await client.invocations.create(
            app_name=DEMO_APP_NAME, version="latest", action_name="logs", payload='{"lines": 3}', async_=True
        )
        stream = await client.invocations.follow(created.id)
        events = [event async for event in stream]
        assert [e.message for e in events if e.event == "log"] == ["line 0\n", "line 1\n", "line 2\n"]
        assert events[-1].event == "invocation_state"
        assert events[-1].invocation.status == "succeeded"
        # a late follower of a finished invocation gets history + terminal state, then the stream ends
        again = [event async for event in await client.invocations.follow(created.id)]
        assert [e.event for e in again] == ["log", "log", "log", "invocation_state"]
        pages = [inv.id async for inv in client.invocations.list(limit=1)]
        assert pages == [created.id]


def test_sdk_retries_follow_injected_faults(kernel_emulator: KernelEmulator) -> None:
    retrying = Kernel(api_key=kernel_emulator.token, base_url=kernel_emulator.url, max_retries=2)
    kernel_emulator.set_faults(
        [
            {
                "route": "POST /invocations",
                "sequence": [{"status": 503, "retry_after_ms": 10}, {"status": 429, "retry_after_ms": 10}],
            }
        ]
    )
    created = retrying.invocations.create(app_name=DEMO_APP_NAME, version="latest", action_name="echo")
    assert created.status == "succeeded"
    assert [r["status"] for r in kernel_emulator.requests(route="/invocations", method="POST")] == [
        503,
        429,
        200,
    ]
    assert kernel_emulator.created_count() == 1
    kernel_emulator.set_faults(
        [{"route": "POST /invocations", "times": 1, "fault": {"status": 500, "should_retry": False}}]
    )
    with pytest.raises(kernel.InternalServerError):
        retrying.invocations.create(app_name=DEMO_APP_NAME, version="latest", action_name="echo")
    assert kernel_emulator.created_count() == 1


def test_replays_start_list_stop(sdk: Kernel, kernel_emulator: KernelEmulator) -> None:
    """Kernel's replay endpoints as the SDK calls them (``browsers.replays.*``): every answer parses strictly."""
    from kernel.types.browsers.replay_list_response import ReplayListResponse
    from kernel.types.browsers.replay_start_response import ReplayStartResponse

    created = sdk.invocations.create(
        app_name=DEMO_APP_NAME, version="latest", action_name="browse", payload='{"count": 1, "record": true}'
    )
    (browser,) = sdk.invocations.list_browsers(created.id).browsers
    raw = sdk.browsers.replays.with_raw_response.list(browser.session_id).http_response.json()
    TypeAdapter(ReplayListResponse).validate_json(json.dumps(raw), strict=True)  # a list type: no model_validate
    (recorded,) = sdk.browsers.replays.list(browser.session_id)
    assert recorded.replay_view_url.startswith(f"{kernel_emulator.url}/live/{browser.session_id}/replays/")
    sdk.browsers.replays.stop(recorded.replay_id, id_or_name=browser.session_id)
    started = sdk.browsers.replays.with_raw_response.start(browser.session_id).http_response
    assert started.status_code == 201
    _strict(ReplayStartResponse, started.json())
    assert len(sdk.browsers.replays.list(browser.session_id)) == 2
