"""``demo-shop`` for the browser tests: the example DAGs' demo app (``example_dags/demo_app/app.py``), unchanged,
except that ``crawl_catalog`` opens a browser bound to its invocation, then starts its work only once the test
opens the gate ``$KERNEL_E2E_GATE_DIR/demo-shop``.

Why: ``example_kernel_async_sensor``'s sensor shows the action's log lines only if its trigger is following the
invocation while the action prints them. The demo action takes ~3 s, which on a busy machine can be over before
the sensor has even deferred; a real browser agent runs far longer. The gate makes "the action runs while the
sensor waits" certain instead of a race. Loaded into the emulator with ``--app`` in place of the demo app.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import runpy
from pathlib import Path
from typing import Any

from kernel import KernelContext

DEMO_APP = Path(__file__).resolve().parents[3] / "example_dags" / "demo_app" / "app.py"
GATE = "demo-shop"
MAX_WAIT = 600.0

# Run by file path: this app runs inside the emulator, where neither example_dags/ nor tests/ is importable.
# Running it registers demo-shop (every action) with the kernel SDK's app registry.
demo = runpy.run_path(str(DEMO_APP), run_name="_browser_demo_shop")


def _gated(handler: Any) -> Any:
    async def run(ctx: Any, payload: Any) -> Any:
        # A browser bound to the run, as a real crawler would open: the sensor's "Kernel live view" link opens its
        # live view (the emulator's /live/{session_id} page) while the run waits here.
        ctx.create_browser()
        print("opened a browser")
        gate = Path(os.environ["KERNEL_E2E_GATE_DIR"]) / GATE
        loop = asyncio.get_running_loop()
        deadline = loop.time() + MAX_WAIT
        while not gate.exists():
            if loop.time() > deadline:
                raise TimeoutError(f"gate {GATE} stayed closed for {MAX_WAIT:.0f}s")
            await asyncio.sleep(0.2)
        # The kernel SDK's action decorator insists on its own context type (the emulator passes its own).
        result = handler(KernelContext(invocation_id=ctx.invocation_id), payload)
        return await result if inspect.isawaitable(result) else result

    return run


# Overrides the registry's crawl_catalog; the other demo-shop actions stay as they are.
ACTIONS = {"demo-shop": {"crawl_catalog": _gated(demo["crawl_catalog"])}}
