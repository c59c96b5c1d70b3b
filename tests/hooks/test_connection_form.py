"""The Kernel connection form: what the hook tells Airflow < 3.2, and the add-connection page Airflow 2.11 renders.

Airflow 2.x validates ``get_ui_field_behaviour()`` against its own ``customized_form_field_behaviours.schema.json``
(snake-case keys) and silently drops an answer that does not match it: the form then shows Login, Schema and Port
and none of the Kernel labels. Airflow 3.2+ reads the kebab-case ``ui-field-behaviour`` of provider info instead.
"""

from __future__ import annotations

import html
import json
from html.parser import HTMLParser
from importlib import resources
from typing import Any

import pytest
import requests
from airflow import __version__ as AIRFLOW_VERSION

from kernel_provider.client.settings import KernelSettings
from kernel_provider.get_provider_info import get_provider_info
from kernel_provider.hooks.kernel import KernelHook
from tests.airflow_helpers import AF2

SCHEMA_FILE = "customized_form_field_behaviours.schema.json"
CONN_TYPE = get_provider_info()["connection-types"][0]


def _airflow_schema() -> dict[str, Any]:
    path = resources.files("airflow") / SCHEMA_FILE
    if not path.is_file():
        pytest.skip(f"Airflow {AIRFLOW_VERSION} ships no airflow/{SCHEMA_FILE} to validate against")
    return json.loads(path.read_text())


# --- what the hook answers ------------------------------------------------------------------------------


def test_ui_field_behaviour_validates_against_airflows_schema() -> None:
    import jsonschema

    schema = _airflow_schema()
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    behaviour = KernelHook.get_ui_field_behaviour()

    errors = [error.message for error in validator_class(schema).iter_errors(behaviour)]

    assert errors == []
    # The schema allows extra keys, so a kebab-case key next to the snake-case ones would pass it unnoticed.
    assert set(behaviour) == {"hidden_fields", "relabeling", "placeholders"}


def test_ui_field_behaviour_hides_and_relabels_the_kernel_fields() -> None:
    behaviour = KernelHook.get_ui_field_behaviour()

    assert sorted(behaviour["hidden_fields"]) == ["login", "port", "schema"]
    assert behaviour["relabeling"] == {"host": "Base URL", "password": "API key"}
    assert behaviour["placeholders"]["host"] == "https://api.onkernel.com"
    assert behaviour["placeholders"]["password"] == "sk_..."


def test_ui_field_behaviour_is_derived_from_provider_info() -> None:
    """One source of truth: the hook's answer is provider info's ``ui-field-behaviour`` under snake-case keys."""
    provider_behaviour = CONN_TYPE["ui-field-behaviour"]

    behaviour = KernelHook.get_ui_field_behaviour()

    assert behaviour == {
        "hidden_fields": provider_behaviour["hidden-fields"],
        "relabeling": provider_behaviour["relabeling"],
        "placeholders": provider_behaviour["placeholders"],
    }
    # Provider info itself stays kebab-case: that is what Airflow 3.2+ reads.
    assert "hidden-fields" in provider_behaviour and "hidden_fields" not in provider_behaviour


def test_providers_manager_keeps_the_kernel_field_behaviour() -> None:
    """The installed Airflow's ProvidersManager (hook path on 2.x, provider info on 3.2+) accepts the behaviour."""
    import importlib.util

    from airflow.providers_manager import ProvidersManager

    if AIRFLOW_VERSION.startswith(("3.0.", "3.1.")) and importlib.util.find_spec("flask_appbuilder") is None:
        pytest.skip(
            f"Airflow {AIRFLOW_VERSION} reads a hook's form behaviour only with flask_appbuilder installed (it is "
            "not here), and then customizes no provider's connection form"
        )

    kernel = ProvidersManager().field_behaviours.get("kernel")

    assert kernel is not None, "Airflow dropped the Kernel connection form behaviour (see its log for why)"
    assert sorted(kernel["hidden_fields"]) == ["login", "port", "schema"]
    assert kernel["relabeling"] == {"host": "Base URL", "password": "API key"}


#: A value other than the default for every extra of the form (a CA bundle must exist: requests' own one).
NOT_DEFAULT = {
    "project_id": "proj_form",
    "dashboard_url": "https://dashboard.example.com",
    "request_timeout": 31,
    "connect_timeout": 11,
    "max_retries": 6,
    "max_retry_wait": 121,
    "rate_limit_wait": 901,
    "ca_bundle": requests.utils.DEFAULT_CA_BUNDLE_PATH,
    "allow_insecure_http": True,
}


