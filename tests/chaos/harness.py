"""Chaos run: N async invocations through the provider's real code paths while the emulator misbehaves.

Run: ``python -m tests.chaos.harness [--invocations 1000] [--seed 7] [--concurrency 32] [--json]``.

What it does (seeded: the workload - actions, payloads, how each invocation is waited for - and the fault
plan's random draws come from ``--seed``):

1. One Kernel emulator in a subprocess, with a fault plan (see :func:`fault_plan`) injecting at the same time:
   5xx on reads (some with ``x-should-retry: false``), 429 with ``Retry-After`` / ``retry-after-ms``, connections
   dropped before and after the server acted (creates included), 5xx after a create was recorded, SSE streams
   cut before the terminal state, silent streams, ``error`` events, slow responses.
2. Per invocation, with a unique payload and an action whose outcome is known in advance (``demo`` app:
   ``echo``, ``sleep``, ``logs`` succeed, ``fail`` fails):

   * **submit**: ``KernelInvokeOperator(..., wait_for_completion=False).execute(context)`` on a worker thread,
     with a minimal context (a TI stand-in and a dict-backed ``task_state_store``). When it raises, it is run
     again with the same store, as an Airflow task retry would (up to ``SUBMIT_TRIES`` tries).
   * **wait**, one third each: ``KernelInvocationTrigger(mode="stream").wait()``, ``mode="poll"``, both
     gathered in this process's one event loop, or ``KernelInvocationSensor.poke`` in a loop on a worker
     thread. An ``error`` event or a raised poke is retried like a task retry (up to ``WAIT_TRIES``).
3. Afterwards the emulator's own records are the truth: how often each payload was created
   (``created_by_key``) and each invocation's final state.

Counted: duplicates (a payload created more than once), lost (created but the client never reached a final
state; or never created although the client did not report a failure), wrong (client's final state or
output differs from the emulator's, or the emulator's from the action's known outcome; or the submit returned
something other than the invocation id), ambiguous creates (reported / reconciled by listing / failed loudly),
every warning and error the provider logged, by class. Exit status 1 unless duplicates, lost and wrong are 0
and every invocation reached a final state on the client.

The hooks get a faster backoff than the defaults (:func:`chaos_retry_policy`) so the run takes a minute, not ten;
every other code path and bound is the provider's own. The exact interleaving of requests (and so which
request draws which fault) depends on thread scheduling; the counts of the three zeros do not.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import contextvars
import json
import logging
import os
import random
import re
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

CONN_ID = "kernel_chaos"
SUBMIT_TRIES = 4
WAIT_TRIES = 4
WAIT_DEADLINE = 180.0  # seconds a trigger may wait before it reports a timeout (counted as lost)
POKE_INTERVAL = 0.2
MODES = ("stream", "poll", "sensor")
ACTIONS = ("echo", "sleep", "logs", "fail")


def fault_plan(seed: int) -> dict[str, Any]:
    """The faults injected during the run. Rules are tried in order; the first that fires wins."""
    get_one = "GET /invocations/{id}"
    events = "GET /invocations/{id}/events"
    return {
        "seed": seed,
        "rules": [
            # creates: refusals, drops before/after the server acted, 5xx after the invocation was recorded
            {
                "name": "create-429",
                "route": "POST /invocations",
                "rate": 0.04,
                "fault": {"status": 429, "retry_after": 1},
            },
            {
                "name": "create-429-ms",
                "route": "POST /invocations",
                "rate": 0.02,
                "fault": {"status": 429, "retry_after": 1, "retry_after_ms": 150},
            },
            {"name": "create-drop-before", "route": "POST /invocations", "rate": 0.02, "fault": {"drop": "before"}},
            {"name": "create-drop-after", "route": "POST /invocations", "rate": 0.02, "fault": {"drop": "after"}},
            {
                "name": "create-5xx-after",
                "route": "POST /invocations",
                "rate": 0.03,
                "fault": {"status": 503, "after": True},
            },
            {
                "name": "create-5xx-no-retry",
                "route": "POST /invocations",
                "rate": 0.01,
                "fault": {"status": 500, "after": True, "should_retry": False},
            },
            {"name": "create-slow", "route": "POST /invocations", "rate": 0.03, "fault": {"delay": 0.4}},
            # event streams: cut before the terminal state, silent, an error event, slow to open
            {"name": "sse-cut-0", "route": events, "rate": 0.05, "fault": {"cut_after_events": 0}},
            {"name": "sse-cut-1", "route": events, "rate": 0.10, "fault": {"cut_after_events": 1}},
            {"name": "sse-silent", "route": events, "rate": 0.04, "fault": {"silent": True}},
            {
                "name": "sse-error-event",
                "route": events,
                "rate": 0.03,
                "fault": {
                    "error_event": {"code": "internal_error", "message": "stream hiccup"},
                    "error_then_close": True,
                },
            },
            # every read (GET one, list, events open): 10% 5xx, 5% 429, 2% drops, some slow
            {"name": "read-5xx", "route": "GET *", "rate": 0.08, "fault": {"status": 503}},
            {
                "name": "read-5xx-no-retry",
                "route": "GET *",
                "rate": 0.02,
                "fault": {"status": 500, "should_retry": False},
            },
            {"name": "read-429", "route": "GET *", "rate": 0.03, "fault": {"status": 429, "retry_after": 1}},
            {
                "name": "read-429-ms",
                "route": "GET *",
                "rate": 0.02,
                "fault": {"status": 429, "retry_after": 1, "retry_after_ms": 100},
            },
            {"name": "read-drop-before", "route": "GET *", "rate": 0.01, "fault": {"drop": "before"}},
            {"name": "read-drop-after", "route": get_one, "rate": 0.01, "fault": {"drop": "after"}},
            {"name": "read-slow", "route": "GET *", "rate": 0.03, "fault": {"delay": 0.3}},
        ],
    }


# --------------------------------------------------------------------------------------------- workload
@dataclass
class Job:
    index: int
    action: str
    payload: dict[str, Any]
    expected_status: str
    expected_result: Any
    mode: str
    task_id: str = ""
    invocation_id: str | None = None
    returned: Any = None
    submit_tries: int = 0
    submit_error: str | None = None
    client_status: str | None = None
    client_result: Any = None
    wait_tries: int = 0
    wait_error: str | None = None
    failed_loudly: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def payload_text(self) -> str:
        return json.dumps(self.payload, separators=(",", ":"))


def make_jobs(count: int, seed: int) -> list[Job]:
    rng = random.Random(seed)
    run_tag = f"{seed}-{rng.randrange(16**8):08x}"
    jobs = []
    for index in range(count):
        action = rng.choices(ACTIONS, weights=(3, 3, 2, 2))[0]
        key = f"chaos-{run_tag}-{index}"
        if action == "echo":
            payload: dict[str, Any] = {"key": key, "n": rng.randrange(1000)}
            expected: tuple[str, Any] = ("succeeded", payload)
        elif action == "sleep":
            result = {"key": key, "slept": True}
            payload = {"seconds": round(rng.uniform(0.1, 3.0), 2), "result": result}
            expected = ("succeeded", result)
        elif action == "logs":
            lines = rng.randrange(1, 6)
            payload = {"lines": lines, "interval": round(rng.uniform(0.0, 0.3), 2), "key": key}
            expected = ("succeeded", {"lines": lines})
        else:
            payload = {"message": f"planned failure {key}"}
            expected = ("failed", None)
        jobs.append(Job(index, action, payload, expected[0], expected[1], MODES[index % 3], f"invoke_{index}"))
    rng.shuffle(jobs)
    return jobs


# --------------------------------------------------------------------------------------------- log capture
_current_job: contextvars.ContextVar[Job | None] = contextvars.ContextVar("chaos_job", default=None)

#: (regex on the message, class label); the first match names the class.
LOG_CLASSES: tuple[tuple[str, str], ...] = (
    (r"may have been created", "ambiguous create reported"),
    (r"created by the failed request; using it", "ambiguous create reconciled"),
    (r"create of .* got no answer; looking for what it may have started", "pending create: looked up on retry"),
    (r"create started invocation .*; continuing it", "pending create reconciled on retry"),
    (r"create started nothing; invoking now", "pending create: none found, invoked on retry"),
    (r"previous try's invocation .* failed", "re-invoked after a failed run"),
    (r"failed \(attempt \d+\): Kernel API error 429", "retried: HTTP 429"),
    (r"failed \(attempt \d+\): Kernel API error 5\d\d", "retried: HTTP 5xx"),
    (r"failed \(attempt \d+\): .*(Error|Timeout)", "retried: connection dropped/timed out"),
    (r"Checking Kernel invocation .* failed", "trigger: status check failed (counted)"),
    (r"kept breaking; polling", "trigger: stream kept breaking, polling"),
    (r"Could not check invocation", "sensor: poke could not check (retried next poke)"),
    (r"Waiting for Kernel invocation .* failed", "trigger: wait failed with error event"),
    (r"Ignoring an event that is not JSON", "stream: non-JSON event ignored"),
    (r"Event stream of .* ended before the invocation finished", "stream ended early: checked, resumed"),
    (r"unknown invocation status", "unknown status"),
)
INFO_CLASSES = frozenset(
    {
        "pending create: none found, invoked on retry",
        "re-invoked after a failed run",
        "stream ended early: checked, resumed",
    }
)
_COMPILED = tuple((re.compile(p), label) for p, label in LOG_CLASSES)


def classify(message: str) -> str:
    for pattern, label in _COMPILED:
        if pattern.search(message):
            return label
    text = re.sub(r"[0-9a-z]{24}", "<id>", message)
    return "other: " + re.sub(r"\d+", "N", text)[:70]


class LogTally:
    """Counts the provider's warnings and errors by class (and notes them on the job that logged them)."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()
        self.lock = threading.Lock()

    def add(self, level: str, message: str) -> None:
        if "cannot be called outside" in message:
            return  # Airflow says so about calling execute() directly; not the provider's
        label = classify(message)
        if level == "info" and label not in INFO_CLASSES:  # only a few decisions are of interest at INFO
            return
        with self.lock:
            self.counts[(level, label)] += 1
        job = _current_job.get()
        if job is not None:
            job.notes.append(label)


