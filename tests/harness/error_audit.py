"""The ERROR-line audit of the e2e and cluster harnesses: a normal run logs no ERROR line, on any Airflow.

After each test, every log line the Airflow services wrote since the previous check is read (service logs:
scheduler, triggerer(s), dag-processor, api-server, Celery workers, ``db migrate``, the 2.11 DB helper; and every
file under ``$AIRFLOW_HOME/logs``: task attempts, trigger logs, dag-processor logs) and the ERROR/CRITICAL lines
are picked out, in each format Airflow writes:

- Airflow 2.x and stdlib logging: ``[<time>] {file.py:12} ERROR - ...``, ``ERROR:logger:...``, uvicorn's
  ``ERROR:    ...``, gunicorn's ``[<time>] [pid] [ERROR] ...``;
- Airflow 3.x structlog on a console: ``<time> [error    ] ...``;
- Airflow 3.x task, trigger and dag-processor logs: JSON lines with ``"level": "error"``.

A test fails with the offending lines unless each one matches :data:`KNOWN_ERROR_LINES` (documented, harmless,
not the provider's) or a pattern the test declared, with ``@pytest.mark.expect_error_lines(r"regex", ...)`` or
the ``expect_error_lines(r"regex", ...)`` fixture. A declared pattern stays declared for the rest of the module's
(cluster: session's) services, since a shared service may log a test's consequence after the test has ended.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.harness.processes import AIRFLOW_VERSION

#: (pattern, why it is harmless). Searched in the ERROR line (the JSON form: ``level event logger``). Some are
#: known on one Airflow minor only, and declared for that one.
KNOWN_ERROR_LINES: tuple[tuple[str, str], ...] = (
    (
        r"Variable not found|Variable \S+ does not exist",
        "Airflow 3.0-3.2: a retry's or clear's look-up of the run record (a Variable) that is gone logs ERROR in "
        "the task supervisor (docs/reliability.md, 'How a retry is told from a clear'); 3.3's state store does "
        "not.",
    ),
) + (
    (
        (
            r"DAG '\S+' for task instance .* not found in serialized_dag table",
            "Airflow 3.0 only: the scheduler logs this on every failure an executor reports for a task, before it has "
            "even looked the DAG up (the log call sits in front of the check); 3.1 fixed it.",
        ),
        (
            r"ERROR - uhoh$|reported that the task instance .* finished with state failed, but the task instance's "
            r"state attribute is queued",
            "Airflow 3.0 only: a LocalExecutor worker can start a task before the scheduler's move to 'queued' is "
            "committed; the API refuses the start ('Cannot start Task Instance in invalid state'), the executor "
            "logs 'uhoh' and the scheduler queues the task again. The provider's code has not run yet.",
        ),
    )
    if AIRFLOW_VERSION[:2] == (3, 0)
    else ()
)


#: What Airflow logs when a task fails on purpose (the test's point): ``expect_error_lines(task_failed("Type"))``.
def task_failed(exc_type: str = r"\w+") -> str:
    """The ERROR lines of a task that failed with ``exc_type`` (Airflow 3's JSON line; 2.x logs the type on later
    lines, so there its two lines, the task's and the task runner's, are matched whatever the type), or that the
    triggerer failed with it (``end_in_triggerer``, Airflow 3.3+: the trigger's own line)."""
    return (
        rf"Task failed with exception(: {exc_type}\b|\s*$|\s\[)|ERROR - Failed to execute job \d+ for task "
        rf"|The task fails in the triggerer: {exc_type}\b"
    )


#: Airflow 2.x logs a DAG run that ends failed at ERROR (3.x at INFO): declared by a test whose run fails on purpose.
RUN_FAILED = r"ERROR - Marking run <DagRun .*> failed"


#: Airflow 2.x, when a deferred try resumes after its ``execution_timeout`` has already passed (the trigger's
#: deadline event came first, and on a loaded machine the resume is queued late): the task's timeout alarm fires at
#: once and its task log says so at ERROR. The task fails with a timeout either way; the trigger has already
#: cancelled the run.
TIMED_OUT_ON_RESUME_AF2 = r"ERROR - Process timed out, PID"


#: What the scheduler logs when a test SIGKILLs a worker (its task has no heartbeat, then the executor reports it).
WORKER_KILLED = (
    r"Detected a task instance without a heartbeat",
    r"finished with state failed, but the task instance's state attribute is running",
)

#: Two triggerers running one trigger at once. Airflow gives a trigger to another triggerer when its own misses
#: heartbeats, and after a long stall of the whole machine (17-21 s seen in CI) both run it until the first one's
#: next pass cancels it there. Both save the wait's log position, and Airflow's XCom set (a delete, then an insert)
#: refuses one of two concurrent writes of a key with these lines; the other write stands, and the trigger logs the
#: refused one as a warning. Only the cluster suite has two triggerers.
TWO_TRIGGERERS_ONE_XCOM = (r"statement: INSERT INTO xcom \(", r"API server error .*Unique constraint violation")

#: What Airflow 3 logs when a person clears a task that is still running on a worker: the API server has moved the
#: try to the history table, so the worker's supervisor is told to stop and its last reports find no task instance.
RUNNING_TASK_CLEARED = (
    r"TaskInstance not in live table but archived in history",
    r"TaskInstance was previously cleared and archived in history",  # 3.2's wording of the same
    r"Task Instance not found",
    r"Server indicated the task shouldn't be running anymore",
    r"API server error",
    r"Recovery retry of terminal-state API call failed",
    r"Failed to report terminal task state to supervisor",
    r"Task killed!",
)
#: What Airflow 2 logs when a person clears a task that is still running on a worker: the task gets SIGTERM.
RUNNING_TASK_CLEARED_AF2 = (r"ERROR - Received SIGTERM\. Terminating subprocesses", r"ERROR - Stacktrace:")

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_ERROR_FORMATS = (
    re.compile(r"^\S+\s+\[\s*(?:error|critical|fatal|exception)\s*\]", re.I),  # structlog console
    re.compile(r"^\[[^\]]*\]\s*\{[^}]*\}\s*(?:ERROR|CRITICAL)\s+-"),  # Airflow 2 / stdlib with Airflow's format
    re.compile(r"^(?:ERROR|CRITICAL|FATAL)(?::|\s)"),  # stdlib default format, uvicorn
    re.compile(r"^\[[^\]]*\]\s*\[\d+\]\s*\[(?:ERROR|CRITICAL)\]"),  # gunicorn
    re.compile(r"^\S+[ T]\S+\s+(?:ERROR|CRITICAL)\s"),  # "<date> <time> ERROR ..." (Celery, plain formatters)
    re.compile(r"^\[\S+ \S+: (?:ERROR|CRITICAL)/"),  # Celery's worker format "[<time>: ERROR/MainProcess]"
)
_JSON_ERROR_LEVELS = frozenset({"error", "critical", "fatal", "exception"})


def error_line(line: str) -> str | None:
    """The ERROR/CRITICAL line ``line`` is, as text to report and match (None when it is not one)."""
    text = _ANSI.sub("", line).strip()
    if not text:
        return None
    if text.startswith("{"):
        try:
            record = json.loads(text)
        except ValueError:
            record = None
        if isinstance(record, dict):
            level = str(record.get("level") or record.get("levelname") or "").lower()
            if level not in _JSON_ERROR_LEVELS:
                return None
            text = f"{level} {record.get('event') or record.get('message') or ''}"
            details = record.get("error_detail")
            if isinstance(details, list) and details and isinstance(details[-1], dict):
                text += f": {details[-1].get('exc_type')}: {details[-1].get('exc_value')}"
            return f"{text} [{record.get('logger', '')}]"
    return text if any(pattern.search(text) for pattern in _ERROR_FORMATS) else None


@dataclass
class ErrorAudit:
    """Reads the log files under some folders incrementally and keeps count of what it read."""

    suite: str
    folders: list[Path]
    #: Patterns declared by tests so far (kept: see the module docstring).
    allowed: list[str] = field(default_factory=list)
    #: Log files of servers that are not Airflow's (the cluster's PostgreSQL and Redis), by name prefix.
    not_airflow: tuple[str, ...] = ("postgres", "redis")
    offsets: dict[Path, int] = field(default_factory=dict)
    lines_read: int = 0
    errors_seen: int = 0
    errors_expected: int = 0

    def _files(self) -> Iterable[Path]:
        for folder in self.folders:
            if folder.is_dir():
                yield from sorted(
                    p
                    for p in folder.rglob("*")
                    if p.is_file() and p.suffix in (".log", ".json", "") and not p.name.startswith(self.not_airflow)
                )

    def new_error_lines(self) -> list[tuple[str, str]]:
        """(file name, ERROR line) of every complete line written since the last call."""
        found: list[tuple[str, str]] = []
        for path in self._files():
            start = self.offsets.get(path, 0)
            try:
                with open(path, "rb") as handle:
                    handle.seek(start)
                    data = handle.read()
            except OSError:
                continue
            end = data.rfind(b"\n") + 1  # a line still being written is read next time
            if end <= 0:
                continue
            self.offsets[path] = start + end
            for raw in data[:end].decode("utf-8", "replace").splitlines():
                self.lines_read += 1
                line = error_line(raw)
                if line is not None:
                    found.append((path.name, line))
        return found

    def check(self, declared: Iterable[str] = ()) -> list[str]:
        """The new ERROR lines that nothing allows (``declared`` joins the allowed patterns for good)."""
        self.allowed.extend(p for p in declared if p not in self.allowed)
        patterns = [re.compile(p) for p, _ in KNOWN_ERROR_LINES] + [re.compile(p) for p in self.allowed]
        unexpected = []
        for name, line in self.new_error_lines():
            self.errors_seen += 1
            if any(p.search(line) for p in patterns):
                self.errors_expected += 1
            else:
                unexpected.append(f"{name}: {line[:1000]}")
        return unexpected

    def summary(self) -> str:
        """How much was read and found, for the test summary."""
        return (
            f"{self.suite}: {self.lines_read} log lines read from {len(self.offsets)} files, "
            f"{self.errors_seen} ERROR lines ({self.errors_expected} expected)"
        )


#: Every audit started in this session, one per harness (the terminal summary says how much each read).
AUDITS: list[ErrorAudit] = []


def failure_text(unexpected: list[str]) -> str:
    """The message of a test that logged ERROR lines it did not declare."""
    shown = "\n".join(unexpected[:40]) + (f"\n... and {len(unexpected) - 40} more" if len(unexpected) > 40 else "")
    return (
        f"{len(unexpected)} unexpected ERROR line(s) in the Airflow logs (a normal run logs none; a test that "
        f"provokes one declares it with @pytest.mark.expect_error_lines(r'...')):\n{shown}"
    )


def audit_error_lines(item: pytest.Item, audit: ErrorAudit) -> None:
    """Fail ``item`` on the ERROR lines written since the last check that nothing allows (a test that already
    failed is not failed twice; its lines are consumed all the same)."""
    declared = [str(p) for marker in item.iter_markers("expect_error_lines") for p in marker.args]
    declared += item.__dict__.get("declared_error_lines", [])
    unexpected = audit.check(declared)
    if unexpected and not item.__dict__.get("e2e_call_failed"):
        pytest.fail(failure_text(unexpected), pytrace=False)
