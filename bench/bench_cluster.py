"""What deferred Kernel waits cost on Airflow's production shape: PostgreSQL, CeleryExecutor on Redis, triggerers.

The cluster of ``tests/cluster`` (``ClusterAirflow``: PostgreSQL, Redis, api-server, scheduler, dag-processor, two
Celery workers) with ONE triggerer, so it holds every wait. Per wait mode (``stream``: follow Kernel's event
stream; ``poll``: GET the invocation every ``--poll-interval`` seconds), one DAG run of N mapped deferrable
``KernelInvokeOperator`` tasks on ``gate``/``wait`` actions that run until the benchmark opens their gate:

0. one warm-up wait, so the triggerer's idle RSS already includes the provider's modules;
1. all N tasks create their invocation and defer; the triggerer follows every one (one request each seen);
2. **holding**: for ``--hold`` seconds nothing changes; sampled: the triggerer's RSS (its process and children:
   the trigger runner subprocess), CPU (% of one core over the window), metadata-DB rows written and Kernel
   requests made per wait per minute (steady-state cost of waiting);
3. **failover**: a second triggerer starts, the first is SIGKILLed; time from the kill until the last of the N
   waits is followed again (its first request to Kernel from the new triggerer), with the settings governing it;
4. the gate opens, every task resumes and succeeds; **per waited invocation**: metadata-DB rows written
   (``pg_stat_user_tables``: inserts + updates + deletes, whole run, every Airflow component) and Kernel requests
   (the emulator's request log, whole run: create, waits, resume).

Run: ``python -m bench.bench_cluster [--waits 1000] [--modes stream,poll] [--poll-interval 30] [--hold 60]``
(Airflow 3.3 venv with the ``[cluster]`` extra, PostgreSQL and Redis installed: ``make cluster-deps``). N=1000
takes about 15-25 minutes per mode on 2 cores (the two Celery workers run each task twice: create, resume).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import textwrap
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.common import table
from tests.harness.airflow3 import epoch
from tests.harness.airflow_cluster import ClusterAirflow, skip_reason
from tests.harness.base import GATE_APP, from_triggerer

LAST_RESULT: dict[str, Any] = {}

DAG_TEMPLATE = '''
"""Written by bench/bench_cluster.py."""
import pendulum
from airflow.sdk import DAG

from kernel_provider.operators.kernel import KernelInvokeOperator

for mode in ("stream", "poll"):
    with DAG(
        dag_id=f"bench_cluster_{{mode}}",
        schedule=None,
        start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
        catchup=False,
        max_active_tasks={waits},
    ):
        KernelInvokeOperator.partial(
            task_id="invoke",
            app_name="gate",
            action_name="wait",
            deferrable=True,
            wait_mode=mode,
            poll_interval={poll_interval},
            timeout=7200,
        ).expand(payload=[{{"gate": "{{{{ dag_run.conf['gate'] }}}}", "result": i}} for i in range({waits})])

# One wait before measuring, so the triggerer's idle RSS already includes the provider's modules.
with DAG(dag_id="bench_cluster_warmup", schedule=None, start_date=pendulum.datetime(2025, 1, 1, tz="UTC")):
    KernelInvokeOperator(
        task_id="invoke",
        app_name="gate",
        action_name="wait",
        deferrable=True,
        payload={{"gate": "{{{{ dag_run.conf['gate'] }}}}", "result": 0, "after": 2, "interval": 1}},
    )
'''


def _family(service: Any) -> list[Any]:
    import psutil

    try:
        root = psutil.Process(service.pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def _rss_mb(service: Any) -> float:
    total = 0
    for proc in _family(service):
        try:
            total += proc.memory_info().rss
        except Exception:
            pass
    return total / 2**20


def _cpu_s(service: Any) -> float:
    total = 0.0
    for proc in _family(service):
        try:
            times = proc.cpu_times()
            total += times.user + times.system
        except Exception:
            pass
    return total


def _db_writes(c: Any) -> int:
    time.sleep(1.5)  # backends flush their table counters at most once a second
    rows = c.sql("SELECT coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0) FROM pg_stat_user_tables")
    return int(rows[0][0])


def _followed(c: Any, ids: set[str], after_seq: int) -> dict[str, float]:
    """Invocation id -> time of the triggerer's first request about it after ``after_seq``."""
    first: dict[str, float] = {}
    for r in c.emulator.client.requests(method="GET"):
        if r["seq"] <= after_seq or not from_triggerer(r):
            continue
        parts = r["path"].split("/")
        if len(parts) > 2 and parts[1] == "invocations" and parts[2] in ids:
            first.setdefault(parts[2], epoch(r["time"]))
    return first


