"""The emulator's live-view pages (kernel_provider/testing/live_view.py) and Kernel's replay endpoints
(kernel_provider/testing/replay_routes.py), over HTTP."""

from __future__ import annotations

import html
import re
from typing import Any

import httpx
import pytest

from kernel_provider.testing import KernelEmulator
from tests.helpers import live_page


def browse(http: httpx.Client, emulator: KernelEmulator, **payload: Any) -> dict[str, Any]:
    """Start the demo ``browse`` action (browsers held ``seconds``) and return its invocation once it is running."""
    import json

    created = http.post(
        "/invocations",
        json={
            "app_name": "demo",
            "action_name": "browse",
            "version": "latest",
            "async": True,
            "payload": json.dumps(payload),
        },
    ).json()
    return emulator.client.wait_for(created["id"], ("running", "succeeded", "failed"))


def browsers_of(http: httpx.Client, invocation_id: str) -> list[dict[str, Any]]:
    for _ in range(200):
        found = http.get(f"/invocations/{invocation_id}/browsers").json()["browsers"]
        if found:
            return list(found)
        import time

        time.sleep(0.02)
    raise AssertionError("the action never created its browser")


def test_live_view_url_opens_the_runs_page_without_a_key(http, kernel_emulator):
    inv = browse(http, kernel_emulator, count=1, seconds=30)
    (browser,) = browsers_of(http, inv["id"])
    url = browser["browser_live_view_url"]
    assert live_page(url) == f"{kernel_emulator.url}/live/{browser['session_id']}"
    assert httpx.get(live_page(url)).status_code == 401  # the signed token in its query is what opens it

    page = httpx.get(url)  # no Authorization header: a person's browser opens it
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert f'<dd id="invocation">{inv["id"]}</dd>' in page.text
    assert '<dd id="status">running</dd>' in page.text
    assert "  created 1 browser(s)\n" in page.text  # the run's log lines, as text (not the stream's JSON)
    assert '"event"' not in page.text
    assert 'http-equiv="refresh"' in page.text  # refreshed while the run goes on
    # The listed URL gives control (as on Kernel): its form posts with the page's own signed token, and gets in.
    action = re.search(r'<form id="input" method="post" action="([^"]+)"', page.text).group(1)
    sent = httpx.post(kernel_emulator.url + html.unescape(action), data={"text": "x"})
    assert sent.status_code == 204, sent.text

    http.patch(f"/invocations/{inv['id']}", json={"status": "failed"})
    ended = httpx.get(url)
    assert '<dd id="status">failed</dd>' in ended.text
    assert '<dd id="browser-state">ended</dd>' in ended.text
    assert 'http-equiv="refresh"' not in ended.text


def test_unknown_browser_page(http, kernel_emulator):
    assert http.get("/live/nosuchbrowser").status_code == 404


def test_replay_started_by_the_action_is_listed_with_its_view_url(http, kernel_emulator):
    inv = browse(http, kernel_emulator, count=1, seconds=30, record=True)
    (browser,) = browsers_of(http, inv["id"])
    session = browser["session_id"]
    (replay,) = http.get(f"/browsers/{session}/replays").json()
    assert set(replay) == {"replay_id", "started_at", "finished_at", "replay_view_url"}
    assert replay["finished_at"] is None
    expected_page = f"{kernel_emulator.url}/live/{session}/replays/{replay['replay_id']}"
    assert live_page(replay["replay_view_url"]) == expected_page
    missing = http.get(f"/browsers/{session}/replays/nosuchreplay")
    assert missing.status_code == 404 and "nosuchreplay" in missing.json()["message"]
    still = http.get(f"/browsers/{session}/replays/{replay['replay_id']}")
    assert still.status_code == 202 and still.headers["retry-after"] == "1"
    assert http.post(f"/browsers/{session}/replays").status_code == 409  # one recording at a time

    assert http.post(f"/browsers/{session}/replays/{replay['replay_id']}/stop").status_code == 200
    video = http.get(f"/browsers/{session}/replays/{replay['replay_id']}")
    assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"
    page = httpx.get(replay["replay_view_url"])
    assert page.status_code == 200 and replay["replay_id"] in page.text

    again = http.post(f"/browsers/{session}/replays")
    assert again.status_code == 201 and again.json()["replay_id"] != replay["replay_id"]
    # A cancelled run's browsers go; their recordings stop and stay listed.
    http.patch(f"/invocations/{inv['id']}", json={"status": "failed"})
    listed = http.get(f"/browsers/{session}/replays").json()
    assert len(listed) == 2 and all(r["finished_at"] for r in listed)
    assert http.post(f"/browsers/{session}/replays").status_code == 404  # an ended browser records nothing


def test_replays_of_an_unknown_browser_is_kernels_404(http):
    response = http.get("/browsers/nosuchbrowser/replays")
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/browsers/nosuchbrowser/replays/r1"), ("POST", "/browsers/nosuchbrowser/replays/r1/stop")],
)
def test_a_recording_of_an_unknown_browser_is_a_404_naming_the_browser(http, method, path):
    response = http.request(method, path)
    assert (response.status_code, response.json()["code"]) == (404, "not_found")
    assert "nosuchbrowser" in response.json()["message"]


