"""Fidelity to Kernel's OpenAPI spec on inputs the provider never sends (found by other clients and fuzzers)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from kernel_provider.client import KernelClient, KernelSettings
from kernel_provider.client.errors import KernelApiError
from kernel_provider.client.validation import PAYLOAD_MAX_BYTES
from kernel_provider.testing import EmulatorConfig, KernelEmulator
from kernel_provider.testing.config import DEFAULT_PAYLOAD_LIMIT
from tests.helpers import FAST_RETRY


def _body(payload: str) -> dict[str, Any]:
    return {"app_name": "demo", "version": "latest", "action_name": "echo", "payload": payload, "async": True}


def test_payload_limit_defaults_to_the_documented_maximum(http: httpx.Client) -> None:
    assert DEFAULT_PAYLOAD_LIMIT == PAYLOAD_MAX_BYTES == 4_500_000  # the provider refuses the same size first
    at_limit = json.dumps("x" * (DEFAULT_PAYLOAD_LIMIT - 2))
    assert http.post("/invocations", json=_body(at_limit)).status_code == 202
    over = json.dumps("x" * (DEFAULT_PAYLOAD_LIMIT - 1))
    response = http.post("/invocations", json=_body(over))
    assert response.status_code == 400
    assert (
        response.json()["code"] == "bad_request"
        and "exceeds the maximum of 4500000 bytes" in response.json()["message"]
    )


def test_payload_limit_is_configurable_and_counts_utf8_bytes(
    kernel_emulator_factory: Callable[..., KernelEmulator],
) -> None:
    emu = kernel_emulator_factory(payload_limit=64 * 1024)  # the other documented figure
    headers = {"Authorization": f"Bearer {emu.token}"}
    fits = json.dumps("é" * 32_000, ensure_ascii=False)  # 64,002 bytes of UTF-8
    too_big = json.dumps("é" * 33_000, ensure_ascii=False)  # 33,002 characters but 66,002 bytes
    assert httpx.post(f"{emu.url}/invocations", json=_body(fits), headers=headers).status_code == 202
    assert httpx.post(f"{emu.url}/invocations", json=_body(too_big), headers=headers).status_code == 400
    emu.configure(payload_limit=0)  # 0 = no limit
    assert httpx.post(f"{emu.url}/invocations", json=_body(too_big), headers=headers).status_code == 202


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("DELETE", "/invocations", {"GET", "HEAD", "POST"}),
        ("PUT", "/invocations/abc", {"GET", "HEAD", "PATCH"}),
        ("POST", "/invocations/abc/browsers", {"GET", "HEAD", "DELETE"}),
        ("POST", "/apps", {"GET", "HEAD"}),
    ],
)
def test_405_lists_the_allowed_methods(http: httpx.Client, method: str, path: str, allow: set[str]) -> None:
    response = http.request(method, path)
    assert response.status_code == 405
    assert response.json()["code"] == "method_not_allowed"
    assert set(response.headers["allow"].split(", ")) == allow


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/invocations/"),
        ("POST", "/invocations/"),
        ("GET", "/apps/"),
        ("GET", "/invocations/abc/"),
        ("GET", "/invocations/abc/events/"),
    ],
)
def test_trailing_slash_is_404_not_a_redirect(http: httpx.Client, method: str, path: str) -> None:
    response = http.request(method, path, follow_redirects=False)
    assert response.status_code == 404 and "location" not in response.headers
    assert response.json()["code"] == "not_found"


def test_body_json_must_be_strict(http: httpx.Client) -> None:
    raw = b'{"app_name":"demo","version":"latest","action_name":"echo","async_timeout_seconds":NaN}'
    response = http.post("/invocations", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 400 and response.json()["code"] == "bad_request"


def test_status_fault_carries_details_and_inner_error(kernel_emulator: KernelEmulator) -> None:
    details = [{"code": "invalid_input", "message": "app_name is too long"}, {"code": "hint", "message": "see docs"}]
    inner = {"code": "temporal_error", "message": "workflow start failed"}
    kernel_emulator.set_faults(
        [{"route": "POST /invocations", "fault": {"status": 400, "details": details, "inner_error": inner}}]
    )
    body = {"app_name": "demo", "version": "latest", "action_name": "echo"}
    response = httpx.post(
        f"{kernel_emulator.url}/invocations", json=body, headers={"Authorization": f"Bearer {kernel_emulator.token}"}
    )
    assert response.status_code == 400
    assert response.json() == {
        "code": "bad_request",
        "message": "injected fault: HTTP 400",
        "details": details,
        "inner_error": inner,
    }


def test_provider_error_message_reads_details_and_inner_error(kernel_emulator: KernelEmulator) -> None:
    """The provider's ``raise_for_status`` puts Kernel's optional ``details``/``inner_error`` in its message."""
    kernel_emulator.set_faults(
        [
            {
                "route": "GET /invocations/{id}",
                "fault": {
                    "status": 500,
                    "code": "internal_error",
                    "message": "lookup failed",
                    "details": [{"code": "db_timeout", "message": "shard 3 did not answer"}],
                    "inner_error": {"code": "pg_error", "message": "canceling statement"},
                    "should_retry": False,
                },
            }
        ]
    )
    settings = KernelSettings.from_mapping(host=kernel_emulator.url, password=kernel_emulator.token)
    client = KernelClient(settings, retry=FAST_RETRY)
    try:
        with pytest.raises(KernelApiError) as caught:
            client.get_invocation("aaaaaaaaaaaaaaaaaaaaaaaa")
    finally:
        client.close()
    error = caught.value
    assert error.status_code == 500 and error.code == "internal_error"
    assert error.details == [{"code": "db_timeout", "message": "shard 3 did not answer"}]
    text = str(error)
    assert "lookup failed (pg_error: canceling statement)" in text
    assert "details: db_timeout: shard 3 did not answer" in text


def test_invalid_fault_details_are_refused() -> None:
    from kernel_provider.testing.faults import Fault

    with pytest.raises(ValueError, match="details"):
        Fault.from_json({"status": 400, "details": "nope"})
    with pytest.raises(ValueError, match="inner_error"):
        Fault.from_json({"status": 400, "inner_error": ["x"]})


def test_config_object_is_accepted_whole(kernel_emulator_factory: Callable[..., KernelEmulator]) -> None:
    emu = kernel_emulator_factory(EmulatorConfig(payload_limit=10, tokens=("k1",)), org_concurrency=2)
    assert emu.config.payload_limit == 10 and emu.config.org_concurrency == 2 and emu.token == "k1"
