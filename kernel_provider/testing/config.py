"""Configuration of the Kernel API emulator: one dataclass shared by the server, the CLI and the pytest plugin.

Every option is one field of :class:`EmulatorConfig`. Its ``metadata`` holds the help text (and, where the flag
is not simply ``--field-name``, the flag and metavar); the ``kernel-emulator`` command line is built from the
fields (:func:`build_config_parser`) and :meth:`EmulatorConfig.to_args` turns a config back into those flags
(``spawn_emulator``). Adding an option therefore means adding a field, and using it where it matters.

This module must stay importable without starlette / uvicorn / sse-starlette (the CLI checks the extra).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kernel_provider.testing.access import TOKEN_ENV, bind_refusal, split_authority

DEFAULT_TOKEN = "test-token"
DEMO_APP_NAME = "demo"

#: Kernel's documentation gives two payload limits: "max 64 KB" and "4.5 MB" (kernel.sh/docs, see
#: shared/notes/kernel-api.md §3.1 and §4 "Sizes"; the OpenAPI spec gives none). The emulator defaults to the
#: larger one, 4.5 MB: a smaller default would refuse payloads the real service may accept, and it is the limit
#: the provider itself enforces (``kernel_provider.client.validation.PAYLOAD_MAX_BYTES``), so the provider's own
#: refusal is what users see first. Use ``payload_limit=65536`` to test against the stricter reading.
DEFAULT_PAYLOAD_LIMIT = 4_500_000


def _opt(
    help: str,
    *,
    flag: str | None = None,
    metavar: str | None = None,
    runtime: bool = False,
    minimum: float | None = None,
    private: bool = False,
) -> dict[str, Any]:
    """Field metadata: CLI help, optional flag/metavar, whether ``POST /_emulator/config`` may set it, lower bound,
    and whether the admin routes must not show it (secrets)."""
    return {
        "help": help,
        "flag": flag,
        "metavar": metavar,
        "runtime": runtime,
        "minimum": minimum,
        "private": private,
    }


@dataclass
class EmulatorConfig:
    """Every knob of the emulator (see each field's help, also shown by ``kernel-emulator --help``)."""

    host: str = field(
        default="127.0.0.1",
        metadata=_opt("address to bind; beyond loopback it needs a --token of your own"),
    )
    port: int = field(default=0, metadata=_opt("port to bind; 0 picks a free one", minimum=0))
    tokens: Sequence[str] = field(
        default=(DEFAULT_TOKEN,),
        metadata=_opt(
            f"accepted API token, needed on every route (repeatable; or the {TOKEN_ENV} environment variable)",
            flag="--token",
            metavar="TOKEN",
            private=True,
        ),
    )
    allow_hosts: Sequence[str] = field(
        default=(),
        metadata=_opt(
            "another Host (host or host:port) requests may name, e.g. behind a proxy or port mapping; repeatable "
            "(loopback names with the bound port, and the bound host, are always accepted)",
            flag="--allow-host",
            metavar="HOST[:PORT]",
        ),
    )
    apps: Sequence[str] = field(
        default=(),
        metadata=_opt(
            "Python file defining Kernel apps (kernel.App / @app.action); repeatable", flag="--app", metavar="FILE"
        ),
    )
    app_versions: Sequence[str] = field(
        default=("latest",),
        metadata=_opt("version label(s) the --app apps are deployed under", flag="--app-version", metavar="LABEL"),
    )
    demo_versions: Sequence[str] = field(
        default=("latest",),
        metadata=_opt("version label(s) of the built-in demo app", flag="--demo-version", metavar="LABEL"),
    )
    faults: Any = field(
        default=None,
        metadata=_opt(
            "fault plan: a JSON file, or JSON text (FaultPlan, dict or rule list in Python)",
            metavar="FILE|JSON",
            private=True,
        ),
    )
    seed: int | None = field(default=None, metadata=_opt("seed for fault rates when the plan has none"))
    heartbeat: float = field(
        default=15.0, metadata=_opt("SSE heartbeat interval in seconds (0 < s < 60)", metavar="S", runtime=True)
    )
    sync_timeout: float = field(
        default=100.0, metadata=_opt("cap for synchronous invocations (Kernel: 100 s)", metavar="S", runtime=True)
    )
    org_concurrency: int | None = field(
        default=None,
        metadata=_opt("max live invocations per org (none = unlimited)", metavar="N", runtime=True, minimum=1),
    )
    app_concurrency: int | None = field(
        default=None,
        metadata=_opt("max live invocations per app (none = unlimited)", metavar="N", runtime=True, minimum=1),
    )
    retry_after: int = field(
        default=1, metadata=_opt("Retry-After seconds on concurrency 429s", metavar="S", runtime=True, minimum=0)
    )
    unknown_projects: Sequence[str] = field(
        default=(),
        metadata=_opt(
            "project id answered with 404 project_not_found (repeatable)", flag="--unknown-project", metavar="ID"
        ),
    )
    request_log_size: int = field(
        default=10_000, metadata=_opt("requests kept in the request log", metavar="N", minimum=0)
    )
    env_vars: dict[str, dict[str, str]] = field(
        default_factory=dict,
        metadata=_opt('env vars per app as JSON, e.g. {"demo": {"KEY": "v"}}', metavar="JSON", private=True),
    )
    payload_limit: int = field(
        default=DEFAULT_PAYLOAD_LIMIT,
        metadata=_opt(
            "max payload size in UTF-8 bytes, 0 = no limit; larger creates get 400",
            metavar="BYTES",
            runtime=True,
            minimum=0,
        ),
    )
    retention_seconds: float = field(
        default=3600.0,
        metadata=_opt(
            "evict finished invocations older than this (0 = never by age)", metavar="S", runtime=True, minimum=0
        ),
    )
    retention_count: int = field(
        default=10_000,
        metadata=_opt("keep at most this many finished invocations (0 = no cap)", metavar="N", runtime=True, minimum=0),
    )

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if _kind(type(self), f) == "list":
                value = getattr(self, f.name)
                if isinstance(value, (str, Path)):
                    value = (value,)
                setattr(self, f.name, tuple(str(v) for v in value))
        if isinstance(self.faults, Path):
            self.faults = str(self.faults)

    # ------------------------------------------------------------------ building
    @classmethod
    def build(cls, config: EmulatorConfig | None = None, /, **overrides: Any) -> EmulatorConfig:
        """``config`` (or the defaults) with keyword ``overrides``; ``token=`` adds one token in front."""
        base = config if config is not None else cls()
        token = overrides.pop("token", None)
        if token is not None:
            tokens = overrides.pop("tokens", None) or (() if config is None else base.tokens)
            overrides["tokens"] = (token, *(t for t in tokens if t != token))
        elif overrides.get("tokens") is not None and not overrides["tokens"]:
            del overrides["tokens"]  # tokens=() / None means "the default"
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(overrides) - names
        if unknown:
            raise TypeError(f"unknown emulator option(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(base, **overrides)

    def validate(self) -> None:
        """Raise ``ValueError`` for settings Kernel clients could not cope with."""
        if not self.tokens or not all(self.tokens):
            raise ValueError("at least one token is required, and a token cannot be empty")
        refusal = bind_refusal(self.host, self.tokens, DEFAULT_TOKEN)
        if refusal is not None:
            raise ValueError(refusal)
        for entry in self.allow_hosts:
            split_authority(entry)  # ValueError naming the entry
        if not 0 < self.heartbeat < 60:
            raise ValueError("heartbeat must be > 0 and < 60 seconds (SDK read timeouts are 60 s)")
        if self.sync_timeout <= 0:
            raise ValueError("sync_timeout must be > 0")
        for f in dataclasses.fields(self):
            value, minimum = getattr(self, f.name), f.metadata.get("minimum")
            if minimum is not None and value is not None and value < minimum:
                raise ValueError(f"{f.name} must be >= {minimum:g}" + (" or None" if _optional(type(self), f) else ""))

    def update(self, values: dict[str, Any]) -> None:
        """Change run-time tunables (used by ``POST /_emulator/config``); all or nothing."""
        allowed = {f.name for f in dataclasses.fields(self) if f.metadata.get("runtime")}
        unknown = set(values) - allowed
        if unknown:
            raise ValueError(f"unknown or read-only config keys: {sorted(unknown)}")
        fields = {f.name: f for f in dataclasses.fields(self)}
        for key, value in values.items():
            f = fields[key]
            expected = {"int": (int,), "float": (int, float)}.get(_kind(type(self), f), (object,))
            if (value is None and not _optional(type(self), f)) or (
                value is not None and (isinstance(value, bool) or not isinstance(value, expected))
            ):
                raise ValueError(f"{key} must be {'a number' if float in expected else 'an integer'}, got {value!r}")
        old = {k: getattr(self, k) for k in values}
        for key, value in values.items():
            setattr(self, key, value)
        try:
            self.validate()
        except ValueError:
            for key, value in old.items():
                setattr(self, key, value)
            raise

    def public(self) -> dict[str, Any]:
        """The settings but the ``private`` ones (tokens, fault plan, env vars): safe for the admin routes."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if not f.metadata.get("private"):
                value = getattr(self, f.name)
                out[f.name] = list(value) if isinstance(value, tuple) else value
        out["token_count"] = len(self.tokens)
        return out

    # ------------------------------------------------------------------ command line
    def to_args(self) -> list[str]:
        """The ``kernel-emulator`` flags that reproduce this config (only fields that differ from the default)."""
        default = type(self)()
        args: list[str] = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value == getattr(default, f.name):
                continue
            flag, kind = _flag(f), _kind(type(self), f)
            if kind == "list":
                for item in value:
                    args += [flag, item]
            elif value is None:
                args += [flag, ""]
            elif kind == "json" or not isinstance(value, (str, int, float)):  # a dict, a rule list, a FaultPlan
                args += [flag, json.dumps(value.spec() if hasattr(value, "spec") else value)]
            else:
                args += [flag, str(value)]
        return args

    @classmethod
    def from_args(cls, argv: Sequence[str] | None = None) -> EmulatorConfig:
        """Parse ``kernel-emulator`` flags into a config (CLI-only flags are ignored)."""
        namespace = build_config_parser(cls=cls).parse_args(argv)
        return cls.from_namespace(namespace)

    @classmethod
    def from_namespace(cls, namespace: argparse.Namespace) -> EmulatorConfig:
        """A config from parsed flags (names that are no field are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in vars(namespace).items() if k in names})


# ---------------------------------------------------------------------------------------------- field → flag
@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    hints: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):  # subclasses (tests, users' extensions) may add fields
        if dataclasses.is_dataclass(klass):
            hints.update(typing.get_type_hints(klass))
    return hints


