"""Credentials the emulator signs: live-view URLs and the dashboard sign-in cookie.

**Live-view URLs** are what let a person's browser open ``/live/...`` without the API key.

Kernel's live-view URLs carry a JWT in their query; the emulator's do too. ``live_view_url`` appends
``?jwt=<HS256 token>`` whose claims name the browser session (``sub``), the access it grants (``access``:
``control`` or ``read``) and, optionally, its expiry (``exp``, Unix seconds). The middleware lets a ``/live/{session}``
page (and its replay pages) through only with a token for that very session that has not expired, and hands the
verified claims to the page in the ASGI scope (:data:`LIVE_ACCESS_SCOPE_KEY`).

**The sign-in cookie** (:func:`admin_cookie`) lets a browser open the ``/_emulator/`` pages (the dashboard links of
the provider's "Kernel invocation" extra link) after signing in with the token at ``/_emulator/login``; it is an
HMAC of the token, never the token itself.

The signing key is random, made once per process: URLs and cookies stop working when the emulator restarts, as
nothing is stored.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote

#: The query parameter carrying the token (Kernel's name for it).
QUERY_PARAM = "jwt"
#: The ASGI scope key under which the middleware hands a live page its verified claims.
LIVE_ACCESS_SCOPE_KEY = "kernel_emulator.live_access"
#: What a token may grant.
ACCESS_LEVELS = ("control", "read")

_KEY = secrets.token_bytes(32)
_HEADER = {"alg": "HS256", "typ": "JWT"}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(signing_input: str) -> bytes:
    return hmac.new(_KEY, signing_input.encode("ascii"), hashlib.sha256).digest()


def sign(session_id: str, *, access: str = "control", expires_at: float | None = None) -> str:
    """A token for the live view of ``session_id``.

    :param access: ``control`` (the browser's own ``browser_live_view_url``) or ``read``.
    :param expires_at: Unix time after which the token is refused; None: valid while the emulator runs.
    """
    if access not in ACCESS_LEVELS:
        raise ValueError(f"access must be one of {ACCESS_LEVELS}, got {access!r}")
    claims: dict[str, Any] = {"sub": session_id, "access": access}
    if expires_at is not None:
        claims["exp"] = int(expires_at)
    signing_input = f"{_b64(json.dumps(_HEADER).encode())}.{_b64(json.dumps(claims).encode())}"
    return f"{signing_input}.{_b64(_mac(signing_input))}"


def verify(token: str, session_id: str, now: float | None = None) -> dict[str, Any] | None:
    """The token's claims when it is ours, for ``session_id`` and not expired; None otherwise."""
    try:
        header, payload, signature = token.split(".")
        if not hmac.compare_digest(_unb64(signature), _mac(f"{header}.{payload}")):
            return None
        claims = json.loads(_unb64(payload))
    except (ValueError, UnicodeError):
        return None
    if not isinstance(claims, dict) or claims.get("sub") != session_id or claims.get("access") not in ACCESS_LEVELS:
        return None
    expiry = claims.get("exp")
    if expiry is not None and (not isinstance(expiry, int) or (time.time() if now is None else now) >= expiry):
        return None
    return claims


def signed_url(
    base_url: str, session_id: str, suffix: str = "", *, access: str = "control", expires_at: float | None = None
) -> str:
    """``<base_url>/live/<session_id><suffix>?jwt=<token>``: a live page URL that opens without the API key."""
    token = sign(session_id, access=access, expires_at=expires_at)
    return f"{base_url.rstrip('/')}/live/{quote(session_id, safe='')}{suffix}?{QUERY_PARAM}={token}"


#: The name of the sign-in cookie of the ``/_emulator/`` pages.
ADMIN_COOKIE = "kernel_emulator_session"


def admin_cookie(token: str) -> str:
    """The sign-in cookie value for an accepted API token."""
    return _b64(_mac("admin-session:" + token.encode("utf-8", "surrogateescape").hex()))


def admin_cookie_valid(value: str, tokens: Iterable[str]) -> bool:
    """Whether a sign-in cookie was made for one of ``tokens``."""
    found = False
    for token in tokens:
        found |= hmac.compare_digest(value.encode("ascii", "replace"), admin_cookie(token).encode("ascii"))
    return found
