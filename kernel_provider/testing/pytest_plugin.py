"""pytest plugin (entry point ``kernel_emulator``): fixtures that start a Kernel API emulator.

* ``kernel_emulator`` - a fresh, started :class:`~kernel_provider.testing.KernelEmulator` per test.
* ``kernel_emulator_factory`` - ``factory(config=None, **EmulatorConfig fields)`` → started emulator;
  ``spawn=True`` runs it in a subprocess instead (returns an ``EmulatorProcess``; ``env=``/``timeout=`` go to
  :func:`~kernel_provider.testing.spawn_emulator`). Everything is stopped at teardown.
* ``kernel_conn_env`` - sets ``AIRFLOW_CONN_KERNEL_DEFAULT`` to the JSON connection
  ``{"conn_type": "kernel", "host": <url>, "password": <token>}`` and returns the emulator.

Importing this module is cheap and never imports Airflow (or starlette/uvicorn until a fixture is used).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from kernel_provider.testing.config import EmulatorConfig
    from kernel_provider.testing.server import EmulatorProcess, KernelEmulator


@pytest.fixture
def kernel_emulator_factory() -> Iterator[Callable[..., Any]]:
    """Start emulators with custom options; all are stopped after the test."""
    started: list[KernelEmulator | EmulatorProcess] = []

    def factory(config: EmulatorConfig | None = None, /, *, spawn: bool = False, **kwargs: Any) -> Any:
        from kernel_provider.testing.server import KernelEmulator, spawn_emulator

        if spawn:
            proc = spawn_emulator(config, **kwargs)
            started.append(proc)
            return proc
        emulator = KernelEmulator(config, **kwargs).start()
        started.append(emulator)
        return emulator

    yield factory
    for item in reversed(started):
        item.stop()


@pytest.fixture
def kernel_emulator(kernel_emulator_factory: Callable[..., Any]) -> KernelEmulator:
    """A started emulator with default settings (token ``test-token``, demo app, no faults)."""
    emulator: KernelEmulator = kernel_emulator_factory()
    return emulator


@pytest.fixture
def kernel_conn_env(kernel_emulator: KernelEmulator, monkeypatch: pytest.MonkeyPatch) -> KernelEmulator:
    """Point Airflow's ``kernel_default`` connection at the emulator (via the environment)."""
    from kernel_provider.testing.config import airflow_connection

    monkeypatch.setenv("AIRFLOW_CONN_KERNEL_DEFAULT", airflow_connection(kernel_emulator.url, kernel_emulator.token))
    return kernel_emulator
