"""Browser leak audit: every way a ``@task.kernel_browser`` task can stop leaves 0 live browsers in the emulator
(each a real Chromium, counted in ``/_emulator/stats``).

* the function raises, and ``execution_timeout`` fires mid-function: ``dag.test()`` in this process;
* the task is killed (SIGTERM to the task's process: Airflow calls ``on_kill``) and the worker dies (SIGKILL to its
  whole process group, Playwright's driver included): ``dag.test()`` in a process of its own
  (``tests/kernel_browser_runner.py``), killed once its browser is up.

After a SIGKILL no code runs: the browser lives until Kernel's ``timeout_seconds`` without a CDP connection end
it (10 s here, the minimum), which is the documented bound. Each test prints how long the browser outlived the
event (``AUDIT ...`` lines, shown with ``-s``); timings are reported, never asserted.
"""

from __future__ import annotations

import datetime
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.airflow_helpers import (
    AF2,
    make_dag,
    run_dag,
    states,
    task,
)
from tests.helpers import wait_until
from tests.kernel_browsers import chromium_running, live_browsers, needs_chromium

pytestmark = [*needs_chromium, pytest.mark.usefixtures("airflow_db")]
RUNNER = Path(__file__).resolve().parent / "kernel_browser_runner.py"
IDLE_TIMEOUT = 10  # Kernel's minimum timeout_seconds


def report(event: str, seconds: float, emulator: Any) -> None:
    ended = emulator.stats()["browser_sessions"]["ended"]
    print(f"\nAUDIT {event}: 0 live browsers {seconds:.1f}s after it (ended: {ended})")


def assert_nothing_left(emulator: Any) -> None:
    assert live_browsers(emulator) == 0
    assert chromium_running(emulator) == 0
    assert emulator.stats()["browsers_live"] == 0


def test_an_exception_in_the_function_deletes_the_browser(kernel_conn_env: Any) -> None:
    with make_dag("audit_raise") as dag:

        @task.kernel_browser(timeout_seconds=600)
        def fails(page: Any) -> None:
            page.set_content("<p>about to fail</p>")
            raise ValueError("the scrape broke")

        fails()

    run = run_dag(dag)
    assert states(run) == {"fails": "failed"}
    assert kernel_conn_env.stats()["browser_sessions"]["ended"] == {"deleted": 1}
    assert_nothing_left(kernel_conn_env)


def test_execution_timeout_deletes_the_browser(kernel_conn_env: Any) -> None:
    with make_dag("audit_timeout") as dag:

        @task.kernel_browser(timeout_seconds=600, execution_timeout=datetime.timedelta(seconds=3))
        def too_slow(page: Any) -> None:
            page.set_content("<p>working</p>")
            time.sleep(120)

        too_slow()

    started = time.monotonic()
    if AF2:  # Airflow 2.11's dag.test() lets the task's timeout out, after marking the task failed
        from airflow.exceptions import AirflowTaskTimeout

        with pytest.raises(AirflowTaskTimeout):
            run_dag(dag)
    else:
        assert states(run_dag(dag)) == {"too_slow": "failed"}
    assert kernel_conn_env.stats()["browser_sessions"]["ended"] == {"deleted": 1}
    assert_nothing_left(kernel_conn_env)
    report("execution_timeout (3 s)", time.monotonic() - started - 3, kernel_conn_env)


@pytest.fixture
def task_process(kernel_conn_env: Any, tmp_path: Path) -> Iterator[Any]:
    """Start the runner in a session of its own; yields ``start() -> (process, session_id)``."""
    started: list[subprocess.Popen[bytes]] = []

    def start() -> tuple[subprocess.Popen[bytes], str]:
        ready = tmp_path / "ready"
        proc = subprocess.Popen(
            [sys.executable, str(RUNNER), str(ready), str(IDLE_TIMEOUT)],
            env=os.environ.copy(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        started.append(proc)
        wait_until(lambda: (ready.exists() and ready.read_text()) or proc.poll() is not None, "the task's browser", 120)
        assert proc.poll() is None, f"the task process exited early ({proc.returncode})"
        assert live_browsers(kernel_conn_env) == 1
        return proc, ready.read_text()

    yield start
    for proc in started:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)


def test_a_kill_deletes_the_browser_through_on_kill(kernel_conn_env: Any, task_process: Any) -> None:
    proc, session_id = task_process()
    os.kill(proc.pid, signal.SIGTERM)  # what Airflow sends a task it stops; the task runner calls on_kill
    killed = time.monotonic()
    wait_until(lambda: live_browsers(kernel_conn_env) == 0, "on_kill to delete the browser", 60)
    report("SIGTERM (kill)", time.monotonic() - killed, kernel_conn_env)
    wait_until(
        lambda: (
            [r["status"] for r in kernel_conn_env.requests(path=f"/browsers/{session_id}", method="DELETE")] == [204]
        ),
        "the DELETE's answer",
    )
    assert kernel_conn_env.stats()["browser_sessions"]["ended"] == {"deleted": 1}
    assert_nothing_left(kernel_conn_env)


def test_a_dead_worker_leaves_the_browser_to_kernels_idle_timeout(kernel_conn_env: Any, task_process: Any) -> None:
    proc, _ = task_process()
    died = time.monotonic()
    os.killpg(proc.pid, signal.SIGKILL)  # the worker dies with Playwright's driver: no code of ours runs
    proc.wait(30)
    assert live_browsers(kernel_conn_env) == 1  # nothing could delete it: the bound is Kernel's timeout
    wait_until(lambda: live_browsers(kernel_conn_env) == 0, "the idle timeout to end the browser", IDLE_TIMEOUT + 30)
    report(f"SIGKILL (worker crash, timeout_seconds={IDLE_TIMEOUT})", time.monotonic() - died, kernel_conn_env)
    assert kernel_conn_env.stats()["browser_sessions"]["ended"] == {"timeout": 1}
    assert_nothing_left(kernel_conn_env)
