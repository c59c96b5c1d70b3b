"""Typed views of Kernel API objects, each parsed once from the JSON the API returns.

Unknown fields are kept (``extra``) and unknown statuses are tolerated: Kernel adds fields and states over time,
and a provider that crashes on a new one would fail every running DAG at once.

Nothing from the wire is trusted blindly (see :mod:`kernel_provider.client.trust`): an id that could not be
Kernel's (``..``, ``a/b``) is a :class:`KernelResponseError`, since it would be put into request paths and links;
a URL that is not absolute http(s) (ws/wss for the browser's sockets) is dropped to "" with a warning, so a
``javascript:`` or ``data:`` URL never becomes a link. URLs that control a browser stay out of reprs.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any

from kernel_provider.client.errors import KernelResponseError
from kernel_provider.client.trust import PAGE_SCHEMES, SOCKET_SCHEMES, absolute_url, is_id

log = logging.getLogger(__name__)


class InvocationStatus(str, Enum):
    """Lifecycle of an invocation: ``queued`` -> ``running`` -> ``succeeded`` | ``failed``.

    ``UNKNOWN`` stands for any status this version of the provider does not know; it is treated as not finished.
    """

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    UNKNOWN = "unknown"

    @classmethod
    def parse(cls, value: object) -> InvocationStatus:
        """The status Kernel sent; one this version does not know becomes ``UNKNOWN`` (logged), never an error."""
        try:
            return cls(value)
        except ValueError:
            log.warning("Kernel returned an unknown invocation status %r; treating it as not finished.", value)
            return cls.UNKNOWN

    @property
    def is_terminal(self) -> bool:
        """``succeeded`` or ``failed``: the invocation will not change any more."""
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES: frozenset[InvocationStatus] = frozenset({InvocationStatus.SUCCEEDED, InvocationStatus.FAILED})


def parse_output(output: str | None) -> Any:
    """Decode an invocation's ``output``: JSON text becomes Python values, anything else stays the raw string."""
    if output is None:
        return None
    try:
        return json.loads(output)
    except (TypeError, ValueError):
        return output


def parse_timestamp(value: object) -> datetime | None:
    """Parse Kernel's RFC 3339 timestamps (up to 9 fractional digits, ``Z``); ``None`` when absent or unreadable."""
    if not isinstance(value, str) or not value:
        return None
    text = value.strip().replace("Z", "+00:00").replace("z", "+00:00")
    date_part, dot, rest = text.partition(".")
    if dot:
        digits = len(rest) - len(rest.lstrip("0123456789"))
        text = f"{date_part}.{rest[: min(digits, 6)].ljust(6, '0')}{rest[digits:]}"
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


@dataclass(frozen=True)
class Invocation:
    """One run of an app action, as returned by ``GET /invocations/{id}`` and friends.

    The create response carries only ``id``, ``action_name``, ``status`` (+ ``output``/``status_reason`` when
    synchronous); the other fields are then empty.
    """

    id: str
    status: InvocationStatus
    action_name: str = ""
    app_name: str = ""
    version: str = ""
    payload: str | None = None
    output: str | None = None
    status_reason: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    raw_status: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    _KNOWN = frozenset(
        {
            "id",
            "status",
            "action_name",
            "app_name",
            "version",
            "payload",
            "output",
            "status_reason",
            "started_at",
            "finished_at",
        }
    )

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> Invocation:
        """Parse an invocation object of the API; raises :class:`KernelResponseError` when it has no ``id``.

        :param data: the decoded JSON object. Fields this version does not know go to ``extra``; a payload or
            output that is not a string is kept as JSON text.
        """
        if not isinstance(data, Mapping) or not isinstance(data.get("id"), str) or not data.get("id"):
            raise KernelResponseError(f"Kernel returned an invocation without an id: {_excerpt(data)}")
        _check_id("an invocation", "id", data["id"])
        raw_status = str(data.get("status", ""))
        return cls(
            id=data["id"],
            status=InvocationStatus.parse(raw_status),
            action_name=str(data.get("action_name") or ""),
            app_name=str(data.get("app_name") or ""),
            version=str(data.get("version") or ""),
            payload=_optional_str(data.get("payload")),
            output=_optional_str(data.get("output")),
            status_reason=_optional_str(data.get("status_reason")),
            started_at=parse_timestamp(data.get("started_at")),
            finished_at=parse_timestamp(data.get("finished_at")),
            raw_status=raw_status,
            extra={k: v for k, v in data.items() if k not in cls._KNOWN},
        )

    @property
    def is_terminal(self) -> bool:
        """The invocation has finished (``succeeded`` or ``failed``)."""
        return self.status.is_terminal

    @property
    def succeeded(self) -> bool:
        """The invocation finished ``succeeded``."""
        return self.status is InvocationStatus.SUCCEEDED

    @property
    def failed(self) -> bool:
        """The invocation finished ``failed`` (a cancel also leaves it ``failed``)."""
        return self.status is InvocationStatus.FAILED

    @property
    def result(self) -> Any:
        """The action's return value: ``output`` decoded from JSON, or the raw text when it is not JSON."""
        return parse_output(self.output)

    def output_excerpt(self, limit: int = 500) -> str:
        """The raw ``output`` cut to ``limit`` characters (with its full length noted), for error messages."""
        return _excerpt(self.output or "", limit)


