"""Run make targets ("legs") side by side and report each one's wall time and result.

Usage: ``python .ci/legs.py [-j N] TARGET[@NICE] ...`` (``make test`` calls it): at most N legs at once (default:
all), started in the order given; ``@NICE`` runs a leg at that niceness, so that the longest leg, which decides
the wall time, gets the CPU first when the legs compete for it. Each leg is ``make TARGET`` in its own
process with its output in ``test-artifacts/legs/TARGET.log``; a leg's whole output is printed when it ends, so
the CI log reads leg by leg, never interleaved. The exit status is non-zero if any leg failed.

Why side by side: the legs wait far more than they compute (Airflow services starting, Kernel's own floors, the
browser), so on CI's two cores they overlap well; see docs/development.md for the figures.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOGS = ROOT / "test-artifacts" / "legs"
SUMMARY = re.compile(r"^=+ (.*(passed|failed|error|skipped|deselected).*) in [0-9.]+s.*=+$")


def _start(target: str, nice: int) -> tuple[subprocess.Popen[bytes], float, Path]:
    log = LOGS / f"{target}.log"
    command = ["make", "--no-print-directory", target]
    if nice:
        command = ["nice", "-n", str(nice), *command]
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    print(f"==> leg {target} started (log: {log.relative_to(ROOT)})", flush=True)
    return proc, time.monotonic(), log


def _cpu_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine so far (/proc/stat; zeros where there is none)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def main(argv: list[str]) -> int:
    jobs = 0
    if argv[:1] == ["-j"] and len(argv) > 1:
        jobs, argv = int(argv[1]), argv[2:]
    niceness = {target: int(nice or 0) for target, _, nice in (arg.partition("@") for arg in argv)}
    targets = list(niceness)
    if not targets:
        print(__doc__)
        return 2
    LOGS.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    busy_start, total_start = _cpu_ticks()
    samples: list[float] = []  # the machine's busy fraction, second by second
    last = (busy_start, total_start)
    waiting = list(targets)
    running: dict[str, tuple[subprocess.Popen[bytes], float, Path]] = {}
    results: list[tuple[str, int, float, float, list[str]]] = []
    while running or waiting:
        while waiting and (jobs <= 0 or len(running) < jobs):
            target = waiting.pop(0)
            running[target] = _start(target, niceness[target])
        time.sleep(1.0)
        now = _cpu_ticks()
        if now[1] > last[1]:
            samples.append((now[0] - last[0]) / (now[1] - last[1]))
        last = now
        for target, (proc, began, log) in list(running.items()):
            # wait4, not poll(): it also gives the CPU time of the leg and of every process it waited for (a
            # process left to init, such as a killed server's child, is not counted: a lower bound).
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid == 0:
                continue
            proc.returncode = os.waitstatus_to_exitcode(status)
            del running[target]
            wall = time.monotonic() - began
            cpu = usage.ru_utime + usage.ru_stime
            text = log.read_text(errors="replace")
            print(
                f"\n==> leg {target}: exit {proc.returncode} after {wall / 60:.1f} min, {cpu / 60:.1f} CPU min",
                flush=True,
            )
            sys.stdout.write(text)
            sys.stdout.flush()
            summaries = [m.group(1) for line in text.splitlines() if (m := SUMMARY.match(line.strip()))]
            results.append((target, proc.returncode or 0, wall, cpu, summaries))
    total = time.monotonic() - started
    busy_end, total_end = _cpu_ticks()
    cores = os.cpu_count() or 1
    machine = (busy_end - busy_start) / max(total_end - total_start, 1)
    saturated = sum(1 for fraction in samples if fraction >= 0.95) / 60
    print(f"\n==> legs: {len(results)} in {total / 60:.1f} min wall")
    print(
        f"    the machine's {cores} cores were {machine:.0%} busy ({machine * cores * total / 60:.1f} CPU min), "
        f"all of them for {saturated:.1f} min"
    )
    width = max(len(target) for target, *_ in results)
    for target, code, wall, cpu, summaries in sorted(results, key=lambda r: targets.index(r[0])):
        verdict = "ok  " if code == 0 else f"FAIL({code})"
        figures = f"{wall / 60:5.1f} min  {cpu / 60:5.1f} CPU min"
        print(f"    {target:<{width}}  {verdict}  {figures}  {' | '.join(summaries) or '-'}")
    return 0 if all(code == 0 for _, code, *_ in results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
