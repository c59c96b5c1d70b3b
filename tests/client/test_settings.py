"""``KernelSettings.from_mapping``: defaults, base-URL rules, number checks and their messages (no Airflow)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kernel_provider.client.errors import KernelConnectionConfigError, KernelInputError
from kernel_provider.client.retry import RetryPolicy
from kernel_provider.client.settings import CA_BUNDLE_ENV, KernelSettings, is_loopback, user_agent

pytestmark = pytest.mark.usefixtures("no_ca_environment")


def test_defaults() -> None:
    settings = KernelSettings.from_mapping(password=" sk_test ")
    assert (settings.conn_id, settings.base_url, settings.api_key) == (
        "kernel_default",
        "https://api.onkernel.com",
        "sk_test",
    )
    assert (settings.request_timeout, settings.connect_timeout, settings.verify) == (30.0, 10.0, True)
    assert settings.retry == RetryPolicy(max_attempts=6, max_elapsed=120.0, rate_limit_budget=900.0)
    assert settings.invocation_url("abc") == "https://dashboard.onkernel.com/invocations/abc"
    assert "X-Kernel-Project-Id" not in settings.headers()
    assert "sk_test" not in repr(settings)


def test_a_mapping_and_keywords_combine_and_the_extra_may_be_json_text(tmp_path: Path) -> None:
    bundle = tmp_path / "ca.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    settings = KernelSettings.from_mapping(
        {"conn_id": "mine", "host": "kernel.example.com", "port": 8443, "api_key": "k"},
        extra='{"project_id": "proj_1", "dashboard_url": "https://dash.example.com/", "request_timeout": "5",'
        ' "connect_timeout": 2, "max_retries": 2, "max_retry_wait": 30, "rate_limit_wait": 60,'
        f' "ca_bundle": "{bundle}"}}',
    )
    assert settings.base_url == "https://kernel.example.com:8443" and settings.conn_id == "mine"
    assert settings.headers()["X-Kernel-Project-Id"] == "proj_1"
    assert settings.invocation_url("x") == "https://dash.example.com/invocations/x"
    assert (settings.request_timeout, settings.connect_timeout, settings.verify) == (5.0, 2.0, str(bundle))
    assert (settings.retry.max_attempts, settings.retry.max_elapsed, settings.retry.rate_limit_budget) == (3, 30, 60)


@pytest.mark.parametrize(
    ("host", "port", "expected"),
    [
        (None, None, "https://api.onkernel.com"),
        ("api.onkernel.com", None, "https://api.onkernel.com"),
        ("https://api.onkernel.com/", None, "https://api.onkernel.com"),
        ("127.0.0.1:8080", None, "http://127.0.0.1:8080"),
        ("localhost", 9000, "http://localhost:9000"),
        ("[::1]:7000", None, "http://[::1]:7000"),
        ("https://kernel.example.com:444/api/", 555, "https://kernel.example.com:444/api"),
        ("kernel.example.com", 0, "https://kernel.example.com"),  # Airflow's form sends port 0 for "none"
    ],
)
def test_base_url_rules(host: str | None, port: int | None, expected: str) -> None:
    assert KernelSettings.from_mapping(host=host, port=port, password="k").base_url == expected


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({}, ("connection 'kernel_default'", "has no API key", "password")),
        ({"password": "   "}, ("has no API key",)),
        ({"password": "k", "host": "ftp://example.com"}, ("host", "not a valid base URL")),
        ({"password": "k", "host": "https://[bad"}, ("host", "not a valid URL")),
        ({"password": "k", "extra": {"max_retries": "lots"}}, ("extra.max_retries", "whole number", "lots")),
        ({"password": "k", "extra": {"max_retries": 1.5}}, ("extra.max_retries", "whole number")),
        ({"password": "k", "extra": {"max_retries": float("inf")}}, ("extra.max_retries", "whole number")),
        ({"password": "k", "extra": {"request_timeout": 0}}, ("extra.request_timeout", "> 0")),
        ({"password": "k", "extra": {"rate_limit_wait": -1}}, ("extra.rate_limit_wait", "> 0")),
        ({"password": "k", "extra": {"project_id": 7}}, ("extra.project_id", "string")),
        ({"password": "k", "extra": "{not json"}, ("extra", "not valid JSON")),
        ({"password": "k", "extra": [1]}, ("extra", "JSON object", "list")),
        ({"password": "k", "hots": "typo"}, ("unknown fields hots",)),
    ],
)
def test_bad_settings_name_the_field_and_the_fix(fields: dict[str, Any], words: tuple[str, ...]) -> None:
    with pytest.raises(KernelConnectionConfigError) as raised:
        KernelSettings.from_mapping(fields)
    for word in words:
        assert word in str(raised.value)


def test_user_agent_names_airflow_only_when_told() -> None:
    assert user_agent().startswith("airflow-provider-kernel/") and "apache-airflow" not in user_agent()
    assert user_agent("3.3.2", "triggerer").endswith(" apache-airflow/3.3.2 (triggerer)")
    settings = KernelSettings.from_mapping(password="k", airflow_version="2.11.2", component="worker")
    assert settings.headers()["User-Agent"] == user_agent("2.11.2", "worker")


def test_plain_http_is_refused_except_on_loopback_or_when_opted_in() -> None:
    with pytest.raises(KernelConnectionConfigError) as raised:
        KernelSettings.from_mapping(host="http://kernel.internal", password="k")
    assert "host" in str(raised.value) and "allow_insecure_http: true" in str(raised.value)
    for opt_in in (True, "true", "True"):
        settings = KernelSettings.from_mapping(
            host="http://kernel.internal", password="k", extra={"allow_insecure_http": opt_in}
        )
        assert settings.plain_http and settings.allow_insecure_http
    with pytest.raises(KernelConnectionConfigError, match=r"extra\.allow_insecure_http"):
        KernelSettings.from_mapping(host="http://kernel.internal", password="k", extra={"allow_insecure_http": "yes"})
    assert not KernelSettings.from_mapping(host="localhost:8080", password="k").plain_http
    assert not KernelSettings.from_mapping(password="k").plain_http
    assert is_loopback("127.0.0.2") and is_loopback("[::1]") and not is_loopback("example.com")


def test_same_credentials_and_cut_timeouts() -> None:
    one = KernelSettings.from_mapping(password="k", extra={"request_timeout": 30})
    assert one.same_credentials(KernelSettings.from_mapping(password="k", component="triggerer"))
    assert not one.same_credentials(KernelSettings.from_mapping(password="k2"))
    assert not one.same_credentials(KernelSettings.from_mapping(password="k", extra={"project_id": "p"}))
    cut = one.within(2.0)
    assert (cut.request_timeout, cut.connect_timeout) == (2.0, 2.0)
    assert one.within(-3).request_timeout == 0.05


# --- what the connection may hold (issue 25) ---------------------------------------------------------------------

KEY = "sk_live_0123456789abcdef"


@pytest.mark.parametrize("bad", [f"{KEY[:10]}\n{KEY[10:]}", f"{KEY}\x00x", f"{KEY[:8]}\u2019{KEY[8:]}", "sk_\x7f_key"])
@pytest.mark.parametrize("where", ["password", "api_key", "project_id"])
def test_header_text_is_printable_ascii_or_refused_without_echo(bad: str, where: str) -> None:
    fields: dict[str, Any] = {"password": KEY}
    if where == "project_id":
        fields["extra"] = {"project_id": bad}
    else:
        fields = {where: bad}
    with pytest.raises(KernelConnectionConfigError) as raised:
        KernelSettings.from_mapping(fields)
    message = str(raised.value)
    assert ("extra.project_id" if where == "project_id" else "password") in message
    assert "printable ASCII" in message and "not shown" in message
    for part in bad.replace("\n", " ").replace("\x00", " ").replace("\u2019", " ").split():
        assert len(part) < 4 or part not in message  # no fragment of the value is echoed
    assert repr(bad) not in repr(raised.value)


def test_the_ends_are_stripped_before_the_check() -> None:
    settings = KernelSettings.from_mapping(password=f" {KEY}\n", extra={"project_id": " proj_1\t"})
    assert settings.api_key == KEY and settings.project_id == "proj_1"


def test_settings_built_directly_are_checked_too() -> None:
    with pytest.raises(KernelConnectionConfigError, match="password"):
        KernelSettings(conn_id="c", base_url="https://api.onkernel.com", api_key="a\nb")


@pytest.mark.parametrize("value", ["False", "false", "true", "0", "1", "no", True, False, 0])
def test_a_boolean_looking_ca_bundle_is_refused(value: Any) -> None:
    with pytest.raises(KernelConnectionConfigError) as raised:
        KernelSettings.from_mapping(password="k", extra={"ca_bundle": value})
    assert "extra.ca_bundle" in str(raised.value) and "cannot be switched off" in str(raised.value)


def test_a_missing_ca_bundle_is_refused_at_load(tmp_path: Path) -> None:
    with pytest.raises(KernelConnectionConfigError) as raised:
        KernelSettings.from_mapping(password="k", extra={"ca_bundle": str(tmp_path / "nope.pem")})
    assert "extra.ca_bundle" in str(raised.value) and "does not exist" in str(raised.value)


def test_without_ca_bundle_the_environment_decides_once_in_a_documented_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = {}
    for name in CA_BUNDLE_ENV:
        files[name] = tmp_path / name
        files[name].write_text("")
    assert KernelSettings.from_mapping(password="k").verify is True
    for name in reversed(CA_BUNDLE_ENV):  # each variable set wins over the ones after it
        monkeypatch.setenv(name, str(files[name]))
        assert KernelSettings.from_mapping(password="k").verify == str(files[name])
    own = tmp_path / "own.pem"
    own.write_text("")
    assert KernelSettings.from_mapping(password="k", extra={"ca_bundle": str(own)}).verify == str(own)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tmp_path / "gone.pem"))
    with pytest.raises(KernelConnectionConfigError, match="REQUESTS_CA_BUNDLE"):
        KernelSettings.from_mapping(password="k")


@pytest.mark.parametrize(
    "url", ["javascript:alert(1)", "data:text/html,x", "/relative", "dashboard.example.com", "ftp://x.example", 7]
)
def test_dashboard_url_must_be_absolute_http(url: Any) -> None:
    with pytest.raises(KernelConnectionConfigError, match=r"extra\.dashboard_url"):
        KernelSettings.from_mapping(password="k", extra={"dashboard_url": url})


@pytest.mark.parametrize(
    ("host", "words"),
    [
        ("https://user:s3cret@kernel.example.com", ("credentials", "not shown")),
        ("https://kernel.example.com/?x=1", ("no query",)),
        ("https://kernel.example.com/#f", ("no query",)),
    ],
)
def test_base_url_holds_no_credentials_query_or_fragment(host: str, words: tuple[str, ...]) -> None:
    with pytest.raises(KernelConnectionConfigError) as raised:
        KernelSettings.from_mapping(password="k", host=host)
    assert all(w in str(raised.value) for w in words) and "s3cret" not in str(raised.value)


def test_invocation_links_take_only_ids() -> None:
    settings = KernelSettings.from_mapping(password="k", extra={"dashboard_url": "https://dash.example.com/"})
    assert settings.invocation_url("rr33xuugxj9h0bkf1rdt2bet").endswith("/invocations/rr33xuugxj9h0bkf1rdt2bet")
    for bad in ("..", ".", "", "a/b", "a?b=1", "a#b", "javascript:x"):
        with pytest.raises(KernelInputError, match="invocation_id"):
            settings.invocation_url(bad)
