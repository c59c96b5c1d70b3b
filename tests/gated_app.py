"""``gated``: a Kernel app for the trigger/sensor/operator tests, loaded into the emulator with ``apps=[...]``.

Action ``run`` prints ``line 0`` .. ``line {before-1}``, then stays running until the test opens the gate (creates
the file ``payload["gate"]``), then prints ``before`` more... ``line {before+after-1}`` and returns
``payload["result"]``. Tests open the gate when the emulator's request log shows that the provider has reached
the point under test, so no assertion depends on how fast the machine is.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any


async def run(ctx: Any, payload: Any) -> Any:
    args = payload if isinstance(payload, dict) else {}
    before, after = int(args.get("before", 0)), int(args.get("after", 0))
    interval = float(args.get("interval", 0.0))
    for i in range(before):
        print(f"line {i}")
        if interval:
            await asyncio.sleep(interval)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + float(args.get("max_seconds", 120))
    while not os.path.exists(args["gate"]):
        if loop.time() > deadline:
            raise TimeoutError("the test never opened the gate")
        await asyncio.sleep(0.02)
    for i in range(before, before + after):
        print(f"line {i}")
        if interval:
            await asyncio.sleep(interval)
    return args.get("result")


ACTIONS = {"gated": {"run": run}}
