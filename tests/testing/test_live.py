"""The emulator's live-view pages and Kernel's replay endpoints (kernel_provider/testing/live.py), over HTTP."""

from __future__ import annotations

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
