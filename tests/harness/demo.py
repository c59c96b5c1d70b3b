"""``make demo``: run every example DAG against a local Kernel emulator and print what each task returned.

Usage, from the repository root, with the Python of the virtualenv where the provider and Airflow are installed::

    python -m tests.harness.demo            # all example DAGs
    python -m tests.harness.demo --dag example_kernel_chain --dag example_kernel_sync

What it does, in a throw-away Airflow home (``.airflow/demo`` in the repository unless ``--home`` is given; it is
wiped at start, and every inherited ``AIRFLOW*`` environment variable is dropped so a real Airflow installation is
never touched):

1. starts ``kernel-emulator`` on a free port with the demo app (``example_dags/demo_app/app.py``);
2. ``airflow db migrate`` and ``airflow pools set kernel ...`` (the pool the fan-out example uses);
3. points the ``kernel_default`` connection at the emulator (``AIRFLOW_CONN_KERNEL_DEFAULT``);
4. ``airflow dags test <dag_id>`` for each example DAG, one after the other, output in
   ``<home>/logs-demo/<dag_id>.log``;
5. reads each run's state and each task's state and return value back from the metadata DB and prints them.

Every process it starts is stopped at the end, on errors and on Ctrl-C. The exit status is 0 only when every
DAG run succeeded; for a failed one the tail of its log is printed.
"""

from __future__ import annotations

import argparse
import json
import operator
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from kernel_provider.testing import airflow_connection
from tests.harness.processes import BIN, tail

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_DAGS = ROOT / "example_dags"
APP_FILE = EXAMPLE_DAGS / "demo_app" / "app.py"
DEFAULT_HOME = ROOT / ".airflow" / "demo"
MARKER = ".kernel-demo-home"
RESULT_PREFIX = "KERNEL_DEMO_RESULT "

#: The example DAGs, in the order they run.
DAG_IDS = (
    "example_kernel_sync",
    "example_kernel_scheduled",
    "example_kernel_async_sensor",
    "example_kernel_chain",
    "example_kernel_fan_out",
    "example_kernel_taskflow",
    "example_kernel_asset_producer",  # before its consumer: the consumer reads the event the producer recorded
    "example_kernel_asset_consumer",
)
POOL = ("kernel", "4", "Kernel concurrent invocations (size it to your Kernel plan)")
#: Example DAGs the demo leaves out, and why (printed, so nothing is skipped silently).
SKIPPED = {
    "example_kernel_browser": "it drives a real Chromium against a web page; "
    "`pytest tests/test_example_dags.py -k browser` runs it",
    "example_kernel_files": "it downloads a file in a real Chromium from a web page; "
    "`pytest tests/test_example_dags.py -k files` runs it",
}
#: Printed at the start, so the demo says how it runs a DAG that `airflow dags test` cannot run as a scheduler would.
NOTES = {
    "example_kernel_asset_consumer": "scheduled on the producer's asset; `airflow dags test` starts no asset-triggered "
    "run, so it reads the asset's latest event (the one the producer has just recorded); under a scheduler "
    "(`make airflow`) that event starts the consumer by itself",
}
#: Printed at the end of a run: where to go from here.
NEXT_STEPS = (
    "make airflow            the same DAGs in Airflow's UI (scheduler, triggerer, api-server) on the emulator",
    "example_dags/           the DAGs just run, to copy; example_dags/demo_app/app.py is the Kernel app they call",
    "docs/quickstart.md      your own Kernel app on the emulator: kernel-emulator --app my_app.py",
    "docs/connection.md      the connection for Kernel's cloud (API key, project, timeouts)",
)


class DemoError(Exception):
    """A set-up step failed; the message says which and where its log is."""


