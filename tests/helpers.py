"""Small helpers shared by tests (no fixtures with side effects here)."""

from __future__ import annotations

import json
from typing import Any

from kernel_provider.client.retry import RetryPolicy

#: Retry bounds that keep tests quick while still exercising every retry path.
FAST_RETRY = RetryPolicy(
    max_attempts=4, max_elapsed=30, backoff_initial=0.05, backoff_max=0.2, retry_after_cap=5, rate_limit_budget=30
)


def conn_json(url: str, token: str, **extra: Any) -> str:
    """The JSON form of AIRFLOW_CONN_KERNEL_DEFAULT for an emulator."""
    conn: dict[str, Any] = {"conn_type": "kernel", "host": url, "password": token}
    if extra:
        conn["extra"] = extra
    return json.dumps(conn)
