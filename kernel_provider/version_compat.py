"""Every difference between the Airflow versions this provider supports (2.11 and 3.x), decided in one place.

Other modules ask these flags rather than parse Airflow's version themselves. Importing this module imports
Airflow, so Airflow-free code (``kernel_provider.client``) never imports it.
"""

from __future__ import annotations

from airflow import __version__ as AIRFLOW_VERSION


def version_tuple(version: str) -> tuple[int, int]:
    """``(major, minor)`` of a version string such as ``"3.3.2"``, ``"3.1.0rc1"`` or ``"2.11.0.dev0"``."""
    parts = []
    for piece in [*version.split("."), "0", "0"][:2]:
        digits = ""
        for char in piece:
            if not char.isdigit():
                break
            digits += char
        parts.append(int(digits or 0))
    return parts[0], parts[1]


#: ``(major, minor)`` of the running Airflow.
AIRFLOW_VERSION_TUPLE = version_tuple(AIRFLOW_VERSION)
#: Airflow 2.x: no Task SDK; tasks and the triggerer reach the metadata DB directly, triggers have no ``on_kill``,
#: and the scheduler fails a deferred task at ``start_date + execution_timeout`` without resuming it.
AIRFLOW_2 = AIRFLOW_VERSION_TUPLE < (3, 0)
#: Airflow 3.3+: a task may start in the triggerer with its templated fields rendered there, triggers get
#: ``on_kill``, and tasks have a ``task_state_store``.
AIRFLOW_V_3_3_PLUS = AIRFLOW_VERSION_TUPLE >= (3, 3)

__all__ = ["AIRFLOW_2", "AIRFLOW_VERSION", "AIRFLOW_VERSION_TUPLE", "AIRFLOW_V_3_3_PLUS", "version_tuple"]
