"""``kernel_provider.client.files``: what Kernel answers is checked before anyone writes with it (names, paths,
sizes), inputs are checked before any request, and file bodies stream into a capped, hashing sink over both
transports (real HTTP to the emulator, each browser a real Chromium), a retried body starting over."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import io
import os
from typing import Any

import pytest

from kernel_provider.client import KernelClient, KernelSettings
from kernel_provider.client.errors import KernelInputError, KernelNotFoundError, KernelResponseError
from kernel_provider.client.files import (
    CappedSink,
    FileApi,
    FileInfo,
    KernelFileTooLargeError,
    KernelUnsafePathError,
    check_fs_path,
    list_files,
)
from kernel_provider.client.transport import close_loop_resources
from kernel_provider.client.wire import drive
from tests.helpers import FAST_RETRY, answer, canned
from tests.kernel_browsers import needs_chromium


def entry(name: str = "a.csv", path: str | None = None, **fields: Any) -> dict[str, Any]:
    return {
        "name": name,
        "path": path if path is not None else f"/tmp/downloads/{name}",
        "size_bytes": 3,
        "is_dir": False,
        "mod_time": "2026-01-01T00:00:00Z",
        "mode": "-rw-r--r--",
        **fields,
    }


# --- pure logic ----------------------------------------------------------------------------------------------


def test_a_listing_is_parsed_and_each_entry_checked() -> None:
    send, calls = canned(answer(200, [entry(), entry("d", is_dir=True, size_bytes=0)]))
    found = drive(list_files("b-1", "/tmp/downloads/"), send)
    assert [(f.name, f.path, f.is_dir) for f in found] == [
        ("a.csv", "/tmp/downloads/a.csv", False),
        ("d", "/tmp/downloads/d", True),
    ]
    assert found[0].mod_time is not None and found[0].mode == "-rw-r--r--"
    assert calls[0].path == "/browsers/b-1/fs/list_files" and calls[0].query == {"path": "/tmp/downloads"}


@pytest.mark.parametrize(
    "bad",
    [
        entry("../evil", "/tmp/evil"),
        entry("..", "/tmp"),
        entry("a/b", "/tmp/downloads/a/b"),
        entry("a\x00b"),
        entry("a\nb"),
        entry("x", "/tmp/downloads/../../etc/x"),
        entry("x", "tmp/downloads/x"),
        entry("x", "/etc/x"),  # not the listed directory's child
        entry("x" * 300),
        entry("", "/tmp/downloads/"),
    ],
)
def test_an_escaping_name_or_path_from_kernel_is_refused(bad: dict[str, Any]) -> None:
    send, _ = canned(answer(200, [entry(), bad]))
    with pytest.raises(KernelUnsafePathError, match=r"nothing was written|listed"):
        drive(list_files("b-1", "/tmp/downloads"), send)


@pytest.mark.parametrize("body", [{"not": "a list"}, [{"name": "a", "path": "/a"}], [entry(size_bytes=-1)]])
def test_a_malformed_listing_is_a_response_error(body: Any) -> None:
    send, _ = canned(answer(200, body))
    with pytest.raises(KernelResponseError):
        drive(list_files("b-1", "/"), send)


@pytest.mark.parametrize("path", ["tmp", "", None, "/tmp/../etc", "/tmp/./x", "/tmp/\x00", 7])
def test_a_bad_path_fails_before_any_request(path: Any) -> None:
    send, calls = canned()
    with pytest.raises(KernelInputError, match="source_dir"):
        drive(list_files("b-1", path), send)
    assert calls == []
    with pytest.raises(KernelInputError, match="path"):
        check_fs_path("path", path)


def test_the_sink_counts_hashes_caps_and_starts_over() -> None:
    opened: list[io.BytesIO] = []

    def opener() -> io.BytesIO:
        opened.append(io.BytesIO())
        opened[-1].close = lambda: None  # type: ignore[method-assign]  # keep the bytes readable
        return opened[-1]

    sink = CappedSink(opener, max_bytes=5, path="/tmp/downloads/a")
    sink.begin()
    sink.write(b"abc")
    sink.begin()  # a retried body
    sink.write(b"hello")
    assert sink.size == 5 and sink.sha256 == hashlib.sha256(b"hello").hexdigest()
    assert opened[-1].getvalue() == b"hello" and len(opened) == 2
    with pytest.raises(KernelFileTooLargeError, match="max_bytes=5") as caught:
        sink.write(b"!")
    assert caught.value.parameter == "max_bytes" and opened[-1].getvalue() == b"hello"


def test_file_info_from_api_needs_an_object() -> None:
    with pytest.raises(KernelResponseError):
        FileInfo.from_api(["x"])


# --- over HTTP ----------------------------------------------------------------------------------------------


def with_chromium(test: Any) -> Any:
    for mark in needs_chromium:
        test = mark(test)
    return test


@pytest.fixture
def browser_with_files(kernel_emulator: Any) -> tuple[KernelClient, str, bytes]:
    client = KernelClient(
        KernelSettings.from_mapping(host=kernel_emulator.url, password=kernel_emulator.token), retry=FAST_RETRY
    )
    from kernel_provider.client.browsers import BrowserApi
    from kernel_provider.client.validation import build_browser_request

    browser = BrowserApi(client).open(build_browser_request(headless=True, timeout_seconds=30))
    root = kernel_emulator.store.browser_sessions.live[browser.session_id].process.fs_root
    data = os.urandom(300_000)  # several chunks
    with open(os.path.join(root, "tmp/downloads/blob.bin"), "wb") as f:
        f.write(data)
    return client, browser.session_id, data


@with_chromium
def test_files_are_listed_and_streamed_sync_and_async(
    browser_with_files: tuple[KernelClient, str, bytes], tmp_path: Any
) -> None:
    client, sid, data = browser_with_files
    api = FileApi(client)
    (info,) = api.list_files(session_id=sid)
    assert (info.name, info.size_bytes) == ("blob.bin", len(data))
    assert api.info(session_id=sid, path="/tmp/downloads/blob.bin") == info
    sink = CappedSink(functools.partial(open, tmp_path / "sync", "wb"), max_bytes=len(data), path=info.path)
    api.read(session_id=sid, path=info.path, sink=sink)
    sink.close()
    assert (tmp_path / "sync").read_bytes() == data and sink.sha256 == hashlib.sha256(data).hexdigest()

    async def aread() -> CappedSink:
        asink = CappedSink(functools.partial(open, tmp_path / "async", "wb"), max_bytes=len(data), path=info.path)
        try:
            await api.aread(session_id=sid, path=info.path, sink=asink)
        finally:
            asink.close()
            await close_loop_resources()
        return asink

    asink = asyncio.run(aread())
    assert (tmp_path / "async").read_bytes() == data and asink.size == len(data)
    with pytest.raises(KernelNotFoundError):
        api.info(session_id=sid, path="/tmp/downloads/missing")


@with_chromium
def test_a_body_over_the_cap_stops_the_read(
    browser_with_files: tuple[KernelClient, str, bytes], tmp_path: Any, kernel_emulator: Any
) -> None:
    client, sid, _ = browser_with_files
    sink = CappedSink(functools.partial(open, tmp_path / "x", "wb"), max_bytes=1000, path="/tmp/downloads/blob.bin")
    with pytest.raises(KernelFileTooLargeError, match="max_bytes=1000"):
        FileApi(client).read(session_id=sid, path="/tmp/downloads/blob.bin", sink=sink)
    sink.close()
    assert (tmp_path / "x").stat().st_size <= 1000
    reads = kernel_emulator.requests(route="/browsers/{id}/fs/read_file")
    assert len([r for r in reads if r["path"].endswith("read_file")]) == 1  # a limit is not retried


@with_chromium
def test_a_broken_body_is_read_again_from_its_first_byte(
    browser_with_files: tuple[KernelClient, str, bytes], tmp_path: Any, kernel_emulator: Any
) -> None:
    client, sid, data = browser_with_files
    kernel_emulator.set_faults([{"route": "GET /browsers/{id}/fs/read_file", "times": 1, "fault": {"truncate": 100}}])
    target = functools.partial(open, tmp_path / "x", "wb")
    sink = CappedSink(target, max_bytes=len(data), path="/tmp/downloads/blob.bin")
    FileApi(client).read(session_id=sid, path="/tmp/downloads/blob.bin", sink=sink)
    sink.close()
    assert (tmp_path / "x").read_bytes() == data and sink.sha256 == hashlib.sha256(data).hexdigest()