class _Handler(logging.Handler):
    def __init__(self, tally: LogTally) -> None:
        super().__init__(logging.INFO)
        self.tally = tally

    def emit(self, record: logging.LogRecord) -> None:
        if "kernel_provider" not in record.name and "kernel" not in record.name.lower():
            return
        try:
            self.tally.add(record.levelname.lower(), record.getMessage())
        except Exception:
            pass


@contextlib.contextmanager
def capture_logs(tally: LogTally) -> Iterator[None]:
    """Route every log record (stdlib and, on Airflow 3, structlog) into ``tally``; print nothing meanwhile."""
    root = logging.getLogger()
    saved_root = (root.handlers[:], root.level)
    quiet = {name: logging.getLogger(name) for name in ("airflow.task", "httpx", "httpcore")}
    saved_quiet = {name: (lg.handlers[:], lg.level, lg.propagate) for name, lg in quiet.items()}
    handler = _Handler(tally)
    root.handlers = [handler]
    root.setLevel(logging.INFO)
    for name, lg in quiet.items():
        lg.handlers = []
        lg.propagate = name == "airflow.task"
        if name != "airflow.task":
            lg.setLevel(logging.WARNING)
    structlog_cfg = None
    try:
        import structlog

        structlog_cfg = structlog.get_config()

        def capture(logger: Any, method: str, event: Any) -> Any:
            if method in ("info", "warning", "warn", "error", "exception", "critical"):
                level = method if method in ("info", "warning") else "warning" if method == "warn" else "error"
                tally.add(level, str(event.get("event", "")))
            raise structlog.DropEvent

        structlog.configure(processors=[capture, *structlog_cfg["processors"]])
    except ImportError:
        pass
    try:
        yield
    finally:
        root.handlers, level = saved_root
        root.setLevel(level)
        for name, lg in quiet.items():
            lg.handlers, lg.level, lg.propagate = saved_quiet[name]
        if structlog_cfg is not None:
            import structlog

            structlog.configure(processors=structlog_cfg["processors"])


