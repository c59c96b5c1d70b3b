"""Apps written for Kernel (``kernel.App`` + ``@app.action``) run unchanged in the emulator."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from kernel_provider.testing import KernelEmulator

pytest.importorskip("kernel")
SSE = Callable[[httpx.Response], list[dict[str, Any]]]

APP_SOURCE = textwrap.dedent(
    """
    import asyncio
    import logging
    import sys

    import kernel
    from kernel import KernelContext

    app = kernel.App("my-app")


    @app.action("greet")
    def greet(ctx: KernelContext, payload):
        print(f"hello from {ctx.invocation_id}")
        print("to stderr", file=sys.stderr)
        sys.stdout.write("partial line without newline")
        return {"greeting": f"hi {payload['name']}", "invocation_id": ctx.invocation_id}


    @app.action("no-payload")
    def no_payload(ctx):
        return "ok"


    @app.action("async-work")
    async def async_work(ctx, payload):
        for i in range(3):
            print(f"step {i}")
            await asyncio.sleep(0.01)
        logging.getLogger("my-app").warning("careful")
        return {"steps": 3, "payload_was_none": payload is None}


    @app.action("explode")
    async def explode(ctx, payload):
        print("about to fail")
        raise RuntimeError("kaboom")


    @app.action("sync-explode")
    def sync_explode(ctx, payload):
        raise KeyError("missing")
    """
)

FALLBACK_SOURCE = textwrap.dedent(
    """
    def double(ctx, payload):
        return payload * 2

    async def whoami(ctx):
        return ctx.invocation_id

    ACTIONS = {"plain-app": {"double": double, "whoami": whoami}}
    """
)


@pytest.fixture
def app_emulator(tmp_path: Path, kernel_emulator_factory: Callable[..., KernelEmulator]) -> KernelEmulator:
    app_file = tmp_path / "my_app.py"
    app_file.write_text(APP_SOURCE)
    fallback = tmp_path / "plain_app.py"
    fallback.write_text(FALLBACK_SOURCE)
    emulator: KernelEmulator = kernel_emulator_factory(apps=[app_file, fallback], app_versions=["latest", "2.0"])
    return emulator


def _http(emu: KernelEmulator) -> httpx.Client:
    return httpx.Client(base_url=emu.url, headers={"Authorization": f"Bearer {emu.token}"}, timeout=10)


def test_sync_handler_with_logs(app_emulator: KernelEmulator, sse_events: SSE) -> None:
    with _http(app_emulator) as http:
        body = {
            "app_name": "my-app",
            "version": "latest",
            "action_name": "greet",
            "payload": '{"name": "Ada"}',
        }
        result = http.post("/invocations", json=body).json()
        assert result["status"] == "succeeded"
        output = json.loads(result["output"])
        assert output == {"greeting": "hi Ada", "invocation_id": result["id"]}
        events = sse_events(http.get(f"/invocations/{result['id']}/events"))
    logs = [e["message"] for e in events if e["event"] == "log"]
    assert logs == [f"hello from {result['id']}\n", "to stderr\n", "partial line without newline\n"]


def test_one_param_handler_and_versions(app_emulator: KernelEmulator) -> None:
    with _http(app_emulator) as http:
        body = {"app_name": "my-app", "version": "2.0", "action_name": "no-payload"}
        assert http.post("/invocations", json=body).json()["output"] == '"ok"'
        apps = {(a["app_name"], a["version"]) for a in http.get("/apps", params={"limit": 100}).json()}
    assert {("demo", "latest"), ("my-app", "latest"), ("my-app", "2.0"), ("plain-app", "2.0")} <= apps


def test_async_handler_logging_and_none_payload(app_emulator: KernelEmulator, sse_events: SSE) -> None:
    with _http(app_emulator) as http:
        body = {"app_name": "my-app", "version": "latest", "action_name": "async-work", "async": True}
        inv_id = http.post("/invocations", json=body).json()["id"]
        events = sse_events(http.get(f"/invocations/{inv_id}/events"))
    logs = [e["message"] for e in events if e["event"] == "log"]
    assert logs[:3] == ["step 0\n", "step 1\n", "step 2\n"]
    # The logging record's format is the process's (Airflow may have configured the root logger already).
    assert len(logs) == 4 and "WARNING" in logs[3] and logs[3].endswith("careful\n")
    final = events[-1]["invocation"]
    assert final["status"] == "succeeded"
    assert json.loads(final["output"]) == {"steps": 3, "payload_was_none": True}


@pytest.mark.parametrize(("action", "text"), [("explode", "RuntimeError: kaboom"), ("sync-explode", "KeyError")])
def test_handler_exception_fails(app_emulator: KernelEmulator, action: str, text: str) -> None:
    with _http(app_emulator) as http:
        result = http.post(
            "/invocations", json={"app_name": "my-app", "version": "latest", "action_name": action}
        ).json()
    assert result["status"] == "failed"
    assert result["output"].startswith(text)
    assert result["status_reason"]


def test_module_actions_fallback(app_emulator: KernelEmulator) -> None:
    with _http(app_emulator) as http:
        doubled = http.post(
            "/invocations",
            json={"app_name": "plain-app", "version": "latest", "action_name": "double", "payload": "21"},
        ).json()
        me = http.post(
            "/invocations", json={"app_name": "plain-app", "version": "latest", "action_name": "whoami"}
        ).json()
    assert doubled["output"] == "42"
    assert json.loads(me["output"]) == me["id"]


def test_file_without_apps_is_rejected(tmp_path: Path) -> None:
    empty = tmp_path / "empty.py"
    empty.write_text("x = 1\n")
    with pytest.raises(ValueError, match="defines no app"):
        KernelEmulator(apps=[empty])