class Processes:
    """The child processes started by the demo; :meth:`stop_all` ends every one still running."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, args: Sequence[str], env: dict[str, str], log: IO[bytes]) -> subprocess.Popen[bytes]:
        """Start a child in a session of its own, logging to ``log``."""
        # A new session: Ctrl-C reaches only this script, which then stops the children itself.
        proc = subprocess.Popen(
            list(args), env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
        self.started.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
        """SIGTERM the child's process group, then SIGKILL it if it outlives ``timeout``."""
        if proc.poll() is not None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)  # the group this script created for the child (pgid == its pid)
            except ProcessLookupError:
                return
            try:
                proc.wait(timeout)
                return
            except subprocess.TimeoutExpired:
                continue

    def stop_all(self) -> None:
        """Stop every child still running, the newest first."""
        for proc in reversed(self.started):
            self.stop(proc)


_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Failed|Timeout|Deferred)\w*: .+")


def _last_exception(path: Path) -> str | None:
    """The last ``SomeError: message`` line of a log: usually why the run failed."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return None
    found = [line for line in lines if _EXCEPTION_LINE.match(line)]
    return found[-1][:600] if found else None


def _child_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(EXAMPLE_DAGS),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            "PATH": str(BIN) + os.pathsep + os.environ.get("PATH", ""),
            "PYTHONDONTWRITEBYTECODE": "1",
        }
    )
    return env


def _fresh_home(home: Path) -> None:
    if home.exists():
        if home.resolve() != DEFAULT_HOME.resolve() and not (home / MARKER).exists():
            raise DemoError(f"{home} exists and was not created by this demo; pass an empty or new --home.")
        shutil.rmtree(home)
    home.mkdir(parents=True)
    (home / MARKER).write_text("Created by tests/harness/demo.py (make demo); deleted at its next start.\n")


def _run_step(
    procs: Processes, name: str, args: Sequence[str], env: dict[str, str], logs: Path, timeout: float = 120.0
) -> None:
    log_path = logs / f"{name}.log"
    with log_path.open("wb") as log:
        proc = procs.start(args, env, log)
        try:
            rc = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            procs.stop(proc)
            raise DemoError(f"{name} did not finish within {timeout:.0f} s; see {log_path}") from None
    if rc != 0:
        raise DemoError(f"{name} failed (exit status {rc}); last lines of {log_path}:\n{tail(log_path, width=400)}")


def _start_emulator(procs: Processes, env: dict[str, str], token: str, home: Path, logs: Path) -> str:
    url_file = home / "emulator.url"
    exe = BIN / "kernel-emulator"
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", "kernel_provider.testing"]
    command += [
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--token",
        token,
        "--app",
        str(APP_FILE),
        "--url-file",
        str(url_file),
        "--heartbeat",
        "5",
    ]
    log_path = logs / "emulator.log"
    log = log_path.open("wb")
    try:
        proc = procs.start(command, env, log)
    finally:
        log.close()  # the child keeps its own descriptor
    deadline = time.monotonic() + 30
    while not url_file.exists():
        if proc.poll() is not None:
            raise DemoError(f"the Kernel emulator exited (status {proc.returncode}):\n{tail(log_path, width=400)}")
        if time.monotonic() > deadline:
            raise DemoError(f"the Kernel emulator did not start within 30 s; see {log_path}")
        time.sleep(0.1)
    return url_file.read_text().strip()


def _collect(dag_ids: Sequence[str], env: dict[str, str], logs: Path, procs: Processes) -> dict[str, Any]:
    """Read the runs back in a child process (so this script never imports Airflow)."""
    log_path = logs / "collect.log"
    with log_path.open("wb") as log:
        # This module again, as a module: its imports need the repository root on the path, wherever the demo runs.
        pythonpath = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
        command = [sys.executable, "-m", "tests.harness.demo", "--collect", *dag_ids]
        proc = procs.start(command, {**env, "PYTHONPATH": pythonpath}, log)
        try:
            rc = proc.wait(120)
        except subprocess.TimeoutExpired:
            procs.stop(proc)
            rc = -1
    for line in log_path.read_text(errors="replace").splitlines():
        if line.startswith(RESULT_PREFIX):
            result: dict[str, Any] = json.loads(line[len(RESULT_PREFIX) :])
            return result
    raise DemoError(f"reading the DAG runs back failed (exit status {rc}):\n{tail(log_path, width=400)}")


def collect_main(dag_ids: Sequence[str]) -> int:
    """``--collect``: print each DAG's latest run, its tasks' states and return values, as one JSON line."""
    from airflow import __version__ as airflow_version
    from airflow.models import DagRun, TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    try:  # Airflow 3: the ORM row holds the serialized value
        from airflow.models.xcom import XComModel as XCom

        decode: Callable[[Any], Any] = XCom.deserialize_value
    except ImportError:  # Airflow 2: the ORM row deserializes its value when loaded
        from airflow.models.xcom import XCom  # type: ignore[no-redef]

        decode = operator.attrgetter("value")

    def plain(state: Any) -> str | None:
        return None if state is None else str(getattr(state, "value", state))

    runs: dict[str, Any] = {}
    with create_session() as session:
        for dag_id in dag_ids:
            run = session.scalars(
                select(DagRun).where(DagRun.dag_id == dag_id).order_by(DagRun.id.desc()).limit(1)
            ).first()
            if run is None:
                runs[dag_id] = None
                continue
            xcoms = session.scalars(
                select(XCom).where(XCom.dag_id == dag_id, XCom.run_id == run.run_id, XCom.key == "return_value")
            ).all()
            values = {(x.task_id, x.map_index): decode(x) for x in xcoms}
            tis = session.scalars(
                select(TaskInstance).where(TaskInstance.dag_id == dag_id, TaskInstance.run_id == run.run_id)
            ).all()

            def finished(ti: Any) -> str:  # run order: `dags test` does not always record start_date
                when = ti.end_date or ti.start_date
                return when.isoformat() if when else "9999"

            first: dict[str, str] = {}  # a task's place in the run order; its mapped instances stay together, by index
            for ti in tis:
                first[ti.task_id] = min(first.get(ti.task_id, "9999"), finished(ti))
            tis = sorted(tis, key=lambda ti: (first[ti.task_id], ti.task_id, ti.map_index))
            runs[dag_id] = {
                "run_id": run.run_id,
                "state": plain(run.state),
                "tasks": [
                    {
                        "task_id": ti.task_id,
                        "map_index": ti.map_index,
                        "state": plain(ti.state),
                        "output": values.get((ti.task_id, ti.map_index)),
                    }
                    for ti in tis
                ],
            }
    print(RESULT_PREFIX + json.dumps({"airflow_version": airflow_version, "runs": runs}, default=str), flush=True)
    return 0


def _short(value: Any, width: int) -> str:
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"), default=str)
    return text if len(text) <= width else text[: max(width - 3, 0)] + "..."


def _print_summary(results: dict[str, Any], outcomes: dict[str, tuple[int, float]]) -> None:
    width = max(shutil.get_terminal_size((120, 20)).columns, 80)
    runs = results.get("runs", {})
    for dag_id, (rc, seconds) in outcomes.items():
        run = runs.get(dag_id) if rc != -2 else None
        state = run["state"] if run else ("not run" if rc == -2 else "no run")
        print(f"{dag_id:<30} {state:<9} {seconds:5.1f} s")
        for t in (run or {}).get("tasks", []):
            name = t["task_id"] + (f"[{t['map_index']}]" if t["map_index"] >= 0 else "")
            prefix = f"  {name:<28} {t['state'] or 'none':<9} "
            shown = "-" if t["output"] is None else _short(t["output"], width - len(prefix) - 1)
            print(prefix + shown)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo (or, with ``--collect``, read the runs back); returns the exit status."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--home",
        type=Path,
        default=DEFAULT_HOME,
        help=f"the demo's AIRFLOW_HOME, wiped at start (default {DEFAULT_HOME})",
    )
    parser.add_argument("--dag", action="append", choices=DAG_IDS, help="run only this DAG (repeatable)")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds allowed per DAG (default 180)")
    parser.add_argument("--collect", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.collect:
        return collect_main(args.collect)

    if not (BIN / "airflow").exists():
        print(
            f"error: no 'airflow' next to {sys.executable}; run this script with the Python of the virtualenv "
            "where Airflow and the provider are installed.",
            file=sys.stderr,
        )
        return 2

    def on_sigterm(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    dag_ids = [d for d in DAG_IDS if not args.dag or d in args.dag]
    home: Path = args.home.resolve()
    procs = Processes()
    started = time.monotonic()
    failed: list[str] = []
    outcomes: dict[str, tuple[int, float]] = {}
    try:
        _fresh_home(home)
        logs = home / "logs-demo"
        logs.mkdir()
        env = _child_env(home)
        token = "sk_demo_" + secrets.token_hex(12)
        print(f"Kernel demo: Airflow home {home}")
        for dag_id, why in SKIPPED.items():
            print(f"  skipping {dag_id}: {why}")
        for dag_id, note in NOTES.items():
            if dag_id in dag_ids:
                print(f"  note: {dag_id} is {note}")
        url = _start_emulator(procs, env, token, home, logs)
        print(f"  Kernel emulator on {url} (app demo-shop from {APP_FILE.relative_to(ROOT)})")
        airflow = str(BIN / "airflow")
        _run_step(procs, "db-migrate", [airflow, "db", "migrate"], env, logs)
        _run_step(procs, "pool", [airflow, "pools", "set", *POOL], env, logs)
        print(f"  metadata DB migrated, pool '{POOL[0]}' created")
        # dashboard_url: the emulator serves each invocation's JSON at /_emulator/invocations/{id} (to a browser
        # signed in at /_emulator/login with the token), so the task's "Kernel invocation" link leads somewhere too.
        env["AIRFLOW_CONN_KERNEL_DEFAULT"] = airflow_connection(url, token, dashboard_url=f"{url}/_emulator")
        emulator = procs.started[0]
        for dag_id in dag_ids:
            if emulator.poll() is not None:
                print(
                    f"\nerror: the Kernel emulator stopped (status {emulator.returncode}); skipping the rest. "
                    f"Last lines of its log:\n{tail(logs / 'emulator.log', width=400)}",
                    file=sys.stderr,
                )
                break
            print(f"  airflow dags test {dag_id} ...", end=" ", flush=True)
            t0 = time.monotonic()
            with (logs / f"{dag_id}.log").open("wb") as log:
                proc = procs.start([airflow, "dags", "test", dag_id], env, log)
                try:
                    rc = proc.wait(args.timeout)
                except subprocess.TimeoutExpired:
                    procs.stop(proc)
                    rc = -1
            seconds = time.monotonic() - t0
            outcomes[dag_id] = (rc, seconds)
            if rc == 0:
                print(f"done ({seconds:.1f} s)")
            else:
                print("TIMED OUT" if rc == -1 else f"FAILED (exit status {rc})")
                failed.append(dag_id)
        results = _collect(dag_ids, env, logs, procs)
    except KeyboardInterrupt:
        print("\nInterrupted; stopping the processes the demo started.", file=sys.stderr)
        return 130
    except DemoError as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        return 1
    finally:
        procs.stop_all()

    for dag_id in dag_ids:
        run = results["runs"].get(dag_id) if dag_id in outcomes else None
        if (run is None or run["state"] != "success") and dag_id not in failed:
            failed.append(dag_id)
        outcomes.setdefault(dag_id, (-2, 0.0))
    print(f"\nResults (Airflow {results['airflow_version']}):\n")
    _print_summary(results, outcomes)
    total = time.monotonic() - started
    for dag_id in failed:
        log_path = logs / f"{dag_id}.log"
        if not log_path.exists():
            continue
        print(f"\n--- {dag_id} failed; last lines of {log_path}:\n{tail(log_path, width=400)}", file=sys.stderr)
        cause = _last_exception(log_path)
        if cause:
            print(f"--- {dag_id}: {cause}", file=sys.stderr)
    status = f"{len(dag_ids) - len(failed)}/{len(dag_ids)} DAG runs succeeded"
    print(f"\n{status} in {total:.0f} s. Logs: {logs}")
    print("\nWhat next:")
    for line in NEXT_STEPS:
        print(f"  {line}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