# --------------------------------------------------------------------------------------------- Airflow stand-ins
from tests.standins import DictStateStore, FakeTI  # noqa: E402  (the shared stand-ins of the test suite)


def chaos_retry_policy() -> Any:
    from kernel_provider.client.retry import RetryPolicy

    return RetryPolicy(
        max_attempts=6, max_elapsed=60, backoff_initial=0.1, backoff_max=1.0, retry_after_cap=5, rate_limit_budget=120
    )


def _hook() -> Any:
    from kernel_provider.hooks.kernel import KernelHook

    return KernelHook(kernel_conn_id=CONN_ID, retry_policy=chaos_retry_policy())


# --------------------------------------------------------------------------------------------- the three steps
def submit(job: Job) -> None:
    """The operator's execute, retried like an Airflow task with retries (same task_state_store)."""
    from kernel_provider.exceptions import KernelAmbiguousCreateError
    from kernel_provider.links import XCOM_INVOCATION_ID
    from kernel_provider.operators.kernel import KernelInvokeOperator

    _current_job.set(job)
    thread_ready_for_execute()
    store = DictStateStore()
    ti = FakeTI(job.task_id)
    for attempt in range(1, SUBMIT_TRIES + 1):
        job.submit_tries = attempt
        ti.try_number = attempt
        operator = KernelInvokeOperator(
            task_id=job.task_id,
            app_name="demo",
            action_name=job.action,
            payload=job.payload,
            invoke_async=True,
            async_timeout_seconds=300,
            wait_for_completion=False,
            kernel_conn_id=CONN_ID,
            reconcile_token=True,
        )
        operator.__dict__["hook"] = _hook()  # the cached_property, with the chaos backoff
        try:
            job.returned = operator.execute({"ti": ti, "task_state_store": store})
        except Exception as exc:
            if _caused_by(exc, KernelAmbiguousCreateError):
                job.failed_loudly += 1
            job.submit_error = f"{type(exc).__name__}: {exc}"
            time.sleep(0.2 * attempt)
            continue
        job.submit_error = None
        job.invocation_id = ti.xcom.get(XCOM_INVOCATION_ID)
        return