def test_the_form_offers_every_extra_the_client_reads_with_the_clients_defaults() -> None:
    """Each form field is an extra the settings read (a non-default value changes them), and the form's default is
    the client's (the default given explicitly changes nothing)."""
    fields = CONN_TYPE["conn-fields"]
    assert set(fields) == set(NOT_DEFAULT)
    base = {"host": "https://api.example.com", "password": "sk_form"}
    plain = KernelSettings.from_mapping(base)
    for key, field in fields.items():
        changed = KernelSettings.from_mapping({**base, "extra": {key: NOT_DEFAULT[key]}})
        assert changed != plain, f"extra {key!r} is offered by the form but not read"
        if "default" in field["schema"]:
            given = KernelSettings.from_mapping({**base, "extra": {key: field["schema"]["default"]}})
            assert given == plain, f"the form's default for {key!r} is not the client's"


# --- the add-connection page as Airflow 2.11's Flask UI renders it ------------------------------------


class _FormPage(HTMLParser):
    """The parts of the page connection_form.js works with: element ids, labels and the field_behaviours script."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.labels: dict[str, str] = {}
        self.scripts: dict[str, str] = {}
        self.options: dict[str, str] = {}
        self._label_for: str | None = None
        self._script_id: str | None = None
        self._option_value: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if attributes.get("id"):
            self.ids.add(str(attributes["id"]))
        if tag == "label" and attributes.get("for"):
            self._label_for = str(attributes["for"])
            self.labels[self._label_for] = ""
        elif tag == "script" and attributes.get("id"):
            self._script_id = str(attributes["id"])
            self.scripts[self._script_id] = ""
        elif tag == "option" and attributes.get("value") is not None:
            self._option_value = str(attributes["value"])
            self.options[self._option_value] = ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "label":
            self._label_for = None
        elif tag == "script":
            self._script_id = None
        elif tag == "option":
            self._option_value = None

    def handle_data(self, data: str) -> None:
        if self._label_for is not None:
            self.labels[self._label_for] += data
        if self._script_id is not None:
            self.scripts[self._script_id] += data
        if self._option_value is not None:
            self.options[self._option_value] += data


@pytest.fixture(scope="module")
def af2_webserver(airflow_db: Any) -> Any:
    if not AF2:
        pytest.skip(f"Airflow {AIRFLOW_VERSION} has no Flask webserver (airflow.www); its UI reads provider info")
    from airflow.www.app import create_app

    # The FAB auth manager gives anonymous users the public role: make that Admin instead of logging a user in.
    app = create_app(config={"AUTH_ROLE_PUBLIC": "Admin"}, testing=True)
    return app.test_client()


@pytest.fixture(scope="module")
def add_connection_page(af2_webserver: Any) -> _FormPage:
    response = af2_webserver.get("/connection/add")
    assert response.status_code == 200, response.headers.get("Location")
    page = _FormPage()
    page.feed(response.get_data(as_text=True))
    page.close()
    return page


def _field_behaviours(page: _FormPage) -> dict[str, Any]:
    """Decode the embedded config as connection_form.js does: HTML-decode the script's text, then JSON.parse."""
    assert "field_behaviours" in page.scripts, "the page embeds no field_behaviours script"
    return json.loads(html.unescape(page.scripts["field_behaviours"]))


def test_af2_add_connection_page_offers_the_kernel_type(add_connection_page: _FormPage) -> None:
    assert add_connection_page.options.get("kernel") == CONN_TYPE["hook-name"]


def test_af2_add_connection_page_embeds_kernel_field_behaviours(add_connection_page: _FormPage) -> None:
    behaviours = _field_behaviours(add_connection_page)

    assert "kernel" in behaviours, f"no behaviour for conn type kernel; the page has {sorted(behaviours)}"
    kernel = behaviours["kernel"]
    assert sorted(kernel["hidden_fields"]) == ["login", "port", "schema"]
    assert kernel["relabeling"] == {"host": "Base URL", "password": "API key"}
    assert kernel["placeholders"] == CONN_TYPE["ui-field-behaviour"]["placeholders"]
    # connection_form.js looks every named field up by id (and relabels label[for=...]); a missing one throws.
    named = {*kernel["hidden_fields"], *kernel["relabeling"], *kernel["placeholders"]}
    assert named <= add_connection_page.ids
    assert set(kernel["relabeling"]) <= set(add_connection_page.labels)


def test_af2_add_connection_page_renders_the_kernel_extra_widgets(add_connection_page: _FormPage) -> None:
    widgets = KernelHook.get_connection_form_widgets()
    assert list(widgets) == list(CONN_TYPE["conn-fields"])  # every documented extra, on both forms

    for name, field in widgets.items():
        field_id = f"extra__kernel__{name}"
        assert field_id in add_connection_page.ids
        assert add_connection_page.labels.get(field_id, "").strip() == str(field.args[0])
    assert add_connection_page.labels["extra__kernel__project_id"].strip() == "Project ID"
