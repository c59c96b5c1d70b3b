"""Waiting on a worker (no deferral) with the very same logic the triggerer runs, and the retry-safe id store."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from typing import Any

from kernel_provider.triggers.kernel import KernelInvocationTrigger

log = logging.getLogger(__name__)

STATE_KEY = "kernel_invocation_id"


def wait_in_worker(trigger: KernelInvocationTrigger) -> dict[str, Any]:
    """Run the trigger's wait to completion on this worker and return its event payload."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(_wait_then_close(trigger))
    # Called from inside a running loop (rare: some executors); keep that loop free.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, _wait_then_close(trigger)).result()


async def _wait_then_close(trigger: KernelInvocationTrigger) -> dict[str, Any]:
    from kernel_provider.hooks.kernel import close_shared_clients

    try:
        return await trigger.wait()
    finally:
        await close_shared_clients()


class InvocationIdStore:
    """Remembers which invocation a task instance started, across its tries.

    Airflow 3.3+ offers ``task_state_store`` for exactly this. Older versions get an Airflow Variable keyed by
    the task instance (dag, task, run, map index), removed once the invocation has a final outcome.
    """

    def __init__(self, context: Any) -> None:
        self._store = context.get("task_state_store") if hasattr(context, "get") else None
        ti = context["ti"]
        self._key = "kernel_provider.invocation." + ".".join(
            str(part) for part in (ti.dag_id, ti.task_id, ti.run_id, getattr(ti, "map_index", -1))
        )

    def get(self) -> str | None:
        try:
            if self._store is not None:
                value = self._store.get(STATE_KEY)
            else:
                value = _variable().get(self._key, default_var=None) if _is_af2() else _variable().get(
                    self._key, default=None)
        except Exception as exc:
            log.warning("Could not read the previous try's invocation id: %s", exc)
            return None
        return value if isinstance(value, str) and value else None

    def set(self, invocation_id: str) -> None:
        try:
            if self._store is not None:
                self._store.set(STATE_KEY, invocation_id)
            else:
                _variable().set(self._key, invocation_id, description="airflow-provider-kernel: invocation "
                                "started by this task instance (used to re-attach on retry)")
        except Exception as exc:
            log.warning("Could not remember invocation id %s for a retry: %s", invocation_id, exc)

    def clear(self) -> None:
        try:
            if self._store is not None:
                self._store.set(STATE_KEY, "")
            else:
                _variable().delete(self._key)
        except Exception as exc:
            log.debug("Could not clear the stored invocation id: %s", exc)


def _variable() -> Any:
    try:
        from airflow.sdk import Variable
    except ImportError:
        from airflow.models import Variable  # type: ignore[no-redef]
    return Variable


def _is_af2() -> bool:
    from airflow import __version__

    return __version__.startswith("2.")