def _deferred(c: Any, dag_id: str, run_id: str) -> int:
    rows = c.sql(
        "SELECT count(*) FROM task_instance WHERE dag_id = %s AND run_id = %s AND state = 'deferred'", dag_id, run_id
    )
    return int(rows[0][0])


def _invocation_ids(c: Any, gate: str) -> set[str]:
    return {i["id"] for i in c.gate_invocations(gate)}


def measure_mode(c: Any, mode: str, waits: int, hold: float, triggerer: str, spare: str) -> dict[str, Any]:
    """One DAG run of ``waits`` deferred waits in ``mode``; returns the numbers (see the module docstring)."""
    dag_id = f"bench_cluster_{mode}"
    c.wait_for_dag(dag_id, timeout=180)
    gate = c.new_gate()
    idle_rss = _rss_mb(c.services[triggerer])
    created0 = c.emulator.client.created_count(app="gate", action="wait")
    rows0, seq0 = _db_writes(c), c.last_seq()
    started = time.monotonic()
    run_id = c.trigger(dag_id, {"gate": gate})
    c.wait_until(
        f"{waits} tasks to defer", lambda: _deferred(c, dag_id, run_id) == waits, timeout=60 + 3 * waits, interval=5
    )
    deferred_after = time.monotonic() - started
    ids = c.wait_until(
        "every invocation created",
        lambda: found if len(found := _invocation_ids(c, gate)) == waits else None,
        timeout=60,
    )
    c.wait_until(
        f"the triggerer to follow all {waits} waits",
        lambda: len(_followed(c, ids, seq0)) == waits,
        timeout=120 + waits / 5,
        interval=2,
    )

    # Holding: steady state.
    service = c.services[triggerer]
    rss_samples = []
    cpu0, rows_h0, seq_h0, t0 = _cpu_s(service), _db_writes(c), c.last_seq(), time.monotonic()
    while time.monotonic() - t0 < hold:
        rss_samples.append(_rss_mb(service))
        time.sleep(2)
    window = time.monotonic() - t0
    cpu = (_cpu_s(service) - cpu0) / window * 100
    seq_h1 = c.last_seq()
    holding_requests = Counter(
        f"{r['method']} {r['route']}" for r in c.emulator.client.requests() if seq_h0 < r["seq"] <= seq_h1
    )
    rows_h1 = _db_writes(c)
    per_min = 60 / window / waits

    # Failover: a second triggerer starts, the first is SIGKILLed.
    c.start(spare)
    c.wait_until("two live triggerers", lambda: len(c.live_triggerers()) == 2, timeout=90, interval=1)
    kill_wall = time.time()
    c.kill(triggerer)
    mark = c.last_seq()
    resumed = c.wait_until(
        f"all {waits} waits followed again after the kill",
        lambda: f if len(f := _followed(c, ids, mark)) == waits else None,
        timeout=300 + waits / 5,
        interval=2,
    )
    failover = max(resumed.values()) - kill_wall

    c.open_gate(gate)
    state = c.wait_run_done(dag_id, run_id, timeout=120 + 3 * waits)
    rows1, seq1 = _db_writes(c), c.last_seq()
    created = c.emulator.client.created_count(app="gate", action="wait") - created0
    by_route = Counter(f"{r['method']} {r['route']}" for r in c.emulator.client.requests() if seq0 < r["seq"] <= seq1)
    return {
        "mode": mode,
        "waits": waits,
        "state": state,
        "creates": created,
        "all_deferred_s": round(deferred_after, 1),
        "triggerer_rss_idle_mb": round(idle_rss, 1),
        "triggerer_rss_holding_mb": round(max(rss_samples), 1),
        "rss_per_wait_kb": round((max(rss_samples) - idle_rss) * 1024 / waits, 1),
        "triggerer_cpu_pct": round(cpu, 1),
        "db_rows_per_wait_per_min_holding": round((rows_h1 - rows_h0) * per_min, 3),
        "kernel_requests_per_wait_per_min_holding": round((seq_h1 - seq_h0) * per_min, 3),
        "holding_requests_by_route": dict(holding_requests),
        "failover_s": round(failover, 1),
        "db_rows_per_invocation": round((rows1 - rows0) / waits, 1),
        "kernel_requests_per_invocation": round((seq1 - seq0) / waits, 2),
        "requests_per_invocation_by_route": {k: round(v / waits, 2) for k, v in by_route.most_common()},
    }


