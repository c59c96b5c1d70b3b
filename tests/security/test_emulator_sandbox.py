"""The emulator's Chromium keeps its sandbox unless it cannot have one (issue 25, finding 9). Pure logic: which
machine a test runs on decides what a real start would do, so the decision is tested with planted files."""

from __future__ import annotations

from pathlib import Path

import pytest

from kernel_provider.testing import chromium
from kernel_provider.testing.chromium import FLAGS, in_container, needs_no_sandbox


@pytest.mark.parametrize(
    ("euid", "container", "expected"),
    [(0, False, True), (0, True, True), (1000, True, True), (1000, False, False)],
)
def test_no_sandbox_only_as_root_or_in_a_container(euid: int, container: bool, expected: bool) -> None:
    assert needs_no_sandbox(euid=euid, container=container) is expected


def test_the_fixed_flags_do_not_turn_the_sandbox_off() -> None:
    assert "--no-sandbox" not in FLAGS


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({}, False),
        ({"proc/1/cgroup": "0::/\n"}, False),
        ({"proc/1/cgroup": "0::/init.scope\n"}, False),
        ({".dockerenv": ""}, True),
        ({"run/.containerenv": ""}, True),
        ({"proc/1/cgroup": "12:pids:/kubepods/burstable/pod1/abc\n"}, True),
        ({"proc/1/cgroup": "0::/system.slice/docker-abc.scope\n"}, True),
    ],
)
def test_container_detection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, files: dict[str, str], expected: bool
) -> None:
    monkeypatch.delenv("container", raising=False)
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert in_container(str(tmp_path)) is expected


def test_the_container_variable_counts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("container", "podman")
    assert in_container(str(tmp_path))


def test_sandbox_flags_follow_the_decision(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chromium, "in_container", lambda root="/": False)
    monkeypatch.setattr(chromium.os, "geteuid", lambda: 1000)
    assert chromium.sandbox_flags() == ()
    monkeypatch.setattr(chromium.os, "geteuid", lambda: 0)
    assert chromium.sandbox_flags() == ("--no-sandbox",)
