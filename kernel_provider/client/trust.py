"""What the client accepts from outside: ids and names that go into request paths, URLs that Kernel or the
connection hands over, and text that goes into request headers. Each check is done once, here.

* **Ids** (invocations, browser sessions, replays, deployments, proxies): Kernel's are 24 lowercase letters and
  digits (cuid2). The check accepts the wider alphabet ``[A-Za-z0-9_-]``, 1 to :data:`MAX_ID_LENGTH` characters, so
  that a change of format on Kernel's side does not break running DAGs, while refusing everything that could
  change the meaning of a path: ``.``, ``..``, ``/``, whitespace, control characters, ``%``, ``?``, ``#``.
* **Names** where Kernel takes ``id_or_name`` (pools, profiles): Kernel's pattern ``[a-zA-Z0-9._-]{1,255}``,
  minus ``.`` and ``..`` (an HTTP client collapses those path segments, sending the request elsewhere).
* **URLs**: absolute, with a host, and of an expected scheme only (``http``/``https`` for pages, ``ws``/``wss``
  for the browser's control sockets); ``javascript:``, ``data:`` and relative URLs never pass.
* **Header text** (the API key, the project id): printable ASCII only, so no HTTP library ever has to refuse
  (and quote) it.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from kernel_provider.client.errors import KernelInputError

MAX_ID_LENGTH = 64
MAX_NAME_LENGTH = 255
_ID = re.compile(r"[A-Za-z0-9_-]+")
_NAME = re.compile(r"[A-Za-z0-9._-]+")
_PRINTABLE_ASCII = re.compile(r"[\x20-\x7e]*")
PAGE_SCHEMES = ("http", "https")
SOCKET_SCHEMES = ("ws", "wss")


def is_id(value: object) -> bool:
    """Whether ``value`` is a string Kernel could use as an id (see the module docstring)."""
    return isinstance(value, str) and len(value) <= MAX_ID_LENGTH and _ID.fullmatch(value) is not None


def is_name(value: object) -> bool:
    """Whether ``value`` is a resource name Kernel accepts in a path (``id_or_name``), ``.`` and ``..`` excluded."""
    return (
        isinstance(value, str)
        and len(value) <= MAX_NAME_LENGTH
        and _NAME.fullmatch(value) is not None
        and value not in (".", "..")
    )


def require_id(field: str, value: Any) -> str:
    """``value`` when it is a valid id, else :class:`KernelInputError` naming ``field`` (before any request).

    :param field: the parameter's name (``"invocation_id"``).
    :param value: what the caller passed; quoted in the message only when short and printable.
    """
    if is_id(value):
        return value  # type: ignore[no-any-return]
    fix = (
        f"Pass the id as Kernel returned it: 1-{MAX_ID_LENGTH} letters, digits, '_' or '-' "
        "(Kernel's ids are 24 lowercase letters and digits)."
    )
    if value is None:
        raise KernelInputError(field, "is required.", fix)
    if not isinstance(value, str):
        raise KernelInputError(field, f"must be a string, got {type(value).__name__}.", fix)
    raise KernelInputError(field, f"is not a Kernel id: {describe_value(value)}.", fix)


def require_path_name(field: str, value: Any) -> str:
    """``value`` when it is a valid ``id_or_name`` for a path (a pool's), else :class:`KernelInputError`."""
    if is_name(value):
        return value  # type: ignore[no-any-return]
    raise KernelInputError(
        field,
        f"is not a valid Kernel id or name: {describe_value(value)}.",
        f"Use 1-{MAX_NAME_LENGTH} letters, digits, '.', '_' or '-' (not '.' or '..' alone).",
    )


def describe_value(value: Any) -> str:
    """``value`` for an error message: repr'd when a short printable string, else only its type and length (a
    value that holds control characters is not echoed: it may be a pasted secret)."""
    if isinstance(value, str):
        if not value:
            return "empty"
        if len(value) <= 80 and is_printable_ascii(value):
            return repr(value)
        return f"a string of {len(value)} characters, not shown (it holds characters not allowed here)"
    return f"a {type(value).__name__}"


def is_printable_ascii(text: str) -> bool:
    """Whether ``text`` holds only printable ASCII (space to ``~``): what an HTTP header value may safely hold."""
    return _PRINTABLE_ASCII.fullmatch(text) is not None


def absolute_url(value: Any, schemes: tuple[str, ...] = PAGE_SCHEMES) -> str | None:
    """``value`` when it is an absolute URL with a host and one of ``schemes`` (lower case), else None.

    Only printable ASCII passes: Kernel sends URLs already encoded, and a control character in a link or a log
    line is never wanted.
    """
    if not isinstance(value, str) or not value or not is_printable_ascii(value) or " " in value:
        return None
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        return None
    if parts.scheme.lower() not in schemes or not parts.hostname:
        return None
    return value


def origin(url: str) -> str:
    """``scheme://host[:port]`` of ``url`` (no path, query, fragment or credentials), for a message; a URL that
    cannot be read gives ``"an unreadable location"`` and a relative one ``"a relative location"``."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "an unreadable location"
    host = parts.hostname or ""
    if not parts.scheme and not host:
        return "a relative location"
    if not is_printable_ascii(parts.scheme + host) or " " in host:
        return "an unreadable location"
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")
