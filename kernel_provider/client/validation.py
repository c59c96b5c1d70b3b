"""Checks of user input, done before any request so a mistake costs no browser minutes: an invocation's request
(:func:`build_invoke_request`) and a browser's (:func:`build_browser_request`).

Shared by the client, the hooks, the operator and the decorators. Every error is a :class:`KernelInputError`
naming the field and the fix.
"""

from __future__ import annotations

import json
import logging
import math
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from kernel_provider.client.errors import KernelInputError
from kernel_provider.client.trust import require_id, require_path_name

log = logging.getLogger(__name__)

ASYNC_TIMEOUT_RANGE = (10, 3600)
#: Kernel's documented payload limits disagree (64 KB and 4.5 MB); the larger one is enforced, the smaller warned.
PAYLOAD_WARN_BYTES = 64 * 1024
PAYLOAD_MAX_BYTES = 4_500_000
_SURROGATE = re.compile("[\ud800-\udfff]")


def require_name(field: str, value: object) -> str:
    """``value`` itself when it is a non-empty string without surrounding spaces, else :class:`KernelInputError`.

    :param field: the parameter's name, used in the message (e.g. ``"app_name"``).
    :param value: what the caller passed. It is not stripped: a name with spaces is refused, not corrected.
    """
    if value is None:
        raise KernelInputError(field, "is required.", f"Pass the {field.replace('_', ' ')} as a string.")
    if not isinstance(value, str):
        raise KernelInputError(
            field, f"must be a string, got {type(value).__name__}.", f"Pass the {field.replace('_', ' ')} as a string."
        )
    if not value.strip():
        raise KernelInputError(field, "must not be empty.", f"Pass the {field.replace('_', ' ')}.")
    if value != value.strip():
        raise KernelInputError(field, f"has leading or trailing spaces: {value!r}.", "Remove them.")
    return value


def encode_payload(payload: Any, field: str = "payload") -> str | None:
    """Kernel takes the payload as JSON *text*. Python values are encoded; a string must already be JSON.

    :param payload: dict / list / number / bool (encoded compactly), JSON text (checked, sent as is), or None /
        ``""`` (no payload). Bytes, NaN, non-string keys and other values JSON cannot hold are refused.
    :param field: the name used in messages; a nested problem names its path (``payload['when']``).
    :returns: the JSON text, or None for no payload. Over 4.5 MB is refused; over 64 KB only logs a warning.
    """
    if payload is None:
        return None
    if isinstance(payload, (bytes, bytearray)):
        raise KernelInputError(field, "is bytes.", "Pass a dict/list, or JSON text as str.")
    if isinstance(payload, str):
        if payload == "":
            return None
        _check_text(payload, field)
        try:
            json.loads(payload)
        except json.JSONDecodeError as exc:
            raise KernelInputError(
                field,
                f"is a string but not valid JSON ({exc.msg} at position {exc.pos}).",
                'Pass a dict/list (it is JSON-encoded for you) or valid JSON text such as \'{"url": "..."}\'.',
            ) from None
        text = payload
    else:
        _check_serializable(payload, field)
        text = json.dumps(payload, separators=(",", ":"), allow_nan=False)
    size = len(text.encode("utf-8"))
    if size > PAYLOAD_MAX_BYTES:
        raise KernelInputError(
            field,
            f"is {size} bytes of JSON; Kernel accepts at most {PAYLOAD_MAX_BYTES}.",
            "Send a reference (e.g. a URL) to the data instead of the data itself.",
        )
    if size > PAYLOAD_WARN_BYTES:
        log.warning("Payload is %d bytes; some Kernel documentation gives a 64 KB limit.", size)
    return text


def _check_text(value: str, path: str) -> None:
    """A lone surrogate (what ``surrogateescape`` makes of invalid UTF-8) is no Unicode text: JSON can only carry
    it as an escape that Kernel would read as something else, so it is refused rather than changed."""
    bad = _SURROGATE.search(value)
    if bad is not None:
        raise KernelInputError(
            path,
            f"holds a lone surrogate (U+{ord(bad.group()):04X} at position {bad.start()}): invalid Unicode that Kernel "
            "could not receive unchanged.",
            "Decode the bytes it came from properly (e.g. errors='replace'), or send them base64-encoded.",
        )


