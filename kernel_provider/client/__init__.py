"""An Airflow-free client for Kernel's API: the provider's hook, operator, sensor and trigger are built on it.

::

    from kernel_provider.client import KernelClient, KernelSettings

    client = KernelClient(KernelSettings.from_mapping(password="sk_..."))
    print(client.invoke("demo", "echo", payload={"hello": "world"}).result)

Modules: :mod:`~kernel_provider.client.errors` (the exception tree), :mod:`~kernel_provider.client.settings`,
:mod:`~kernel_provider.client.models`, :mod:`~kernel_provider.client.validation`,
:mod:`~kernel_provider.client.retry`, :mod:`~kernel_provider.client.wire` (the API as data, no I/O),
:mod:`~kernel_provider.client.invocations` (invocations and apps), :mod:`~kernel_provider.client.browsers`
(standalone browsers and pools), :mod:`~kernel_provider.client.transport` (requests and httpx),
:mod:`~kernel_provider.client.client`, and the wait: :mod:`~kernel_provider.client.follow`,
:mod:`~kernel_provider.client.events`, :mod:`~kernel_provider.client.browser_watch`,
:mod:`~kernel_provider.client.reconcile`.
Nothing here imports Airflow. Importing this package is cheap (the operator's module imports
``kernel_provider.client.validation`` at every DAG parse): the names below load their modules on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kernel_provider.client.client import KernelClient
    from kernel_provider.client.retry import RetryPolicy
    from kernel_provider.client.settings import KernelSettings

__all__ = ["KernelClient", "KernelSettings", "RetryPolicy"]

_LAZY = {
    "KernelClient": "kernel_provider.client.client",
    "KernelSettings": "kernel_provider.client.settings",
    "RetryPolicy": "kernel_provider.client.retry",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
