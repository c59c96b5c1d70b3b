"""An emulator listening beyond loopback never takes the well-known default token (issue 25, finding 4), and the
CLI reads the token from ``KERNEL_EMULATOR_TOKEN``."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest

from kernel_provider.testing import EmulatorClient, KernelEmulator
from kernel_provider.testing.config import DEFAULT_TOKEN, EmulatorConfig


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    child_env = {k: v for k, v in os.environ.items() if k != "KERNEL_EMULATOR_TOKEN"}
    return subprocess.Popen(
        [sys.executable, "-m", "kernel_provider.testing", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**child_env, **(env or {})},
    )


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10"])
def test_cli_refuses_a_non_loopback_bind_with_the_default_token(host: str) -> None:
    proc = _cli("--host", host)
    try:
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 2, (out, err)
    assert "Kernel emulator listening" not in out
    assert "refusing to listen" in err and "--token" in err and "KERNEL_EMULATOR_TOKEN" in err


def test_in_process_emulator_refuses_it_too() -> None:
    with pytest.raises(ValueError, match="well-known default token"):
        KernelEmulator(host="0.0.0.0")
    with pytest.raises(ValueError, match="well-known default token"):
        KernelEmulator(host="0.0.0.0", tokens=("mine", DEFAULT_TOKEN))
    EmulatorConfig(host="0.0.0.0", tokens=("a-secret-of-mine",)).validate()  # a token of one's own is fine
    EmulatorConfig(host="localhost").validate()  # loopback keeps the default


def test_cli_takes_the_token_from_the_environment() -> None:
    proc = _cli("--quiet", env={"KERNEL_EMULATOR_TOKEN": "from-env"})
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("Kernel emulator listening on "), line
        url = line.rsplit(" ", 1)[1].strip()
        assert httpx.get(f"{url}/apps", headers={"Authorization": "Bearer from-env"}).status_code == 200
        assert httpx.get(f"{url}/apps", headers={"Authorization": f"Bearer {DEFAULT_TOKEN}"}).status_code == 401
        with EmulatorClient(url, "from-env") as admin:
            assert admin.health()["status"] == "ok"
    finally:
        proc.terminate()
        proc.communicate(timeout=15)
