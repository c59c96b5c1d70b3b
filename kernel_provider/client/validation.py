"""Checks of user input, done before any request so a mistake costs no browser minutes.

Shared by the client and the operator. Every error is a :class:`KernelInputError` naming the field and the fix.
"""

from __future__ import annotations

import json
import logging
import math
import re
from typing import Any

from kernel_provider.client.errors import KernelInputError

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
    invoke_async: Any = False,
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
