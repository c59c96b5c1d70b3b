"""``e2e-gate``: a Kernel app for the end-to-end tests, loaded into the emulator with ``--app``.

``wait_gate`` runs until the test opens its gate (creates the file ``$KERNEL_E2E_GATE_DIR/<gate>``), so a test
decides exactly how long an invocation stays running, however slow Airflow is on the machine.

Payload: ``{"gate": name, "result": any, "max_seconds": 600}`` -> ``result``.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any


async def wait_gate(ctx: Any, payload: Any) -> Any:
    args = payload if isinstance(payload, dict) else {}
    gate = Path(os.environ["KERNEL_E2E_GATE_DIR"]) / str(args["gate"])
    limit = float(args.get("max_seconds", 600))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    print(f"waiting for gate {gate.name}")
    while not gate.exists():
        if loop.time() > deadline:
            raise TimeoutError(f"gate {gate.name} stayed closed for {limit}s")
        await asyncio.sleep(0.2)
    print(f"gate {gate.name} is open")
    return args.get("result")


ACTIONS = {"e2e-gate": {"wait_gate": wait_gate}}
