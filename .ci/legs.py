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
    waiting = list(targets)
    running: dict[str, tuple[subprocess.Popen[bytes], float, Path]] = {}
    results: list[tuple[str, int, float, float, list[str]]] = []
    while running or waiting:
        while waiting and (jobs <= 0 or len(running) < jobs):
            target = waiting.pop(0)
            running[target] = _start(target, niceness[target])
        time.sleep(1.0)
        for target, (proc, began, log) in list(running.items()):
            # wait4, not poll(): it also gives the CPU time of the leg and of every process it waited for.
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
    cpu_total = sum(result[3] for result in results)
    print(f"\n==> legs: {len(results)} in {total / 60:.1f} min wall, {cpu_total / 60:.1f} CPU min")
    width = max(len(target) for target, *_ in results)
    for target, code, wall, cpu, summaries in sorted(results, key=lambda r: targets.index(r[0])):
        verdict = "ok  " if code == 0 else f"FAIL({code})"
        figures = f"{wall / 60:5.1f} min  {cpu / 60:5.1f} CPU min"
        print(f"    {target:<{width}}  {verdict}  {figures}  {' | '.join(summaries) or '-'}")
    return 0 if all(code == 0 for _, code, *_ in results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
