"""``make test-live``: the provider's assumptions about Kernel's API, checked against the real Kernel.

Needs ``KERNEL_API_KEY`` (and optionally ``KERNEL_BASE_URL``, ``KERNEL_LIVE_APP``, ``KERNEL_LIVE_ACTION``,
``KERNEL_LIVE_PAYLOAD`` as JSON, ``KERNEL_LIVE_VERSION``); skipped, saying so, without it. No machine here reaches
Kernel, so the same checks also run against the emulator in every ``make test`` to show they work.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from tests.live.live_checks import DIFFERS, HELD, NOT_CHECKED, Target, format_table, run_checks


@pytest.mark.live
def test_the_real_kernel_holds_the_provider_assumptions() -> None:
    key = os.environ.get("KERNEL_API_KEY")
    if not key:
        pytest.skip("KERNEL_API_KEY is not set: no live check against the real Kernel (make test-live)")
    target = Target(
        base_url=os.environ.get("KERNEL_BASE_URL", "https://api.onkernel.com"),
        api_key=key,
        app_name=os.environ.get("KERNEL_LIVE_APP", "demo"),
        action_name=os.environ.get("KERNEL_LIVE_ACTION", "sleep"),
        payload=json.loads(os.environ.get("KERNEL_LIVE_PAYLOAD", '{"seconds": 30}')),
        version=os.environ.get("KERNEL_LIVE_VERSION", "latest"),
    )
    checks = run_checks(target)
    print("\n" + format_table(checks))
    assert not [c for c in checks if c.verdict == DIFFERS], format_table(checks)


def test_the_live_checks_hold_against_the_emulator(kernel_emulator: Any) -> None:
    checks = run_checks(Target(kernel_emulator.url, kernel_emulator.token, "demo", "sleep", {"seconds": 30}))
    table = format_table(checks)
    print("\n" + table)
    assert {c.verdict for c in checks} <= {HELD, NOT_CHECKED}, table
    assert sum(c.verdict == HELD for c in checks) == 7, table
    assert all(i["status"] == "failed" for i in kernel_emulator.invocations()), "a live check left a run going"
