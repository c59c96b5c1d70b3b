"""Fan-out over Kernel's concurrency limit on a real Airflow 3.3 scheduler + triggerer (LocalExecutor).

N mapped deferrable ``KernelInvokeOperator`` tasks run ``demo``/``sleep`` actions of S seconds against the emulator
with an org concurrency limit of C: every create beyond C gets 429 (``Retry-After: 1``). Three DAGs run one after the
other on the same Airflow: **new** (this provider: a 429 defers the task on a timer, no worker sleeps, and the
triggerer ends the task when the run is over), **resume** (the same with ``end_in_triggerer=False``: a worker
resumes each task for its end, as before issue 28) and **old** (an operator subclass restoring the create policy
before issue 14: the worker waits out the 429s itself, up to ``rate_limit_wait``, holding its slot).

Measures, per DAG run:

* **worker-slot seconds per task**: the sum of the ``duration`` of every ``Workload finished`` line the
  LocalExecutor's supervisors write to the scheduler log during the run (one per task process: the first run and
  every resume after a deferral; process start-up included), divided by N. Deferred time is not in it: no
  process exists then.
* **makespan**: the DAG run's ``end_date - start_date``, against the ideal ``N / C * S`` seconds.
* **Kernel requests per task**: every request the emulator logged during the run (429s included), divided by N.

Run: ``python -m bench.bench_fanout [--tasks 100] [--action-seconds 5] [--concurrency 5] [--parallelism 16]``
(Airflow 3.3 venv; about 5-10 minutes). Goals: <= 2 worker-slot seconds per task, makespan <= 1.2x ideal,
<= 6 requests per task.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import table
from tests.harness.airflow3 import AirflowE2E, epoch
from tests.harness.base import running

GOAL_WORKER_S, GOAL_MAKESPAN_X, GOAL_REQUESTS = 2.0, 1.2, 6.0
SUBJECTS = {
    "new": "this provider (429 → timer; the triggerer ends the task)",
    "resume": "end_in_triggerer=False (a worker resumes the task)",
    "old": "old create policy (worker waits out 429s)",
}
WORKLOAD = re.compile(r"Workload finished\s.*?duration=([0-9.eE+-]+)")

DAG_FILE = '''
"""Written by bench/bench_fanout.py."""
import pendulum
from airflow.sdk import DAG

from kernel_provider.operators.kernel import KernelInvokeOperator


class WorkerWaitsOn429(KernelInvokeOperator):
    """The create policy before issue 14: 429s are waited out on the worker, deferrable or not."""

    def _create_or_defer(self, request, records, *, deadline, attempt):
        return self._create(request, records)


VARIANTS = (
    ("bench_fanout_new", KernelInvokeOperator, True),
    ("bench_fanout_resume", KernelInvokeOperator, False),
    ("bench_fanout_old", WorkerWaitsOn429, False),
)
for dag_id, operator, end_in_triggerer in VARIANTS:
    with DAG(
        dag_id=dag_id,
        schedule=None,
        start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
        catchup=False,
        max_active_tasks={tasks},
    ):
        operator.partial(
            task_id="invoke",
            app_name="demo",
            action_name="sleep",
            deferrable=True,
            stream_logs=False,
            rate_limit_wait=1800,
            end_in_triggerer=end_in_triggerer,
        ).expand(payload=[{{"seconds": {seconds}, "result": i}} for i in range({tasks})])
'''


def run_one(e2e: Any, dag_id: str, tasks: int, timeout: float) -> dict[str, Any]:
    """One DAG run: its makespan, worker-slot seconds and Kernel requests."""
    scheduler_log = e2e.services["scheduler"].log
    offset = scheduler_log.stat().st_size
    first_seq = max((r["seq"] for r in e2e.emulator.client.requests()), default=0)
    run_id = e2e.trigger(dag_id)
    state = e2e.wait_run_done(dag_id, run_id, timeout=timeout)
    run = e2e.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}")
    time.sleep(3)  # the last supervisors' "Workload finished" lines
    with open(scheduler_log, encoding="utf-8", errors="replace") as log:
        log.seek(offset)
        durations = [float(m.group(1)) for m in WORKLOAD.finditer(log.read())]
    requests = [r for r in e2e.emulator.client.requests() if r["seq"] > first_seq]
    refused = sum(r["status"] == 429 for r in requests)
    return {
        "state": state,
        "makespan": epoch(run["end_date"]) - epoch(run["start_date"]),
        "worker_s": sum(durations) / tasks,
        "processes": len(durations) / tasks,
        "requests": len(requests) / tasks,
        "refused": refused / tasks,
    }


def main(argv: list[str] | None = None) -> int:
    """Start Airflow and the emulator, run both DAGs, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--action-seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=5)
    parser.add_argument("--parallelism", type=int, default=16)
    parser.add_argument("--variants", default="new,resume,old", help="which DAGs to run, in order")
    args = parser.parse_args(argv)

    class FanoutAirflow(AirflowE2E):
        def write_dags(self) -> None:
            text = DAG_FILE.format(tasks=args.tasks, seconds=args.action_seconds)
            (self.dags / "bench_fanout_dags.py").write_text(text)

        def build_env(self) -> None:
            super().build_env()
            self.env["AIRFLOW__CORE__PARALLELISM"] = str(args.parallelism)
            self.env["AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG"] = str(args.tasks)

    import tempfile

    ideal = args.tasks / args.concurrency * args.action_seconds
    results: dict[str, dict[str, Any]] = {}
    with (
        tempfile.TemporaryDirectory(prefix="bench-fanout-") as base,
        running(FanoutAirflow(Path(base)), audit=False) as e2e,
    ):
        e2e.emulator.client.configure(org_concurrency=args.concurrency, retry_after=1)
        for label in args.variants.split(","):
            dag_id = f"bench_fanout_{label}"
            e2e.wait_for_dag(dag_id)
            results[label] = run_one(e2e, dag_id, args.tasks, timeout=max(600.0, 10 * ideal))
            print(f"[bench_fanout] {label}: {results[label]}", flush=True)

    rows = []
    for label, r in results.items():
        rows.append(
            [
                SUBJECTS[label],
                r["state"],
                r["worker_s"],
                r["processes"],
                r["makespan"],
                r["makespan"] / ideal,
                r["requests"],
                r["refused"],
            ]
        )
    print(
        f"\n{args.tasks} mapped deferrable tasks, {args.action_seconds:g} s actions, Kernel concurrency "
        f"{args.concurrency}, parallelism {args.parallelism}; ideal makespan {ideal:g} s"
    )
    headers = ["subject", "run", "worker-slot s/task", "task processes/task", "makespan s", "x ideal"]
    print(table([*headers, "requests/task", "429s/task"], rows))
    new, resume = results.get("new"), results.get("resume")
    if new and resume:
        print(
            "ending in the triggerer vs a worker's resume: worker-slot s/task "
            f"{new['worker_s'] / resume['worker_s']:.2f}x, task processes/task "
            f"{new['processes'] / resume['processes']:.2f}x, makespan {new['makespan'] / resume['makespan']:.2f}x, "
            f"requests/task {new['requests'] / resume['requests']:.2f}x"
        )
    if new:
        verdict = {
            f"<= {GOAL_WORKER_S:g} worker-slot s/task": new["worker_s"] <= GOAL_WORKER_S,
            f"makespan <= {GOAL_MAKESPAN_X:g}x ideal": new["makespan"] <= GOAL_MAKESPAN_X * ideal,
            f"<= {GOAL_REQUESTS:g} requests/task": new["requests"] <= GOAL_REQUESTS,
        }
        for goal, met in verdict.items():
            print(f"{goal}: {'met' if met else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
