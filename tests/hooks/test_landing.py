"""``KernelBrowserHook.land_browser_files`` (``kernel_provider.hooks.landing``) against the emulator over HTTP, each
browser a real Chromium, landing in a ``file://`` ``ObjectStoragePath`` under ``tmp_path``: checksums right, caps
enforced with an error naming the parameter, a malicious listing refused, and nothing under a final name (nor any
partial file) when a stream breaks for good."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from airflow.providers.common.compat.sdk import ObjectStoragePath

from kernel_provider.client.errors import KernelInputError, KernelResponseError, KernelTransportError
from kernel_provider.client.files import KernelFileTooLargeError, KernelUnsafePathError
from kernel_provider.hooks.kernel_browser import KernelBrowserHook
from kernel_provider.testing import KernelEmulator
from tests.helpers import FAST_RETRY
from tests.kernel_browsers import needs_chromium

pytestmark = needs_chromium
FILES = {"a.csv": b"x,y\n1,2\n", "b.csv": os.urandom(200_000), "notes.txt": b"hello", "c.csv.crdownload": b"part"}
READS = "GET /browsers/{id}/fs/read_file"


@pytest.fixture
def hook(kernel_conn_env: KernelEmulator) -> KernelBrowserHook:
    return KernelBrowserHook(retry_policy=FAST_RETRY)


@pytest.fixture
def session_id(hook: KernelBrowserHook, kernel_conn_env: KernelEmulator) -> Iterator[str]:
    with hook.browser(headless=True, timeout_seconds=60) as browser:
        root = kernel_conn_env.store.browser_sessions.live[browser.session_id].process.fs_root
        for name, data in FILES.items():
            Path(root, "tmp/downloads", name).write_bytes(data)
        yield browser.session_id


def landed_tree(where: Path) -> dict[str, bytes]:
    return {str(p.relative_to(where)): p.read_bytes() for p in sorted(where.rglob("*")) if p.is_file()}


def reads(emulator: KernelEmulator) -> list[str]:
    return [r["query"] for r in emulator.requests(method="GET") if r["path"].endswith("/fs/read_file")]


def test_files_land_whole_with_their_checksums(hook: KernelBrowserHook, session_id: str, tmp_path: Path) -> None:
    out = tmp_path / "landing"
    landed = hook.land_browser_files(
        session_id=session_id, destination=ObjectStoragePath(f"file://{out}"), pattern="*.csv"
    )
    assert [item["name"] for item in landed] == ["a.csv", "b.csv"]  # the unfinished download is left alone
    for item in landed:
        data = FILES[item["name"]]
        assert item == {
            "name": item["name"],
            "path": f"file://{out}/{item['name']}",
            "source": f"/tmp/downloads/{item['name']}",
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
    assert landed_tree(out) == {"a.csv": FILES["a.csv"], "b.csv": FILES["b.csv"]}
    # A plain absolute path is a file:// destination; landing again replaces the files.
    again = hook.land_browser_files(session_id=session_id, destination=str(out))
    assert [i["name"] for i in again] == ["a.csv", "b.csv", "notes.txt"]
    assert set(landed_tree(out)) == {"a.csv", "b.csv", "notes.txt"}


def test_a_file_over_max_bytes_fails_before_any_read(
    hook: KernelBrowserHook, session_id: str, tmp_path: Path, kernel_conn_env: KernelEmulator
) -> None:
    with pytest.raises(KernelFileTooLargeError, match=r"b\.csv is larger than max_bytes=1000 bytes") as caught:
        hook.land_browser_files(session_id=session_id, destination=str(tmp_path), max_bytes=1000)
    assert caught.value.parameter == "max_bytes"
    with pytest.raises(KernelFileTooLargeError, match="max_total_bytes=100000"):
        hook.land_browser_files(session_id=session_id, destination=str(tmp_path), max_total_bytes=100_000)
    assert reads(kernel_conn_env) == [] and landed_tree(tmp_path) == {}


def test_a_listing_that_understates_a_size_is_caught_on_the_bytes(
    hook: KernelBrowserHook, session_id: str, tmp_path: Path, kernel_conn_env: KernelEmulator
) -> None:
    lying = '[{"name":"b.csv","path":"/tmp/downloads/b.csv","size_bytes":10,"is_dir":false,"mod_time":null,"mode":""}]'
    kernel_conn_env.set_faults([{"route": "GET /browsers/{id}/fs/list_files", "fault": {"body": lying}}])
    with pytest.raises(KernelFileTooLargeError, match="max_bytes=5000"):
        hook.land_browser_files(session_id=session_id, destination=str(tmp_path), max_bytes=5000)
    assert landed_tree(tmp_path) == {}  # the partial file is gone too
    with pytest.raises(KernelResponseError, match="listed with 10 bytes but read with 200000"):
        hook.land_browser_files(session_id=session_id, destination=str(tmp_path))
    assert landed_tree(tmp_path) == {}


@pytest.mark.parametrize(
    ("name", "path"),
    [("../evil.csv", "/tmp/evil.csv"), ("evil.csv", "/tmp/downloads/../../evil.csv"), ("/etc/x", "/etc/x")],
)
def test_a_malicious_listing_is_refused_and_nothing_is_written(
    hook: KernelBrowserHook, session_id: str, tmp_path: Path, kernel_conn_env: KernelEmulator, name: str, path: str
) -> None:
    import json

    bad = [{"name": name, "path": path, "size_bytes": 4, "is_dir": False, "mod_time": None, "mode": ""}]
    kernel_conn_env.set_faults([{"route": "GET /browsers/{id}/fs/list_files", "fault": {"body": json.dumps(bad)}}])
    out = tmp_path / "deep" / "landing"
    with pytest.raises(KernelUnsafePathError):
        hook.land_browser_files(session_id=session_id, destination=str(out))
    assert landed_tree(tmp_path) == {} and reads(kernel_conn_env) == []


def test_a_stream_that_breaks_for_good_leaves_nothing(
    hook: KernelBrowserHook, session_id: str, tmp_path: Path, kernel_conn_env: KernelEmulator
) -> None:
    # a.csv reads whole; every read of b.csv breaks after 1000 bytes: the landing fails with neither file landed.
    kernel_conn_env.set_faults([{"route": READS, "sequence": [None, *[{"truncate": 1000}] * 10]}])
    with pytest.raises(KernelTransportError):
        hook.land_browser_files(session_id=session_id, destination=str(tmp_path), pattern="*.csv")
    assert landed_tree(tmp_path) == {}
    assert [q for q in reads(kernel_conn_env) if "a.csv" in q] and [q for q in reads(kernel_conn_env) if "b.csv" in q]


def test_a_stream_broken_once_is_read_again_whole(
    hook: KernelBrowserHook, session_id: str, tmp_path: Path, kernel_conn_env: KernelEmulator
) -> None:
    kernel_conn_env.set_faults([{"route": READS, "sequence": [{"truncate": 1000}]}])
    (item,) = hook.land_browser_files(session_id=session_id, destination=str(tmp_path), pattern="b.csv")
    assert item["sha256"] == hashlib.sha256(FILES["b.csv"]).hexdigest()
    assert landed_tree(tmp_path) == {"b.csv": FILES["b.csv"]}


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"destination": "relative/dir"}, "destination"),
        ({"destination": "/x", "source_dir": "tmp"}, "source_dir"),
        ({"destination": "/x", "source_dir": "/tmp/../etc"}, "source_dir"),
        ({"destination": "/x", "max_bytes": 0}, "max_bytes"),
        ({"destination": "/x", "max_total_bytes": "1"}, "max_total_bytes"),
        ({"destination": "/x", "pattern": "a/*.csv"}, "pattern"),
        ({"destination": "/x", "session_id": "../x"}, "session_id"),
    ],
)
def test_bad_input_fails_before_any_request(
    hook: KernelBrowserHook, kernel_conn_env: KernelEmulator, kwargs: dict[str, Any], field: str
) -> None:
    with pytest.raises(KernelInputError, match=field):
        hook.land_browser_files(**{"session_id": "abc123", **kwargs})
    assert kernel_conn_env.requests(method="GET") == []
