"""N concurrent invocation waits in one event loop: KernelInvocationTrigger (stream, poll) vs a dbt-style poller
vs triggers written with the official ``kernel`` SDK.

Run: ``python -m bench.bench_trigger [--waits 1000] [--quick] [--json]``.

Setup: one emulator in a subprocess (no concurrency limits, SSE heartbeat 5 s). For every subject, in turn, a
fresh client process is started (so RSS and file descriptors are its own), warms up with one wait on an
already-finished invocation and reports ready; then N async ``demo``/``sleep`` invocations are created whose
end times are staggered evenly over ``--spread`` seconds, starting ``--lead`` seconds after the last one is
created; then the client gathers N waits, one per invocation, in one event loop.

Subjects:

* ``ours-stream``: ``KernelInvocationTrigger(id, mode="stream", stream_logs=False).wait()``
* ``ours-poll``: ``KernelInvocationTrigger(id, mode="poll", poll_interval=P, stream_logs=False).wait()``
* ``dbt-style``: the dbt Cloud provider's trigger pattern: a new ``aiohttp.ClientSession`` per status check
  (``--dbt-client httpx``: a new ``httpx.AsyncClient`` instead), one GET every P seconds.
* ``sdk-poll``: how an SDK user writes a trigger: one ``AsyncKernel`` per wait (``async with``), calling
  ``invocations.retrieve`` every P seconds until the status is terminal.
* ``sdk-follow``: one ``AsyncKernel`` per wait; one ``retrieve``, then ``invocations.follow`` (SSE) until a
  terminal ``invocation_state`` event (with a ``retrieve`` if the stream ends without one).

Measured per subject: requests per wait (the emulator's request log sequence numbers before/after the waits),
detection latency (the wait's return ``time.time()`` minus the emulator's ``finished_at``, same machine),
added RSS of the client process (peak during the waits - RSS just before them; VmHWM after resetting it via
``/proc/self/clear_refs``, cross-checked by sampling VmRSS), event-loop lag (a ticker sleeping 10 ms; p99 of
the oversleep), and wall time of the whole gather.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from typing import Any

from bench.common import emulator, table
from kernel_provider.client.models import parse_timestamp

SUBJECTS = ("ours-stream", "ours-poll", "dbt-style", "sdk-poll", "sdk-follow")
OURS = ("ours-stream", "ours-poll")
TERMINAL = ("succeeded", "failed")
MARK = "BENCH:"

GOALS = {
    "stream_requests_per_wait": 3.0,
    "p50_detection_s": 0.1,
    "p99_detection_s": 0.5,
    "rss_mb_per_1000": 30.0,
    "rss_vs_sdk": 0.5,
    "loop_lag_p99_ms": 20.0,
}


# --------------------------------------------------------------------------------------------- helpers


def raise_nofile() -> int:
    """Raise the soft file-descriptor limit to the hard limit (N sockets on each side)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return soft
    return target


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field):
                return int(line.split()[1])
    return 0


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


# --------------------------------------------------------------------------------------------- subjects (child)


def make_subject(name: str, poll_interval: float, url: str, token: str, dbt_client: str) -> Any:
    """An ``async wait_one(invocation_id) -> status`` for the subject."""
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}

    if name in OURS:
        from kernel_provider.triggers.kernel import KernelInvocationTrigger

        mode = "stream" if name == "ours-stream" else "poll"

        async def ours(invocation_id: str) -> str:
            event = await KernelInvocationTrigger(
                invocation_id, mode=mode, poll_interval=poll_interval, stream_logs=False
            ).wait()
            return str(event.get("status"))

        return ours

    if name == "dbt-style" and dbt_client == "aiohttp":
        import aiohttp

        async def dbt_aiohttp(invocation_id: str) -> str:
            # airflow.providers.dbt.cloud: DbtCloudRunJobTrigger.is_still_running -> hook.get_job_status ->
            # ``async with aiohttp.ClientSession(headers=...) as session: async with session.get(...)``.
            while True:
                async with (
                    aiohttp.ClientSession(headers=headers) as session,
                    session.get(f"{url}/invocations/{invocation_id}") as response,
                ):
                    response.raise_for_status()
                    data = await response.json()
                if data["status"] in TERMINAL:
                    return str(data["status"])
                await asyncio.sleep(poll_interval)

        return dbt_aiohttp

    if name == "dbt-style":
        import httpx

        async def dbt_httpx(invocation_id: str) -> str:
            while True:
                async with httpx.AsyncClient(headers=headers) as client:
                    response = await client.get(f"{url}/invocations/{invocation_id}")
                    response.raise_for_status()
                    data = response.json()
                if data["status"] in TERMINAL:
                    return str(data["status"])
                await asyncio.sleep(poll_interval)

        return dbt_httpx

    from kernel import AsyncKernel

    if name == "sdk-poll":

        async def sdk_poll(invocation_id: str) -> str:
            async with AsyncKernel(api_key=token, base_url=url) as client:
                while True:
                    invocation = await client.invocations.retrieve(invocation_id)
                    if invocation.status in TERMINAL:
                        return str(invocation.status)
                    await asyncio.sleep(poll_interval)

        return sdk_poll

    if name == "sdk-follow":

        async def sdk_follow(invocation_id: str) -> str:
            async with AsyncKernel(api_key=token, base_url=url) as client:
                while True:
                    invocation = await client.invocations.retrieve(invocation_id)
                    if invocation.status in TERMINAL:
                        return str(invocation.status)
                    stream = await client.invocations.follow(invocation_id)
                    async with stream:
                        async for event in stream:
                            if event.event == "invocation_state" and event.invocation.status in TERMINAL:
                                return str(event.invocation.status)

        return sdk_follow

    raise ValueError(f"unknown subject {name!r}")