def _hint(cls: type, f: dataclasses.Field[Any]) -> Any:
    return _hints(cls)[f.name]


def _optional(cls: type, f: dataclasses.Field[Any]) -> bool:
    return type(None) in typing.get_args(_hint(cls, f))


def _kind(cls: type, f: dataclasses.Field[Any]) -> str:
    """``list`` (repeatable flag), ``json``, ``int``, ``float``, ``bool`` or ``str``."""
    hint = _hint(cls, f)
    origin = typing.get_origin(hint)
    if hint in (tuple, list) or origin in (Sequence, tuple, list):
        return "list"
    if hint is dict or origin is dict:
        return "json"
    args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    for kind in (bool, int, float):
        if args[0] is kind:
            return kind.__name__
    return "str"


def _flag(f: dataclasses.Field[Any]) -> str:
    return str(f.metadata.get("flag") or "--" + f.name.replace("_", "-"))


def _converter(cls: type, f: dataclasses.Field[Any]) -> Any:
    kind, optional = _kind(cls, f), _optional(cls, f)
    base: Any = {"int": int, "float": float, "json": json.loads}.get(kind, str)

    def convert(text: str) -> Any:
        if optional and text in ("", "none", "None"):
            return None
        return base(text)

    convert.__name__ = kind  # argparse names the type in its error messages
    return convert


