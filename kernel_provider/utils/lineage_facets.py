"""The OpenLineage facets of a Kernel run and the ``OperatorLineage`` the listener takes.

Imports the OpenLineage client: only :class:`kernel_provider.utils.lineage.KernelLineageMixin` imports this module,
inside the methods the OpenLineage listener calls (so only where the ``[openlineage]`` extra is installed and
enabled). Without the extra it still imports (a walk over the provider's modules must not fail), and is not used.
"""

from __future__ import annotations

from typing import Any

import attrs

try:
    from openlineage.client.facet_v2 import JobFacet, RunFacet
except ImportError:  # no [openlineage] extra: nothing calls this module
    JobFacet = RunFacet = object  # type: ignore[misc,assignment]

from kernel_provider import __version__
from kernel_provider.utils.lineage_naming import dataset_id, lineage_uri

#: ``_producer`` of the Kernel facets: this provider, at its version.
PRODUCER = f"https://github.com/kernel/airflow-provider-kernel/tree/{__version__}"
#: Where the Kernel facets are described (their ``_schemaURL``s point at its sections).
SCHEMA_DOC = "https://github.com/kernel/airflow-provider-kernel/blob/main/docs/openlineage.md"
#: The keys of the facets in an event's ``job.facets`` and ``run.facets``.
JOB_FACET = "kernelAction"
RUN_FACET = "kernelInvocation"


@attrs.define
class KernelActionJobFacet(JobFacet):
    """Job facet ``kernelAction``: the Kernel app action the task runs (or, for the sensor, the one it watches).

    :param app: the app name.
    :param action: the action name.
    :param version: the app version (Kernel's, once an invocation reported it; else the label asked for).
    """

    app: str
    action: str
    version: str = ""
    _producer: str = attrs.field(default=PRODUCER, kw_only=True)

    @staticmethod
    def _get_schema() -> str:
        return f"{SCHEMA_DOC}#kernelaction-job-facet"


@attrs.define
class KernelInvocationRunFacet(RunFacet):
    """Run facet ``kernelInvocation``: the Kernel invocation of this task run.

    :param invocationId: Kernel's invocation id.
    :param status: its status as Kernel reported it last (``succeeded``, ``failed``, ...); None while unknown.
    :param url: its page in Kernel's dashboard (not a credential; no live-view or replay URL is ever included).
    """

    invocationId: str  # camelCase, as OpenLineage names its fields
    status: str | None = None
    url: str | None = None
    _producer: str = attrs.field(default=PRODUCER, kw_only=True)

    @staticmethod
    def _get_schema() -> str:
        return f"{SCHEMA_DOC}#kernelinvocation-run-facet"


def to_dataset(item: Any) -> Any:
    """The OpenLineage dataset of a URI or an Airflow asset/dataset, or None when it has no usable URI.

    An asset whose scheme has an OpenLineage converter registered by a provider is translated by it; anything
    else by :func:`kernel_provider.utils.lineage_naming.dataset_id`.

    :param item: a ``lineage_inputs`` entry or an outlet.
    """
    if not isinstance(item, str):
        converted = _converted(item)
        if converted is not None:
            return converted
    from airflow.providers.common.compat.openlineage.facet import Dataset

    uri = lineage_uri(item)
    found = dataset_id(uri) if uri else None
    return Dataset(namespace=found[0], name=found[1]) if found else None


def _converted(asset: Any) -> Any:
    try:
        from airflow.providers.openlineage.utils.utils import translate_airflow_asset
    except ImportError:
        return None
    try:
        return translate_airflow_asset(asset, None)
    except Exception:  # a converter's own failure: fall back to the URI
        return None


def operator_lineage(
    *, inputs: list[Any], outputs: list[Any], run_facets: dict[str, Any], job_facets: dict[str, Any]
) -> Any:
    """The ``OperatorLineage`` of a task: its inputs and outputs as datasets (those without a URI left out).

    :param inputs: URIs or assets read.
    :param outputs: URIs or assets written (the task's outlets).
    :param run_facets: run facets by key.
    :param job_facets: job facets by key.
    """
    from airflow.providers.openlineage.extractors import OperatorLineage

    return OperatorLineage(
        inputs=[d for d in map(to_dataset, inputs) if d is not None],
        outputs=[d for d in map(to_dataset, outputs) if d is not None],
        run_facets=run_facets,
        job_facets=job_facets,
    )