def thread_ready_for_execute() -> None:
    """Airflow 2.11 keeps the execute() safeguard's state in a thread-local set up on the main thread only."""
    try:
        from airflow.models.baseoperator import ExecutorSafeguard  # type: ignore[attr-defined]
    except ImportError:
        return
    sentinel = getattr(ExecutorSafeguard, "_sentinel", None)
    if sentinel is not None and not hasattr(sentinel, "callers"):
        sentinel.callers = {}


def _caused_by(exc: BaseException | None, kind: type) -> bool:
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, kind):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


async def wait_trigger(job: Job) -> None:
    """Trigger wait (stream or poll); an ``error`` event is retried like a task retry that re-defers."""
    from kernel_provider.triggers.kernel import KernelInvocationTrigger

    _current_job.set(job)
    assert job.invocation_id is not None
    for attempt in range(1, WAIT_TRIES + 1):
        job.wait_tries = attempt
        trigger = KernelInvocationTrigger(
            invocation_id=job.invocation_id,
            kernel_conn_id=CONN_ID,
            end_time=time.time() + WAIT_DEADLINE,
            poll_interval=0.5,
            mode=job.mode,
            stream_logs=True,
            silence_timeout=2.0,
            max_stream_failures=5,
        )
        trigger._hook = _hook()  # type: ignore[attr-defined]
        event = await trigger.wait()
        if event["status"] in ("succeeded", "failed"):
            if event["invocation_id"] != job.invocation_id:
                job.wait_error = f"event for another invocation: {event}"
            job.client_status = event["status"]
            return
        job.wait_error = f"{event['status']}: {event.get('message')}"
        if event["status"] == "timeout":
            return
        await asyncio.sleep(0.2 * attempt)


