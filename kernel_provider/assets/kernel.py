"""The ``kernel://<app>/<action>`` asset URI: what a Kernel app action produces, as an Airflow asset.

A producer task names the asset in ``outlets``, a consumer DAG in ``schedule``::

    from kernel_provider.assets.kernel import kernel_asset

    PRICES = kernel_asset(app_name="demo-shop", action_name="scrape_prices")  # Asset("kernel://demo-shop/scrape_prices")

Airflow finds the scheme through the provider info (``asset-uris`` on Airflow 3, ``dataset-uris`` on 2.11):
:func:`sanitize_uri` normalises and checks every ``kernel://`` URI an ``Asset`` (``Dataset``) is built with,
:func:`create_asset` is the scheme's factory (hook lineage), :func:`convert_asset_to_openlineage` names it for
OpenLineage.

The URI's rules:

- ``kernel://<app>/<action>``: the app is the authority, the action the one path segment. Both follow the rules of
  the client's ``app_name`` / ``action_name`` (:func:`~kernel_provider.client.validation.require_name`: non-empty,
  no leading or trailing spaces); any other character is percent-encoded (``kernel://my%20app/run``), and the
  URI is written with the encoding canonical (upper-case hex, unreserved characters plain), so one action has one
  URI. Names keep their case: Kernel's names are case-sensitive.
- No version: the asset is the action's output whatever app version produced it. The version that ran is in each
  asset event's ``extra`` (see :mod:`kernel_provider.utils.asset_events`).
- The scheme is lower-cased (``KERNEL://`` works). User info, a port, a query or more path segments are refused
  with a message naming the fix; a fragment is dropped (Airflow drops it for every scheme). A trailing ``/`` is
  dropped by Airflow before these checks.

Airflow 3 refuses a bad ``kernel://`` URI when the DAG is parsed (an import error naming the problem). Airflow
2.11 only warns, unless ``[core] strict_dataset_uri_validation`` is on; :func:`kernel_asset` refuses on both.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import SplitResult, quote, unquote

from kernel_provider.client.errors import KernelInputError
from kernel_provider.client.validation import require_name

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import Asset

#: The URI scheme of Kernel assets.
SCHEME = "kernel"
_EXAMPLE = "kernel://<app_name>/<action_name>, e.g. kernel://demo-shop/scrape_prices"
#: RFC 3986's unreserved characters (besides letters and digits): the only ones written unencoded.
_UNRESERVED = "-._~"


def kernel_uri(*, app_name: str, action_name: str) -> str:
    """The canonical ``kernel://`` URI of an app action (names checked as the client checks them).

    :param app_name: the deployed app, as passed to ``KernelInvokeOperator(app_name=...)``.
    :param action_name: the action, as passed to ``action_name``.
    :raises KernelInputError: a name the client would refuse (the message names the field and the fix).
    """
    app = quote(require_name("app_name", app_name), safe=_UNRESERVED)
    action = quote(require_name("action_name", action_name), safe=_UNRESERVED)
    return f"{SCHEME}://{app}/{action}"


def _decoded(field: str, raw: str, uri: str) -> str:
    """A percent-encoded name of ``uri``, decoded and checked like the client's ``field``."""
    if not raw:
        raise KernelInputError(f"asset URI {uri!r}", f"has no {field.replace('_', ' ')}.", f"Write it as {_EXAMPLE}.")
    try:
        name = unquote(raw, errors="strict")
    except UnicodeDecodeError:
        raise KernelInputError(
            f"asset URI {uri!r}",
            f"its {field.replace('_', ' ')} is not percent-encoded UTF-8.",
            "Percent-encode the name's UTF-8 bytes (kernel_asset() does it for you).",
        ) from None
    try:
        return require_name(field, name)
    except KernelInputError as exc:
        raise KernelInputError(f"asset URI {uri!r}", f"its {exc.field} {exc.problem}", exc.fix) from None


