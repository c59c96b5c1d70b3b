import pytest
pytestmark = pytest.mark.e2e
def test_diag(airflow_e2e):
    airflow_e2e.wait_until("never", lambda: None, timeout=3)
