"""``gate``: the one Kernel app the tests use to decide how long an invocation runs, loaded into the emulator
(``apps=[...]`` in process, ``--app`` for a spawned one).

Action ``wait`` runs until the test opens its gate (creates the gate file), so no assertion depends on how fast
the machine, or Airflow on it, is. The gate is an absolute path, or a name under ``$KERNEL_E2E_GATE_DIR``.

Payload: ``{"gate": path-or-name, "result": any, "max_seconds": 600}`` -> ``result``. Optional keys (all off by
default):

- ``before`` / ``after`` (+ ``interval`` seconds between lines): print ``line 0`` .. ``line {before-1}`` before
  waiting and ``after`` more numbered lines once the gate is open.
- ``browsers``: how many browsers the run creates before waiting (so a test can see them deleted on cancel).
- ``record``: start a replay recording of the first browser (``ctx.start_replay()``).
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

#: Runs started so far per gate (``fail_times``).
RUNS: Counter[str] = Counter()


def _gate_path(gate: Any) -> Path:
    path = Path(str(gate))
    return path if path.is_absolute() else Path(os.environ["KERNEL_E2E_GATE_DIR"]) / path


async def _wait_for(gate: Path, deadline: float) -> None:
    loop = asyncio.get_running_loop()
    while not gate.exists():
        if loop.time() > deadline:
            raise TimeoutError(f"gate {gate.name} stayed closed: the test never opened it")
        await asyncio.sleep(0.05)


async def _numbered(first: int, count: int, interval: float) -> None:
    for i in range(first, first + count):
        print(f"line {i}")
        if interval:
            await asyncio.sleep(interval)


def _say(lines: Any) -> None:
    for line in lines or ():
        print(str(line))


async def wait(ctx: Any, payload: Any) -> Any:
    args = payload if isinstance(payload, dict) else {}
    gate = _gate_path(args["gate"])
    RUNS[str(gate)] += 1
    run = RUNS[str(gate)]
    deadline = asyncio.get_running_loop().time() + float(args.get("max_seconds", 600))
    before, after = int(args.get("before", 0)), int(args.get("after", 0))
    interval = float(args.get("interval", 0.0))
    for _ in range(int(args.get("browsers", 0))):
        ctx.create_browser(bool(args.get("headless", False)))
    if args.get("record"):
        ctx.start_replay()  # records the first browser (listed by GET /browsers/{id}/replays)
    await _numbered(0, before, interval)
    _say(args.get("say"))
    await _wait_for(gate, deadline)
    if args.get("then_gate"):
        _say(args.get("say_between"))
        await _wait_for(_gate_path(args["then_gate"]), deadline)
    await _numbered(before, after, interval)
    _say(args.get("say_after"))
    if args.get("fail"):
        raise RuntimeError(str(args["fail"]))
    if run <= int(args.get("fail_times", 0)):
        raise RuntimeError(f"run {run} of gate {gate.name} fails on purpose (fail_times={args['fail_times']})")
    result = args.get("result")
    if args.get("with_id"):
        return {"id": ctx.invocation_id, "result": result}
    return result


ACTIONS = {"gate": {"wait": wait}}
