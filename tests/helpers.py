"""Small helpers shared by tests (no fixtures with side effects here)."""

from __future__ import annotations

from kernel_provider.client.retry import RetryPolicy
from kernel_provider.testing.config import airflow_connection

#: Retry bounds that keep tests quick while still exercising every retry path.
FAST_RETRY = RetryPolicy(
    max_attempts=4, max_elapsed=30, backoff_initial=0.05, backoff_max=0.2, retry_after_cap=5, rate_limit_budget=30
)


#: The JSON form of AIRFLOW_CONN_<ID> for an emulator (one builder, the emulator's own).
conn_json = airflow_connection
