"""Apps and actions the emulator can run: the built-in ``demo`` app and apps loaded from Python files.

User app files are written exactly as for Kernel (``import kernel; app = kernel.App("my-app")`` and
``@app.action("name")`` handlers taking ``(ctx)`` or ``(ctx, payload)``, sync or async); they need the
official
``kernel`` package, whose module-global registry is read before and after importing the file. Without that
package (or in addition to it) a file may define ``ACTIONS = {"app-name": {"action-name": handler}}`` with the
same handler signatures; ``ctx`` then is the emulator's :class:`ActionContext` (it has ``invocation_id``).
A file defining neither raises ``ValueError`` with an explanation.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import importlib.util
import inspect
import itertools
import sys
import threading
import time
import traceback
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from kernel_provider.testing.config import DEMO_APP_NAME

REGION = "aws.us-east-1a"
_BASE36 = "0123456789abcdefghijklmnopqrstuvwxyz"


class ActionContext(Protocol):
    """What the emulator passes to its own action functions."""

    invocation_id: str

    def create_browser(self, headless: bool = False) -> dict[str, Any]:
        """Create a fake browser session bound to the invocation and return its JSON form (a headless one has
        no ``browser_live_view_url``, as on Kernel)."""
        ...

    def start_replay(self, session_id: str | None = None) -> dict[str, Any]:
        """Start recording one of the invocation's browsers (default: its first) and return the
        ``BrowserReplay``; it is listed by ``GET /browsers/{id}/replays`` with a ``replay_view_url``."""
        ...


ActionFn = Callable[[ActionContext, Any], Awaitable[Any]]


class PlainTextFailure(Exception):
    """Raised by an action whose failure ``output`` must be this exact (non-JSON) text."""


@dataclass
class ActionSpec:
    """A runnable action: ``fn(ctx, payload)`` is awaited by the emulator."""

    name: str
    fn: ActionFn
    source: str = "demo"


def stable_id(*parts: str) -> str:
    """A deterministic 24-character ``[a-z0-9]`` identifier derived from ``parts``."""
    number = int.from_bytes(hashlib.sha256("\x00".join(parts).encode()).digest(), "big")
    chars = []
    for _ in range(24):
        number, rem = divmod(number, 36)
        chars.append(_BASE36[rem])
    return "".join(chars)


@dataclass
class DeployedVersion:
    """One deployed version label of an app (the provider's model of its ``/apps`` item is ``AppVersion``)."""

    app_name: str
    version: str
    actions: dict[str, ActionSpec]
    env_vars: dict[str, str] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return stable_id("app-version", self.app_name, self.version)

    @property
    def deployment_id(self) -> str:
        return stable_id("deployment", self.app_name, self.version)

    def summary(self) -> dict[str, Any]:
        """The ``AppVersionSummary`` JSON object (env var values redacted, as for API-key callers)."""
        return {
            "id": self.id,
            "app_name": self.app_name,
            "version": self.version,
            "region": REGION,
            "deployment": self.deployment_id,
            "actions": [{"name": n, "input_schema": None, "output_schema": None} for n in self.actions],
            "env_vars": {key: "" for key in self.env_vars},
        }


class AppRegistry:
    """All app versions known to the emulator, in registration order."""

    def __init__(self) -> None:
        self.versions: dict[tuple[str, str], DeployedVersion] = {}

    def add(
        self,
        app_name: str,
        actions: dict[str, ActionSpec],
        versions: Iterable[str],
        env_vars: dict[str, str] | None = None,
    ) -> None:
        for version in versions:
            self.versions[(app_name, version)] = DeployedVersion(app_name, version, dict(actions), dict(env_vars or {}))

    def resolve(self, app_name: str, version: str, action_name: str) -> ActionSpec | str:
        """The action, or a human-readable reason why it does not exist."""
        found = self.versions.get((app_name, version))
        if found is None:
            if any(name == app_name for name, _ in self.versions):
                return f"version {version!r} of app {app_name!r} not found"
            return f"app {app_name!r} not found"
        spec = found.actions.get(action_name)
        if spec is None:
            return f"action {action_name!r} not found in app {app_name!r} version {version!r}"
        return spec

    def deployment_of(self, app_name: str, version: str) -> str:
        found = self.versions.get((app_name, version))
        return found.deployment_id if found else stable_id("deployment", app_name, version)

    def search(self, app_name: str | None, version: str | None, query: str | None) -> list[DeployedVersion]:
        out = []
        for item in self.versions.values():
            if app_name and item.app_name != app_name:
                continue
            if version and item.version != version:
                continue
            if query and query.lower() not in item.app_name.lower():
                continue
            out.append(item)
        return out


# --------------------------------------------------------------------------------------------- threads
def _resolve(fut: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    if fut.done():
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(value)


async def run_sync_in_thread(func: Callable[..., Any], *args: Any) -> Any:
    """Run a blocking callable in a fresh daemon thread (a copy of the current context).

    Unlike ``asyncio.to_thread`` the thread is not part of the loop's default executor, so thousands of
    blocking
    handlers can run at once and a handler that never returns cannot block the emulator's shutdown. When the
    awaiting task is cancelled the thread keeps running to completion; its result is discarded.
    """
    from kernel_provider.testing.capture import current_sink

    loop = asyncio.get_running_loop()
    fut: asyncio.Future[Any] = loop.create_future()
    ctx = contextvars.copy_context()

    def worker() -> None:
        value: Any = None
        error: BaseException | None = None
        try:
            value = ctx.run(func, *args)
        except BaseException as exc:
            error = exc
        finally:
            sink = ctx.run(current_sink.get)
            if sink is not None:
                sink.flush()
        try:
            loop.call_soon_threadsafe(_resolve, fut, value, error)
        except RuntimeError:  # loop closed: the emulator stopped meanwhile
            pass

    threading.Thread(target=worker, name="kernel-emulator-action", daemon=True).start()
    return await fut


# --------------------------------------------------------------------------------------------- demo
def _as_dict(payload: Any) -> dict[str, Any]:
    return payload if isinstance(payload, dict) else {}


async def _echo(ctx: ActionContext, payload: Any) -> Any:
    return payload


async def _sleep(ctx: ActionContext, payload: Any) -> Any:
    args = _as_dict(payload)
    seconds = float(args.get("seconds", 1.0))
    await asyncio.sleep(seconds)
    return args.get("result", {"slept": seconds})


async def _logs(ctx: ActionContext, payload: Any) -> Any:
    args = _as_dict(payload)
    lines = int(args.get("lines", 3))
    interval = float(args.get("interval", 0.0))
    for i in range(lines):
        print(f"line {i}")
        if interval:
            await asyncio.sleep(interval)
    return {"lines": lines}


async def _fail(ctx: ActionContext, payload: Any) -> Any:
    raise ValueError(_as_dict(payload).get("message", "boom"))


async def _plain_fail(ctx: ActionContext, payload: Any) -> Any:
    message = _as_dict(payload).get("message", "boom")
    raise PlainTextFailure(f"Error: {message}\nthe action crashed; this output is plain text, not JSON\n")


async def _slow(ctx: ActionContext, payload: Any) -> Any:
    seconds = float(_as_dict(payload).get("seconds", 3600.0))
    print("slow action started")
    await asyncio.sleep(seconds)
    return {"slept": seconds}


async def _browse(ctx: ActionContext, payload: Any) -> Any:
    args = _as_dict(payload)
    count = int(args.get("count", 1))
    headless = bool(args.get("headless", False))
    sessions = [ctx.create_browser(headless)["session_id"] for _ in range(count)]
    if args.get("record") and sessions:
        ctx.start_replay(sessions[0])
    print(f"created {count} browser(s)")
    await asyncio.sleep(float(args.get("seconds", 0.0)))
    return {"session_ids": sessions}


async def _big(ctx: ActionContext, payload: Any) -> Any:
    return "x" * int(_as_dict(payload).get("size", 1_000_000))


def _blocking_body(payload: Any) -> Any:
    seconds = float(_as_dict(payload).get("seconds", 0.1))
    print("blocking action started")
    time.sleep(seconds)
    return {"slept": seconds}


async def _blocking(ctx: ActionContext, payload: Any) -> Any:
    return await run_sync_in_thread(_blocking_body, payload)


_counter = itertools.count(1)


async def _counter_action(ctx: ActionContext, payload: Any) -> Any:
    return {"count": next(_counter), "invocation_id": ctx.invocation_id}


DEMO_ACTIONS: dict[str, tuple[ActionFn, str]] = {
    "echo": (_echo, "returns the decoded payload"),
    "sleep": (_sleep, 'payload {"seconds": s, "result": any}: sleeps, returns result or {"slept": s}'),
    "logs": (_logs, 'payload {"lines": n, "interval": s}: prints "line i" n times, returns {"lines": n}'),
    "fail": (_fail, 'raises ValueError(payload.get("message", "boom"))'),
    "plain_fail": (_plain_fail, "fails with a multi-line plain-text output"),
    "slow": (_slow, 'payload {"seconds": s=3600}: for cancel and timeout tests'),
    "browse": (
        _browse,
        'payload {"count": 1, "seconds": 0, "record": false}: creates fake browsers bound to the invocation '
        "(record: a replay of the first)",
    ),
    "big": (_big, 'payload {"size": n=1000000}: returns a string of n "x" characters'),
    "blocking": (_blocking, 'payload {"seconds": s=0.1}: time.sleep in a worker thread'),
    "counter": (_counter_action, "returns a process-wide increasing counter and the invocation id"),
}


def demo_actions() -> dict[str, ActionSpec]:
    """The actions of the built-in ``demo`` app."""
    return {name: ActionSpec(name, fn, "demo") for name, (fn, _doc) in DEMO_ACTIONS.items()}


# --------------------------------------------------------------------------------------------- user apps
def _adapt_handler(handler: Callable[..., Any], make_ctx: Callable[[str], Any] | None, source: str) -> ActionFn:
    """Turn a Kernel-style handler ``(ctx)``/``(ctx, payload)``, sync or async, into an :data:`ActionFn`."""
    original = inspect.unwrap(handler)
    is_async = inspect.iscoroutinefunction(original) or inspect.iscoroutinefunction(handler)
    takes_payload = True
    if make_ctx is None:  # raw ACTIONS handler: we adapt the arity ourselves
        takes_payload = len(inspect.signature(handler).parameters) >= 2

    async def run(ctx: ActionContext, payload: Any) -> Any:
        action_ctx = make_ctx(ctx.invocation_id) if make_ctx is not None else ctx
        args = (action_ctx, payload) if takes_payload else (action_ctx,)
        if is_async:
            result = handler(*args)
        else:
            result = await run_sync_in_thread(handler, *args)
        if inspect.isawaitable(result):
            result = await result
        return result

    return run


def _kernel_registry() -> Any | None:
    try:
        from kernel import app_framework
    except ImportError:
        return None
    return getattr(app_framework, "_app_registry", None) or getattr(app_framework, "app_registry", None)


_load_counter = itertools.count(1)


def load_app_file(path: str | Path) -> dict[str, dict[str, ActionSpec]]:
    """Import a Python file and return the apps it defines: ``{app_name: {action_name: spec}}``."""
    file = Path(path).resolve()
    if not file.is_file():
        raise ValueError(f"app file not found: {file}")
    registry = _kernel_registry()
    before = dict(registry.apps) if registry is not None else {}
    module_name = f"_kernel_emulator_app_{next(_load_counter)}_{file.stem}"
    spec = importlib.util.spec_from_file_location(module_name, file)
    if spec is None or spec.loader is None:
        raise ValueError(f"cannot import {file}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)

    apps: dict[str, dict[str, ActionSpec]] = {}
    if registry is not None:
        from kernel import KernelContext

        def make_ctx(invocation_id: str) -> Any:
            return KernelContext(invocation_id=invocation_id)

        for name, app in registry.apps.items():
            if before.get(name) is app:
                continue
            apps[name] = {
                action_name: ActionSpec(action_name, _adapt_handler(action.handler, make_ctx, "kernel"), "kernel")
                for action_name, action in app.actions.items()
            }
    table = getattr(module, "ACTIONS", None)
    if isinstance(table, dict):
        for app_name, actions in table.items():
            target = apps.setdefault(str(app_name), {})
            for action_name, handler in actions.items():
                target[str(action_name)] = ActionSpec(
                    str(action_name), _adapt_handler(handler, None, "module"), "module"
                )
    if not apps:
        hint = "" if registry is not None else " (the official 'kernel' package is not installed)"
        raise ValueError(
            f"{file} defines no app: use kernel.App(...) with @app.action(...) or a module-level "
            f"ACTIONS = {{'app': {{'action': handler}}}}{hint}"
        )
    return apps


def build_registry(
    app_files: Iterable[str | Path],
    app_versions: Iterable[str],
    demo_versions: Iterable[str],
    env_vars: dict[str, dict[str, str]] | None = None,
) -> AppRegistry:
    """The registry for a configuration: the demo app plus every app found in ``app_files``."""
    env_vars = env_vars or {}
    registry = AppRegistry()
    registry.add(DEMO_APP_NAME, demo_actions(), list(demo_versions), env_vars.get(DEMO_APP_NAME))
    versions = list(app_versions)
    for path in app_files:
        for app_name, actions in load_app_file(path).items():
            registry.add(app_name, actions, versions, env_vars.get(app_name))
    return registry


def failure_text(exc: BaseException, plain_text: bool) -> str:
    """The ``output`` of an invocation whose handler raised ``exc``."""
    if isinstance(exc, PlainTextFailure):
        return str(exc)
    if plain_text:
        return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return f"{type(exc).__name__}: {exc}"
