"""OpenLineage for Kernel runs: the ``get_openlineage_facets_on_*`` methods the operator and the sensor share.

The OpenLineage provider (the ``[openlineage]`` extra) calls these methods when a task starts, succeeds or fails, and
sends what they return with its own events. This module imports nothing of OpenLineage: the methods import
:mod:`kernel_provider.utils.lineage_facets` when they are called, so DAG parsing stays cheap and the provider works
without the extra. Nothing here makes a request or reads a connection: the facets come from what the task already
knows (its arguments, its outlets, the invocation it created or watched).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kernel_provider.utils.lineage_naming import check_lineage_inputs

__all__ = ["KernelLineageMixin", "check_lineage_inputs"]

if TYPE_CHECKING:
    from kernel_provider.client.models import Invocation


class KernelLineageMixin:
    """OpenLineage facets of a Kernel run, for the OpenLineage provider's listener (``[openlineage]`` extra).

    Each event gets a job facet ``kernelAction`` (app, action, version) and, once the invocation is known, a run
    facet ``kernelInvocation`` (invocation id, status, dashboard URL); inputs are the task's ``lineage_inputs``,
    outputs its ``outlets``. No live-view or replay URL is ever included: those carry Kernel's viewing token.
    The methods take ``task_instance`` positionally because the listener calls them so.
    """

    #: The last state of the invocation this task created or watched (set when it is learnt).
    kernel_invocation: Invocation | None = None

    def get_openlineage_facets_on_start(self) -> Any:
        """Lineage when the task starts: what it will run, its inputs and outputs (no invocation yet for the
        operator; the sensor already knows which one it watches)."""
        return self._kernel_lineage(status="none")

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """Lineage when the task succeeded: also the invocation's id, final status and dashboard URL.

        :param task_instance: the finished task instance (unused: the operator holds what it learnt).
        """
        return self._kernel_lineage(status="last")

    def get_openlineage_facets_on_failure(self, task_instance: Any) -> Any:
        """Lineage when the task failed: the invocation's id and dashboard URL, if one was created, and its status
        if the task saw it finish (not after a timeout: a status seen earlier would be stale).

        :param task_instance: the failed task instance (unused).
        """
        return self._kernel_lineage(status="final")

    def _kernel_lineage(self, *, status: str) -> Any:
        """:param status: which status the run facet carries: ``"none"``, the ``"last"`` one seen, or only a
        ``"final"`` one."""
        from kernel_provider.utils import lineage_facets as facets

        invocation = self.kernel_invocation
        job_facets: dict[str, Any] = {}
        app, action, version = self._kernel_action(invocation)
        if app and action:
            job_facets[facets.JOB_FACET] = facets.KernelActionJobFacet(app=app, action=action, version=version)
        run_facets: dict[str, Any] = {}
        invocation_id = invocation.id if invocation else getattr(self, "invocation_id", None)
        if isinstance(invocation_id, str) and invocation_id.strip():
            run_facets[facets.RUN_FACET] = facets.KernelInvocationRunFacet(
                invocationId=invocation_id.strip(),
                status=_status(invocation, status),
                url=self._kernel_invocation_url(invocation_id.strip()),
            )
        return facets.operator_lineage(
            inputs=getattr(self, "lineage_inputs", None) or [],
            outputs=getattr(self, "outlets", None) or [],
            run_facets=run_facets,
            job_facets=job_facets,
        )

    def _kernel_action(self, invocation: Invocation | None) -> tuple[str, str, str]:
        """App, action and version: as Kernel reported them, else as the task asked (the sensor asks nothing)."""

        def pick(reported: str, asked: Any) -> str:
            return reported or (asked if isinstance(asked, str) else "")

        return (
            pick(invocation.app_name if invocation else "", getattr(self, "app_name", None)),
            pick(invocation.action_name if invocation else "", getattr(self, "action_name", None)),
            pick(invocation.version if invocation else "", getattr(self, "version", None)),
        )

    def _kernel_invocation_url(self, invocation_id: str) -> str | None:
        # Only a hook the task already made: the listener must not read a connection (nor fail on one).
        hook = self.__dict__.get("hook")
        if hook is None:
            return None
        try:
            return hook.invocation_url(invocation_id)
        except Exception:
            return None


def _status(invocation: Invocation | None, which: str) -> str | None:
    if invocation is None or which == "none" or (which == "final" and not invocation.is_terminal):
        return None
    return invocation.raw_status or None


def lineage_wanted(task: Any) -> bool:
    """Whether ``task``'s end is worth an OpenLineage event: it names ``lineage_inputs``, or the OpenLineage
    provider is installed and configured. Such a task ends on a worker, whose listener sends the event (a task that
    Airflow ends from its triggerer sends none)."""
    if getattr(task, "lineage_inputs", None):
        return True
    try:
        from airflow.providers.openlineage.conf import is_disabled
    except ImportError:
        return False
    try:
        return not is_disabled()
    except Exception:  # an unreadable setting: the worker, which sends the event if there is one to send
        return True
