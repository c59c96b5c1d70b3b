"""The emulator is closed by default (issue 25, finding 4): every route needs the token, requests must name the
emulator by a loopback Host, state changes come from its own origin with a JSON body. Over real HTTP."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest

from kernel_provider.testing import KernelEmulator
from kernel_provider.testing.signing import signed_url
from tests.helpers import live_page

PLAN = {"seed": 7, "rules": [{"route": "GET /apps", "sequence": [{"status": 503}]}]}


def _auth(emulator: KernelEmulator) -> dict[str, str]:
    return {"Authorization": f"Bearer {emulator.token}"}


def _create(emulator: KernelEmulator) -> dict[str, Any]:
    body = {"app_name": "demo", "action_name": "echo", "version": "latest", "payload": json.dumps({"secret": "p1"})}
    response = httpx.post(f"{emulator.url}/invocations", json=body, headers=_auth(emulator))
    assert response.status_code in (200, 201), response.text
    return dict(response.json())


def _live_url(emulator: KernelEmulator) -> str:
    """The signed live-view URL of a running invocation's browser (the demo ``browse`` action)."""
    body = {"app_name": "demo", "action_name": "browse", "version": "latest", "async": True}
    body["payload"] = json.dumps({"count": 1, "seconds": 30})
    created = httpx.post(f"{emulator.url}/invocations", json=body, headers=_auth(emulator)).json()
    for _ in range(300):
        listed = httpx.get(f"{emulator.url}/invocations/{created['id']}/browsers", headers=_auth(emulator))
        browsers = listed.json()["browsers"]
        if browsers:
            return str(browsers[0]["browser_live_view_url"])
        time.sleep(0.02)
    raise AssertionError("the action never created its browser")


@pytest.mark.parametrize("path", ["/apps", "/invocations", "/_emulator/invocations", "/_emulator/health"])
def test_no_token_gets_401_on_api_and_admin_routes(kernel_emulator: KernelEmulator, path: str) -> None:
    _create(kernel_emulator)
    refused = httpx.get(f"{kernel_emulator.url}{path}")
    assert refused.status_code == 401
    assert refused.json()["code"] == "unauthorized"
    assert "p1" not in refused.text  # the admin listing held the payload
    wrong = httpx.get(f"{kernel_emulator.url}{path}", headers={"Authorization": "Bearer not-the-token"})
    assert wrong.status_code == 401
    assert httpx.get(f"{kernel_emulator.url}{path}", headers=_auth(kernel_emulator)).status_code == 200


def test_live_page_needs_its_signed_url(kernel_emulator: KernelEmulator) -> None:
    url = _live_url(kernel_emulator)
    page = live_page(url)
    session_id = page.rsplit("/", 1)[1]
    assert httpx.get(url).status_code == 200  # the URL as Kernel hands it out opens without the API key
    assert httpx.get(page).status_code == 401  # without its token it does not
    assert httpx.get(url[:-3] + ("aaa" if not url.endswith("aaa") else "bbb")).status_code == 401  # forged
    other = signed_url(kernel_emulator.url, "another-session")  # a token for another browser
    assert httpx.get(f"{page}?{other.partition('?')[2]}").status_code == 401
    expired = signed_url(kernel_emulator.url, session_id, expires_at=time.time() - 1)
    assert httpx.get(expired).status_code == 401
    assert httpx.get(page, headers=_auth(kernel_emulator)).status_code == 200  # the API token opens it too


@pytest.mark.parametrize("path", ["/apps", "/_emulator/invocations", "/live/x"])
def test_a_foreign_host_is_refused_even_with_the_token(kernel_emulator: KernelEmulator, path: str) -> None:
    # DNS rebinding: a page on evil.example whose name now resolves to 127.0.0.1 sends its own name as Host.
    for host in ("evil.example", f"evil.example:{kernel_emulator.port}", f"127.0.0.1:{kernel_emulator.port + 1}"):
        refused = httpx.get(f"{kernel_emulator.url}{path}", headers={**_auth(kernel_emulator), "Host": host})
        assert refused.status_code == 421, host
        assert refused.json()["code"] == "misdirected_request"
    assert kernel_emulator.requests() == []  # nothing reached the API


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]"])
def test_loopback_names_with_the_bound_port_are_accepted(kernel_emulator: KernelEmulator, host: str) -> None:
    headers = {**_auth(kernel_emulator), "Host": f"{host}:{kernel_emulator.port}"}
    assert httpx.get(f"{kernel_emulator.url}/apps", headers=headers).status_code == 200