def wait_sensor(job: Job) -> None:
    """``poke`` until done; a raised poke (other than the invocation's own failure) is retried like a task."""
    from kernel_provider.exceptions import KernelInvocationFailed
    from kernel_provider.sensors.kernel import KernelInvocationSensor

    _current_job.set(job)
    assert job.invocation_id is not None
    context = {"ti": FakeTI(f"wait_{job.index}")}
    deadline = time.monotonic() + WAIT_DEADLINE
    for attempt in range(1, WAIT_TRIES + 1):
        job.wait_tries = attempt
        sensor = KernelInvocationSensor(
            task_id=f"wait_{job.index}",
            invocation_id=job.invocation_id,
            kernel_conn_id=CONN_ID,
            poke_interval=POKE_INTERVAL,
            timeout=WAIT_DEADLINE,
        )
        sensor.__dict__["hook"] = _hook()
        try:
            while time.monotonic() < deadline:
                result = sensor.poke(context)
                done = getattr(result, "is_done", result)
                if done:
                    job.client_status = "succeeded"
                    job.client_result = getattr(result, "xcom_value", None)
                    return
                time.sleep(POKE_INTERVAL)
            job.wait_error = "sensor timed out"
            return
        except KernelInvocationFailed:
            job.client_status = "failed"
            return
        except Exception as exc:
            job.wait_error = f"{type(exc).__name__}: {exc}"
            time.sleep(0.2 * attempt)


async def drive(job: Job, pool: ThreadPoolExecutor) -> None:
    loop = asyncio.get_running_loop()
    ctx = contextvars.copy_context()
    await loop.run_in_executor(pool, ctx.run, submit, job)
    if job.submit_error is not None or not isinstance(job.invocation_id, str):
        return
    if job.mode == "sensor":
        ctx = contextvars.copy_context()
        await loop.run_in_executor(pool, ctx.run, wait_sensor, job)
    else:
        await wait_trigger(job)


async def run_all(jobs: list[Job], concurrency: int) -> None:
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="chaos") as pool:
        await asyncio.gather(*(drive(job, pool) for job in jobs))
    from kernel_provider.hooks.kernel import close_shared_clients

    await close_shared_clients()


# --------------------------------------------------------------------------------------------- verdict
@dataclass
class Result:
    rows: list[tuple[str, Any]]
    duplicates: int
    lost: int
    wrong: int
    details: dict[str, list[str]]

    unfinished: int = 0

    @property
    def ok(self) -> bool:
        """The three zeros, and every submit that gave up reported it (none may be left unfinished)."""
        return self.duplicates == 0 and self.lost == 0 and self.wrong == 0 and self.unfinished == 0


