"""A local emulator of the Kernel API (``/invocations``, ``/apps``) for tests, demos and benchmarks.

It runs real HTTP (starlette + uvicorn + sse-starlette), needs no Airflow, and can inject faults reproducibly.
Heavy imports are deferred: ``import kernel_provider.testing`` stays cheap.

* :class:`EmulatorConfig` - every option in one dataclass (the CLI flags are derived from its fields).
* :class:`KernelEmulator` - in-process server (context manager); ``KernelEmulator.spawn()`` for a subprocess.
* :class:`EmulatorClient` - the admin/introspection routes over HTTP.
* :class:`FaultPlan` - scripted, seeded fault injection.
* ``DEMO_APP_NAME`` - the built-in app (``demo``) with actions echo, sleep, logs, fail, plain_fail, slow,
  browse, big, blocking, counter.

The modules form layers, each importing only its own or lower ones (``tests/testing/test_emulator_layers.py``
checks it): building blocks (config, faults, signing, ...) -> what the emulator keeps (apps, invocations,
browsers, the :mod:`~.store`) -> :mod:`~.runner` -> HTTP (middleware, routes, :mod:`~.app`) -> :mod:`~.server`
and the entry points -> this package, which only re-exports. Submodules never import from it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kernel_provider.testing.config import DEFAULT_TOKEN, DEMO_APP_NAME, EmulatorConfig, airflow_connection

if TYPE_CHECKING:
    from kernel_provider.testing.emulator_client import EmulatorClient
    from kernel_provider.testing.fault_plan import FaultPlan
    from kernel_provider.testing.faults import Fault
    from kernel_provider.testing.server import EmulatorProcess, KernelEmulator, spawn_emulator

__all__ = [
    "DEFAULT_TOKEN",
    "DEMO_APP_NAME",
    "EmulatorClient",
    "EmulatorConfig",
    "EmulatorProcess",
    "Fault",
    "FaultPlan",
    "KernelEmulator",
    "airflow_connection",
    "spawn_emulator",
]

_LAZY = {
    "KernelEmulator": "kernel_provider.testing.server",
    "EmulatorProcess": "kernel_provider.testing.server",
    "spawn_emulator": "kernel_provider.testing.server",
    "EmulatorClient": "kernel_provider.testing.emulator_client",
    "FaultPlan": "kernel_provider.testing.fault_plan",
    "Fault": "kernel_provider.testing.faults",
}


def __getattr__(name: str) -> Any:
    """Import a public name from its submodule on first use (the server and its web stack are heavy)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