def test_allow_host_admits_a_proxy_name(kernel_emulator_factory: Any) -> None:
    emulator = kernel_emulator_factory(allow_hosts=["proxy.internal", "127.0.0.1:1"])
    for host, status in (("proxy.internal:8443", 200), ("127.0.0.1:1", 200), ("127.0.0.1:2", 421)):
        response = httpx.get(f"{emulator.url}/apps", headers={**_auth(emulator), "Host": host})
        assert response.status_code == status, host


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"Content-Type": "text/plain", "Origin": "http://evil.example"}, 403),  # a cross-site form, no token
        ({"Content-Type": "text/plain", "Origin": "null"}, 403),  # a sandboxed frame
        ({"Content-Type": "text/plain"}, 401),  # no Origin, no token
        ({"Content-Type": "text/plain", "Authorization": "Bearer {token}"}, 415),  # even with the token
        ({"Content-Type": "application/json", "Origin": "http://evil.example", "Authorization": "Bearer {token}"}, 403),
    ],
)
def test_a_cross_site_plain_text_post_leaves_the_fault_plan_alone(
    kernel_emulator: KernelEmulator, headers: dict[str, str], status: int
) -> None:
    kernel_emulator.set_faults(PLAN)
    before = kernel_emulator.client.faults()
    headers = {k: v.format(token=kernel_emulator.token) for k, v in headers.items()}
    response = httpx.post(f"{kernel_emulator.url}/_emulator/faults", content=b'{"rules": []}', headers=headers)
    assert response.status_code == status, response.text
    assert kernel_emulator.client.faults() == before
    assert kernel_emulator.client.faults()["rules"][0]["route"] == "GET /apps"


def test_a_cross_site_create_is_refused(kernel_emulator: KernelEmulator) -> None:
    body = {"app_name": "demo", "action_name": "echo", "version": "latest", "payload": "{}"}
    headers = {**_auth(kernel_emulator), "Origin": "https://evil.example"}
    response = httpx.post(f"{kernel_emulator.url}/invocations", json=body, headers=headers)
    assert response.status_code == 403 and response.json()["code"] == "forbidden_origin"
    same = {**_auth(kernel_emulator), "Origin": kernel_emulator.url}
    assert httpx.post(f"{kernel_emulator.url}/invocations", json=body, headers=same).status_code in (200, 201)
    assert kernel_emulator.stats()["created"] == 1


def test_signed_in_browser_may_read_the_admin_pages_but_not_change_them(kernel_emulator: KernelEmulator) -> None:
    created = _create(kernel_emulator)
    with httpx.Client(base_url=kernel_emulator.url) as browser:
        page = browser.get(f"/_emulator/invocations/{created['id']}", headers={"Accept": "text/html"})
        assert page.status_code == 401 and 'name="token"' in page.text  # the sign-in form, not the invocation
        wrong = browser.post("/_emulator/login", data={"token": "guess", "next": "/_emulator/stats"})
        assert wrong.status_code == 401 and not browser.cookies
        away = browser.post("/_emulator/login", data={"token": kernel_emulator.token, "next": "//evil.example/x"})
        assert away.status_code == 303 and away.headers["location"] == "/_emulator/invocations"  # no open redirect
        assert kernel_emulator.token not in str(away.headers)  # the cookie is not the token
        signed_in = browser.get(f"/_emulator/invocations/{created['id']}")
        assert signed_in.status_code == 200 and signed_in.json()["id"] == created["id"]
        reset = browser.post("/_emulator/reset", json={})
        assert reset.status_code == 401  # the cookie only reads
    assert kernel_emulator.stats()["created"] == 1
