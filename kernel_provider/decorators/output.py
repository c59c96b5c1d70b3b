"""What the provider's decorated operators need from ``DecoratedOperator`` on every supported Airflow."""

from __future__ import annotations

from typing import Any


class XComPushForDecorators:
    """Gives a decorated operator the ``xcom_push(context, key, value)`` method.

    Airflow 3.0's ``DecoratedOperator.execute`` reads ``self.xcom_push`` after the function returned, but 3.0's
    Task SDK ``BaseOperator`` has no such method (2.11's has; 3.1 stopped reading it), so every decorated task
    failed with ``AttributeError`` there. Listed before ``DecoratedOperator`` in the bases; it pushes through the
    task instance, as the method of Airflow 2.11 does.
    """

    def xcom_push(self, context: Any, key: str, value: Any) -> None:
        """Push ``value`` under ``key`` for the running task instance."""
        context["ti"].xcom_push(key=key, value=value)
