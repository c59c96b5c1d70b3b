"""The emulator's built-in ``demo`` app: actions for tests, demos and benchmarks (echo, sleep, logs, fail,
plain_fail, slow, browse, big, blocking, counter), each described in :data:`DEMO_ACTIONS`.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

from kernel_provider.testing.actions import (
    ActionContext,
    ActionFn,
    ActionSpec,
    PlainTextFailure,
    run_sync_in_thread,
)


def _as_dict(payload: Any) -> dict[str, Any]:
    return payload if isinstance(payload, dict) else {}


async def _echo(ctx: ActionContext, payload: Any) -> Any:
    return payload


async def _sleep(ctx: ActionContext, payload: Any) -> Any:
    args = _as_dict(payload)
    seconds = float(args.get("seconds", 1.0))
    await asyncio.sleep(seconds)
    return args.get("result", {"slept": seconds})


async def _logs(ctx: ActionContext, payload: Any) -> Any:
    args = _as_dict(payload)
    lines = int(args.get("lines", 3))
    interval = float(args.get("interval", 0.0))
    for i in range(lines):
        print(f"line {i}")
        if interval:
            await asyncio.sleep(interval)
    return {"lines": lines}


async def _fail(ctx: ActionContext, payload: Any) -> Any:
    raise ValueError(_as_dict(payload).get("message", "boom"))


async def _plain_fail(ctx: ActionContext, payload: Any) -> Any:
    message = _as_dict(payload).get("message", "boom")
    raise PlainTextFailure(f"Error: {message}\nthe action crashed; this output is plain text, not JSON\n")


async def _slow(ctx: ActionContext, payload: Any) -> Any:
    seconds = float(_as_dict(payload).get("seconds", 3600.0))
    print("slow action started")
    await asyncio.sleep(seconds)
    return {"slept": seconds}


async def _browse(ctx: ActionContext, payload: Any) -> Any:
    args = _as_dict(payload)
    count = int(args.get("count", 1))
    headless = bool(args.get("headless", False))
    sessions = [ctx.create_browser(headless)["session_id"] for _ in range(count)]
    if args.get("record") and sessions:
        ctx.start_replay(sessions[0])
    print(f"created {count} browser(s)")
    await asyncio.sleep(float(args.get("seconds", 0.0)))
    return {"session_ids": sessions}


async def _big(ctx: ActionContext, payload: Any) -> Any:
    return "x" * int(_as_dict(payload).get("size", 1_000_000))


def _blocking_body(payload: Any) -> Any:
    seconds = float(_as_dict(payload).get("seconds", 0.1))
    print("blocking action started")
    time.sleep(seconds)
    return {"slept": seconds}


async def _blocking(ctx: ActionContext, payload: Any) -> Any:
    return await run_sync_in_thread(_blocking_body, payload)


_counter = itertools.count(1)


async def _counter_action(ctx: ActionContext, payload: Any) -> Any:
    return {"count": next(_counter), "invocation_id": ctx.invocation_id}


#: The demo app's actions: name -> (function, what it does with its payload).
DEMO_ACTIONS: dict[str, tuple[ActionFn, str]] = {
    "echo": (_echo, "returns the decoded payload"),
    "sleep": (_sleep, 'payload {"seconds": s, "result": any}: sleeps, returns result or {"slept": s}'),
    "logs": (_logs, 'payload {"lines": n, "interval": s}: prints "line i" n times, returns {"lines": n}'),
    "fail": (_fail, 'raises ValueError(payload.get("message", "boom"))'),
    "plain_fail": (_plain_fail, "fails with a multi-line plain-text output"),
    "slow": (_slow, 'payload {"seconds": s=3600}: for cancel and timeout tests'),
    "browse": (
        _browse,
        'payload {"count": 1, "seconds": 0, "record": false}: creates fake browsers bound to the invocation '
        "(record: a replay of the first)",
    ),
    "big": (_big, 'payload {"size": n=1000000}: returns a string of n "x" characters'),
    "blocking": (_blocking, 'payload {"seconds": s=0.1}: time.sleep in a worker thread'),
    "counter": (_counter_action, "returns a process-wide increasing counter and the invocation id"),
}


def demo_actions() -> dict[str, ActionSpec]:
    """The actions of the built-in ``demo`` app."""
    return {name: ActionSpec(name, fn, "demo") for name, (fn, _doc) in DEMO_ACTIONS.items()}