def verdict(
    jobs: list[Job],
    stats: dict[str, Any],
    truth: list[dict[str, Any]],
    tally: LogTally,
    wall: float,
    faults: dict[str, Any] | None = None,
) -> Result:
    created_by_payload: Counter[str] = Counter()
    for entry in stats["created_by_key"]:
        if entry["app_name"] == "demo" and entry["payload"] is not None:
            created_by_payload[_untokened_text(entry["payload"])] += entry["count"]
    by_payload: dict[str, list[dict[str, Any]]] = {}
    for inv in truth:
        by_payload.setdefault(_untokened_text(inv.get("payload") or ""), []).append(inv)

    details: dict[str, list[str]] = {"duplicates": [], "lost": [], "wrong": []}
    loud_nothing = 0
    for job in jobs:
        text = job.payload_text
        created = created_by_payload[text]
        tag = f"#{job.index} {job.action}/{job.mode} {text[:60]}"
        if created > 1:
            details["duplicates"].append(f"{tag}: created {created} times; notes={job.notes}")
        if created == 0:
            if job.submit_error is None:
                details["lost"].append(f"{tag}: never created, yet the submit reported no error")
            else:
                loud_nothing += 1
            continue
        if job.submit_error is not None or job.invocation_id is None:
            details["lost"].append(f"{tag}: created, but the submit gave up: {job.submit_error}")
            continue
        if job.client_status is None:
            details["lost"].append(
                f"{tag}: {job.invocation_id} never reached a final state on the client: {job.wait_error}"
            )
            continue
        emulated = {i["id"]: i for i in by_payload.get(text, [])}
        real = emulated.get(job.invocation_id)
        problems = []
        if job.returned != job.invocation_id:
            problems.append(f"execute returned {job.returned!r:.80}, not the invocation id")
        if real is None:
            problems.append(f"client followed {job.invocation_id}, which is not an invocation of this payload")
        else:
            if real["status"] != job.client_status:
                problems.append(f"client says {job.client_status}, emulator says {real['status']}")
            if real["status"] != job.expected_status:
                problems.append(f"emulator says {real['status']}, the action should have {job.expected_status}")
        if (
            job.mode == "sensor"
            and job.client_status == "succeeded"
            and _untokened(job.client_result) != job.expected_result
        ):
            problems.append(f"sensor returned {job.client_result!r:.80}, expected {job.expected_result!r:.80}")
        if problems:
            details["wrong"].append(f"{tag}: " + "; ".join(problems))

    notes = Counter(label for job in jobs for label in job.notes)
    duplicates, lost, wrong = (len(details[k]) for k in ("duplicates", "lost", "wrong"))
    modes = Counter(job.mode for job in jobs)
    rows: list[tuple[str, Any]] = [
        (
            "invocations attempted",
            f"{len(jobs)} (stream {modes['stream']}, poll {modes['poll']}, sensor {modes['sensor']})",
        ),
        ("created (emulator count)", stats["created"]),
        ("duplicates (a payload created > 1)", duplicates),
        ("lost", lost),
        ("wrong final state", wrong),
        ("ambiguous creates: reported", notes["ambiguous create reported"]),
        (
            "ambiguous creates: reconciled by listing",
            notes["ambiguous create reconciled"] + notes["pending create reconciled on retry"],
        ),
        ("ambiguous creates: failed loudly (then retried)", sum(j.failed_loudly for j in jobs)),
        ("ambiguous creates: none found on retry, invoked then", notes["pending create: none found, invoked on retry"]),
        ("re-invoked after a failed run", notes["re-invoked after a failed run"]),
        ("submits failed loudly, nothing created", loud_nothing),
        ("submit task retries", sum(max(0, j.submit_tries - 1) for j in jobs)),
        ("wait task retries", sum(max(0, j.wait_tries - 1) for j in jobs)),
        (
            "final states (succeeded/failed)",
            f"{sum(j.client_status == 'succeeded' for j in jobs)}/{sum(j.client_status == 'failed' for j in jobs)}",
        ),
    ]
    fired = [(rule.get("name") or rule["route"], rule.get("fired", 0)) for rule in (faults or {}).get("rules", [])]
    if fired:
        rows.append(("faults injected (emulator)", sum(n for _, n in fired)))
        rows.extend((f"  {name}", n) for name, n in fired)
    for (level, label), count in sorted(tally.counts.items(), key=lambda kv: (kv[0][0] == "info", -kv[1], kv[0])):
        rows.append((f"{level}: {label}", count))
    rows.append(("wall time", f"{wall:.1f} s"))
    unfinished = sum(job.client_status is None for job in jobs)
    return Result(rows, duplicates, lost, wrong, details, unfinished)


