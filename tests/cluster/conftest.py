"""Fixtures of the cluster tests: Airflow 3.3 in its production shape on one machine (``ClusterAirflow``,
``tests/harness/airflow_cluster.py``): PostgreSQL, Redis, CeleryExecutor, two triggerers, two Celery workers.

ONE cluster serves the whole session (``airflow_cluster``, about a minute to start): the tests run one after the
other on it. Where PostgreSQL, Redis or the ``[cluster]`` extra cannot be had (``make cluster-deps`` installs
them as root), or Airflow is older than 3.3, every test is skipped with that reason. The ERROR-line audit runs
after every test, as on the e2e harnesses (``tests/conftest.py``).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.harness.airflow_cluster import ClusterAirflow, skip_reason
from tests.harness.base import running


@pytest.fixture(scope="session")
def airflow_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterAirflow]:
    """The running cluster, shared by every cluster test of the session."""
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    with running(ClusterAirflow(tmp_path_factory.mktemp("airflow-cluster"))) as cluster:
        cluster.api("POST", "/pools", json={"name": "kernel_cluster", "slots": 5, "include_deferred": True})
        yield cluster
