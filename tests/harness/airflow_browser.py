"""``BrowserAirflow``: the harness of the browser tests, a real Airflow 3.3 set up as a user of the example DAGs
would see it.

Changes to the e2e harness (``airflow3.py``): only the example DAG ``example_kernel_async_sensor`` is deployed;
the emulator runs the demo app with a gate in front of ``crawl_catalog`` (``tests/browser/apps/gated_demo_shop.py``)
and no ``HoldingProxy``; connection testing is enabled; and ``kernel_default`` has
``extra.dashboard_url = <emulator>/_emulator``, so the "Kernel invocation" link opens the emulator's
``/_emulator/invocations/{id}`` page.
"""

from __future__ import annotations

from pathlib import Path

from tests.harness.airflow3 import AirflowE2E
from tests.harness.base import EXAMPLE_DAG

GATED_DEMO_APP = Path(__file__).resolve().parents[1] / "browser" / "apps" / "gated_demo_shop.py"
#: The gate ``crawl_catalog`` waits on: a test opens it once the sensor waits (see ``gated_demo_shop.py``).
DEMO_GATE = "demo-shop"
EXAMPLE_DAG_ID = EXAMPLE_DAG.stem


class BrowserAirflow(AirflowE2E):
    """Airflow 3.3 services + the Kernel emulator serving the gated demo app, for the example DAG."""

    ready_timeout = 180.0
    #: The run of the example DAG the browser tests look at (set once the harness is up).
    example_run_id: str = ""

    def write_dags(self) -> None:
        """Only the example DAG the browser tests drive."""
        self.deploy([EXAMPLE_DAG])

    def start_emulator(self) -> None:
        """The emulator with the gated demo app, reached directly (no ``HoldingProxy``, no ``kernel_slow``)."""
        from kernel_provider.testing.server import spawn_emulator

        self.emulator = spawn_emulator(apps=[GATED_DEMO_APP], env={"KERNEL_E2E_GATE_DIR": str(self.gates)}, timeout=60)

    def build_env(self) -> None:
        """The e2e settings, with the connection Test button on and invocation links to the emulator's pages."""
        from kernel_provider.testing import airflow_connection

        super().build_env()
        self.env["AIRFLOW__CORE__TEST_CONNECTION"] = "Enabled"
        self.env["AIRFLOW_CONN_KERNEL_DEFAULT"] = airflow_connection(
            self.emulator.url, self.emulator.token, dashboard_url=f"{self.emulator.url}/_emulator"
        )