def run(argv: list[str] | None = None) -> dict[str, Any]:
    """Start the cluster, measure every mode, print one table; returns the results."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--waits", type=int, default=1000)
    parser.add_argument("--modes", default="stream,poll")
    parser.add_argument("--poll-interval", type=int, default=30, help="poll mode: seconds between GETs")
    parser.add_argument("--hold", type=float, default=60, help="seconds of steady-state sampling")
    parser.add_argument("--json", action="store_true", help="also print the results as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the cluster's directory (service logs)")
    args = parser.parse_args(argv)

    reason = skip_reason()
    if reason:
        print(f"bench_cluster skipped: {reason}")
        return {"skipped": reason}

    class BenchCluster(ClusterAirflow):
        triggerer_capacity: dict[str, int] = {}  # one triggerer holds every wait

        def start_emulator(self) -> None:
            from kernel_provider.testing.server import spawn_emulator

            # A request log long enough for every request of the run (the default keeps 10,000).
            self.emulator = spawn_emulator(
                apps=[GATE_APP],
                env={"KERNEL_E2E_GATE_DIR": str(self.gates)},
                timeout=60,
                request_log_size=50 * args.waits + 10_000,
            )

        # One triggerer at first (the other is the failover's spare); ready once the Airflow services are healthy.
        service_names = ("api-server", "scheduler", "dag-processor", "triggerer1", "worker1", "worker2")

        def write_dags(self) -> None:
            text = DAG_TEMPLATE.format(waits=args.waits, poll_interval=args.poll_interval)
            (self.dags / "bench_cluster_dags.py").write_text(textwrap.dedent(text))

        def build_env(self) -> None:
            super().build_env()
            self.env["AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG"] = str(args.waits)
            self.env["AIRFLOW__CORE__MAX_MAP_LENGTH"] = str(max(1024, args.waits))

        def ready(self) -> bool:
            return bool(self.healthy())

    settings_keys = (
        "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC",
        "AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD",
        "AIRFLOW__CELERY__WORKER_CONCURRENCY",
    )
    results: list[dict[str, Any]] = []
    base = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    c = BenchCluster(base)
    try:
        c.start_all()
        c.wait_for_dag("bench_cluster_warmup", timeout=180)
        warm_gate = c.new_gate()
        c.open_gate(warm_gate)
        warm_run = c.trigger("bench_cluster_warmup", {"gate": warm_gate})
        c.wait_run_done("bench_cluster_warmup", warm_run, timeout=300)
        triggerer, spare = "triggerer1", "triggerer2"
        for mode in args.modes.split(","):
            print(f"==> {mode}: {args.waits} deferred waits", flush=True)
            results.append(measure_mode(c, mode, args.waits, args.hold, triggerer, spare))
            triggerer, spare = spare, triggerer
            print(json.dumps(results[-1]), flush=True)
        settings = {k: c.env.get(k) for k in settings_keys}
    finally:
        c.stop_all()
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    headers = [
        "mode",
        "waits",
        "RSS idle MB",
        "RSS holding MB",
        "KB/wait",
        "CPU %",
        "DB rows/wait/min",
        "Kernel req/wait/min",
        "failover s",
        "DB rows/invocation",
        "Kernel req/invocation",
    ]
    rows = [
        [
            r["mode"],
            r["waits"],
            r["triggerer_rss_idle_mb"],
            r["triggerer_rss_holding_mb"],
            r["rss_per_wait_kb"],
            r["triggerer_cpu_pct"],
            r["db_rows_per_wait_per_min_holding"],
            r["kernel_requests_per_wait_per_min_holding"],
            r["failover_s"],
            r["db_rows_per_invocation"],
            r["kernel_requests_per_invocation"],
        ]
        for r in results
    ]
    print(table(headers, rows))
    print(f"poll interval {args.poll_interval}s, hold {args.hold:.0f}s; settings: {settings}")
    LAST_RESULT.clear()
    LAST_RESULT.update({"results": results, "settings": settings, "poll_interval": args.poll_interval})
    if args.json:
        print(json.dumps(LAST_RESULT, indent=2))
    return LAST_RESULT


if __name__ == "__main__":
    run()
