"""The ERROR-line audit's reader (``tests/harness/error_audit.py``): which lines are ERROR lines, in each format Airflow
writes, and that each line is read once."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.harness.error_audit import ErrorAudit, error_line, task_failed

ERRORS = [
    "[2026-01-01T00:00:00.000+0000] {taskinstance.py:3311} ERROR - Task failed with exception",
    "[2026-01-01T00:00:00.000+0000] {scheduler_job_runner.py:12} CRITICAL - Exception when executing",
    "2026-12-06T01:02:34.186940Z [error    ] Exception in trigger [airflow.jobs.triggerer_job_runner]",
    "\x1b[2m2026-12-06T01:02:34Z\x1b[0m [\x1b[31m\x1b[1merror    \x1b[0m] coloured [x]",
    "ERROR:airflow.task:something broke",
    "ERROR:    Exception in ASGI application",
    "[2026-01-01 00:00:00 +0000] [42] [ERROR] Worker timeout",
    "[2026-01-01 00:00:00,123: ERROR/MainProcess] Task handler raised error",
    json.dumps({"timestamp": "2026-01-01T00:00:00Z", "level": "error", "event": "Task failed", "logger": "task"}),
]
NOT_ERRORS = [
    "[2026-01-01T00:00:00.000+0000] {kernel.py:10} INFO - [kernel abc] ERROR - printed by the action",
    "2026-12-06T01:02:34.186940Z [info     ] [kernel abc] ERROR: scraped text [kernel_provider.triggers]",
    "2026-12-06T01:02:34.186940Z [warning  ] an ERROR word in a warning [x]",
    json.dumps({"level": "info", "event": "ERROR in the text"}),
    "Traceback (most recent call last):",
    "    raise RuntimeError('ERROR')",
    "{not json ERROR",
    "",
]


@pytest.mark.parametrize("line", ERRORS)
def test_error_lines_are_recognised_in_every_format(line: str) -> None:
    assert error_line(line) is not None


@pytest.mark.parametrize("line", NOT_ERRORS)
def test_other_lines_are_not_error_lines(line: str) -> None:
    assert error_line(line) is None


def test_each_line_is_read_once_and_declared_patterns_are_allowed(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "scheduler.1.log"
    log.parent.mkdir()
    log.write_text(ERRORS[0] + "\nINFO line\n" + ERRORS[2][:30])  # the last line is still being written
    audit = ErrorAudit("unit", [tmp_path / "logs"])
    assert audit.check() == [f"scheduler.1.log: {ERRORS[0]}"]
    with open(log, "a") as handle:
        handle.write(ERRORS[2][30:] + "\n")
    assert audit.check() == [f"scheduler.1.log: {ERRORS[2]}"]
    with open(log, "a") as handle:
        handle.write(ERRORS[2] + "\n" + "[2026] {x.py:1} ERROR - Variable not found\n")
    assert audit.check([r"Exception in trigger"]) == []
    assert audit.check() == []
    assert (audit.lines_read, audit.errors_seen, audit.errors_expected) == (5, 4, 2)


def test_a_declared_task_failure_matches_only_its_exception_type() -> None:
    detail = [{"exc_type": "KernelInvocationFailed", "exc_value": "Kernel invocation x failed"}]
    af3 = error_line(json.dumps({"level": "error", "event": "Task failed with exception", "error_detail": detail}))
    af2 = error_line("[2026-01-01T00:00:00.000+0000] {taskinstance.py:3311} ERROR - Task failed with exception")
    assert af3 is not None and af2 is not None
    assert re.search(task_failed("KernelInvocationFailed"), af3) and re.search(task_failed(), af3)
    assert not re.search(task_failed("KernelReconcileError"), af3)
    assert re.search(task_failed("KernelReconcileError"), af2)  # 2.x names the type on a later line only
    runner = "[2026-01-01T00:00:00.000+0000] {standard_task_runner.py:124} ERROR - Failed to execute job 8 for task x"
    assert re.search(task_failed(), runner)