def _emit(kind: str, payload: Any = None) -> None:
    sys.stdout.write(f"{MARK}{kind} {json.dumps(payload)}\n")
    sys.stdout.flush()


def child_main(args: argparse.Namespace) -> int:
    """One subject in its own process: warm up, say READY, read the ids, wait for all, print the result."""
    raise_nofile()
    # Import everything any subject touches before the baseline, so imports are not counted as wait memory.
    import aiohttp  # noqa: F401
    import httpx  # noqa: F401
    import httpx_sse  # noqa: F401
    import kernel  # noqa: F401

    import kernel_provider.triggers.kernel  # noqa: F401

    if args.pool_shards:  # diagnosis only: compare connection-pool layouts of the hook
        import kernel_provider.client.transport as transport_module

        transport_module.POOL_SHARDS = args.pool_shards
    conn = json.loads(os.environ["AIRFLOW_CONN_KERNEL_DEFAULT"])
    wait_one = make_subject(args.child, args.poll_interval, conn["host"], conn["password"], args.dbt_client)

    async def run() -> dict[str, Any]:
        warm = await wait_one(args.warm_id)  # warms code paths (and our shared per-loop client)
        _emit("READY", {"warm": warm})
        ids: list[str] = json.loads(sys.stdin.readline())  # blocking on purpose: nothing else runs yet
        gc.collect()
        baseline_kb = _status_kb("VmRSS")
        hwm_reset = _reset_peak()
        lags: list[tuple[float, float]] = []  # (wall clock at the end of the tick, oversleep)
        sampled_peak_kb = [baseline_kb]
        stop = asyncio.Event()

        async def ticker() -> None:
            tick = 0
            while not stop.is_set():
                started = time.perf_counter()
                await asyncio.sleep(0.010)
                lags.append((time.time(), time.perf_counter() - started - 0.010))
                tick += 1
                if tick % 10 == 0:
                    sampled_peak_kb[0] = max(sampled_peak_kb[0], _status_kb("VmRSS"))

        returned: dict[str, float] = {}
        statuses: Counter[str] = Counter()

        async def timed(invocation_id: str) -> None:
            try:
                status = await wait_one(invocation_id)
            except Exception as exc:
                status = f"exception {type(exc).__name__}"
            returned[invocation_id] = time.time()
            statuses[status] += 1

        ticking = asyncio.create_task(ticker())
        started_wall = time.time()
        started = time.perf_counter()
        cpu = time.process_time()
        try:
            await asyncio.wait_for(asyncio.gather(*(timed(i) for i in ids)), timeout=args.child_timeout)
        except asyncio.TimeoutError:
            statuses["timed out"] += len(ids) - len(returned)
        wall = time.perf_counter() - started
        cpu = time.process_time() - cpu
        stop.set()
        await ticking
        peak_kb = max(sampled_peak_kb[0], _status_kb("VmHWM") if hwm_reset else 0)
        return {
            "started": started_wall,
            "returned": returned,
            "statuses": dict(statuses),
            "wall_s": wall,
            "cpu_s": cpu,
            "baseline_kb": baseline_kb,
            "peak_kb": peak_kb,
            "sampled_peak_kb": sampled_peak_kb[0],
            "hwm_used": hwm_reset,
            "lags": lags,
        }

    if args.profile:
        import cProfile

        profiler = cProfile.Profile()
        result = profiler.runcall(asyncio.run, run())
        profiler.dump_stats(os.path.join(args.profile, f"{args.child}.prof"))
    else:
        result = asyncio.run(run())
    _emit("RESULT", result)
    return 0