@dataclass(frozen=True)
class AppAction:
    """One action of a deployed app version, with the JSON schemas of its input and output when Kernel has them."""

    name: str
    input_schema: Mapping[str, Any] | None = None
    output_schema: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class AppVersion:
    """A deployed version of an app (``GET /apps`` item) and the actions it offers."""

    id: str
    app_name: str
    version: str
    actions: tuple[AppAction, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> AppVersion:
        """Parse an item of ``GET /apps``; missing fields become empty strings, unknown ones go to ``extra``."""
        actions = tuple(
            AppAction(
                name=str(a.get("name", "")), input_schema=a.get("input_schema"), output_schema=a.get("output_schema")
            )
            for a in data.get("actions") or ()
            if isinstance(a, Mapping)
        )
        known = {"id", "app_name", "version", "actions"}
        return cls(
            id=str(data.get("id", "")),
            app_name=str(data.get("app_name", "")),
            version=str(data.get("version", "")),
            actions=actions,
            extra={k: v for k, v in data.items() if k not in known},
        )

    @property
    def action_names(self) -> list[str]:
        """The names of the version's actions, in Kernel's order."""
        return [a.name for a in self.actions]


@dataclass(frozen=True)
class Browser:
    """A Kernel browser session (``POST /browsers``, ``GET /browsers/{id}``, a pool's acquire, or an item of an
    invocation's browser list).

    :param session_id: the session's id, what ``DELETE /browsers/{id}`` takes.
    :param cdp_ws_url: the Chrome DevTools Protocol websocket URL (Playwright's ``connect_over_cdp``); a ws(s) URL
        or "". It controls the browser: a credential, left out of the repr.
    :param browser_live_view_url: where a person watches (and steers) the browser (Kernel sends it for headful
        browsers only); an http(s) URL or "". A credential too, left out of the repr.
    :param webdriver_ws_url: the WebDriver BiDi websocket URL; a ws(s) URL or "". A credential, left out of the repr.
    :param created_at: when Kernel created the session.
    :param timeout_seconds: seconds without a CDP or live-view connection after which Kernel ends the session.
    :param pool_name: the pool the browser was acquired from (its name, else its id); "" for a standalone one.
    :param start_url: the URL Kernel was asked to open on creation ("" for none).
    :param deleted_at: when the session was deleted (Kernel sends it for a deleted session only).
    :param uptime_ms: Kernel's ``usage.uptime_ms``, the milliseconds the session was actively running; None when
        Kernel sent none (or not a non-negative integer).
    """

    session_id: str
    cdp_ws_url: str = field(default="", repr=False)
    browser_live_view_url: str = field(default="", repr=False)
    created_at: datetime | None = None
    headless: bool = False
    stealth: bool = False
    timeout_seconds: int | None = None
    webdriver_ws_url: str = field(default="", repr=False)
    proxy_id: str = ""
    profile_name: str = ""
    pool_name: str = ""
    start_url: str = ""
    deleted_at: datetime | None = None
    uptime_ms: int | None = None
    extra: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    _KNOWN = frozenset(
        {
            "session_id",
            "cdp_ws_url",
            "browser_live_view_url",
            "created_at",
            "headless",
            "stealth",
            "timeout_seconds",
            "webdriver_ws_url",
            "proxy_id",
            "profile",
            "pool",
            "start_url",
            "deleted_at",
            "usage",
        }
    )

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> Browser:
        """Parse a browser object of the API; :class:`KernelResponseError` when it has no ``session_id``.

        :param data: the decoded JSON object. Fields this version does not know go to ``extra``.
        """
        if not isinstance(data, Mapping) or not isinstance(data.get("session_id"), str) or not data["session_id"]:
            raise KernelResponseError(f"Kernel returned a browser without a session_id: {_excerpt(data)}")
        _check_id("a browser", "session_id", data["session_id"])
        profile: Mapping[str, Any] = data["profile"] if isinstance(data.get("profile"), Mapping) else {}
        pool: Mapping[str, Any] = data["pool"] if isinstance(data.get("pool"), Mapping) else {}
        timeout = data.get("timeout_seconds")
        return cls(
            session_id=data["session_id"],
            cdp_ws_url=_url(data, "cdp_ws_url", SOCKET_SCHEMES),
            browser_live_view_url=_url(data, "browser_live_view_url", PAGE_SCHEMES),
            created_at=parse_timestamp(data.get("created_at")),
            headless=bool(data.get("headless", False)),
            stealth=bool(data.get("stealth", False)),
            timeout_seconds=timeout if isinstance(timeout, int) and not isinstance(timeout, bool) else None,
            webdriver_ws_url=_url(data, "webdriver_ws_url", SOCKET_SCHEMES),
            proxy_id=str(data.get("proxy_id") or ""),
            profile_name=str(profile.get("name") or profile.get("id") or ""),
            pool_name=str(pool.get("name") or pool.get("id") or ""),
            start_url=str(data.get("start_url") or ""),
            deleted_at=parse_timestamp(data.get("deleted_at")),
            uptime_ms=_uptime_ms(data.get("usage")),
            extra={k: v for k, v in data.items() if k not in cls._KNOWN},
        )


@dataclass(frozen=True)
class Replay:
    """A recording of a browser session (an item of ``GET /browsers/{id}/replays``).

    :param replay_id: the recording's id.
    :param replay_view_url: where a person watches the recording: an http(s) URL, "" when Kernel sent none (or
        something else).
    :param started_at: when the recording started (None when unknown).
    :param finished_at: when it stopped; None while it is still recording.
    :param browser_id: the browser session it belongs to (filled in by the client: Kernel's item lacks it).
    """

    replay_id: str
    replay_view_url: str = ""
    started_at: datetime | None = None
    finished_at: datetime | None = None
    browser_id: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_api(cls, data: Mapping[str, Any], browser_id: str = "") -> Replay:
        """Parse a ``BrowserReplay`` object; :class:`KernelResponseError` when it has no ``replay_id``.

        :param data: the decoded JSON object; fields this version does not know go to ``extra``.
        :param browser_id: the session the listing was asked for.
        """
        if not isinstance(data, Mapping) or not isinstance(data.get("replay_id"), str) or not data["replay_id"]:
            raise KernelResponseError(f"Kernel returned a replay without a replay_id: {_excerpt(data)}")
        _check_id("a replay", "replay_id", data["replay_id"])
        known = {"replay_id", "replay_view_url", "started_at", "finished_at"}
        return cls(
            replay_id=data["replay_id"],
            replay_view_url=_url(data, "replay_view_url", PAGE_SCHEMES),
            started_at=parse_timestamp(data.get("started_at")),
            finished_at=parse_timestamp(data.get("finished_at")),
            browser_id=browser_id,
            extra={k: v for k, v in data.items() if k not in known},
        )

    @property
    def recording(self) -> bool:
        """Still recording (no ``finished_at`` yet): the view may show only part of the session."""
        return self.finished_at is None


def _check_id(what: str, key: str, value: str) -> None:
    """An id from Kernel goes into request paths and links: one that could not be Kernel's is refused."""
    if not is_id(value):
        raise KernelResponseError(
            f"Kernel returned {what} whose {key} is not an id ({len(value)} characters, not shown); refusing to use it."
        )


def _url(data: Mapping[str, Any], key: str, schemes: tuple[str, ...]) -> str:
    """``data[key]`` when it is an absolute URL of one of ``schemes``; anything else (``javascript:``, ``data:``,
    relative) becomes "" with a warning that names the key only (the URL may be a credential, or hostile)."""
    value = data.get(key)
    if value is None or value == "":
        return ""
    url = absolute_url(value, schemes)
    if url is None:
        log.warning("Kernel sent a %s that is not an absolute %s URL; it is ignored.", key, "/".join(schemes))
        return ""
    return url


def _uptime_ms(usage: object) -> int | None:
    """``usage.uptime_ms`` when it is a non-negative integer; anything else is ignored (None), never an error."""
    value = usage.get("uptime_ms") if isinstance(usage, Mapping) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _optional_str(value: object) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else json.dumps(value)


def _excerpt(value: object, limit: int = 300) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"
