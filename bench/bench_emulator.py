"""Benchmark of the Kernel API emulator (not a test).

Starts ``python -m kernel_provider.testing`` in a subprocess (concurrency limits off) and measures:

a) creates/s - async ``POST /invocations`` (demo ``echo``) from ``httpx.AsyncClient`` at a fixed concurrency;
b) live capacity - N ``slow`` async invocations held at once (``stats().live``), GET latency meanwhile;
c) open streams - M concurrent ``GET /invocations/{id}/events`` streams that each received the initial state;

d) retention - RSS across ``--retention`` (default 100,000) async ``echo`` invocations: finished ones are evicted
   beyond ``retention_count`` (default 10,000), so RSS levels off instead of growing without bound;

plus the emulator's RSS after each phase. Targets: >= 300 creates/s and >= 1,000 live invocations on 2 cores.

    python bench/bench_emulator.py [--seconds 5] [--concurrency 32] [--live 1200] [--streams 1000]
                                   [--retention 100000] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from typing import Any

import httpx

from kernel_provider.testing import spawn_emulator

TOKEN = "bench-token"


def rss_mb(pid: int) -> float:
    """Resident set size of a process in MiB (psutil if available, else /proc)."""
    try:
        import psutil

        return float(psutil.Process(pid).memory_info().rss) / 2**20
    except ImportError:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    return float("nan")


def _client(url: str, connections: int) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=url,
        headers={"Authorization": f"Bearer {TOKEN}"},
        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
        timeout=httpx.Timeout(60, connect=10),
    )


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (0.0 if psutil is missing)."""
    try:
        import psutil
    except ImportError:
        return 0.0
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


