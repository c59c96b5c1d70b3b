"""``make airflow``: a local Airflow (what ``airflow standalone`` runs) wired to the Kernel emulator, to click through.

Starts the emulator with the demo app, points ``kernel_default`` at it (its invocation links open the emulator's
own view of each invocation), enables the connection Test button, loads the example DAGs and runs the scheduler,
dag-processor, triggerer and api-server (what ``airflow standalone`` runs) in the foreground. Ctrl-C stops all.
Not part of the tests; the Airflow home is ``.airflow/local``. Run from the repository root:
``python -m tests.harness.local_airflow [--port 8080] [--host 127.0.0.1]``.

Everything listens on 127.0.0.1 only: the UI has no login and shows the Kernel connection's key to whoever
reaches it. The scheduler and triggerer run with ``--skip-serve-logs`` (their log servers would bind 0.0.0.0;
on one machine the api-server reads the log files directly). To open the UI up deliberately, put a login in
front of it first (``AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS=False``, or FAB auth) and pass ``--host``.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

from kernel_provider.testing import airflow_connection
from tests.harness.cluster import service_argv
from tests.harness.processes import BIN, ServiceProcess, stop_all, watch

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_DAGS = ROOT / "example_dags"


def main(argv: list[str] | None = None) -> int:
    """Start the emulator and Airflow, print where they are, and run until Ctrl-C / SIGTERM."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, default=ROOT / ".airflow" / "local")
    parser.add_argument("--port", type=int, default=8080, help="api-server port (default 8080)")
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="api-server address (default 127.0.0.1; anything else exposes a UI with no login, see above)",
    )
    args = parser.parse_args(argv)
    # SIGTERM (e.g. from `timeout` or a supervisor) must still run the clean-up below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    home: Path = args.home
    home.mkdir(parents=True, exist_ok=True)
    token = "local-" + secrets.token_hex(8)
    url_file = home / "emulator.url"
    url_file.unlink(missing_ok=True)
    emulator = subprocess.Popen(
        [
            str(BIN / "kernel-emulator"),
            "--port",
            "0",
            "--token",
            token,
            "--app",
            str(EXAMPLE_DAGS / "demo_app" / "app.py"),
            "--url-file",
            str(url_file),
            "--quiet",
        ],
        start_new_session=True,
    )
    try:
        for _ in range(300):
            if url_file.exists() and url_file.read_text().strip():
                break
            if emulator.poll() is not None:
                print("The Kernel emulator did not start.", file=sys.stderr)
                return 1
            time.sleep(0.1)
        url = url_file.read_text().strip()
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
        env.update(
            {
                "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
                "AIRFLOW_HOME": str(home),
                "AIRFLOW__CORE__DAGS_FOLDER": str(EXAMPLE_DAGS),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__TEST_CONNECTION": "Enabled",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
                "AIRFLOW__API__PORT": str(args.port),
                "AIRFLOW__API__HOST": args.host,
                # Shared by every service of this run (the task tokens the api-server signs must verify).
                "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
                "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(24),
                "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{args.port}",
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{args.port}/execution/",
                "AIRFLOW__WEBSERVER__WEB_SERVER_PORT": str(args.port),
                "AIRFLOW_CONN_KERNEL_DEFAULT": airflow_connection(url, token, dashboard_url=f"{url}/_emulator"),
            }
        )
        subprocess.run([str(BIN / "airflow"), "db", "migrate"], env=env, check=True, stdout=subprocess.DEVNULL)
        subprocess.run(
            [str(BIN / "airflow"), "pools", "set", "kernel", "4", "Kernel concurrency"],
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        print(f"Kernel emulator: {url} (token {token}; sign in at {url}/_emulator/login to open invocation links)")
        print(
            f"Airflow UI:      http://{args.host}:{args.port}  (no login needed, so bound to {args.host} only; "
            "Ctrl-C stops everything)"
        )
        print(
            "Try: unpause and trigger example_kernel_async_sensor, watch the sensor defer and stream logs, "
            "open the 'Kernel invocation' link, or add a Kernel connection under Admin > Connections."
        )
        logs = home / "service-logs"
        logs.mkdir(exist_ok=True)
        services = []
        try:
            for name in ("scheduler", "dag-processor", "triggerer", "api-server"):
                argv_ = service_argv(name, host=args.host, port=args.port)
                services.append(ServiceProcess(name, argv_, logs / f"{name}.log", env))
            print(f"Service logs:    {logs}")
            return watch(services)
        except KeyboardInterrupt:
            return 130
        finally:
            stop_all(services)
    finally:
        _stop(emulator)
        url_file.unlink(missing_ok=True)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


if __name__ == "__main__":
    sys.exit(main())