def _check_serializable(value: Any, path: str) -> None:
    if isinstance(value, str):
        _check_text(value, path)
        return
    if value is None or isinstance(value, (bool, int)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise KernelInputError(path, f"is {value}, which JSON cannot represent.", "Use null or a number.")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise KernelInputError(
                    f"{path}[{key!r}]",
                    f"has a {type(key).__name__} key; JSON keys are strings.",
                    "Convert the key to str.",
                )
            _check_text(key, f"{path} key {key!a}")
            _check_serializable(item, f"{path}[{key!r}]")
        return
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _check_serializable(item, f"{path}[{index}]")
        return
    raise KernelInputError(
        path,
        f"holds a {type(value).__name__}, which is not JSON-serializable.",
        "Convert it to str, number, bool, list or dict first (e.g. a date with .isoformat()).",
    )


def check_async_timeout(async_timeout_seconds: Any, invoke_async: bool) -> int | None:
    """Kernel's ``async_timeout_seconds``: None, or a whole number in 10..3600 for an async invocation only.

    :param async_timeout_seconds: how long Kernel lets an async run go; None keeps Kernel's default (900).
    :param invoke_async: whether the invocation is async; a timeout for a sync one is refused, not ignored.
    """
    if async_timeout_seconds is None:
        return None
    if not invoke_async:
        raise KernelInputError(
            "async_timeout_seconds",
            "only applies to asynchronous invocations.",
            "Set invoke_async=True, or drop async_timeout_seconds.",
        )
    if isinstance(async_timeout_seconds, bool) or not isinstance(async_timeout_seconds, int):
        raise KernelInputError(
            "async_timeout_seconds",
            f"must be a whole number of seconds, got {async_timeout_seconds!r}.",
            "Pass an int between 10 and 3600.",
        )
    low, high = ASYNC_TIMEOUT_RANGE
    if not low <= async_timeout_seconds <= high:
        raise KernelInputError(
            "async_timeout_seconds",
            f"is {async_timeout_seconds}; Kernel accepts {low}..{high}.",
            f"Pass a value between {low} and {high} seconds.",
        )
    return async_timeout_seconds


def check_seconds(
    field: str, value: Any, *, allow_none: bool = True, minimum: float = 0.0, exclusive: bool = False
) -> float | None:
    """A non-negative (or positive, when ``exclusive``) number of seconds, as a float.

    :param field: the parameter's name, used in the message.
    :param value: int, float or a ``timedelta``; bools, NaN and infinities are refused.
    :param allow_none: None is accepted (and returned) rather than refused.
    :param minimum: the lowest value accepted.
    :param exclusive: ``minimum`` itself is refused too.
    """
    if value is None:
        if allow_none:
            return None
        raise KernelInputError(field, "is required.", "Pass a number of seconds.")
    if hasattr(value, "total_seconds"):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise KernelInputError(field, f"must be a number of seconds, got {value!r}.", "Pass an int or float.")
    if value < minimum or (exclusive and value == minimum):
        bound = f"greater than {minimum:g}" if exclusive else f"at least {minimum:g}"
        raise KernelInputError(field, f"is {value}; it must be {bound}.", f"Pass a value {bound}.")
    return float(value)


def build_invoke_request(
    *,
    app_name: Any,
    action_name: Any,
    version: Any = "latest",
    payload: Any = None,
    invoke_async: Any = True,
    async_timeout_seconds: Any = None,
) -> dict[str, Any]:
    """The body of ``POST /invocations``, validated. Raises :class:`KernelInputError` before any request.

    :param app_name: the deployed app.
    :param action_name: the action to run.
    :param version: the app version label (``"latest"`` by default).
    :param payload: the action's input (see :func:`encode_payload`).
    :param invoke_async: Kernel's ``async`` (a bool; ``"yes"`` is refused, not read as true).
    :param async_timeout_seconds: see :func:`check_async_timeout`.
    """
    if not isinstance(invoke_async, bool):
        raise KernelInputError("invoke_async", f"must be True or False, got {invoke_async!r}.", "Pass a bool.")
    body: dict[str, Any] = {
        "app_name": require_name("app_name", app_name),
        "version": require_name("version", version),
        "action_name": require_name("action_name", action_name),
    }
    encoded = encode_payload(payload)
    if encoded is not None:
        body["payload"] = encoded
    if invoke_async:
        body["async"] = True
    timeout = check_async_timeout(async_timeout_seconds, invoke_async)
    if timeout is not None:
        body["async_timeout_seconds"] = timeout
    return body


# --- browsers ---------------------------------------------------------------------------------------------

#: Kernel's bounds of ``timeout_seconds`` (seconds without a CDP or live-view connection before it ends a browser).
TIMEOUT_RANGE = (10, 259_200)
VIEWPORT_WIDTH = (320, 7680)
VIEWPORT_HEIGHT = (240, 4320)
#: How a marker ``start_url`` begins; the rest is a random token (see the module docstring).
MARKER_PREFIX = "about:blank#airflow-kernel-"
#: How a marker ``start_url`` begins; the rest is a random token (see :mod:`kernel_provider.client.browsers`).
MARKER_PREFIX = "about:blank#airflow-kernel-"
#: Every option of :func:`build_browser_request`, in the order of its signature.
BROWSER_OPTIONS = (
    "headless",
    "stealth",
    "timeout_seconds",
    "profile",
    "save_profile_changes",
    "proxy_id",
    "viewport",
    "start_url",
    "kiosk_mode",
    "pool",
    "acquire_timeout_seconds",
    "reuse",
)
#: The options that go with ``pool`` (an acquire); any other is refused with it.
_POOL_OPTIONS = {"pool", "acquire_timeout_seconds", "reuse"}


@dataclass(frozen=True)
class BrowserRequest:
    """A checked browser request: either ``POST /browsers`` with :attr:`body`, or an acquire from :attr:`pool`.

    :param body: the ``BrowserRequest`` JSON body (empty for a pool: the pool decides the browser's options).
    :param pool: the pool's id or name; None for a standalone browser.
    :param acquire_timeout_seconds: how long an acquire may wait for a free browser (None: Kernel's default).
    :param reuse: on release, whether the pool keeps the browser (True) or replaces it with a fresh one.
    :param marker: the ``start_url`` marker the body carries ("" when the caller chose a ``start_url``).
    """

    body: Mapping[str, Any] = field(default_factory=dict)
    pool: str | None = None
    acquire_timeout_seconds: int | None = None
    reuse: bool = True
    marker: str = ""


def build_browser_request(
    *,
    headless: bool | None = None,
    stealth: bool | None = None,
    timeout_seconds: int | None = None,
    profile: str | Mapping[str, str] | None = None,
    save_profile_changes: bool | None = None,
    proxy_id: str | None = None,
    viewport: Mapping[str, int] | Sequence[int] | None = None,
    start_url: str | None = None,
    kiosk_mode: bool | None = None,
    pool: str | None = None,
    acquire_timeout_seconds: int | None = None,
    reuse: bool | None = None,
) -> BrowserRequest:
    """Check browser options and build the request, before anything is sent.

    :param headless: a headless browser (no live view on Kernel). Default Kernel's (False).
    :param stealth: Kernel's stealth mode (fewer bot detections).
    :param timeout_seconds: seconds without a CDP or live-view connection before Kernel ends the browser
        (10..259200; Kernel's default 60). The bound on a browser whose task died without deleting it.
    :param profile: a saved profile to load: its name, or ``{"id": ...}`` / ``{"name": ...}``.
    :param save_profile_changes: save the session's changes (cookies, logins) back to ``profile`` at the end.
    :param proxy_id: a proxy of your org to route the browser through.
    :param viewport: ``{"width", "height"[, "refresh_rate"]}`` or a ``(width, height)`` pair, in pixels.
    :param start_url: an http(s) URL Kernel opens on creation (best effort). Without one, a marker ``start_url``
        (``about:blank#...``) lets a lost create be matched exactly (see the module docstring).
    :param kiosk_mode: hide the address bar and tabs in the live view.
    :param pool: acquire from this browser pool (id or name) instead of creating a browser; the pool decides the
        browser's options, so the creation options above are refused with it.
    :param acquire_timeout_seconds: with ``pool``: how long to wait for a free browser (>= 1).
    :param reuse: with ``pool``: whether the pool keeps the released browser (default True).
    :raises KernelInputError: naming the first wrong option and the fix.
    """
    options: dict[str, Any] = {
        "headless": headless,
        "stealth": stealth,
        "timeout_seconds": timeout_seconds,
        "profile": profile,
        "save_profile_changes": save_profile_changes,
        "proxy_id": proxy_id,
        "viewport": viewport,
        "start_url": start_url,
        "kiosk_mode": kiosk_mode,
        "pool": pool,
        "acquire_timeout_seconds": acquire_timeout_seconds,
        "reuse": reuse,
    }
    if pool is not None:
        pool = require_path_name("pool", pool)
        clash = sorted(k for k, v in options.items() if k not in _POOL_OPTIONS and v is not None)
        if clash:
            raise KernelInputError(
                clash[0],
                "cannot be combined with pool: a pool's browsers all have the pool's options.",
                "Drop it, or create a standalone browser (no pool).",
            )
        timeout = options.get("acquire_timeout_seconds")
        if timeout is not None:
            timeout = require_int_in("acquire_timeout_seconds", timeout, 1, None)
        return BrowserRequest(
            pool=pool, acquire_timeout_seconds=timeout, reuse=True if reuse is None else require_bool("reuse", reuse)
        )
    for name in ("acquire_timeout_seconds", "reuse"):
        if options.get(name) is not None:
            raise KernelInputError(name, "applies only to a browser pool.", "Pass pool=<pool name or id>, or drop it.")
    body: dict[str, Any] = {}
    for name in ("headless", "stealth", "kiosk_mode"):
        if options.get(name) is not None:
            body[name] = require_bool(name, options[name])
    if options.get("timeout_seconds") is not None:
        body["timeout_seconds"] = require_int_in("timeout_seconds", options["timeout_seconds"], *TIMEOUT_RANGE)
    if options.get("proxy_id") is not None:
        body["proxy_id"] = require_id("proxy_id", options["proxy_id"])
    profile = _profile(options.get("profile"), options.get("save_profile_changes"))
    if profile:
        body["profile"] = profile
    if options.get("viewport") is not None:
        body["viewport"] = _viewport(options["viewport"])
    start_url = options.get("start_url")
    marker = ""
    if start_url is None:
        marker = MARKER_PREFIX + secrets.token_hex(12)
        body["start_url"] = marker
    else:
        body["start_url"] = _url("start_url", start_url)
    return BrowserRequest(body=body, marker=marker)


def require_bool(name: str, value: Any) -> bool:
    """``value`` when it is True or False (never a truthy stand-in such as ``"yes"`` or 1), else an error."""
    if not isinstance(value, bool):
        raise KernelInputError(name, f"must be True or False, got {value!r}.", f"Pass {name}=True or {name}=False.")
    return value


def require_int_in(name: str, value: Any, low: int, high: int | None) -> int:
    """``value`` when it is a whole number in ``[low, high]`` (``high`` None: no upper bound), else an error."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise KernelInputError(name, f"must be a whole number, got {value!r}.", "Pass an int.")
    if value < low or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise KernelInputError(name, f"must be {bounds}, got {value}.", f"Pass a value {bounds}.")
    return value


#: The longest URL sent (characters): far above any real page's, far below what would make Kernel refuse the body.
URL_MAX_CHARS = 16_384
#: Controls (and a lone surrogate) have no place in a URL: a browser would drop or re-encode them, so the URL Kernel
#: opened would not be the one asked for.
_URL_UNSAFE = re.compile("[\x00-\x20\x7f-\x9f\ud800-\udfff]")


def _url(name: str, value: Any) -> str:
    shown = repr(value)[:200]
    if not isinstance(value, str) or urlsplit(value).scheme not in ("http", "https") or not urlsplit(value).netloc:
        raise KernelInputError(name, f"must be an http(s) URL, got {shown}.", "Pass e.g. 'https://example.com'.")
    if len(value) > URL_MAX_CHARS:
        raise KernelInputError(name, f"is {len(value)} characters long; at most {URL_MAX_CHARS} are sent.", "")
    bad = _URL_UNSAFE.search(value)
    if bad is not None:
        raise KernelInputError(
            name,
            f"holds {bad.group()!a} at position {bad.start()}: no control character, space or lone surrogate "
            "belongs in a URL.",
            "Percent-encode it (urllib.parse.quote).",
        )
    return value


def _profile(profile: Any, save_changes: Any) -> dict[str, Any]:
    if profile is None:
        if save_changes is not None:
            raise KernelInputError(
                "save_profile_changes", "needs a profile to save to.", "Pass profile=<name> as well, or drop it."
            )
        return {}
    if isinstance(profile, str):
        out: dict[str, Any] = {"name": require_name("profile", profile)}
    elif isinstance(profile, Mapping) and len(set(profile) & {"id", "name"}) == 1 and set(profile) <= {"id", "name"}:
        key = "id" if "id" in profile else "name"
        out = {key: require_name(f"profile[{key!r}]", profile[key])}
    else:
        raise KernelInputError(
            "profile", f"must be a profile name or {{'id': ...}} / {{'name': ...}}, got {profile!r}.", ""
        )
    name = out.get("name", "")
    if "name" in out and (len(name) > 255 or not all(c.isascii() and (c.isalnum() or c in "._-") for c in name)):
        raise KernelInputError("profile", "a profile name has 1-255 letters, digits, dots, underscores or hyphens.")
    if save_changes is not None:
        out["save_changes"] = require_bool("save_profile_changes", save_changes)
    return out


def _viewport(value: Any) -> dict[str, int]:
    if isinstance(value, (tuple, list)) and len(value) == 2:
        value = {"width": value[0], "height": value[1]}
    if not isinstance(value, Mapping) or not {"width", "height"} <= set(value) <= {"width", "height", "refresh_rate"}:
        raise KernelInputError(
            "viewport", f"must be {{'width', 'height'[, 'refresh_rate']}} or (width, height), got {value!r}.", ""
        )
    out = {
        "width": require_int_in("viewport['width']", value["width"], *VIEWPORT_WIDTH),
        "height": require_int_in("viewport['height']", value["height"], *VIEWPORT_HEIGHT),
    }
    if value.get("refresh_rate") is not None:
        out["refresh_rate"] = require_int_in("viewport['refresh_rate']", value["refresh_rate"], 1, 240)
    return out
