"""DAG-parse import cost: ``kernel_provider.operators.kernel`` vs the dbt Cloud operator module.

Each import runs in a fresh interpreter that has already imported what every DAG file pays for anyway
(``airflow`` and the task SDK's BaseOperator), so the figure is the module's own added cost. Goal: <= 0.5x dbt.
Run: ``python -m bench.bench_import [--runs 7]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

from bench.common import table

SUBJECTS = {
    "kernel_provider.operators.kernel": "kernel_provider.operators.kernel",
    "airflow.providers.dbt.cloud.operators.dbt": "airflow.providers.dbt.cloud.operators.dbt",
}
PROBE = """
import time, sys
import airflow
from airflow.providers.common.compat.sdk import BaseOperator
before = set(sys.modules)
started = time.perf_counter()
import {module}
elapsed = time.perf_counter() - started
print(elapsed, len(set(sys.modules) - before))
"""


def measure(module: str) -> tuple[float, int]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(module=module)], capture_output=True, text=True, check=True
    ).stdout.split()
    return float(out[-2]), int(out[-1])


def run(runs: int = 7) -> dict[str, dict[str, float]]:
    samples: dict[str, list[tuple[float, int]]] = {name: [] for name in SUBJECTS}
    for index in range(runs):
        order = list(SUBJECTS) if index % 2 == 0 else list(reversed(SUBJECTS))
        for name in order:
            samples[name].append(measure(SUBJECTS[name]))
    return {
        name: {"ms": statistics.median(s[0] for s in values) * 1000, "modules": values[-1][1]}
        for name, values in samples.items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    try:
        result = run(args.runs)
    except subprocess.CalledProcessError as exc:
        print(f"import benchmark failed (is apache-airflow-providers-dbt-cloud installed?): {exc.stderr[-500:]}")
        return 1
    ours = result["kernel_provider.operators.kernel"]["ms"]
    dbt = result["airflow.providers.dbt.cloud.operators.dbt"]["ms"]
    if args.json:
        print(json.dumps({**result, "ratio": ours / dbt}))
        return 0
    print(f"Operator module import cost at DAG parse (median of {args.runs} fresh interpreters)")
    print(table(["module", "ms", "new modules"], [[k, v["ms"], v["modules"]] for k, v in result.items()]))
    print(f"kernel / dbt = {ours / dbt:.2f}x (goal <= 0.5)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
