"""Provider info as the installed Airflow checks it: ProvidersManager validates it against the schema it ships."""

from __future__ import annotations

import importlib
import json
from importlib import resources

import pytest
from airflow import __version__ as AIRFLOW_VERSION

from kernel_provider import __version__
from kernel_provider.get_provider_info import get_provider_info


def test_provider_info_validates_against_the_installed_airflows_schema() -> None:
    import jsonschema

    path = resources.files("airflow") / "provider_info.schema.json"
    if not path.is_file():
        pytest.skip(f"Airflow {AIRFLOW_VERSION} ships no provider_info.schema.json")
    schema = json.loads(path.read_text())

    errors = [error.message for error in jsonschema.Draft7Validator(schema).iter_errors(get_provider_info())]

    assert errors == []


def test_provider_info_names_this_release_and_kernels_docs() -> None:
    info = get_provider_info()

    assert info["versions"] == [__version__]
    assert info["integrations"][0]["external-doc-url"] == "https://kernel.sh/docs"
    assert "onkernel" not in info["description"]


def test_the_kernel_asset_scheme_is_declared_under_both_airflow_versions_keys() -> None:
    info = get_provider_info()

    # Airflow 3 reads asset-uris, Airflow 2.11 dataset-uris: the same entry under both.
    assert info["asset-uris"] == info["dataset-uris"]
    [entry] = info["asset-uris"]
    assert entry["schemes"] == ["kernel"]
    for key in ("handler", "factory", "to_openlineage_converter"):
        module, _, name = entry[key].rpartition(".")
        assert callable(getattr(importlib.import_module(module), name)), key