def sanitize_uri(uri: SplitResult) -> SplitResult:
    """Airflow's URI handler of the ``kernel`` scheme: the URI checked and written canonically.

    Airflow calls it with the URI already split, its scheme lower-cased, a password dropped, the query sorted,
    the fragment and a trailing ``/`` removed.

    :param uri: the split URI.
    :returns: ``kernel://<app>/<action>`` with the names' percent-encoding canonical.
    :raises KernelInputError: (a ``ValueError``, as Airflow expects) user info, a port, a query, no app, no action,
        more than one path segment, or a name the client would refuse.
    """
    text = uri.geturl()
    where = f"asset URI {text!r}"
    if uri.scheme.lower() != SCHEME:
        raise KernelInputError(where, f"does not use the {SCHEME}:// scheme.", f"Write it as {_EXAMPLE}.")
    if "@" in uri.netloc:
        raise KernelInputError(where, "holds user info (before '@').", f"Remove it: {_EXAMPLE}.")
    if ":" in uri.netloc:
        raise KernelInputError(
            where, "holds a port (or a ':' in the app name).", f"Remove it, or write ':' as %3A: {_EXAMPLE}."
        )
    if uri.query:
        raise KernelInputError(
            where,
            "has a query; a Kernel asset is an app action whatever its version or payload.",
            "Remove it: the version that ran is in each asset event's extra.",
        )
    segments = uri.path.split("/")[1:] if uri.path.startswith("/") else [uri.path]
    if len(segments) > 1:
        raise KernelInputError(where, "has more than one path segment.", f"Write it as {_EXAMPLE}.")
    app_name = _decoded("app_name", uri.netloc, text)
    action_name = _decoded("action_name", segments[0] if segments else "", text)
    canonical = kernel_uri(app_name=app_name, action_name=action_name)
    app, _, action = canonical.removeprefix(f"{SCHEME}://").partition("/")
    return SplitResult(scheme=SCHEME, netloc=app, path=f"/{action}", query="", fragment="")


def kernel_asset(*, app_name: str, action_name: str, extra: dict[str, Any] | None = None) -> Asset:
    """The Airflow ``Asset`` (``Dataset`` on Airflow 2.11) of an app action: for ``outlets=[...]`` of the
    Kernel task that runs it, and ``schedule=[...]`` of a DAG that consumes what it produces.

    :param app_name: the deployed app (not a template: assets are fixed when the DAG is parsed).
    :param action_name: the action.
    :param extra: the asset's own ``extra`` (JSON values), not an event's.
    :raises KernelInputError: a name the client would refuse, on every Airflow version.
    """
    from airflow.providers.common.compat.sdk import Asset

    return Asset(uri=kernel_uri(app_name=app_name, action_name=action_name), extra=extra or {})


def create_asset(*, app_name: str, action_name: str, extra: dict[str, Any] | None = None) -> Asset:
    """The scheme's factory, as Airflow's hook lineage calls it (``factory(**asset_kwargs, extra=...)``): the
    same as :func:`kernel_asset`.

    :param app_name: the deployed app.
    :param action_name: the action.
    :param extra: the asset's ``extra``.
    """
    return kernel_asset(app_name=app_name, action_name=action_name, extra=extra)


def convert_asset_to_openlineage(asset: Asset, lineage_context: Any) -> Any:
    """The OpenLineage dataset of a ``kernel://`` asset: namespace ``kernel://<app>``, name ``<action>`` (the
    OpenLineage naming convention of ``scheme://authority`` and path).

    :param asset: the asset (its URI already sanitized by Airflow).
    :param lineage_context: unused (Airflow passes the hook-lineage context).
    """
    from urllib.parse import urlsplit

    from airflow.providers.common.compat.openlineage.facet import Dataset as OpenLineageDataset

    parsed = urlsplit(asset.uri)
    return OpenLineageDataset(namespace=f"{SCHEME}://{parsed.netloc}", name=parsed.path.lstrip("/"))