async def bench_creates(url: str, seconds: float, concurrency: int, clients: int, pid: int) -> dict[str, Any]:
    """Async creates from ``clients`` AsyncClients sharing ``concurrency`` workers.

    Several clients because one ``httpx.AsyncClient`` pool with 32 connections becomes the bottleneck itself
    (measured: ~280 req/s with 1 client x 32 vs ~780 req/s with 4 clients x 8 against the same server).
    """
    body = {
        "app_name": "demo",
        "version": "latest",
        "action_name": "echo",
        "payload": '{"n": 1}',
        "async": True,
    }
    latencies: list[float] = []
    errors = 0
    pool = [_client(url, max(1, concurrency // clients)) for _ in range(clients)]
    try:
        for client in pool:
            await client.post("/invocations", json=body)  # warm-up
        deadline = time.perf_counter() + seconds

        async def worker(client: httpx.AsyncClient) -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                response = await client.post("/invocations", json=body)
                latencies.append(time.perf_counter() - start)
                if response.status_code != 202:
                    errors += 1

        cpu0 = cpu_seconds(pid)
        started = time.perf_counter()
        await asyncio.gather(*(worker(pool[i % clients]) for i in range(concurrency)))
        elapsed = time.perf_counter() - started
        cpu = cpu_seconds(pid) - cpu0
    finally:
        for client in pool:
            await client.aclose()
    latencies.sort()
    return {
        "requests": len(latencies),
        "errors": errors,
        "seconds": round(elapsed, 2),
        "creates_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(statistics.median(latencies) * 1000, 2),
        "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 2),
        "server_cpu_cores": round(cpu / elapsed, 2),
    }


async def bench_live(url: str, count: int, concurrency: int) -> tuple[dict[str, Any], list[str]]:
    body = {"app_name": "demo", "version": "latest", "action_name": "slow", "async": True}
    ids: list[str] = []
    async with _client(url, concurrency) as client:
        queue = list(range(count))
        started = time.perf_counter()

        async def worker() -> None:
            while queue:
                queue.pop()
                response = await client.post("/invocations", json=body)
                response.raise_for_status()
                ids.append(response.json()["id"])

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        create_s = time.perf_counter() - started
        stats = (await client.get("/_emulator/stats")).json()
        t0 = time.perf_counter()
        got = await client.get(f"/invocations/{ids[0]}")
        get_ms = (time.perf_counter() - t0) * 1000
        t0 = time.perf_counter()
        listed = await client.get("/invocations", params={"limit": 100, "status": "running"})
        list_ms = (time.perf_counter() - t0) * 1000
    return {
        "requested": count,
        "live": stats["live"],
        "running": stats["by_status"]["running"],
        "create_seconds": round(create_s, 2),
        "get_status": got.status_code,
        "get_ms": round(get_ms, 2),
        "list_status": listed.status_code,
        "list_ms": round(list_ms, 2),
    }, ids


async def bench_streams(url: str, ids: list[str], count: int) -> dict[str, Any]:
    """Open ``count`` SSE streams at once; each must deliver its first (state) event."""
    ready = 0
    failures = 0
    opened = asyncio.Event()
    release = asyncio.Event()
    async with _client(url, count + 10) as client:

        async def follow(inv_id: str) -> None:
            nonlocal ready, failures
            try:
                async with client.stream("GET", f"/invocations/{inv_id}/events") as response:
                    async for line in response.aiter_lines():
                        if line.startswith("data: "):
                            ready += 1
                            if ready == count:
                                opened.set()
                            await release.wait()
                            return
            except httpx.HTTPError:
                failures += 1

        started = time.perf_counter()
        tasks = [asyncio.create_task(follow(ids[i % len(ids)])) for i in range(count)]
        try:
            await asyncio.wait_for(opened.wait(), 120)
        except asyncio.TimeoutError:
            pass
        elapsed = time.perf_counter() - started
        stats = (await client.get("/_emulator/stats")).json()
        release.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "requested": count,
        "ready": ready,
        "failures": failures,
        "open_streams_server": stats["open_streams"],
        "seconds_to_open_all": round(elapsed, 2),
    }


async def bench_retention(url: str, total: int, concurrency: int, clients: int, pid: int) -> dict[str, Any]:
    """Create ``total`` async echo invocations; RSS at each quarter (flat once retention_count is reached)."""
    body = {"app_name": "demo", "version": "latest", "action_name": "echo", "payload": '{"n": 1}', "async": True}
    pool = [_client(url, max(1, concurrency // clients)) for _ in range(clients)]
    checkpoints = [total * q // 4 for q in range(1, 5)]
    rss: list[tuple[int, float]] = []
    remaining = total
    done = 0
    started = time.perf_counter()
    try:

        async def worker(client: httpx.AsyncClient) -> None:
            nonlocal remaining, done
            while remaining > 0:
                remaining -= 1
                response = await client.post("/invocations", json=body)
                response.raise_for_status()
                done += 1
                if checkpoints and done >= checkpoints[0]:
                    rss.append((checkpoints.pop(0), round(rss_mb(pid), 1)))

        await asyncio.gather(*(worker(pool[i % clients]) for i in range(concurrency)))
        stats = (await pool[0].get("/_emulator/stats")).json()
    finally:
        for client in pool:
            await client.aclose()
    return {
        "invocations": total,
        "seconds": round(time.perf_counter() - started, 1),
        "rss_mb_at": rss,
        "retained": stats["retained"],
        "evicted": stats["evicted"],
        "created": stats["created"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of the creates/s phase")
    parser.add_argument("--concurrency", type=int, default=32, help="client concurrency for creates")
    parser.add_argument("--clients", type=int, default=4, help="AsyncClients sharing that concurrency")
    parser.add_argument("--live", type=int, default=1200, help="slow invocations to hold at once")
    parser.add_argument("--streams", type=int, default=1000, help="concurrent SSE streams to open (0 = skip)")
    parser.add_argument("--retention", type=int, default=100_000, help="invocations for the RSS phase (0 = skip)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)

    proc = spawn_emulator(token=TOKEN, heartbeat=30)
    results: dict[str, Any] = {"emulator_pid": proc.pid, "rss_mb_start": round(rss_mb(proc.pid), 1)}
    try:
        results["creates"] = asyncio.run(
            bench_creates(proc.url, args.seconds, args.concurrency, args.clients, proc.pid)
        )
        results["rss_mb_after_creates"] = round(rss_mb(proc.pid), 1)
        proc.client.reset()
        live, ids = asyncio.run(bench_live(proc.url, args.live, args.concurrency))
        results["live"] = live
        results["rss_mb_with_live"] = round(rss_mb(proc.pid), 1)
        if args.streams:
            results["streams"] = asyncio.run(bench_streams(proc.url, ids, args.streams))
            results["rss_mb_with_streams"] = round(rss_mb(proc.pid), 1)
        if args.retention:
            proc.client.reset()
            results["retention"] = asyncio.run(
                bench_retention(proc.url, args.retention, args.concurrency, args.clients, proc.pid)
            )
    finally:
        results["exit_code"] = proc.stop()
    results["targets"] = {
        "creates_per_s>=300": results["creates"]["creates_per_s"] >= 300,
        "live>=1000": results["live"]["live"] >= 1000 and results["live"]["get_status"] == 200,
    }
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        creates, live = results["creates"], results["live"]
        rows = [
            (
                f"creates/s (async echo, c={args.concurrency}, {args.clients} clients)",
                creates["creates_per_s"],
            ),
            ("  emulator CPU (cores) during creates", creates["server_cpu_cores"]),
            ("  requests / errors", f"{creates['requests']} / {creates['errors']}"),
            ("  latency p50 / p99 ms", f"{creates['p50_ms']} / {creates['p99_ms']}"),
            ("live invocations held", f"{live['live']} (requested {live['requested']})"),
            ("  GET /invocations/{id} ms while holding", live["get_ms"]),
            ("  GET /invocations?limit=100 ms", live["list_ms"]),
        ]
        if "streams" in results:
            streams = results["streams"]
            rows += [
                ("open SSE streams (ready/requested)", f"{streams['ready']}/{streams['requested']}"),
                ("  server-side open streams", streams["open_streams_server"]),
                ("  seconds to open all", streams["seconds_to_open_all"]),
            ]
        rows += [
            (
                "RSS MiB start / creates / live",
                f"{results['rss_mb_start']} / {results['rss_mb_after_creates']} / {results['rss_mb_with_live']}",
            ),
        ]
        if "rss_mb_with_streams" in results:
            rows.append(("RSS MiB with streams", results["rss_mb_with_streams"]))
        if "retention" in results:
            kept = results["retention"]
            at = " / ".join(f"{n // 1000}k: {mb}" for n, mb in kept["rss_mb_at"])
            rows += [
                (f"RSS MiB across {kept['invocations']:,} invocations ({kept['seconds']} s)", at),
                ("  retained / evicted", f"{kept['retained']} / {kept['evicted']}"),
            ]
        rows.append(("targets met", ", ".join(f"{k}: {v}" for k, v in results["targets"].items())))
        width = max(len(r[0]) for r in rows)
        for name, value in rows:
            print(f"{name.ljust(width)}  {value}")
    return 0 if all(results["targets"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
