"""``KernelSettings``: where Kernel is and how to talk to it, parsed and checked once from plain values.

The fields are those of the provider's Airflow connection (type ``kernel``), but nothing here needs Airflow:

* **password** (or ``api_key``) - the Kernel API key (required). Sent only in the ``Authorization`` header and
  kept out of reprs and error messages. Printable ASCII only once the ends are stripped: a key holding a line
  break, a NUL or a non-ASCII character (a bad paste) is refused here, without echoing it.
* **host** - the API base URL, default ``https://api.onkernel.com``. A host without scheme gets ``https://``,
  except loopback hosts (a local emulator), which get ``http://``. ``port`` is appended when set. Plain
  ``http://`` to a host that is not loopback is refused unless the extra sets ``allow_insecure_http: true``.
* **extra** - ``project_id`` (sent as ``X-Kernel-Project-Id``; printable ASCII), ``dashboard_url`` (base of
  invocation links; an absolute http(s) URL), ``request_timeout`` (read timeout of ordinary calls, default 30 s;
  sync invokes always get 130 s, above Kernel's 100 s cap), ``connect_timeout`` (default 10 s), ``max_retries``
  (default 5), ``max_retry_wait`` (seconds a call may spend retrying, default 120), ``rate_limit_wait`` (seconds a
  call may spend waiting out 429s, default 900), ``ca_bundle`` (path of an existing CA bundle file or directory;
  TLS verification itself cannot be switched off, so ``"false"`` and other boolean-looking values are refused),
  ``allow_insecure_http`` (true to allow a plain-http base URL to a non-loopback host; default false).

Trust (:func:`resolve_ca_bundle`): ``ca_bundle``, else the environment's ``REQUESTS_CA_BUNDLE``,
``CURL_CA_BUNDLE``, ``SSL_CERT_FILE`` or ``SSL_CERT_DIR`` (the first set), else the bundle requests ships with
(certifi's). It is resolved once, when the settings are read, into :attr:`KernelSettings.verify`; the worker's
requests and the triggerer's httpx both verify with exactly that.
"""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any
from urllib.parse import quote, urlsplit

from kernel_provider import __version__
from kernel_provider.client.errors import KernelConnectionConfigError
from kernel_provider.client.retry import MIN_BUDGET, RetryPolicy
from kernel_provider.client.trust import absolute_url, is_printable_ascii, require_id