# --------------------------------------------------------------------------------------------- parent


def _last_seq(emu: Any) -> int:
    entries = emu.client.requests()
    return int(entries[-1]["seq"]) if entries else 0


def _read_marked(proc: subprocess.Popen[str], kind: str, deadline: float) -> Any:
    assert proc.stdout is not None
    while True:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {kind} from the client process in time")
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"client process ended before {kind} (exit code {proc.wait()})")
        if line.startswith(f"{MARK}{kind} "):
            return json.loads(line[len(MARK) + len(kind) + 1 :])


def create_staggered(hook: Any, n: int, per_create_s: float, lead: float, spread: float) -> list[str]:
    """N async ``sleep`` invocations ending at ``creation end + lead + spread * i / (n - 1)``."""
    start = time.time()
    budget = per_create_s * n * 1.5 + 0.3
    ids = []
    for i in range(n):
        target = start + budget + lead + spread * i / max(1, n - 1)
        seconds = max(0.5, target - time.time())
        ids.append(
            hook.invoke(
                "demo", "sleep", payload={"seconds": round(seconds, 4), "result": {"i": i}}, invoke_async=True
            ).id
        )
    return ids


def run_subject(emu: Any, hook: Any, name: str, args: argparse.Namespace) -> dict[str, Any]:
    emu.client.reset()
    warm_id = hook.invoke("demo", "echo", payload={"warm": name}, invoke_async=False).id
    # calibrate the create rate (for the staggered end times); these are finished before the waits start
    calibrate = time.perf_counter()
    for _ in range(10):
        hook.invoke("demo", "echo", payload={"calibrate": True}, invoke_async=True)
    per_create = (time.perf_counter() - calibrate) / 10
    child_timeout = args.lead + args.spread + max(60.0, 20 * args.poll_interval)
    cmd = (
        [
            sys.executable,
            "-m",
            "bench.bench_trigger",
            "--child",
            name,
            "--warm-id",
            warm_id,
            "--poll-interval",
            str(args.poll_interval),
            "--dbt-client",
            args.dbt_client,
            "--child-timeout",
            str(child_timeout),
        ]
        + (["--profile", args.profile] if args.profile else [])
        + (["--pool-shards", str(args.pool_shards)] if args.pool_shards else [])
    )
    with tempfile.TemporaryFile("w+") as stderr:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True)
        try:
            _read_marked(proc, "READY", time.monotonic() + 120)
            create_started = time.perf_counter()
            ids = create_staggered(hook, args.waits, per_create, args.lead, args.spread)
            create_s = time.perf_counter() - create_started
            seq_before = _last_seq(emu)
            assert proc.stdin is not None
            proc.stdin.write(json.dumps(ids) + "\n")
            proc.stdin.flush()
            result = _read_marked(proc, "RESULT", time.monotonic() + child_timeout + 60)
            proc.wait(30)
        except BaseException:
            proc.kill()
            proc.wait()
            stderr.seek(0)
            sys.stderr.write(f"--- {name} client stderr (tail) ---\n{stderr.read()[-3000:]}\n")
            raise
        stderr.seek(0)
        child_stderr = stderr.read()
    entries = [e for e in emu.client.requests() if e["seq"] > seq_before]
    seq_after = max([seq_before] + [int(e["seq"]) for e in entries])
    total_requests = seq_after - seq_before
    by_route = Counter(f"{e['method']} {e['route']}" for e in entries)
    finished = {inv["id"]: inv for inv in emu.client.invocations() if inv["id"] in set(ids)}
    latencies, first_finish = [], None
    for invocation_id in ids:
        inv = finished.get(invocation_id) or {}
        if inv.get("finished_at") and invocation_id in result["returned"]:
            end = parse_timestamp(inv["finished_at"]).timestamp()  # type: ignore[union-attr]
            first_finish = end if first_finish is None else min(first_finish, end)
            latencies.append(result["returned"][invocation_id] - end)
    n = args.waits
    lags = [lag for _, lag in result["lags"]]
    # the start of N waits at once is a burst a real triggerer (which starts triggers as they arrive) never
    # sees; the ticks from the first end of an invocation on are the steady phase in which ends are detected
    steady = [lag for at, lag in result["lags"] if first_finish is not None and at >= first_finish]
    return {
        "subject": name,
        "waits": n,
        "requests_total": total_requests,
        "requests_per_wait": total_requests / n,
        "requests_by_route": dict(by_route),
        "request_log_complete": len(entries) == total_requests,
        "detect_p50_s": percentile(latencies, 50),
        "detect_p99_s": percentile(latencies, 99),
        "detect_max_s": max(latencies, default=float("nan")),
        "detect_min_s": min(latencies, default=float("nan")),
        "detected_early": sum(1 for x in latencies if x < 0),
        "added_rss_mb": (result["peak_kb"] - result["baseline_kb"]) / 1024,
        "baseline_rss_mb": result["baseline_kb"] / 1024,
        "sampled_added_rss_mb": (result["sampled_peak_kb"] - result["baseline_kb"]) / 1024,
        "lag_p50_ms": percentile(lags, 50) * 1000,
        "lag_p99_ms": percentile(lags, 99) * 1000,
        "lag_max_ms": max(lags, default=0.0) * 1000,
        "lag_p99_steady_ms": percentile(steady, 99) * 1000,
        "ticks": len(lags),
        "wall_s": result["wall_s"],
        "client_cpu_s": result["cpu_s"],
        "lead_s": None if first_finish is None else first_finish - result["started"],
        "create_s": create_s,
        "statuses": result["statuses"],
        "loadavg_after": os.getloadavg()[0],
        "warnings_logged": child_stderr.count("WARNING"),
        "errors_logged": child_stderr.count("ERROR"),
    }