def test_replay_routes_need_the_key(kernel_emulator):
    assert httpx.get(f"{kernel_emulator.url}/browsers/x/replays").status_code == 401
    assert kernel_emulator.requests(route="/browsers/{id}/replays")[-1]["auth"] == "missing"


# --- POST /browsers/{id}/live_view and the pages of the URLs it mints --------------------------------------


def minted(http: httpx.Client, session_id: str, **body: Any) -> dict[str, Any]:
    answer = http.post(f"/browsers/{session_id}/live_view", json=body)
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def test_a_read_url_shows_the_run_but_takes_no_input(http, kernel_emulator):
    inv = browse(http, kernel_emulator, count=1, seconds=30)
    (browser,) = browsers_of(http, inv["id"])
    view = minted(http, browser["session_id"], access="read")
    assert set(view) == {"url", "access"} and view["access"] == "read"  # no expires_at without a TTL
    assert view["url"].startswith(f"{kernel_emulator.url}/live/t/")
    assert browser["session_id"] not in view["url"]  # nothing in it leads to the listed (control) URL

    page = httpx.get(view["url"])  # no key: a person's browser opens it
    assert page.status_code == 200
    assert '<dd id="access">read</dd>' in page.text and f'<dd id="invocation">{inv["id"]}</dd>' in page.text
    assert "<form" not in page.text and browser["session_id"] not in page.text
    refused = httpx.post(f"{view['url']}/input", params={"readOnly": "false"}, data={"text": "click"})
    assert (refused.status_code, refused.json()["code"]) == (403, "forbidden")
    assert kernel_emulator.store.browser_sessions.live_views.inputs == []


def test_a_control_url_takes_input_and_the_listed_url_gives_control_too(http, kernel_emulator):
    inv = browse(http, kernel_emulator, count=1, seconds=30)
    (browser,) = browsers_of(http, inv["id"])
    view = minted(http, browser["session_id"], access="control", ttl_seconds=60)
    assert view["access"] == "control" and view["expires_at"].endswith("Z")
    page = httpx.get(view["url"])
    assert '<form id="input"' in page.text
    assert httpx.post(f"{view['url']}/input", data={"text": "type"}).status_code == 204
    # The listed URL is Kernel's control URL: readOnly=true only hides the form, the input still goes through.
    hinted = httpx.get(browser["browser_live_view_url"], params={"readOnly": "true"})
    assert "<form" not in hinted.text
    listed = httpx.URL(browser["browser_live_view_url"])  # its signed token stays in the query
    assert httpx.post(listed.copy_with(path=listed.path + "/input"), data={"text": "x"}).status_code == 204
    sessions = kernel_emulator.store.browser_sessions.live_views.inputs
    assert sessions == [(browser["session_id"], "control"), (browser["session_id"], "listed")]


def test_a_url_stops_working_after_its_ttl_and_when_its_browser_ends(http, kernel_emulator):
    import datetime
    import time

    inv = browse(http, kernel_emulator, count=1, seconds=30)
    (browser,) = browsers_of(http, inv["id"])
    short = minted(http, browser["session_id"], access="control", ttl_seconds=3)
    lasting = minted(http, browser["session_id"], access="read")
    assert httpx.get(short["url"]).status_code == 200  # 3 s: room for a slow machine between mint and use
    expires = datetime.datetime.fromisoformat(short["expires_at"].replace("Z", "+00:00")).timestamp()
    time.sleep(max(0.0, expires - time.time()) + 0.2)
    assert httpx.get(short["url"]).status_code == 410
    assert httpx.post(f"{short['url']}/input", data={"text": "late"}).status_code == 410
    assert httpx.get(lasting["url"]).status_code == 200
    http.patch(f"/invocations/{inv['id']}", json={"status": "failed"})  # its browsers go
    assert httpx.get(lasting["url"]).status_code == 410
    assert httpx.get(f"{kernel_emulator.url}/live/t/nosuchtoken").status_code == 404


def test_headless_browsers_have_no_live_view_and_the_route_refuses_them(http, kernel_emulator):
    inv = browse(http, kernel_emulator, count=1, seconds=30, headless=True)
    (browser,) = browsers_of(http, inv["id"])
    assert browser["headless"] is True and browser["browser_live_view_url"] is None
    refused = http.post(f"/browsers/{browser['session_id']}/live_view", json={"access": "read"})
    assert refused.status_code == 400 and "headful" in refused.json()["message"]


@pytest.mark.parametrize(
    ("body", "field"),
    [({}, "access"), ({"access": "admin"}, "access"), ({"access": "read", "ttl_seconds": 0}, "ttl_seconds")],
)
def test_the_route_checks_its_body(http, kernel_emulator, body, field):
    inv = browse(http, kernel_emulator, count=1, seconds=30)
    (browser,) = browsers_of(http, inv["id"])
    refused = http.post(f"/browsers/{browser['session_id']}/live_view", json=body)
    assert refused.status_code == 400 and field in refused.json()["message"]


def test_the_route_needs_the_key_and_a_known_browser(http, kernel_emulator):
    assert httpx.post(f"{kernel_emulator.url}/browsers/x/live_view", json={"access": "read"}).status_code == 401
    missing = http.post("/browsers/nosuchbrowser/live_view", json={"access": "read"})
    assert (missing.status_code, missing.json()["code"]) == (404, "not_found")
