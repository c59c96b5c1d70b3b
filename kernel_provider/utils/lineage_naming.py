"""OpenLineage names of what a Kernel task reads and writes: URIs and Airflow assets as ``(namespace, name)``, and
the ``lineage_inputs`` check. Pure functions: no Airflow, no OpenLineage."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from kernel_provider.client.errors import KernelInputError

#: What ``lineage_inputs`` takes, for its error message.
_INPUTS_FIX = (
    "Pass a list of URIs with a scheme (e.g. 'https://shop.example/catalog', 's3://bucket/key') or of Airflow "
    "assets/datasets."
)


def lineage_uri(item: Any) -> str | None:
    """The URI of ``item``: the text itself, or the ``uri`` of an Airflow asset/dataset; None for anything else.

    :param item: a ``lineage_inputs`` entry or an outlet.
    """
    uri = item if isinstance(item, str) else getattr(item, "uri", None)
    return uri.strip() if isinstance(uri, str) and uri.strip() else None


def check_lineage_inputs(value: Any) -> list[Any] | None:
    """``lineage_inputs`` checked when the task is built (at DAG parse): None, or a list of URIs/assets.

    :param value: what the DAG passed.
    :raises KernelInputError: naming ``lineage_inputs`` and the fix.
    """
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise KernelInputError("lineage_inputs", f"must be a list, got {type(value).__name__}", _INPUTS_FIX)
    for item in value:
        uri = lineage_uri(item)
        if uri is None or not urlsplit(uri).scheme:
            raise KernelInputError(
                "lineage_inputs", f"{item!r} is neither a URI with a scheme nor an asset", _INPUTS_FIX
            )
    return list(value)


def dataset_id(uri: str) -> tuple[str, str] | None:
    """OpenLineage's ``(namespace, name)`` of a URI, by its naming convention: ``scheme://authority`` and the path
    (``kernel://app/action`` is namespace ``kernel://app``, name ``action``; ``s3://bucket/key``: ``s3://bucket``,
    ``key``). Without an authority (``file:///tmp/x``) the namespace is the scheme and the name the whole path.
    User info, query and fragment are dropped: they may carry credentials. None when there is no scheme.

    :param uri: the URI.
    """
    try:
        parts = urlsplit(uri)
        host = parts.hostname or ""
        authority = f"{host}:{parts.port}" if parts.port else host
    except ValueError:  # a port that is not a number
        return None
    if not parts.scheme:
        return None
    if not authority:
        return parts.scheme, parts.path or "/"
    return f"{parts.scheme}://{authority}", parts.path.lstrip("/") or "/"
