"""Shared helpers for the emulator's own tests (fixtures come from the ``kernel_emulator`` pytest plugin)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from kernel_provider.testing import KernelEmulator


@pytest.fixture
def http(kernel_emulator: KernelEmulator) -> Iterator[httpx.Client]:
    """A raw httpx client authenticated against the per-test emulator."""
    with httpx.Client(
        base_url=kernel_emulator.url,
        headers={"Authorization": f"Bearer {kernel_emulator.token}"},
        timeout=30,
    ) as client:
        yield client


@pytest.fixture
def sse_events() -> Callable[[httpx.Response], list[dict[str, Any]]]:
    """The strict SSE body parser below, as a fixture (tests/ is not a package)."""
    return parse_sse


def parse_sse(response: httpx.Response) -> list[dict[str, Any]]:
    """Parse a complete SSE body strictly by the Kernel wire rules (only ``data: {json}`` + blank line)."""
    import json

    events = []
    for block in response.text.split("\n\n"):
        if not block:
            continue
        assert block.startswith("data: "), block
        assert "\n" not in block, block
        events.append(json.loads(block[len("data: ") :]))
    assert response.text.endswith("\n\n") or not response.text
    return events