def build_config_parser(
    parser: argparse.ArgumentParser | None = None, cls: type[EmulatorConfig] | None = None
) -> argparse.ArgumentParser:
    """Add one flag per field of ``cls`` (default :class:`EmulatorConfig`); unset flags keep the field default."""
    parser = parser or argparse.ArgumentParser(prog="kernel-emulator", add_help=False)
    cls = cls or EmulatorConfig
    default = cls()
    for f in dataclasses.fields(cls):
        kind = _kind(cls, f)
        shown = getattr(default, f.name)
        shown = list(shown) if isinstance(shown, tuple) else shown
        help_text = f"{f.metadata.get('help', '')} (default: {shown if shown not in ((), [], {}, None) else 'none'})"
        kwargs: dict[str, Any] = {"dest": f.name, "help": help_text, "default": argparse.SUPPRESS}
        if f.metadata.get("metavar"):
            kwargs["metavar"] = f.metadata["metavar"]
        if kind == "list":
            kwargs["action"] = "append"
        elif kind == "bool":
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = _converter(cls, f)
        parser.add_argument(_flag(f), **kwargs)
    return parser


def airflow_connection(url: str, token: str = DEFAULT_TOKEN, **extra: Any) -> str:
    """The JSON form of an Airflow ``kernel`` connection to an emulator (the value of ``AIRFLOW_CONN_<ID>``).

    :param url: the emulator's base URL (``KernelEmulator.url``).
    :param token: the API key it accepts (``KernelEmulator.token``).
    :param extra: the connection's extra fields (e.g. ``dashboard_url``); omitted when empty.
    """
    connection: dict[str, Any] = {"conn_type": "kernel", "host": url, "password": token}
    if extra:
        connection["extra"] = extra
    return json.dumps(connection)
