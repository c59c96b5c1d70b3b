"""The apps the emulator serves: the registry of deployed app versions and their actions, the built-in ``demo``
app (:mod:`~.demo_app`) and apps loaded from Python files.

User app files are written exactly as for Kernel (``import kernel; app = kernel.App("my-app")`` and
``@app.action("name")`` handlers taking ``(ctx)`` or ``(ctx, payload)``, sync or async); they need the
official ``kernel`` package, whose module-global registry is read before and after importing the file. Without
that package (or in addition to it) a file may define ``ACTIONS = {"app-name": {"action-name": handler}}`` with
the same handler signatures; ``ctx`` then is the emulator's :class:`~.actions.ActionContext` (it has
``invocation_id``). A file defining neither raises ``ValueError`` with an explanation.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import itertools
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kernel_provider.testing.actions import ActionContext, ActionFn, ActionSpec, run_sync_in_thread
from kernel_provider.testing.config import DEMO_APP_NAME
from kernel_provider.testing.demo_app import demo_actions

#: The region every emulated app version reports.
REGION = "aws.us-east-1a"
_BASE36 = "0123456789abcdefghijklmnopqrstuvwxyz"


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
        """The version's id, the same on every run (derived from app name and version)."""
        return stable_id("app-version", self.app_name, self.version)

    @property
    def deployment_id(self) -> str:
        """The id of the deployment that made this version, the same on every run."""
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
        """Deploy ``app_name`` with ``actions`` under each label of ``versions`` (a label deployed again is replaced).

        :param app_name: the app's name.
        :param actions: its actions by name.
        :param versions: the version labels.
        :param env_vars: the app's environment variables (listed by ``/apps`` with their values redacted).
        """
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
        """The deployment id of an app version (derived from the names when it is not deployed)."""
        found = self.versions.get((app_name, version))
        return found.deployment_id if found else stable_id("deployment", app_name, version)

    def search(self, app_name: str | None, version: str | None, query: str | None) -> list[DeployedVersion]:
        """The versions of ``app_name`` labelled ``version`` whose app name contains ``query``, ignoring case
        (None: any)."""
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