DEFAULT_CONN_ID = "kernel_default"
DEFAULT_BASE_URL = "https://api.onkernel.com"
DEFAULT_DASHBOARD_URL = "https://dashboard.onkernel.com"
DEFAULT_REQUEST_TIMEOUT = 30.0
DEFAULT_CONNECT_TIMEOUT = 10.0
#: What :meth:`KernelSettings.from_mapping` reads; anything else is refused, so a typo is not silently ignored.
FIELDS = frozenset({"conn_id", "host", "port", "password", "api_key", "extra", "airflow_version", "component"})
#: Where a CA bundle is looked for when the connection names none, in this order (what requests and httpx read).
CA_BUNDLE_ENV = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE", "SSL_CERT_DIR")
_BOOLEAN_WORDS = frozenset({"true", "false", "yes", "no", "on", "off", "1", "0", "none", "null"})


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
    :param verify: True (the bundle requests ships with), or the path of a CA bundle file or directory, resolved
        once (see :func:`resolve_ca_bundle`) and used by both transports. TLS verification cannot be switched off.
    :param airflow_version: the Airflow version to name in the User-Agent; None (outside Airflow) names none.
    :param component: the Airflow component sending the requests (e.g. ``"triggerer"``), added to the User-Agent.
    :param allow_insecure_http: the connection opted into a plain-http base URL to a host that is not loopback.
    :raises KernelConnectionConfigError: when built, if the key, the project id or a User-Agent part is not
        printable ASCII (nothing of the value is shown).
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
    allow_insecure_http: bool = False

    def __post_init__(self) -> None:
        # Header text is checked whichever way the settings were built (from_mapping, the constructor, replace):
        # an HTTP library would refuse it and quote the value, the key included, into its error.
        for name, value, fix in (
            ("password", self.api_key, "Paste the Kernel API key again into the connection's password field"),
            ("extra.project_id", self.project_id, "Set extra.project_id to the project's ID as Kernel shows it"),
            ("airflow_version", self.airflow_version, "Pass the version as plain text"),
            ("component", self.component, "Pass the component's name as plain text"),
        ):
            if value is not None and not is_printable_ascii(value):
                raise KernelConnectionConfigError(
                    f"connection {self.conn_id!r} {name}",
                    "holds a character that is not printable ASCII (a line break, tab, NUL or non-ASCII "
                    "character; the value is not shown).",
                    f"{fix}, with no line breaks or other special characters.",
                )

    @classmethod
    def from_mapping(
        cls,
        values: Mapping[str, Any] | None = None,
        /,
        *,
        conn_id: str | None = None,
        host: str | None = None,
        port: int | None = None,
        password: str | None = None,
        api_key: str | None = None,
        extra: Mapping[str, Any] | str | None = None,
        airflow_version: str | None = None,
        component: str | None = None,
    ) -> KernelSettings:
        """Settings from plain values (a mapping, keyword arguments, or both; keywords win), checked at once.

        :param values: a mapping of any of :data:`FIELDS` (the keywords below), e.g. read from a file.
        :param conn_id: a label for messages (default ``kernel_default``).
        :param host: the API base URL (default Kernel's).
        :param port: a port to put into ``host``.
        :param password: the API key (as Airflow's connection holds it).
        :param api_key: the API key, under its own name (``password`` wins when both are given).
        :param extra: a mapping or JSON text with the options in the module docstring.
        :param airflow_version: shown in the User-Agent only.
        :param component: the calling component, shown in the User-Agent only.
        :raises KernelConnectionConfigError: a field of ``values`` is unknown, the key is missing, the host is not
            an http(s) URL, or an extra is of the wrong type or out of range; the message names the field and the
            fix. Nothing is sent to Kernel to find out.
        """
        keywords = {
            "conn_id": conn_id,
            "host": host,
            "port": port,
            "password": password,
            "api_key": api_key,
            "extra": extra,
            "airflow_version": airflow_version,
            "component": component,
        }
        given = {**(values or {}), **{name: value for name, value in keywords.items() if value is not None}}
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
                f"must be a string, got {type(project_id).__name__}.",
                "Use the project's ID.",
            )
        allow_insecure_http = _flag(conn_id, extra, "allow_insecure_http")
        base_url = _base_url(conn_id, given.get("host"), given.get("port"))
        if _is_plain_http(base_url) and not allow_insecure_http:
            raise KernelConnectionConfigError(
                f"connection {conn_id!r} host",
                f"is plain http to a host that is not loopback ({base_url}): the API key would cross the network "
                "unencrypted.",
                "Use https://, or set allow_insecure_http: true in the connection's extra if you accept that.",
            )
        return cls(
            conn_id=conn_id,
            base_url=base_url,
            api_key=api_key,
            project_id=(project_id.strip() or None) if project_id else None,
            dashboard_url=_dashboard_url(conn_id, extra.get("dashboard_url")),
            request_timeout=_number(conn_id, extra, "request_timeout", DEFAULT_REQUEST_TIMEOUT, positive=True),
            connect_timeout=_number(conn_id, extra, "connect_timeout", DEFAULT_CONNECT_TIMEOUT, positive=True),
            retry=retry,
            verify=resolve_ca_bundle(conn_id, extra.get("ca_bundle")),
            airflow_version=given.get("airflow_version") or None,
            component=given.get("component") or None,
            allow_insecure_http=allow_insecure_http,
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
        """The invocation's page in Kernel's dashboard (built locally; nothing is sent).

        :raises KernelInputError: ``invocation_id`` is not a Kernel id (a link must not lead anywhere else).
        """
        return f"{self.dashboard_url}/invocations/{quote(require_id('invocation_id', invocation_id), safe='')}"

    @property
    def plain_http(self) -> bool:
        """The base URL is plain http to a host that is not loopback: the key would cross the network unencrypted.
        Only settings that opted in (``allow_insecure_http``) get here; the caller warns."""
        return _is_plain_http(self.base_url)

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


def resolve_ca_bundle(conn_id: str, ca_bundle: Any, environ: Mapping[str, str] | None = None) -> bool | str:
    """The trust both transports use: the connection's ``ca_bundle``, else the first of :data:`CA_BUNDLE_ENV` set
    in the environment, else True (the bundle requests ships with). Checked here, so a bad path is a clear error
    at connection load instead of an ``OSError`` on the first request.

    :param conn_id: named in the error.
    :param ca_bundle: the extra's value: the path of an existing file or directory, or None / "" for none.
    :param environ: the environment to read (default ``os.environ``).
    :raises KernelConnectionConfigError: ``ca_bundle`` is not text, looks like a boolean (verification cannot be
        switched off), or names no existing file or directory; or an environment variable does.
    """
    environ = os.environ if environ is None else environ
    if ca_bundle is None or ca_bundle == "":
        for name in CA_BUNDLE_ENV:
            path = environ.get(name, "").strip()
            if path:
                return _existing_path(f"connection {conn_id!r} (environment variable {name})", path)
        return True
    field_name = f"connection {conn_id!r} extra.ca_bundle"
    if not isinstance(ca_bundle, str) or ca_bundle.strip().lower() in _BOOLEAN_WORDS:
        raise KernelConnectionConfigError(
            field_name,
            f"must be the path of a CA bundle, got {ca_bundle!r}; TLS verification cannot be switched off.",
            "Give the path of a PEM file (or directory) holding the CA that signs Kernel's certificate, or remove it.",
        )
    return _existing_path(field_name, ca_bundle.strip())


def _existing_path(field_name: str, path: str) -> str:
    if not os.path.exists(path):
        raise KernelConnectionConfigError(
            field_name,
            f"names {path!r}, which does not exist on this machine.",
            "Give the path of an existing PEM file (or directory of CA certificates) readable by Airflow.",
        )
    return path


def _flag(conn_id: str, extra: Mapping[str, Any], key: str) -> bool:
    value = extra.get(key)
    if value is None or value == "" or value is False:
        return False
    if value is True or (isinstance(value, str) and value.strip().lower() == "true"):
        return True
    if isinstance(value, str) and value.strip().lower() == "false":
        return False
    raise KernelConnectionConfigError(
        f"connection {conn_id!r} extra.{key}", f"must be true or false, got {value!r}.", "Set it to true or false."
    )


def _is_plain_http(base_url: str) -> bool:
    parts = urlsplit(base_url)
    return parts.scheme == "http" and not is_loopback(parts.hostname)


def _dashboard_url(conn_id: str, value: Any) -> str:
    if value is None or value == "":
        return DEFAULT_DASHBOARD_URL
    url = absolute_url(value.strip() if isinstance(value, str) else value)
    if url is None:
        raise KernelConnectionConfigError(
            f"connection {conn_id!r} extra.dashboard_url",
            "must be an absolute http(s) URL (the base of invocation links).",
            "Use e.g. https://dashboard.onkernel.com, or remove it.",
        )
    return url.rstrip("/")


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
    if parts.username is not None or parts.password is not None:
        raise KernelConnectionConfigError(
            f"connection {conn_id!r} host",
            "holds credentials (user:password@; not shown).",
            "Put the API key in the connection's password field and only the URL in host.",
        )
    if parts.query or parts.fragment or not is_printable_ascii(text) or " " in text:
        raise KernelConnectionConfigError(
            f"connection {conn_id!r} host",
            "must be a plain base URL: no query, fragment, spaces or special characters.",
            "Use e.g. https://api.onkernel.com",
        )
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
