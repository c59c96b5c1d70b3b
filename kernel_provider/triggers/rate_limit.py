"""``KernelRateLimitTimer``: the deferral of a create that Kernel refused with 429."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import TriggerEvent

try:  # Airflow 3: the standard provider's timer; Airflow 2: core's
    from airflow.providers.standard.triggers.temporal import DateTimeTrigger
except ImportError:  # pragma: no cover - depends on the Airflow version
    from airflow.triggers.temporal import DateTimeTrigger  # type: ignore[no-redef]


class KernelRateLimitTimer(DateTimeTrigger):  # type: ignore[misc]
    """Airflow's ``DateTimeTrigger``, for a create that Kernel refused with 429: waits until ``moment`` in the
    triggerer, then fires an event carrying the 429 budget's deadline and the attempt count.

    The event (not the defer's ``kwargs``) carries them because ``dag.test()`` resumes a task with the event alone;
    the real triggerer and ``dag.test()`` then resume it the same way. Primitives only, so it survives restarts.

    :param moment: when to fire (a timezone-aware datetime).
    :param rate_limit_deadline: epoch seconds after which the task stops waiting out 429s (``rate_limit_wait``
        counted from the first attempt).
    :param attempt: creates refused so far.
    """

    def __init__(self, moment: Any, rate_limit_deadline: float, attempt: int) -> None:
        super().__init__(moment=moment)
        self.rate_limit_deadline = float(rate_limit_deadline)
        self.attempt = int(attempt)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """The classpath and the constructor's keyword arguments, as Airflow stores them."""
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {"moment": self.moment, "rate_limit_deadline": self.rate_limit_deadline, "attempt": self.attempt},
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Waits like ``DateTimeTrigger``, then yields ``{"rate_limit_deadline", "attempt"}``."""
        async for _ in super().run():
            break
        yield TriggerEvent({"rate_limit_deadline": self.rate_limit_deadline, "attempt": self.attempt})
