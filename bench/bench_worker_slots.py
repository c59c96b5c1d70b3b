"""Worker-slot seconds per waited invocation: deferrable ``KernelInvokeOperator`` vs a PythonOperator-style
function that invokes with the official SDK and polls ``retrieve`` every 5 s (it holds its slot throughout).

Run: ``python -m bench.bench_worker_slots [--action-seconds 60] [--quick]``. Goal: ours <= 2 worker-slot seconds
for a 60 s action (the baseline holds ~60 s).

Without a scheduler, ours is driven by hand, as Airflow would: ``execute(context)`` until it raises
``TaskDeferred`` (worker, part 1); the trigger's ``wait()`` via ``asyncio.run`` (triggerer time, reported
apart, not worker time); ``execute_complete(context, event)`` (worker, part 2). Both subjects run at the same
time against one emulator (in a subprocess), each on its own ``demo``/``sleep`` invocation of the same length.
Not counted for either: starting a task process. A deferred task pays that twice (the resume is a new task
run), the baseline once; on Airflow 3 a task start costs ~1-2 s of worker time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
import time
from datetime import datetime, timezone
from typing import Any

from bench.common import emulator, table
from tests.standins import DictStateStore, FakeTI

TERMINAL = ("succeeded", "failed")
GOAL_WORKER_S = 2.0


def run_ours(action_seconds: float) -> dict[str, Any]:
    from airflow.providers.common.compat.sdk import TaskDeferred

    from kernel_provider.operators.kernel import KernelInvokeOperator

    operator = KernelInvokeOperator(
        task_id="kernel_invoke",
        app_name="demo",
        action_name="sleep",
        payload={"seconds": action_seconds, "result": {"ok": True}},
        deferrable=True,
        stream_logs=False,
    )
    ti = FakeTI("kernel_invoke", dag_id="bench")
    ti.start_date = datetime.now(timezone.utc)
    context: dict[str, Any] = {"ti": ti, "task_state_store": DictStateStore()}
    started = time.perf_counter()
    try:
        operator.execute(context)
    except TaskDeferred as deferred:
        trigger, method = deferred.trigger, deferred.method_name
    else:
        raise RuntimeError("KernelInvokeOperator did not defer")
    worker_1 = time.perf_counter() - started
    started = time.perf_counter()
    event = asyncio.run(trigger.wait())  # triggerer time: no worker slot is held
    triggerer = time.perf_counter() - started
    started = time.perf_counter()
    output = getattr(operator, method)(context, event)
    worker_2 = time.perf_counter() - started
    return {
        "worker_s": worker_1 + worker_2,
        "worker_execute_s": worker_1,
        "worker_resume_s": worker_2,
        "triggerer_s": triggerer,
        "status": event.get("status"),
        "output": output,
    }


def run_sdk_function(url: str, token: str, action_seconds: float, poll_every: float = 5.0) -> dict[str, Any]:
    """The PythonOperator way: the task callable invokes with the SDK and polls until done."""
    started = time.perf_counter()
    from kernel import Kernel

    client = Kernel(api_key=token, base_url=url)
    invocation = client.invocations.create(
        app_name="demo",
        action_name="sleep",
        version="latest",
        async_=True,
        payload=json.dumps({"seconds": action_seconds, "result": {"ok": True}}),
    )
    while True:
        current = client.invocations.retrieve(invocation.id)
        if current.status in TERMINAL:
            break
        time.sleep(poll_every)
    client.close()
    return {"worker_s": time.perf_counter() - started, "status": current.status, "output": current.output}


def run(action_seconds: float = 60.0) -> dict[str, Any]:
    with emulator(heartbeat=5.0) as emu:
        baseline: dict[str, Any] = {}

        def baseline_thread() -> None:
            try:
                baseline.update(run_sdk_function(emu.url, emu.token, action_seconds))
            except Exception as exc:  # reported, not raised from the thread
                baseline["error"] = f"{type(exc).__name__}: {exc}"

        worker = threading.Thread(target=baseline_thread, name="sdk-baseline")
        worker.start()
        ours = run_ours(action_seconds)
        worker.join(action_seconds + 120)
    if "error" in baseline or "worker_s" not in baseline:
        raise RuntimeError(f"SDK baseline failed: {baseline.get('error', 'did not finish')}")
    return {
        "action_seconds": action_seconds,
        "ours": ours,
        "baseline": baseline,
        "ours_worker_s": ours["worker_s"],
        "baseline_worker_s": baseline["worker_s"],
        "triggerer_s": ours["triggerer_s"],
        "worker_ratio": ours["worker_s"] / baseline["worker_s"],
        "goal_worker_s": GOAL_WORKER_S,
        "goal_met": ours["worker_s"] <= GOAL_WORKER_S,
    }


def report(result: dict[str, Any]) -> str:
    ours, base = result["ours"], result["baseline"]
    return "\n".join(
        [
            f"Worker-slot seconds for one {result['action_seconds']:g} s Kernel action (both run side by side)",
            table(
                ["subject", "worker-slot s", "  execute s", "  resume s", "triggerer s", "status"],
                [
                    [
                        "KernelInvokeOperator (deferrable)",
                        ours["worker_s"],
                        ours["worker_execute_s"],
                        ours["worker_resume_s"],
                        ours["triggerer_s"],
                        ours["status"],
                    ],
                    [
                        "SDK + poll every 5 s (PythonOperator)",
                        base["worker_s"],
                        base["worker_s"],
                        0.0,
                        0.0,
                        base["status"],
                    ],
                ],
            ),
            f"ours / baseline worker-slot seconds = {result['worker_ratio']:.3f}x; goal ours <= {GOAL_WORKER_S:g} s: "
            f"{'met' if result['goal_met'] else 'MISSED'} ({result['ours_worker_s']:.2f} s vs "
            f"{result['baseline_worker_s']:.1f} s). Task-process start-up is not counted (a deferred task has two).",
        ]
    )


LAST_RESULT: dict[str, Any] | None = None


def main(argv: list[str] | None = None) -> int:
    global LAST_RESULT
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--action-seconds", type=float, default=60.0)
    parser.add_argument("--quick", action="store_true", help="a 10 s action")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = run(10.0 if args.quick else args.action_seconds)
    LAST_RESULT = result
    print(json.dumps(result, default=str) if args.json else report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
