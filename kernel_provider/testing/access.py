"""Who may talk to the emulator: the token check, the Host and Origin rules and the bind rule.

The emulator is closed by default (see "Security model of the emulator" in docs/emulator.md):

* every route needs the API token (``Authorization: Bearer <token>``), the ``/_emulator/`` routes too; a live
  page needs the signed ``jwt`` its URL carries (:mod:`~.signing`) or the token;
* the ``Host`` header must name the emulator: a loopback name (``127.0.0.1``, ``localhost``, ``::1``) with the
  bound port, the bound host itself, or an ``--allow-host`` entry. A page on a foreign name that a DNS rebinding
  points at 127.0.0.1 therefore gets nothing;
* a request that changes state and carries an ``Origin`` must come from one of those same origins;
* listening beyond loopback with the well-known default token is refused before the port is bound.

Everything here is pure: no I/O, so the rules are tested directly and used by the middleware and the config.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Iterable
from urllib.parse import urlsplit

#: The names a loopback-bound emulator answers to (``[::1]`` is how an IPv6 address appears in a Host header).
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})
#: Addresses that mean "every interface": no name of their own, so only loopback names and ``--allow-host``.
WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", ""})
#: Methods a browser may send cross-site without asking first; all others must come from an allowed origin.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: The environment variable the CLI takes the API token from when ``--token`` is not given.
TOKEN_ENV = "KERNEL_EMULATOR_TOKEN"


def is_loopback(host: str) -> bool:
    """Whether a bind address (or host name) only reaches this machine: 127.0.0.0/8, ``::1`` or ``localhost``."""
    name = host.strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def split_authority(authority: str) -> tuple[str, int | None]:
    """``"[::1]:8080"`` → ``("::1", 8080)``; ``"localhost"`` → ``("localhost", None)``. ValueError if malformed."""
    authority = authority.strip().lower()
    if not authority or any(c in authority for c in "/@?# \t"):
        raise ValueError(f"not a host[:port]: {authority!r}")
    if authority.startswith("["):
        name, _, rest = authority[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else None
        if rest and port_text is None:
            raise ValueError(f"not a host[:port]: {authority!r}")
    elif authority.count(":") == 1:
        name, port_text = authority.split(":")
    else:
        name, port_text = authority, None  # a bare IPv6 address has several colons and no port
    if port_text is None:
        return name, None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"bad port in {authority!r}")
    return name, int(port_text)


def bind_refusal(host: str, tokens: Iterable[str], default_token: str) -> str | None:
    """Why the emulator must not listen on ``host`` with these tokens, or None when it may.

    Listening beyond loopback with the documented default token would hand the API (payloads, outputs, the fault
    plan) to anyone on the network, so that combination is refused.
    """
    if is_loopback(host) or default_token not in tokens:
        return None
    return (
        f"refusing to listen on {host!r} (not loopback) with the well-known default token {default_token!r}: "
        f"anyone who can reach this address could use it. Pass --token <a secret> (or set {TOKEN_ENV}), "
        "or bind 127.0.0.1"
    )


class HostRules:
    """The ``Host`` and ``Origin`` values one running emulator accepts.

    :param bind_host: the address it listens on (``--host``).
    :param port: the port it listens on.
    :param allow_hosts: extra ``host`` or ``host:port`` entries (``--allow-host``): a name without a port is
        accepted on any port (a port mapping or proxy in front), with a port only on that one.
    """

    def __init__(self, bind_host: str, port: int, allow_hosts: Iterable[str] = ()) -> None:
        self.port = port
        names = set(LOOPBACK_NAMES)
        bind_name = bind_host.strip("[]").lower()
        if bind_name not in WILDCARD_HOSTS:
            names.add(bind_name)
        self.names = frozenset(names)
        self.any_port: set[str] = set()
        self.exact: set[tuple[str, int]] = set()
        for entry in allow_hosts:
            name, entry_port = split_authority(entry)
            if entry_port is None:
                self.any_port.add(name)
            else:
                self.exact.add((name, entry_port))

    def host_allowed(self, authority: str, default_port: int = 80) -> bool:
        """Whether a ``Host`` header value (or an origin's authority) names this emulator."""
        try:
            name, port = split_authority(authority)
        except ValueError:
            return False
        port = default_port if port is None else port
        return (name in self.names and port == self.port) or name in self.any_port or (name, port) in self.exact

    def origin_allowed(self, origin: str) -> bool:
        """Whether an ``Origin`` header value is one of this emulator's own origins (``null`` never is)."""
        try:
            parts = urlsplit(origin.strip())
        except ValueError:
            return False
        if parts.scheme not in ("http", "https") or parts.path or parts.query or not parts.netloc:
            return False
        return self.host_allowed(parts.netloc, 443 if parts.scheme == "https" else 80)


def token_valid(authorization: str | None, tokens: Iterable[str]) -> bool:
    """Whether an ``Authorization`` header carries one of ``tokens`` as a Bearer token (compared in constant time)."""
    if authorization is None:
        return False
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return False
    given = token.strip().encode("utf-8", "surrogateescape")
    found = False
    for accepted in tokens:
        found |= hmac.compare_digest(given, accepted.encode("utf-8", "surrogateescape"))
    return found
