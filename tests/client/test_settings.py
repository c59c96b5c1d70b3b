"""``KernelSettings.from_mapping``: defaults, base-URL rules, number checks and their messages (no Airflow)."""

from __future__ import annotations

from typing import Any

import pytest

from kernel_provider.client.errors import KernelConnectionConfigError
from kernel_provider.client.retry import RetryPolicy
from kernel_provider.client.settings import KernelSettings, is_loopback, user_agent


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


def test_a_mapping_and_keywords_combine_and_the_extra_may_be_json_text() -> None:
    settings = KernelSettings.from_mapping(
        {"conn_id": "mine", "host": "kernel.example.com", "port": 8443, "api_key": "k"},
        extra='{"project_id": "proj_1", "dashboard_url": "https://dash.example.com/", "request_timeout": "5",'
        ' "connect_timeout": 2, "max_retries": 2, "max_retry_wait": 30, "rate_limit_wait": 60,'
        ' "ca_bundle": "/etc/ca.pem"}',
    )
    assert settings.base_url == "https://kernel.example.com:8443" and settings.conn_id == "mine"
    assert settings.headers()["X-Kernel-Project-Id"] == "proj_1"
    assert settings.invocation_url("x") == "https://dash.example.com/invocations/x"
    assert (settings.request_timeout, settings.connect_timeout, settings.verify) == (5.0, 2.0, "/etc/ca.pem")
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


def test_plain_http_is_flagged_except_on_loopback() -> None:
    assert KernelSettings.from_mapping(host="http://kernel.internal", password="k").plain_http
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
