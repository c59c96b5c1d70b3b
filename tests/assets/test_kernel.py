"""The ``kernel://`` asset URI: normalisation and validation (pure), and the scheme as the installed Airflow sees
it through the provider info (Airflow 3 refuses a bad URI at parse; 2.11 warns, ``kernel_asset`` refuses)."""

from __future__ import annotations

import warnings
from urllib.parse import urlsplit

import pytest

from kernel_provider.assets.kernel import (
    convert_asset_to_openlineage,
    create_asset,
    kernel_asset,
    kernel_uri,
    sanitize_uri,
)
from kernel_provider.exceptions import KernelInputError
from tests.airflow_helpers import AF2


def sanitized(uri: str) -> str:
    return sanitize_uri(urlsplit(uri)).geturl()


@pytest.mark.parametrize(
    ("given", "canonical"),
    [
        ("kernel://demo-shop/scrape_prices", "kernel://demo-shop/scrape_prices"),
        ("KERNEL://demo-shop/scrape_prices", "kernel://demo-shop/scrape_prices"),
        ("kernel://Shop.v2/Run~1", "kernel://Shop.v2/Run~1"),  # case kept: Kernel's names are case-sensitive
        ("kernel://my app/run now", "kernel://my%20app/run%20now"),
        ("kernel://my%20app/a%2fb", "kernel://my%20app/a%2Fb"),  # upper-case hex; a '/' in a name stays encoded
        ("kernel://%61pp/%72un", "kernel://app/run"),  # needless escapes decoded
        ("kernel://caf%C3%A9/run", "kernel://caf%C3%A9/run"),
        ("kernel://app%3A1/run", "kernel://app%3A1/run"),
        ("kernel://app/run#section", "kernel://app/run"),  # a fragment is dropped
    ],
)
def test_good_uris_are_written_canonically(given: str, canonical: str) -> None:
    assert sanitized(given) == canonical
    assert sanitized(canonical) == canonical  # idempotent


@pytest.mark.parametrize(
    ("given", "problem"),
    [
        ("kernel://app/", "has no action name"),
        ("kernel:///run", "has no app name"),
        ("kernel://user@app/run", "holds user info"),
        ("kernel://app:8080/run", "holds a port"),
        ("kernel://app/run?version=v2", "has a query"),
        ("kernel://app/run/more", "more than one path segment"),
        ("kernel://%20app/run", "its app_name has leading or trailing spaces"),
        ("kernel://app/%20", "its action_name must not be empty"),
        ("kernel://%ff/run", "its app name is not percent-encoded UTF-8"),
        ("s3://app/run", "does not use the kernel:// scheme"),
    ],
)
def test_bad_uris_are_refused_naming_the_problem_and_the_fix(given: str, problem: str) -> None:
    with pytest.raises(KernelInputError) as caught:
        sanitized(given)

    message = str(caught.value)
    assert message.startswith("asset URI ")
    assert problem in message
    assert isinstance(caught.value, ValueError)  # what Airflow expects of a URI handler


def test_kernel_uri_checks_names_as_the_client_does() -> None:
    assert kernel_uri(app_name="demo-shop", action_name="scrape prices") == "kernel://demo-shop/scrape%20prices"
    with pytest.raises(KernelInputError, match=r"^app_name: must not be empty"):
        kernel_uri(app_name=" ", action_name="run")
    with pytest.raises(KernelInputError, match=r"^action_name: must be a string, got int"):
        kernel_uri(app_name="app", action_name=3)  # type: ignore[arg-type]


# --- through Airflow ---------------------------------------------------------------------------------------------


def test_kernel_asset_is_the_airflow_asset_of_the_action() -> None:
    from airflow.providers.common.compat.sdk import Asset

    asset = kernel_asset(app_name="demo-shop", action_name="scrape_prices", extra={"team": "pricing"})

    assert isinstance(asset, Asset)  # a Dataset on Airflow 2.11
    assert (asset.uri, asset.extra) == ("kernel://demo-shop/scrape_prices", {"team": "pricing"})
    assert create_asset(app_name="demo-shop", action_name="scrape_prices") == kernel_asset(
        app_name="demo-shop", action_name="scrape_prices"
    )
    with pytest.raises(KernelInputError, match="app_name: has leading or trailing spaces"):
        kernel_asset(app_name="demo-shop ", action_name="scrape_prices")


def test_airflow_normalises_kernel_uris_through_the_provider_info() -> None:
    from airflow.providers.common.compat.sdk import Asset

    assert Asset("KERNEL://demo-shop/scrape%5fprices/").uri == "kernel://demo-shop/scrape_prices"


def test_airflow_refuses_a_bad_kernel_uri_where_it_enforces_uris() -> None:
    from airflow.providers.common.compat.sdk import Asset

    if not AF2:
        with pytest.raises(ValueError, match="has a query"):
            Asset("kernel://demo-shop/scrape_prices?version=2")
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Asset("kernel://demo-shop/scrape_prices?version=2")
    assert any("has a query" in str(w.message) for w in caught)


def test_the_scheme_is_registered_with_the_handler_factory_and_converter() -> None:
    if AF2:
        from airflow.providers_manager import ProvidersManager

        manager = ProvidersManager()
        handlers, factories = manager.dataset_uri_handlers, manager.dataset_factories
        converters = manager.dataset_to_openlineage_converters
    else:
        try:  # Airflow 3.2+: the task runtime's own registry
            from airflow.sdk.providers_manager_runtime import ProvidersManagerTaskRuntime as Registry
        except ImportError:  # Airflow 3.0, 3.1
            from airflow.providers_manager import ProvidersManager as Registry  # type: ignore[assignment]

        runtime = Registry()
        handlers, factories = runtime.asset_uri_handlers, runtime.asset_factories
        converters = runtime.asset_to_openlineage_converters

    assert handlers["kernel"] is sanitize_uri
    assert factories["kernel"] is create_asset
    assert converters["kernel"] is convert_asset_to_openlineage


def test_the_openlineage_dataset_is_named_by_app_and_action() -> None:
    dataset = convert_asset_to_openlineage(kernel_asset(app_name="demo-shop", action_name="scrape_prices"), None)

    try:
        import openlineage.client  # noqa: F401
    except ImportError:  # Airflow's compat facet is a no-op without the OpenLineage client
        assert dataset is None
        return
    assert (dataset.namespace, dataset.name) == ("kernel://demo-shop", "scrape_prices")