def run(
    waits: int = 1000,
    poll_interval: float = 1.0,
    lead: float = 6.0,
    spread: float = 4.0,
    subjects: tuple[str, ...] = SUBJECTS,
    dbt_client: str = "aiohttp",
    profile: str | None = None,
    pool_shards: int = 0,
) -> dict[str, Any]:
    from kernel_provider.hooks.kernel import KernelHook

    args = argparse.Namespace(
        waits=waits,
        poll_interval=poll_interval,
        lead=lead,
        spread=spread,
        dbt_client=dbt_client,
        profile=profile,
        pool_shards=pool_shards,
    )
    nofile = raise_nofile()  # inherited by the emulator and the client processes
    results: dict[str, Any] = {
        "waits": waits,
        "poll_interval": poll_interval,
        "lead_s": lead,
        "spread_s": spread,
        "nofile": nofile,
        "dbt_client": dbt_client,
        "goals": GOALS,
        "subjects": {},
    }
    with emulator(heartbeat=5.0) as emu:
        hook = KernelHook()
        for name in subjects:
            results["subjects"][name] = run_subject(emu, hook, name, args)
    results["verdicts"] = verdicts(results)
    return results


def verdicts(results: dict[str, Any]) -> dict[str, Any]:
    subjects = results["subjects"]
    waits = results["waits"]
    out: dict[str, Any] = {}
    sdk = subjects.get("sdk-poll")
    for name in OURS:
        r = subjects.get(name)
        if r is None:
            continue
        checks: dict[str, Any] = {}
        if name == "ours-stream":
            checks["requests/wait <= 3"] = r["requests_per_wait"] <= GOALS["stream_requests_per_wait"]
            checks["p50 detection <= 0.1 s"] = r["detect_p50_s"] <= GOALS["p50_detection_s"]
            checks["p99 detection <= 0.5 s"] = r["detect_p99_s"] <= GOALS["p99_detection_s"]
        budget = GOALS["rss_mb_per_1000"] * max(1.0, waits / 1000)  # fixed costs: not scaled below 1,000
        checks[f"added RSS <= {budget:.3g} MB"] = r["added_rss_mb"] <= budget
        if sdk is not None:
            checks["RSS <= 0.5x sdk-poll"] = r["added_rss_mb"] <= GOALS["rss_vs_sdk"] * sdk["added_rss_mb"]
        checks["loop lag p99 <= 20 ms"] = r["lag_p99_ms"] <= GOALS["loop_lag_p99_ms"]
        checks["(ends phase) loop lag p99 <= 20 ms"] = r["lag_p99_steady_ms"] <= GOALS["loop_lag_p99_ms"]
        checks["all succeeded"] = r["statuses"] == {"succeeded": waits}
        out[name] = checks
    return out


