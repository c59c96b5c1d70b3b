"""Shared benchmark plumbing: an emulator in its own process, timing, and a small table printer."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from kernel_provider.testing import airflow_connection
from kernel_provider.testing.server import EmulatorProcess, spawn_emulator


@contextmanager
def emulator(**kwargs: Any) -> Iterator[EmulatorProcess]:
    """An emulator in a subprocess (so it does not share the GIL with the client being measured)."""
    proc = spawn_emulator(**kwargs)
    try:
        os.environ["AIRFLOW_CONN_KERNEL_DEFAULT"] = airflow_connection(proc.url, proc.token)
        yield proc
    finally:
        proc.stop()


def timed_rounds(
    subjects: dict[str, Callable[[], None]], calls: int, rounds: int = 5
) -> dict[str, tuple[float, float]]:
    """Run each subject ``calls`` times in total, interleaved over ``rounds`` so drift hits all alike.

    Returns (wall seconds, client CPU seconds) per call, each the median of the rounds. Client CPU is this
    process's own time: the cost of the client library, without the server's share of the round trip.
    """
    per_round = max(1, calls // rounds)
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in subjects}
    for index in range(rounds):
        names = list(subjects) if index % 2 == 0 else list(reversed(subjects))
        for name in names:
            fn = subjects[name]
            wall, cpu = time.perf_counter(), time.process_time()
            for _ in range(per_round):
                fn()
            samples[name].append(((time.perf_counter() - wall) / per_round, (time.process_time() - cpu) / per_round))
    return {
        name: (statistics.median(v[0] for v in values), statistics.median(v[1] for v in values))
        for name, values in samples.items()
    }


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)
