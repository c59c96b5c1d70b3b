"""The errors of the Kernel provider: the documented import path (``from kernel_provider.exceptions import ...``).

They are defined in :mod:`kernel_provider.client.errors` (see its docstring for the tree), so the Airflow-free
client raises the very same types; this module re-exports every one of them.
"""

from __future__ import annotations

from kernel_provider.client.errors import (
    KernelAmbiguousBrowserCreateError,
    KernelAmbiguousCreateError,
    KernelApiError,
    KernelAuthError,
    KernelBadRequestError,
    KernelConflictError,
    KernelConnectionConfigError,
    KernelError,
    KernelInputError,
    KernelInvocationFailed,
    KernelNotFoundError,
    KernelRateLimitError,
    KernelReconcileError,
    KernelRedirectError,
    KernelResponseError,
    KernelRunMismatchError,
    KernelServerError,
    KernelStateStoreError,
    KernelTransportError,
    KernelWaitTimeout,
    api_error_for_status,
    is_error_status,
)

__all__ = [
    "KernelAmbiguousBrowserCreateError",
    "KernelAmbiguousCreateError",
    "KernelApiError",
    "KernelAuthError",
    "KernelBadRequestError",
    "KernelConflictError",
    "KernelConnectionConfigError",
    "KernelError",
    "KernelInputError",
    "KernelInvocationFailed",
    "KernelNotFoundError",
    "KernelRateLimitError",
    "KernelReconcileError",
    "KernelRedirectError",
    "KernelResponseError",
    "KernelRunMismatchError",
    "KernelServerError",
    "KernelStateStoreError",
    "KernelTransportError",
    "KernelWaitTimeout",
    "api_error_for_status",
    "is_error_status",
]
