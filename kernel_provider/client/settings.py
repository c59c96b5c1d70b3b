"""``KernelSettings``: where Kernel is and how to talk to it, parsed and checked once from plain values.

The fields are those of the provider's Airflow connection (type ``kernel``), but nothing here needs Airflow:

* **password** (or ``api_key``) - the Kernel API key (required). Sent only in the ``Authorization`` header and
  kept out of reprs and error messages.
* **host** - the API base URL, default ``https://api.onkernel.com``. A host without scheme gets ``https://``,
  except loopback hosts (a local emulator), which get ``http://``. ``port`` is appended when set.
* **extra** - ``project_id`` (sent as ``X-Kernel-Project-Id``), ``dashboard_url`` (base of invocation links),
  ``request_timeout`` (read timeout of ordinary calls, default 30 s; sync invokes always get 130 s, above
  Kernel's 100 s cap), ``connect_timeout`` (default 10 s), ``max_retries`` (default 5), ``max_retry_wait``
  (seconds a call may spend retrying, default 120), ``rate_limit_wait`` (seconds a call may spend waiting out
  429s, default 900), ``ca_bundle`` (path of a CA bundle; TLS verification itself cannot be switched off).
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

from kernel_provider import __version__
from kernel_provider.client.errors import KernelConnectionConfigError
from kernel_provider.client.retry import MIN_BUDGET, RetryPolicy

DEFAULT_CONN_ID = "kernel_default"
DEFAULT_BASE_URL = "https://api.onkernel.com"
DEFAULT_DASHBOARD_URL = "https://dashboard.onkernel.com"
DEFAULT_REQUEST_TIMEOUT = 30.0
DEFAULT_CONNECT_TIMEOUT = 10.0
#: What :meth:`KernelSettings.from_mapping` reads; anything else is refused, so a typo is not silently ignored.
FIELDS = frozenset({"conn_id", "host", "port", "password", "api_key", "extra", "airflow_version", "component"})


@dataclass(frozen=True)
class KernelSettings:
    """Everything the client needs to reach Kernel, checked once (build it with :meth:`from_mapping`).

    :param conn_id: names where the settings came from (the Airflow connection id) in error messages only.
    :param base_url: the API base URL, without trailing slash.
    :param api_key: the Kernel API key (left out of the repr).
    :param project_id: sent as ``X-Kernel-Project-Id``; None uses the organisation's default project.
    :param dashboard_url: base of the links :meth:`invocation_url` builds.
    :param request_timeout: read timeout of a request in seconds (a sync create has its own, longer one).
    :param connect_timeout: seconds to establish a connection.
    :param retry: the retry bounds read from the settings (a client may be given others).
    :param verify: True, or the path of a CA bundle. TLS verification cannot be switched off.
    :param airflow_version: the Airflow version to name in the User-Agent; None (outside Airflow) names none.
    :param component: the Airflow component sending the requests (e.g. ``"triggerer"``), added to the User-Agent.
    """

    conn_id: str
    base_url: str
    api_key: str = field(repr=False)
    project_id: str | None = None
    dashboard_url: str = DEFAULT_DASHBOARD_URL
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    verify: bool | str = True
    airflow_version: str | None = None
    component: str | None = None

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None = None, /, **fields: Any) -> KernelSettings:
        """Settings from plain values (a mapping, keyword arguments, or both; keywords win), checked at once.

        :param values: any of :data:`FIELDS`: ``conn_id`` (a label for messages, default ``kernel_default``),
            ``host``, ``port``, ``password`` or ``api_key`` (the API key), ``extra`` (a mapping or JSON text with
            the options in the module docstring), ``airflow_version`` and ``component`` (User-Agent only).
        :param fields: the same, as keyword arguments.
        :raises KernelConnectionConfigError: a field is unknown, the key is missing, the host is not an http(s)
            URL, or an extra is of the wrong type or out of range; the message names the field and the fix.
            Nothing is sent to Kernel to find out.
        """
        given = {**(values or {}), **fields}
        conn_id = str(given.get("conn_id") or DEFAULT_CONN_ID)
        unknown = sorted(set(given) - FIELDS)
        if unknown:
            raise KernelConnectionConfigError(
                f"settings {conn_id!r}",
                f"have unknown fields {', '.join(unknown)}.",
                f"Use only {', '.join(sorted(FIELDS))}.",
            )
        extra = _extra(conn_id, given.get("extra"))
        api_key = str(given.get("password") or given.get("api_key") or "").strip()
        if not api_key:
            raise KernelConnectionConfigError(
                f"connection {conn_id!r}",
                "has no API key.",
                "Put your Kernel API key in the connection's password field (API key in the UI).",
            )
        retry_defaults = RetryPolicy()
        retry = RetryPolicy(
            max_attempts=1 + int(_number(conn_id, extra, "max_retries", retry_defaults.max_attempts - 1, integer=True)),
            max_elapsed=_number(conn_id, extra, "max_retry_wait", retry_defaults.max_elapsed),
            rate_limit_budget=_number(conn_id, extra, "rate_limit_wait", retry_defaults.rate_limit_budget),
        )
        project_id = extra.get("project_id") or None
        if project_id is not None and not isinstance(project_id, str):
            raise KernelConnectionConfigError(
                f"connection {conn_id!r} extra.project_id",
                f"must be a string, got {project_id!r}.",
                "Use the project's ID.",
            )
        ca_bundle = extra.get("ca_bundle")
        return cls(
            conn_id=conn_id,
            base_url=_base_url(conn_id, given.get("host"), given.get("port")),
            api_key=api_key,
            project_id=project_id,
            dashboard_url=str(extra.get("dashboard_url") or DEFAULT_DASHBOARD_URL).rstrip("/"),
            request_timeout=_number(conn_id, extra, "request_timeout", DEFAULT_REQUEST_TIMEOUT, positive=True),
            connect_timeout=_number(conn_id, extra, "connect_timeout", DEFAULT_CONNECT_TIMEOUT, positive=True),
            retry=retry,
            verify=str(ca_bundle) if ca_bundle else True,
            airflow_version=given.get("airflow_version") or None,
            component=given.get("component") or None,
        )

    def headers(self) -> dict[str, str]:
        """The headers every request carries: the key, the project (if any), ``Accept`` and the User-Agent."""
        headers = {
            "Authorization": f"Bearer {self.api_key}",
            "Accept": "application/json",
            "User-Agent": user_agent(self.airflow_version, self.component),
        }
        if self.project_id:
            headers["X-Kernel-Project-Id"] = self.project_id
        return headers

    def invocation_url(self, invocation_id: str) -> str:
        """The invocation's page in Kernel's dashboard (built locally; nothing is sent)."""
        return f"{self.dashboard_url}/invocations/{invocation_id}"

    @property
    def plain_http(self) -> bool:
        """The base URL is plain http to a host that is not loopback: the key would cross the network unencrypted.
        Such settings still work (the caller decides whether to warn)."""
        parts = urlsplit(self.base_url)
        return parts.scheme == "http" and not is_loopback(parts.hostname)

    def same_credentials(self, other: KernelSettings) -> bool:
        """Whether Kernel would judge a request sent with ``other`` as one sent with these settings (same URL, key,
        project and CA bundle): settings read again that differ here are worth one more try after a 401/403."""
        return (self.base_url, self.api_key, self.project_id, self.verify) == (
            other.base_url,
            other.api_key,
            other.project_id,
            other.verify,
        )

    def within(self, seconds: float) -> KernelSettings:
        """These settings with the connect and read timeouts cut to ``seconds`` (at least
        :data:`~kernel_provider.client.retry.MIN_BUDGET`), for one request of a call that has a time budget."""
        seconds = max(MIN_BUDGET, seconds)
        return replace(
            self, request_timeout=min(self.request_timeout, seconds), connect_timeout=min(self.connect_timeout, seconds)
        )


@lru_cache(maxsize=32)
def user_agent(airflow_version: str | None = None, component: str | None = None) -> str:
    """The User-Agent: ``airflow-provider-kernel/<version>``, then ``apache-airflow/<version>`` and ``(component)``
    when given, so Kernel-side request logs show what sent a request.

    :param airflow_version: the running Airflow's version (the hook passes it); None leaves Airflow out.
    :param component: e.g. ``"triggerer"``; None leaves it out.
    """
    text = f"airflow-provider-kernel/{__version__}"
    if airflow_version:
        text += f" apache-airflow/{airflow_version}"
    return text + (f" ({component})" if component else "")


def is_loopback(hostname: str | None) -> bool:
    """Whether ``hostname`` is ``localhost`` or a loopback IP address (bracketed IPv6 accepted); names are not
    resolved."""
    if not hostname:
        return False
    if hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(hostname.strip("[]")).is_loopback
    except ValueError:
        return False


def _extra(conn_id: str, extra: Any) -> Mapping[str, Any]:
    if extra is None or extra == "":
        return {}
    if isinstance(extra, (str, bytes)):
        try:
            extra = json.loads(extra)
        except ValueError:
            raise KernelConnectionConfigError(
                f"connection {conn_id!r} extra", "is not valid JSON.", "Write the extra as a JSON object."
            ) from None
    if not isinstance(extra, Mapping):
        raise KernelConnectionConfigError(
            f"connection {conn_id!r} extra",
            f"must be a JSON object, got {type(extra).__name__}.",
            "Write the extra as a JSON object.",
        )
    return extra


def _base_url(conn_id: str, host: str | None, port: int | None) -> str:
    text = (host or "").strip().rstrip("/") or DEFAULT_BASE_URL
    try:
        if "://" not in text:
            text = f"{'http' if is_loopback(urlsplit('//' + text).hostname) else 'https'}://{text}"
        parts = urlsplit(text)
        parsed_port = parts.port
    except ValueError as exc:
        raise KernelConnectionConfigError(
            f"connection {conn_id!r} host", f"is not a valid URL: {exc}.", "Use e.g. https://api.onkernel.com"
        ) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise KernelConnectionConfigError(
            f"connection {conn_id!r} host", f"is not a valid base URL: {text!r}.", "Use e.g. https://api.onkernel.com"
        )
    if port and not parsed_port:
        text = f"{parts.scheme}://{parts.netloc}:{int(port)}{parts.path}"
    return text.rstrip("/")


def _number(
    conn_id: str, extra: Mapping[str, Any], key: str, default: float, *, integer: bool = False, positive: bool = False
) -> float:
    value = extra.get(key)
    if value is None or value == "":
        return default
    try:
        number = float(value)
        if integer and number != int(number):
            raise ValueError
    except (TypeError, ValueError, OverflowError):
        raise KernelConnectionConfigError(
            f"connection {conn_id!r} extra.{key}",
            f"must be a {'whole ' if integer else ''}number, got {value!r}.",
            "Fix or remove it in the connection's extra.",
        ) from None
    if number < 0 or (positive and number == 0):
        raise KernelConnectionConfigError(
            f"connection {conn_id!r} extra.{key}",
            f"is {value}; it must be > 0.",
            "Fix or remove it in the connection's extra.",
        )
    return number
