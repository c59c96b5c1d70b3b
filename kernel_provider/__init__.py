"""Apache Airflow provider for Kernel (https://kernel.sh).

Importing this package is cheap and makes no network call: DAG files import the operator module at parse time.
"""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.2.0"
