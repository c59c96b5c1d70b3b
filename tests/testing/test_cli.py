"""The ``kernel-emulator`` CLI and the subprocess helpers."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from kernel_provider.testing import EmulatorClient, KernelEmulator


def _start(args: list[str]) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("Kernel emulator listening on http://127.0.0.1:"), line
    return proc, line.rsplit(" ", 1)[1].strip()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_cli_module_start_and_signal(tmp_path: Path, signum: int) -> None:
    url_file = tmp_path / "url.txt"
    faults = tmp_path / "faults.json"
    faults.write_text(json.dumps({"rules": [{"route": "GET /apps", "sequence": [{"status": 503}]}]}))
    proc, url = _start(
        [
            sys.executable,
            "-m",
            "kernel_provider.testing",
            "--port",
            "0",
            "--token",
            "cli-token",
            "--faults",
            str(faults),
            "--url-file",
            str(url_file),
            "--heartbeat",
            "5",
            "--quiet",
        ]
    )
    try:
        assert url_file.read_text().strip() == url
        auth = {"Authorization": "Bearer cli-token"}
        assert httpx.get(f"{url}/apps", headers=auth).status_code == 503
        assert httpx.get(f"{url}/apps", headers=auth).status_code == 200
        with EmulatorClient(url) as admin:
            assert admin.stats()["created"] == 0
            assert [r["status"] for r in admin.requests(path="/apps")] == [503, 200]
    finally:
        proc.send_signal(signum)
        assert proc.wait(15) == 0


def test_console_script_exists_and_rejects_bad_heartbeat() -> None:
    script = shutil.which("kernel-emulator", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("package not installed (pip install -e .)")
    result = subprocess.run([script, "--heartbeat", "90"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "heartbeat" in result.stderr
    proc, url = _start([script, "--port", "0"])
    try:
        assert httpx.get(f"{url}/_emulator/health").json()["status"] == "ok"
    finally:
        proc.terminate()
        assert proc.wait(15) == 0


def test_spawn_helper(tmp_path: Path) -> None:
    with KernelEmulator.spawn(token="spawned", org_concurrency=1, faults={"seed": 1, "rules": []}) as proc:
        headers = {"Authorization": "Bearer spawned"}
        body = {"app_name": "demo", "version": "latest", "action_name": "slow", "async": True}
        assert httpx.post(f"{proc.url}/invocations", json=body, headers=headers).status_code == 202
        assert httpx.post(f"{proc.url}/invocations", json=body, headers=headers).status_code == 429
        assert proc.client.stats()["live"] == 1
        assert proc.client.created_count(action="slow") == 1
    assert proc.proc.returncode == 0


def test_factory_spawn_and_conn_env(
    kernel_emulator_factory: Callable[..., Any], kernel_conn_env: KernelEmulator
) -> None:
    import os

    conn = json.loads(os.environ["AIRFLOW_CONN_KERNEL_DEFAULT"])
    assert conn == {"conn_type": "kernel", "host": kernel_conn_env.url, "password": "test-token"}
    proc = kernel_emulator_factory(spawn=True)
    assert proc.client.health()["status"] == "ok"


def test_plugin_and_emulator_do_not_import_airflow() -> None:
    code = (
        "import sys, kernel_provider.testing.pytest_plugin, kernel_provider.testing.server, "
        "kernel_provider.testing.cli; from kernel_provider.testing import KernelEmulator; "
        "KernelEmulator().start().stop(); print('airflow' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "False"