def report(results: dict[str, Any]) -> str:
    subjects = results["subjects"]
    sdk_rss = subjects.get("sdk-poll", {}).get("added_rss_mb")
    rows = []
    for name, r in subjects.items():
        ratio = r["added_rss_mb"] / sdk_rss if sdk_rss else float("nan")
        ok = r["statuses"].get("succeeded", 0)
        rows.append(
            [
                name,
                r["requests_per_wait"],
                r["detect_p50_s"],
                r["detect_p99_s"],
                r["added_rss_mb"],
                ratio,
                r["lag_p99_ms"],
                r["lag_p99_steady_ms"],
                r["wall_s"],
                r["client_cpu_s"],
                f"{ok}/{r['waits']}",
            ]
        )
    lines = [
        f"{results['waits']} concurrent waits in one event loop against the emulator (subprocess, heartbeat 5 s); "
        f"poll interval {results['poll_interval']} s; ends staggered over {results['spread_s']} s, "
        f"{results['lead_s']} s after creation; dbt-style client: {results['dbt_client']}",
        table(
            [
                "subject",
                "req/wait",
                "detect p50 s",
                "detect p99 s",
                "added RSS MB",
                "RSS/sdk-poll",
                "lag p99 ms",
                "lag p99 ms (ends)",
                "wall s",
                "client CPU s",
                "succeeded",
            ],
            rows,
        ),
        "lag p99 (ends): loop lag from the first invocation end on, i.e. without the start-up burst of "
        "N waits created at once; load average (1 min) after each subject: "
        + ", ".join(f"{name} {r['loadavg_after']:.1f}" for name, r in subjects.items()),
        "requests by route per wait: "
        + "; ".join(
            f"{name}: "
            + ", ".join(f"{route} {count / r['waits']:.2f}" for route, count in sorted(r["requests_by_route"].items()))
            for name, r in subjects.items()
        ),
        f"goals (ours): stream <= {GOALS['stream_requests_per_wait']:g} req/wait; stream detection p50 <= "
        f"{GOALS['p50_detection_s']:g} s, p99 <= {GOALS['p99_detection_s']:g} s; added RSS <= "
        f"{GOALS['rss_mb_per_1000']:g} MB per 1,000 waits and <= {GOALS['rss_vs_sdk']:g}x sdk-poll; "
        f"loop lag p99 <= {GOALS['loop_lag_p99_ms']:g} ms",
    ]
    for name, checks in results["verdicts"].items():
        lines.append(f"  {name}: " + "; ".join(f"{k}: {'met' if v else 'MISSED'}" for k, v in checks.items()))
    notes = [
        f"{name}: request log incomplete (count from sequence numbers)"
        for name, r in subjects.items()
        if not r["request_log_complete"]
    ]
    notes += [
        f"{name}: lead before the first end was only {r['lead_s']:.2f} s"
        for name, r in subjects.items()
        if r["lead_s"] is not None and r["lead_s"] < 1.0
    ]
    notes += [
        f"{name}: {r['warnings_logged']} warnings / {r['errors_logged']} errors in its log"
        for name, r in subjects.items()
        if r["warnings_logged"] or r["errors_logged"]
    ]
    lines += [f"note: {n}" for n in notes]
    return "\n".join(lines)


LAST_RESULT: dict[str, Any] | None = None


def main(argv: list[str] | None = None) -> int:
    global LAST_RESULT
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--waits", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="100 waits")
    parser.add_argument("--poll-interval", type=float, default=1.0)
    parser.add_argument("--lead", type=float, default=6.0, help="seconds from creation to the first end")
    parser.add_argument("--spread", type=float, default=4.0, help="seconds over which the ends are spread")
    parser.add_argument("--subjects", default=",".join(SUBJECTS), help=f"comma-separated subset of {SUBJECTS}")
    parser.add_argument(
        "--dbt-client",
        choices=("aiohttp", "httpx"),
        default=None,
        help="session type of the dbt-style poller (default aiohttp when installed)",
    )
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--profile", metavar="DIR", help="cProfile each client process into DIR/<subject>.prof")
    parser.add_argument("--pool-shards", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--warm-id", help=argparse.SUPPRESS)
    parser.add_argument("--child-timeout", type=float, default=120.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.dbt_client is None:
        try:
            import aiohttp  # noqa: F401

            args.dbt_client = "aiohttp"
        except ImportError:
            args.dbt_client = "httpx"
    if args.child:
        return child_main(args)
    waits = 100 if args.quick else args.waits
    subjects = tuple(s.strip() for s in args.subjects.split(",") if s.strip())
    unknown = set(subjects) - set(SUBJECTS)
    if unknown:
        parser.error(f"unknown subjects: {sorted(unknown)}")
    result = run(
        waits,
        args.poll_interval,
        args.lead,
        args.spread,
        subjects,
        args.dbt_client,
        os.path.abspath(args.profile) if args.profile else None,
        args.pool_shards,
    )
    LAST_RESULT = result
    if args.json:
        print(json.dumps(result))
    else:
        print(report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
