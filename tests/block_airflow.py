"""pytest plugin (``-p tests.block_airflow``): Airflow cannot be imported in this run.

``make test`` runs the ``airflow_free`` tests with it, so a test listed in ``conftest.AIRFLOW_FREE`` that does
need Airflow fails with an ImportError instead of silently running on one Airflow version only.
"""

from __future__ import annotations

import sys
from importlib.machinery import ModuleSpec
from typing import Any


class _AirflowBlocker:
    """A meta-path finder that refuses ``airflow`` and everything under it."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> ModuleSpec | None:
        if name == "airflow" or name.startswith("airflow."):
            raise ImportError(f"{name}: this run is Airflow-free (tests/block_airflow.py); see conftest.AIRFLOW_FREE")
        return None


if "airflow" in sys.modules:
    raise RuntimeError("tests.block_airflow must load before anything imports airflow")
sys.meta_path.insert(0, _AirflowBlocker())
