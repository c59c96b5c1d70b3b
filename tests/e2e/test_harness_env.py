"""The e2e and cluster harnesses run Airflow as users deploy it: with a Fernet key, new for every run (so
connections, variables and trigger kwargs are stored encrypted, and a key from an earlier run decrypts nothing)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.harness.airflow2 import Airflow2E2E
from tests.harness.airflow3 import AirflowE2E
from tests.harness.base import AirflowHarness
from tests.harness.cluster import cluster_settings


@pytest.mark.parametrize("kind", [AirflowE2E, Airflow2E2E], ids=lambda kind: kind.__name__)
def test_every_e2e_run_has_its_own_fernet_key(kind: type[AirflowHarness], tmp_path: Path) -> None:
    from cryptography.fernet import Fernet

    keys = []
    for name in ("one", "two"):
        e2e = kind(tmp_path / name)
        e2e.emulator = SimpleNamespace(url="http://127.0.0.1:1", token="t")
        e2e.build_env()
        keys.append(e2e.env["AIRFLOW__CORE__FERNET_KEY"])
        e2e.http.close()
    token = Fernet(keys[0].encode()).encrypt(b"secret")  # a valid key
    assert keys[0] != keys[1]
    assert Fernet(keys[0].encode()).decrypt(token) == b"secret"


def test_the_cluster_settings_carry_a_fernet_key() -> None:
    from cryptography.fernet import Fernet

    settings = cluster_settings("postgresql://x", "redis://y", api_port=1)
    assert Fernet(settings["AIRFLOW__CORE__FERNET_KEY"].encode())
