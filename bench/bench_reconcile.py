"""The retry decision after a create that got no answer, in a busy fan-out: 10,000 runs of the same action in
Kernel's listing (newest first, no upper time bound), reconcile token on and off.

Run: ``python -m bench.bench_reconcile [--runs 10000] [--rounds 3]``. The emulator runs in its own process and is
seeded through its API (real ``POST /invocations``, each run with its own token, as a fan-out's tasks would). The
retry's record says try 1 sent its create just before the fan-out started; the decisions measured are:

* token on, nothing created: every run is ruled out by its token while paging down to the window;
* token on, try 1's run exists (the oldest of the listing): found by its token, exactly;
* token off, nothing created: the runs started after the window do not count towards the 500 guard.

Side by side, in the same run: the old decision (list up to 501 invocations from the window's start, refuse above
500: it never decided in a fan-out this busy) and a plain create (what the task would send without any record),
as ratios. Requests are counted at the hook's transport; seconds are the median of ``--rounds`` rounds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any

from bench.common import emulator, table

#: Result of the last run (``python -m bench`` stores it).
LAST_RESULT: dict[str, Any] | None = None


def run(runs: int = 10_000, rounds: int = 3) -> dict[str, Any]:
    from kernel_provider.client.reconcile import TOKEN_KEY, CreateWindow, add_token, new_token, reconcile
    from kernel_provider.hooks.kernel import KernelHook

    with emulator(retention_count=0, request_log_size=0) as _emu:
        hook = KernelHook()
        request = {"app_name": "demo", "action_name": "echo", "version": "latest", "payload": '{"n":0}'}
        sent = time.time()
        mine_token = new_token()
        mine = hook.invoke("demo", "echo", payload={"n": 0, TOKEN_KEY: mine_token}, invoke_async=False).id
        window = CreateWindow(datetime.fromtimestamp(sent, timezone.utc), datetime.now(timezone.utc))
        absent = CreateWindow(
            datetime.fromtimestamp(sent - 60, timezone.utc), datetime.fromtimestamp(sent - 59, timezone.utc)
        )
        time.sleep(6.0)  # past the clock margin: the fan-out starts after try 1's window
        started = time.perf_counter()
        with ThreadPoolExecutor(4) as pool:
            payloads = [{"n": 0, TOKEN_KEY: new_token()} for _ in range(runs)]
            list(pool.map(lambda p: hook.invoke("demo", "echo", payload=p, invoke_async=False).id, payloads))
        seeded_seconds = time.perf_counter() - started

        sent_requests = _count_requests(hook)

        def decide(window: CreateWindow, token: str | None) -> str:
            body = {**request, "payload": add_token(request["payload"], token)} if token else request
            outcome = reconcile(
                body, window, token, list_invocations=hook.list_invocations, get_invocation=hook.get_invocation
            )
            if not outcome.settled:
                return f"unsettled: {outcome.reason[:40]}"
            return "adopted try 1's run" if outcome.ours and outcome.ours.id == mine else "nothing created: invoke"

        def old_decision() -> str:
            listed = hook.list_invocations(
                app_name="demo", action_name="echo", version="latest", since=absent.since, limit=501
            )
            return "refused: more than 500 listed" if len(listed) > 500 else "decided"

        def plain_create() -> str:
            hook.invoke("demo", "echo", payload={"n": 0}, invoke_async=False)
            return "created"

        subjects: dict[str, Callable[[], str]] = {
            "token on, nothing created": lambda: decide(absent, new_token()),
            "token on, try 1's run exists": lambda: decide(window, mine_token),
            "token off, nothing created": lambda: decide(absent, None),
            "baseline: old decision (list 501, refuse)": old_decision,
            "baseline: plain create, no reconcile": plain_create,
        }
        rows: dict[str, dict[str, Any]] = {}
        for name, fn in subjects.items():
            times, counts, answer = [], [], ""
            for _ in range(rounds):
                before = sent_requests()
                clock = time.perf_counter()
                answer = fn()
                times.append(time.perf_counter() - clock)
                counts.append(sent_requests() - before)
            rows[name] = {"requests": max(counts), "seconds": statistics.median(times), "decision": answer}
    old = rows["baseline: old decision (list 501, refuse)"]
    create = rows["baseline: plain create, no reconcile"]
    for row in rows.values():
        row["x_old_seconds"] = row["seconds"] / old["seconds"]
        row["x_create_seconds"] = row["seconds"] / create["seconds"]
    result = {"runs": runs, "rounds": rounds, "seed_seconds": seeded_seconds, "subjects": rows}
    global LAST_RESULT
    LAST_RESULT = result
    return result


def _count_requests(hook: Any) -> Callable[[], int]:
    """Count the requests the hook's sync transport sends (one per page, lookup or create)."""
    transport = hook.client.transport
    original = transport.request
    sent = [0]

    def counting(*args: Any, **kwargs: Any) -> Any:
        sent[0] += 1
        return original(*args, **kwargs)

    transport.request = counting
    return lambda: sent[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=10_000, help="same-action runs seeded into the listing")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = run(args.runs, args.rounds)
    if args.json:
        print(json.dumps(result))
        return 0
    print(
        f"retry decision with {args.runs:,} same-action runs listed (seeded in {result['seed_seconds']:.1f} s); "
        f"median of {args.rounds} rounds"
    )
    print(
        table(
            ["subject", "requests", "seconds", "x old decision", "x plain create", "decision"],
            [
                [name, r["requests"], r["seconds"], r["x_old_seconds"], r["x_create_seconds"], r["decision"]]
                for name, r in result["subjects"].items()
            ],
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