def _untokened(result: Any) -> Any:
    """The echo action returns its payload, which carries the reconcile token: compare without it."""
    from kernel_provider.client.reconcile import TOKEN_KEY

    if isinstance(result, dict) and TOKEN_KEY in result:
        return {k: v for k, v in result.items() if k != TOKEN_KEY}
    return result


def _untokened_text(payload: str) -> str:
    """A created payload as the job wrote it: the reconcile token the operator added, removed."""
    try:
        data = json.loads(payload)
    except (TypeError, ValueError):
        return payload
    stripped = _untokened(data)
    return json.dumps(stripped, separators=(",", ":")) if stripped is not data else payload


def format_table(rows: list[tuple[str, Any]]) -> str:
    width = max(len(name) for name, _ in rows)
    vwidth = max(len(str(value)) for _, value in rows)
    lines = [f"{'metric'.ljust(width)}  value", f"{'-' * width}  {'-' * max(5, vwidth)}"]
    lines += [f"{name.ljust(width)}  {value}" for name, value in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- entry points
def run(invocations: int = 1000, seed: int = 7, concurrency: int = 32) -> Result:
    """One chaos run against a fresh emulator subprocess; returns the verdict (nothing printed)."""
    # Import Airflow and the provider first: importing Airflow configures logging, which must happen before
    # the capture below takes over the handlers.
    import kernel_provider.operators.kernel
    import kernel_provider.sensors.kernel
    import kernel_provider.triggers.kernel  # noqa: F401
    from kernel_provider.testing import airflow_connection
    from kernel_provider.testing.server import spawn_emulator

    jobs = make_jobs(invocations, seed)
    tally = LogTally()
    proc = spawn_emulator(seed=seed, heartbeat=0.5)
    saved_env = os.environ.get(f"AIRFLOW_CONN_{CONN_ID.upper()}")
    os.environ[f"AIRFLOW_CONN_{CONN_ID.upper()}"] = airflow_connection(proc.url, proc.token)
    try:
        # Load the connection once on this thread first: Airflow 2 configures its ORM mappers (importing every
        # model) on the first Connection object, and doing that from 32 threads at once can deadlock on imports.
        _hook().settings  # noqa: B018
        proc.client.set_faults(fault_plan(seed))
        started = time.perf_counter()
        with capture_logs(tally):
            asyncio.run(run_all(jobs, concurrency))
        wall = time.perf_counter() - started
        faults = proc.client.faults()
        proc.client.clear_faults()
        stats = proc.client.stats()
        truth = proc.client.invocations()
    finally:
        proc.stop()
        if saved_env is None:
            os.environ.pop(f"AIRFLOW_CONN_{CONN_ID.upper()}", None)
        else:
            os.environ[f"AIRFLOW_CONN_{CONN_ID.upper()}"] = saved_env
    return verdict(jobs, stats, truth, tally, wall, faults)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos.harness", description=__doc__.split("\n")[0])
    parser.add_argument("--invocations", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--concurrency", type=int, default=32, help="worker threads for submits and pokes")
    parser.add_argument("--json", action="store_true", help="print the table as JSON")
    args = parser.parse_args(argv)
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # the admin calls around the run
    result = run(args.invocations, args.seed, args.concurrency)
    if args.json:
        print(json.dumps({"rows": result.rows, "details": result.details, "ok": result.ok}, indent=2, default=str))
    else:
        print(f"Chaos run: {args.invocations} invocations, seed {args.seed}")
        print(format_table(result.rows))
        for kind, items in result.details.items():
            for item in items[:20]:
                print(f"{kind.upper()}: {item}")
        if result.unfinished:
            print(f"FAIL: {result.unfinished} invocation(s) have no final state (reported failures, not lost)")
        print("PASS: 0 duplicates, 0 lost, 0 wrong" if result.ok else "FAIL")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
