"""What the in-process :class:`~.server.KernelEmulator` and the HTTP :class:`~.emulator_client.EmulatorClient` both
do with an emulator's state once they have read it: count created invocations, wait for a status.

Pure functions over the JSON the admin routes answer with, so both callers give the same answers.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any


def count_created(
    entries: list[dict[str, Any]], app: str | None = None, action: str | None = None, payload: Any = None
) -> int:
    """Sum the ``created_by_key`` entries of ``/_emulator/stats`` that match.

    :param entries: the ``created_by_key`` list (``{"app_name", "action_name", "payload", "count"}`` each).
    :param app: only this app (None: any).
    :param action: only this action (None: any).
    :param payload: only this payload: a string is compared with the JSON text sent, any other value with the
        decoded payload (None: any).
    """
    total = 0
    for entry in entries:
        if app is not None and entry["app_name"] != app:
            continue
        if action is not None and entry["action_name"] != action:
            continue
        if payload is not None:
            sent = entry["payload"]
            if isinstance(payload, str):
                if sent != payload:
                    continue
            else:
                try:
                    decoded = json.loads(sent) if sent else None
                except ValueError:
                    continue
                if decoded != payload:
                    continue
        total += entry["count"]
    return total


def wait_for_status(
    lookup: Callable[[str], dict[str, Any] | None],
    invocation_id: str,
    statuses: tuple[str, ...],
    timeout: float,
    interval: float,
) -> dict[str, Any]:
    """Poll until an invocation's ``status`` is one of ``statuses`` and return its JSON; ``TimeoutError`` after
    ``timeout`` seconds.

    :param lookup: reads one invocation's JSON by id (None while it is unknown).
    :param invocation_id: the invocation to wait for.
    :param statuses: the statuses that end the wait.
    :param timeout: seconds before giving up.
    :param interval: seconds between two reads.
    """
    deadline = time.monotonic() + timeout
    while True:
        inv = lookup(invocation_id)
        if inv is not None and inv["status"] in statuses:
            return inv
        if time.monotonic() > deadline:
            raise TimeoutError(f"invocation {invocation_id} not in {statuses} after {timeout}s: {inv}")
        time.sleep(interval)
