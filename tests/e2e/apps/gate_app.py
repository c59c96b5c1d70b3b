"""``e2e-gate``: a Kernel app for the end-to-end tests, loaded into the emulator with ``--app``.

``wait_gate`` runs until the test opens its gate (creates the file ``$KERNEL_E2E_GATE_DIR/<gate>``), so a test
decides exactly how long an invocation stays running, however slow Airflow is on the machine.

Payload: ``{"gate": name, "result": any, "max_seconds": 600}`` -> ``result``. Optional keys (all off by default):

- ``browsers``: how many browsers the run creates before waiting (so a test can see them deleted on cancel).
- ``say``: lines printed (one log line each) before waiting; ``say_after``: lines printed once the gate is open.
- ``then_gate`` + ``say_between``: after the first gate opens, print ``say_between`` and wait for ``then_gate``
  too (``say_after`` comes after that second gate).
- ``fail``: fail (raise) instead of returning, with this message, once the gate(s) are open.
- ``fail_times``: fail the first N runs that use this gate (counted by this emulator process), succeed after.
- ``with_id``: return ``{"id": <this invocation's id>, "result": result}``, so a test can tell which run's
  output reached Airflow.
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from pathlib import Path
from typing import Any

#: Runs started so far per gate name (``fail_times``).
RUNS: Counter[str] = Counter()


async def _wait_for(gate: Path, deadline: float) -> None:
    loop = asyncio.get_running_loop()
    print(f"waiting for gate {gate.name}")
    while not gate.exists():
        if loop.time() > deadline:
            raise TimeoutError(f"gate {gate.name} stayed closed")
        await asyncio.sleep(0.2)
    print(f"gate {gate.name} is open")


def _say(lines: Any) -> None:
    for line in lines or ():
        print(str(line))


async def wait_gate(ctx: Any, payload: Any) -> Any:
    args = payload if isinstance(payload, dict) else {}
    gates = Path(os.environ["KERNEL_E2E_GATE_DIR"])
    name = str(args["gate"])
    RUNS[name] += 1
    run = RUNS[name]
    limit = float(args.get("max_seconds", 600))
    deadline = asyncio.get_running_loop().time() + limit
    for _ in range(int(args.get("browsers", 0))):
        ctx.create_browser()
    _say(args.get("say"))
    await _wait_for(gates / name, deadline)
    if args.get("then_gate"):
        _say(args.get("say_between"))
        await _wait_for(gates / str(args["then_gate"]), deadline)
    _say(args.get("say_after"))
    if args.get("fail"):
        raise RuntimeError(str(args["fail"]))
    if run <= int(args.get("fail_times", 0)):
        raise RuntimeError(f"run {run} of gate {name} fails on purpose (fail_times={args['fail_times']})")
    result = args.get("result")
    if args.get("with_id"):
        return {"id": ctx.invocation_id, "result": result}
    return result


ACTIONS = {"e2e-gate": {"wait_gate": wait_gate}}
