"""The emulator's browser filesystem over real HTTP: a real Chromium's download lands in the browser's
``/tmp/downloads`` and is listed, described and read there; Kernel's 400s and 404s; nothing outside the browser's
own root is reachable; a deleted browser's files are gone."""

from __future__ import annotations

import os
import time
from typing import Any

import httpx
import pytest

from kernel_provider.testing import KernelEmulator
from tests.kernel_browsers import needs_chromium, serve_site

pytestmark = needs_chromium


def new_browser(http: httpx.Client) -> dict[str, Any]:
    created = http.post("/browsers", json={"headless": True, "timeout_seconds": 30})
    assert created.status_code == 200, created.text
    return created.json()  # type: ignore[no-any-return]


def download_prices(cdp_ws_url: str, site_url: str) -> None:
    """Click the example site's CSV link in the browser, downloads in Chromium's default directory."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.connect_over_cdp(cdp_ws_url)
        # Playwright sends downloads to a directory of its own: give them back to the browser's default one.
        browser.new_browser_cdp_session().send("Browser.setDownloadBehavior", {"behavior": "default"})
        page = browser.contexts[0].pages[0]
        page.goto(site_url)
        page.click("#prices-csv")
        page.wait_for_timeout(200)
        browser.close()


def listed(http: httpx.Client, session_id: str, path: str) -> list[dict[str, Any]]:
    response = http.get(f"/browsers/{session_id}/fs/list_files", params={"path": path})
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def test_a_real_download_is_listed_described_and_read(http: httpx.Client, kernel_emulator: KernelEmulator) -> None:
    browser = new_browser(http)
    sid = browser["session_id"]
    assert listed(http, sid, "/tmp/downloads") == []
    with serve_site() as site:
        download_prices(browser["cdp_ws_url"], site)
    deadline = time.monotonic() + 20
    while not [e for e in listed(http, sid, "/tmp/downloads") if e["name"] == "prices.csv"]:
        assert time.monotonic() < deadline, "the download never appeared"
        time.sleep(0.1)
    with open("example_dags/site/prices.csv", "rb") as f:
        expected = f.read()
    (entry,) = listed(http, sid, "/tmp/downloads")
    assert entry["path"] == "/tmp/downloads/prices.csv" and entry["size_bytes"] == len(expected)
    assert entry["is_dir"] is False and entry["mode"].startswith("-") and entry["mod_time"].endswith("Z")
    info = http.get(f"/browsers/{sid}/fs/file_info", params={"path": "/tmp/downloads/prices.csv"}).json()
    assert info == entry
    assert http.get(f"/browsers/{sid}/fs/file_info", params={"path": "/tmp"}).json()["is_dir"] is True
    body = http.get(f"/browsers/{sid}/fs/read_file", params={"path": "/tmp/downloads/prices.csv"})
    assert body.status_code == 200 and body.content == expected
    assert body.headers["content-type"] == "application/octet-stream"


@pytest.mark.parametrize(
    ("params", "status", "code"),
    [
        ({}, 400, "bad_request"),
        ({"path": "tmp/downloads"}, 400, "bad_request"),
        ({"path": "/tmp/downloads/../../etc"}, 400, "bad_request"),
        ({"path": "/tmp/\x00x"}, 400, "bad_request"),
        ({"path": "/etc/passwd"}, 404, "not_found"),
        ({"path": "/tmp/downloads/missing.csv"}, 404, "not_found"),
    ],
)
def test_bad_and_missing_paths_are_kernels_errors(
    http: httpx.Client, kernel_emulator: KernelEmulator, params: dict[str, str], status: int, code: str
) -> None:
    sid = new_browser(http)["session_id"]
    for op in ("list_files", "file_info", "read_file"):
        response = http.get(f"/browsers/{sid}/fs/{op}", params=params)
        assert response.status_code == status, (op, response.text)
        assert response.json()["code"] == code and response.json()["message"]


def test_nothing_outside_the_browsers_root_is_reachable(http: httpx.Client, kernel_emulator: KernelEmulator) -> None:
    sid = new_browser(http)["session_id"]
    root = kernel_emulator.store.browser_sessions.live[sid].process.fs_root
    os.symlink("/etc", os.path.join(root, "tmp/downloads/out"))
    assert listed(http, sid, "/tmp/downloads") == []  # the symlink is not listed
    for op in ("list_files", "file_info", "read_file"):
        escaped = http.get(f"/browsers/{sid}/fs/{op}", params={"path": "/tmp/downloads/out/passwd"})
        assert escaped.status_code == 404, escaped.text
    assert http.get(f"/browsers/{sid}/fs/read_file", params={"path": "/tmp"}).status_code == 400
    assert http.get(f"/browsers/{sid}/fs/list_files", params={"path": "/tmp/downloads/x"}).status_code == 404


def test_a_deleted_browsers_files_are_gone(http: httpx.Client, kernel_emulator: KernelEmulator) -> None:
    sid = new_browser(http)["session_id"]
    root = kernel_emulator.store.browser_sessions.live[sid].process.fs_root
    assert http.delete(f"/browsers/{sid}").status_code == 204
    gone = http.get(f"/browsers/{sid}/fs/list_files", params={"path": "/tmp/downloads"})
    assert gone.status_code == 404 and gone.json()["code"] == "not_found"
    assert not os.path.exists(root)
    assert http.get("/browsers/nope/fs/list_files", params={"path": "/"}).status_code == 404
