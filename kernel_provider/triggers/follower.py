"""How a :class:`~kernel_provider.triggers.kernel.KernelInvocationTrigger` follows its run: the Airflow-free
:class:`~kernel_provider.client.follow.InvocationFollower`, with the run's browsers watched beside it when the
trigger publishes live views, tracks usage or enforces ``max_browser_seconds``."""

from __future__ import annotations

from typing import Any

from kernel_provider.client.browser_usage import BROWSERS_EVENT_KEY, BrowserBudget, final_browsers
from kernel_provider.client.browser_watch import OFF, BrowserWatch, LiveViewPublisher
from kernel_provider.client.follow import InvocationFollower

#: Seconds the trigger may spend cancelling a run that passed ``max_browser_seconds``.
BUDGET_CANCEL_SECONDS = 20.0


async def with_final_browsers(follower: InvocationFollower, event: dict[str, Any]) -> dict[str, Any]:
    """``event`` of a wait cut short at its deadline, with the run's browsers when usage is tracked and the trigger
    cancelled the run (so the task reports what it cost); a run left going is reported by whoever sees it end.

    :param follower: the wait's follower, whose watch saw the browsers.
    :param event: the ``timeout`` event.
    """
    if not (follower.track_usage and follower.watch is not None and event.get("cancelled")):
        return event
    return {**event, BROWSERS_EVENT_KEY: await final_browsers(follower.watch)}


def build_follower(trigger: Any) -> InvocationFollower:
    """The follower of ``trigger``'s wait (its hook, log, mode, log position and browser settings).

    :param trigger: the :class:`~kernel_provider.triggers.kernel.KernelInvocationTrigger` whose wait it is.
    """
    watch = budget = None
    if trigger.live_view != OFF or trigger.track_usage or trigger.max_browser_seconds is not None:
        publisher = LiveViewPublisher(trigger.live_view, trigger.end_time, trigger.log, trigger.mask_live_view)
        watch = BrowserWatch(trigger.hook, trigger.invocation_id, trigger.log, trigger.publish_live_view, publisher)
    if watch is not None and trigger.max_browser_seconds is not None:

        async def cancel(why: str) -> bool:
            return bool(await trigger._cancel(why, BUDGET_CANCEL_SECONDS))

        budget = BrowserBudget(watch, trigger.max_browser_seconds, cancel, trigger.log)
    return InvocationFollower(
        source=trigger.hook,
        invocation_id=trigger.invocation_id,
        log=trigger.log,
        mode=trigger.mode,
        poll_interval=trigger.poll_interval,
        stream_logs=trigger.stream_logs,
        max_consecutive_failures=trigger.max_consecutive_failures,
        silence_timeout=trigger.silence_timeout,
        max_stream_failures=trigger.max_stream_failures,
        position=trigger._cursor,
        watch=watch,
        track_usage=trigger.track_usage,
        budget=budget,
    )
