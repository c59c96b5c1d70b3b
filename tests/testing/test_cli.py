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
        with EmulatorClient(url, "cli-token") as admin:
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
        assert httpx.get(f"{url}/_emulator/health").status_code == 401
        with EmulatorClient(url) as admin:  # the default token, on loopback
            assert admin.health()["status"] == "ok"
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


# ------------------------------------------------------------------------------------------ one config object
def _flags(parser: Any) -> set[str]:
    return {opt for action in parser._actions for opt in action.option_strings}


def test_every_config_field_is_a_cli_flag() -> None:
    import dataclasses

    from kernel_provider.testing.cli import build_parser
    from kernel_provider.testing.config import EmulatorConfig, _flag

    parser = build_parser()
    for f in dataclasses.fields(EmulatorConfig):
        assert _flag(f) in _flags(parser), f.name
        assert f.metadata.get("help"), f"{f.name} has no help text"
    assert "--payload-limit" in parser.format_help() and "(default: 4500000)" in parser.format_help()


def test_a_new_field_becomes_a_flag_without_other_edits() -> None:
    import dataclasses

    from kernel_provider.testing.config import EmulatorConfig, build_config_parser

    @dataclasses.dataclass
    class Extended(EmulatorConfig):
        frobnicate: int = dataclasses.field(default=3, metadata={"help": "frobs per second"})
        colours: tuple[str, ...] = dataclasses.field(default=(), metadata={"help": "x", "flag": "--colour"})

    parser = build_config_parser(cls=Extended)
    assert {"--frobnicate", "--colour", "--org-concurrency"} <= _flags(parser)
    assert "frobs per second (default: 3)" in " ".join(parser.format_help().split())
    config = Extended.from_args(["--frobnicate", "7", "--colour", "red", "--colour", "blue"])
    assert isinstance(config, Extended)
    assert config.frobnicate == 7 and config.colours == ("red", "blue")
    assert config.to_args() == ["--frobnicate", "7", "--colour", "red", "--colour", "blue"]


def test_cli_to_config_round_trip() -> None:
    from kernel_provider.testing.config import EmulatorConfig

    assert EmulatorConfig.from_args([]) == EmulatorConfig()
    config = EmulatorConfig(
        host="127.0.0.2",
        port=0,
        tokens=("t1", "t2"),
        app_versions=("latest", "2.0"),
        demo_versions=("1.0",),
        faults='{"seed": 7, "rules": []}',
        seed=3,
        heartbeat=2.5,
        sync_timeout=7.0,
        org_concurrency=4,
        app_concurrency=2,
        retry_after=3,
        unknown_projects=("gone",),
        request_log_size=50,
        env_vars={"demo": {"K": "v"}},
        payload_limit=1000,
        retention_seconds=60.0,
        retention_count=5,
    )
    assert EmulatorConfig.from_args(config.to_args()) == config
    assert EmulatorConfig.from_args(["--org-concurrency", "none"]).org_concurrency is None
    with pytest.raises(SystemExit):
        EmulatorConfig.from_args(["--payload-limit", "lots"])


def test_config_reaches_the_spawned_server() -> None:
    from kernel_provider.testing import EmulatorConfig, spawn_emulator

    config = EmulatorConfig(
        tokens=("tok",), heartbeat=3.0, org_concurrency=4, payload_limit=1234, retention_count=7, seed=11
    )
    with spawn_emulator(config, app_concurrency=2) as proc:
        public = proc.client.configure()  # no values: just the current settings
    expected = {**EmulatorConfig.build(config, app_concurrency=2).public(), "port": public["port"]}
    assert public == expected
    assert public["payload_limit"] == 1234 and public["app_concurrency"] == 2 and proc.token == "tok"


def test_missing_extra_message_and_exit_code_2() -> None:
    blocker = (
        "import sys, runpy\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('starlette', 'uvicorn', 'sse_starlette'):\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "sys.argv = ['kernel-emulator', '--port', '0']\n"
        "runpy.run_module('kernel_provider.testing', run_name='__main__')\n"
    )
    result = subprocess.run([sys.executable, "-c", blocker], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "install airflow-provider-kernel[emulator]" in result.stderr
    assert "Traceback" not in result.stderr
    assert "starlette, uvicorn, sse_starlette" in result.stderr


def test_runtime_config_update_is_typed_and_all_or_nothing() -> None:
    from kernel_provider.testing.config import EmulatorConfig

    config = EmulatorConfig()
    config.update({"org_concurrency": 3, "retention_seconds": 5, "heartbeat": 1})
    assert (config.org_concurrency, config.retention_seconds, config.heartbeat) == (3, 5, 1)
    config.update({"org_concurrency": None})
    assert config.org_concurrency is None
    for bad in ({"org_concurrency": "5"}, {"payload_limit": True}, {"heartbeat": None}, {"heartbeat": 90}):
        with pytest.raises(ValueError):
            config.update({"retry_after": 9, **bad})
        assert config.retry_after == 1
    with pytest.raises(ValueError, match="read-only"):
        config.update({"tokens": ["x"]})
