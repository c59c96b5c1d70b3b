"""Fixtures of the end-to-end tests: one real Airflow per session and Airflow version, with the Kernel emulator.

``airflow_e2e`` is Airflow 3.x (``tests/harness/airflow3.py``), ``airflow2_e2e`` Airflow 2.11 under ``.venv-af2``
(``tests/harness/airflow2.py``); each starts once (about a minute) and serves every e2e test of the session
(``tests/conftest.py`` keeps the e2e files on one xdist worker). After every test the ERROR-line audit runs
(``tests/harness/error_audit.py``; declare provoked lines with ``@pytest.mark.expect_error_lines(r"regex")`` or the
``expect_error_lines`` fixture), and a failing test's report carries the tails of the service logs.

``KERNEL_E2E_PROVIDER_SRC=<dir>`` runs every Airflow process on another copy of ``kernel_provider``
(``git archive <rev> kernel_provider | tar -x -C <dir>``), e.g. to see a test fail on older code;
``PYTHONPATH=<dir>`` does the same for the test process too.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

from tests.harness.airflow2 import SKIP_REASON_AF2, Airflow2E2E
from tests.harness.airflow3 import SKIP_REASON, AirflowE2E
from tests.harness.base import running
from tests.harness.processes import AIRFLOW, AIRFLOW_VERSION


@pytest.fixture(scope="session")
def airflow_e2e(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirflowE2E]:
    """A running Airflow 3.x with the Kernel emulator, shared by every e2e test of the session (on one xdist worker:
    tests/conftest.py groups them); a module needing other DAGs adds them with :meth:`AirflowE2E.deploy`."""
    if AIRFLOW_VERSION < (3, 0):
        pytest.skip(SKIP_REASON)
    if not AIRFLOW.exists():
        pytest.skip(f"no airflow executable next to {sys.executable}")
    with running(AirflowE2E(tmp_path_factory.mktemp("airflow-e2e"))) as e2e:
        yield e2e


@pytest.fixture(scope="session")
def airflow2_e2e(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Airflow2E2E]:
    """A running Airflow 2.11 (scheduler + triggerer) with the Kernel emulator, shared like ``airflow_e2e``."""
    if AIRFLOW_VERSION[0] != 2 or AIRFLOW_VERSION < (2, 11):
        pytest.skip(SKIP_REASON_AF2)
    if not AIRFLOW.exists():
        pytest.skip(f"no airflow executable next to {sys.executable}")
    with running(Airflow2E2E(tmp_path_factory.mktemp("airflow2-e2e"))) as e2e:
        yield e2e
