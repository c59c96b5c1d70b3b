"""Every XCom key the provider writes, and every extra link (button) it adds to a task in Airflow's UI.

The keys are part of the provider's public surface: downstream tasks pull them (``ti.xcom_pull(key=...)``)
and the links read them. Nothing else in the package spells a key.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from airflow.providers.common.compat.sdk import BaseOperatorLink, XCom

from kernel_provider.client.browser_watch import CONTROL, LIVE_VIEW_EVENT_KEY, READ, check_live_view
from kernel_provider.utils.secrets import mask_url

# One scheme: every key the provider writes starts with ``kernel_``.

#: The invocation a Kernel task created or waited for (``KernelInvokeOperator``, ``@task.kernel``).
XCOM_INVOCATION_ID = "kernel_invocation_id"
#: The invocation's page in Kernel's dashboard; the "Kernel invocation" link opens it.
XCOM_INVOCATION_URL = "kernel_invocation_url"
#: The live view of the run's first browser, pushed by the wait (trigger or worker) once it has seen the browser.
XCOM_LIVE_VIEW_URL = "kernel_live_view_url"
#: The live view of a ``@task.kernel_browser`` task's browser.
XCOM_BROWSER_LIVE_VIEW_URL = "kernel_browser_live_view_url"
#: The session id of a ``@task.kernel_browser`` task's browser.
XCOM_BROWSER_SESSION_ID = "kernel_browser_session_id"
#: What the run cost (a :meth:`kernel_provider.client.usage.RunUsage.as_dict`), pushed when a Kernel task's run ends.
XCOM_USAGE = "kernel_usage"
#: Internal: a deferred wait's position in the action's log stream (see :mod:`kernel_provider.triggers.log_cursor`).
#: Airflow shows every XCom of a task, and its triggerer (3.3.2) cannot write ``task_state_store``, where it would
#: otherwise belong.
LOG_CURSOR_XCOM_KEY = "kernel_log_cursor"

#: The keys provider 0.1 wrote for the invocation (read by the link for task instances that version ran).
LEGACY_XCOM_INVOCATION_ID = "invocation_id"
LEGACY_XCOM_INVOCATION_URL = "invocation_url"
#: The XCom scheme this version writes: 2 = every key starts with ``kernel_``; 1 = provider 0.1's. A wait echoes
#: the scheme of the task that deferred it, so a task deferred by 0.1 and resumed by this version pushes its
#: invocation under the new keys too (see ``KernelInvokeOperator.execute_complete``).
XCOM_SCHEME = 2

log = logging.getLogger(__name__)
_UNSET = object()


class KernelInvocationLink(BaseOperatorLink):
    """The "Kernel invocation" button on a task: opens the invocation in Kernel's dashboard."""

    name = "Kernel invocation"

    def get_link(self, operator: Any, dttm: Any = None, *, ti_key: Any = None) -> str:
        """The dashboard URL the task pushed as XCom ``kernel_invocation_url`` (``invocation_url`` for a task
        instance provider 0.1 ran); "" when there is none (yet).

        :param operator: the task; one that never created an invocation gets "" without an XCom lookup.
        :param dttm: Airflow 2's logical date argument, unused (``ti_key`` identifies the try).
        :param ti_key: the task instance whose XCom is read; None (no run to link to) gives "".
        """
        # A live operator that never created an invocation has nothing to link: skip the XCom lookup, which
        # Airflow 3 would otherwise report as an error next to the task's real one.
        if ti_key is None or getattr(operator, "invocation_id", _UNSET) is None:
            return ""
        url = XCom.get_value(key=XCOM_INVOCATION_URL, ti_key=ti_key)
        return url or XCom.get_value(key=LEGACY_XCOM_INVOCATION_URL, ti_key=ti_key) or ""


class KernelLiveViewLink(BaseOperatorLink):
    """The "Kernel live view" button on a task: opens the live view of the run's first browser.

    The wait pushes the URL (XCom ``kernel_live_view_url``) as soon as it has seen a browser with a live view, so
    the button works while the run is going; "" before that, and for runs without browsers. After the run the
    button still points at that URL, which Kernel stops serving once the browser is gone.
    """

    name = "Kernel live view"

    def get_link(self, operator: Any, dttm: Any = None, *, ti_key: Any = None) -> str:
        """The live-view URL the wait pushed; "" when there is none (yet).

        :param operator: the task (operator or sensor).
        :param dttm: Airflow 2's logical date argument, unused (``ti_key`` identifies the try).
        :param ti_key: the task instance whose XCom is read; None gives "".
        """
        # A live task that saw no live view has nothing to link: skip the lookup, which Airflow 3 would report as
        # an "XCom not found" error in every healthy run's log (it evaluates the links when the task ends).
        if ti_key is None or getattr(operator, "live_view_url", _UNSET) is None:
            return ""
        return XCom.get_value(key=XCOM_LIVE_VIEW_URL, ti_key=ti_key) or ""


class KernelBrowserLiveViewLink(BaseOperatorLink):
    """The "Kernel browser live view" button of a ``@task.kernel_browser`` task: watch its browser."""

    name = "Kernel browser live view"

    def get_link(self, operator: Any, dttm: Any = None, *, ti_key: Any = None) -> str:
        """The live-view URL the task pushed (XCom ``kernel_browser_live_view_url``); "" when there is none.

        :param operator: the task; a live one that published no URL gets "" without an XCom lookup.
        :param dttm: Airflow 2's logical date argument, unused (``ti_key`` identifies the try).
        :param ti_key: the task instance whose XCom is read; None gives "".
        """
        # Airflow 3 evaluates the links when the task ends; looking up an XCom never pushed (headless browser,
        # failed create, live_view off) logs "XCom not found" as an ERROR in a healthy run.
        if ti_key is None or getattr(operator, "live_view_url", _UNSET) is None:
            return ""
        return XCom.get_value(key=XCOM_BROWSER_LIVE_VIEW_URL, ti_key=ti_key) or ""


def push_live_view_link(task: Any, context: Any, event: Mapping[str, Any]) -> None:
    """Point the "Kernel live view" link at the URL a finished wait reports (``live_view_url`` of its event), for
    a wait that could not set it while running (e.g. ``dag.test()``'s in-line trigger). Best effort.

    :param task: the running operator or sensor (``self``). Not ``context["task"]``: on Airflow 3.0 that is the
        task before ``prepare_for_execution()`` copied it, not the one Airflow reads the link from afterwards.
    :param context: the task's context (its ``ti`` pushes the XComs).
    :param event: the wait's final event.
    """
    url = event.get(LIVE_VIEW_EVENT_KEY)
    if not isinstance(url, str) or not url:
        return
    if check_live_view(getattr(task, "live_view", READ)) == CONTROL:
        mask_url(url)  # this worker's log masker has not seen it: the wait ran elsewhere
    task.live_view_url = url
    ti = context["ti"]
    try:
        ti.xcom_push(key=XCOM_LIVE_VIEW_URL, value=url)
        link_key = getattr(KernelLiveViewLink(), "xcom_key", None)
        if link_key:
            ti.xcom_push(key=link_key, value=url)
    except Exception as exc:  # a link is not worth failing a finished run over
        log.warning("Could not set the Kernel live view link: %s", exc)
