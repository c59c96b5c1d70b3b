"""The create step of ``KernelInvokeOperator``: its retry settings, its run record, and what it trusts.

Against the emulator over HTTP; the only stand-ins are the run record's store (a metadata DB failure no server can
provoke) and the task instance's attributes (``tests/standins.py``).
"""

from __future__ import annotations

from typing import Any

import pytest

from kernel_provider.operators.kernel import KernelInvokeOperator
from kernel_provider.testing import airflow_connection

pytestmark = pytest.mark.usefixtures("airflow_db")


def test_rate_limit_wait_keeps_the_connections_other_retry_settings(kernel_emulator: Any, monkeypatch: Any) -> None:
    conn = airflow_connection(kernel_emulator.url, kernel_emulator.token, max_retries=0, max_retry_wait=5)
    monkeypatch.setenv("AIRFLOW_CONN_KERNEL_DEFAULT", conn)
    operator = KernelInvokeOperator(task_id="invoke", app_name="demo", action_name="echo", rate_limit_wait=60)
    policy = operator.hook.client.retry
    assert (policy.max_attempts - 1, policy.max_elapsed, policy.rate_limit_budget) == (0, 5, 60)
    # Without rate_limit_wait the connection's own 429 budget stays.
    plain = KernelInvokeOperator(task_id="plain", app_name="demo", action_name="echo").hook.client.retry
    assert (plain.max_attempts - 1, plain.max_elapsed, plain.rate_limit_budget) == (0, 5, 900)
