"""Run every benchmark in turn and print each table: ``python -m bench [--quick] [--only trigger,hook]``.

Results also go to ``bench/results/latest.json`` (gitignored): per benchmark, its result object when the module
exposes one (``LAST_RESULT`` or the return value of its ``run()``), its printed text, exit code and duration.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any

#: (name, module, default argv, --quick argv). Defaults are "quick-ish": a few minutes in all on 2 cores.
BENCHES: list[tuple[str, str, list[str], list[str]]] = [
    ("hook", "bench.bench_hook", [], ["--calls", "200"]),
    ("import", "bench.bench_import", ["--runs", "5"], ["--runs", "3"]),
    ("emulator", "bench.bench_emulator", [], ["--seconds", "2", "--streams", "300"]),
    ("trigger", "bench.bench_trigger", [], ["--quick"]),
    ("worker_slots", "bench.bench_worker_slots", ["--action-seconds", "30"], ["--quick"]),
    ("reconcile", "bench.bench_reconcile", [], ["--runs", "2000", "--rounds", "1"]),
]
RESULTS = Path(__file__).resolve().parent / "results" / "latest.json"


class _Tee(io.TextIOBase):
    def __init__(self, *streams: Any) -> None:
        self.streams = streams

    def write(self, text: str) -> int:
        for stream in self.streams:
            stream.write(text)
        return len(text)

    def flush(self) -> None:
        for stream in self.streams:
            stream.flush()


def run_one(module_name: str, argv: list[str]) -> dict[str, Any]:
    entry: dict[str, Any] = {"module": module_name, "argv": argv}
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        entry.update(skipped=f"not available: {exc}", exit_code=None)
        return entry
    captured: list[Any] = []
    original_run = getattr(module, "run", None)
    if callable(original_run):  # keep the structured result of modules that only print it

        def recording_run(*args: Any, **kwargs: Any) -> Any:
            value = original_run(*args, **kwargs)
            captured.append(value)
            return value

        setattr(module, "run", recording_run)  # noqa: B010
    text = io.StringIO()
    started = time.perf_counter()
    try:
        with contextlib.redirect_stdout(_Tee(sys.stdout, text)):
            entry["exit_code"] = module.main(argv)
    except SystemExit as exc:
        entry["exit_code"] = exc.code
    except Exception as exc:
        traceback.print_exc()
        entry.update(exit_code=1, error=f"{type(exc).__name__}: {exc}")
    finally:
        if callable(original_run):
            setattr(module, "run", original_run)  # noqa: B010
    entry["seconds"] = round(time.perf_counter() - started, 1)
    entry["output"] = text.getvalue()
    result = getattr(module, "LAST_RESULT", None)
    if result is None and captured:
        result = captured[-1]
    if result is not None:
        entry["result"] = result
    return entry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sizes for every benchmark")
    parser.add_argument("--only", help=f"comma-separated subset of {', '.join(b[0] for b in BENCHES)}")
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"results JSON (default {RESULTS})")
    args = parser.parse_args(argv)
    wanted = {n.strip() for n in args.only.split(",")} if args.only else {b[0] for b in BENCHES}
    unknown = wanted - {b[0] for b in BENCHES}
    if unknown:
        parser.error(f"unknown benchmarks: {sorted(unknown)}")
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    report: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "quick": args.quick,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "benchmarks": {},
    }
    failures = 0
    for name, module_name, default_argv, quick_argv in BENCHES:
        if name not in wanted:
            continue
        bench_argv = quick_argv if args.quick else default_argv
        print(f"\n=== {name}: python -m {module_name} {' '.join(bench_argv)}".rstrip(), flush=True)
        entry = run_one(module_name, bench_argv)
        if entry.get("skipped"):
            print(f"(skipped: {entry['skipped']})")
        elif entry.get("exit_code") not in (0, None):
            failures += 1
        report["benchmarks"][name] = entry
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=2, default=str))  # after each: partial runs are kept
    print(f"\nresults: {args.output}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
