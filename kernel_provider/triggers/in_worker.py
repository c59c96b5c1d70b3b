"""Waiting on a worker (no deferral) with the very same logic the triggerer runs."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from typing import Any

from kernel_provider.triggers.kernel import KernelInvocationTrigger

log = logging.getLogger(__name__)


def wait_in_worker(trigger: KernelInvocationTrigger) -> dict[str, Any]:
    """Run the trigger's wait to completion on this worker and return its event payload."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(_wait_then_close(trigger))
    # Called from inside a running loop (rare: some executors); keep that loop free.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, _wait_then_close(trigger)).result()


async def _wait_then_close(trigger: KernelInvocationTrigger) -> dict[str, Any]:
    from kernel_provider.hooks.base import close_shared_clients

    try:
        return await trigger.wait()
    finally:
        await close_shared_clients()
