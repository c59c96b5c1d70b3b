"""``EmulatorClient``: the emulator's admin and introspection routes (``/_emulator/...``) over HTTP.

Not to be confused with :mod:`kernel_provider.client`, the provider's client of Kernel's API. Use it for an
emulator running in another process (``kernel-emulator`` CLI, :meth:`KernelEmulator.spawn`); it offers the same
introspection methods as the in-process :class:`~kernel_provider.testing.KernelEmulator`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx

from kernel_provider.testing.config import DEFAULT_TOKEN
from kernel_provider.testing.introspection import count_created, wait_for_status


class EmulatorClient:
    """Talks to ``<url>/_emulator/*`` with the emulator's API token (those routes need it, as Kernel's API does).

    :param url: the emulator's base URL.
    :param token: one of the tokens it accepts (its ``--token``).
    :param timeout: seconds per request.
    """

    def __init__(self, url: str, token: str = DEFAULT_TOKEN, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self._http = httpx.Client(
            base_url=self.url, timeout=timeout, headers={"Authorization": f"Bearer {token}"}, follow_redirects=False
        )

    def close(self) -> None:
        """Close the HTTP connections."""
        self._http.close()

    def __enter__(self) -> EmulatorClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _get(self, route: str, /, **params: Any) -> Any:
        response = self._http.get(route, params={k: v for k, v in params.items() if v is not None})
        response.raise_for_status()
        return response.json()

    def _post(self, route: str, body: Any = None) -> Any:
        content = b"" if body is None else json.dumps(body).encode()
        response = self._http.post(route, content=content, headers={"content-type": "application/json"})
        response.raise_for_status()
        return response.json()

    def health(self) -> dict[str, Any]:
        """``{"status": "ok", "invocations", "live"}``."""
        return dict(self._get("/_emulator/health"))

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Poll ``/_emulator/health`` until it answers."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.health()
                return
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stats(self) -> dict[str, Any]:
        """Counters since start or reset: ``{"created", "created_by_key", "live", "by_status", ...}``."""
        return dict(self._get("/_emulator/stats"))

    def requests(
        self, path: str | None = None, method: str | None = None, route: str | None = None
    ) -> list[dict[str, Any]]:
        """The request log (oldest first), optionally filtered by concrete or templated path, method, route."""
        return list(self._get("/_emulator/requests", path=path, method=method, route=route))

    def created_count(self, app: str | None = None, action: str | None = None, payload: Any = None) -> int:
        """How many invocations were created for app/action/payload (payload: the JSON string or a value)."""
        return count_created(self.stats()["created_by_key"], app, action, payload)

    def set_faults(self, plan: dict[str, Any] | list[Any] | str | Path | None) -> dict[str, Any]:
        """Replace the fault plan (a dict, a rule list, JSON text, a JSON file path, or None to clear)."""
        if isinstance(plan, Path):
            plan = json.loads(plan.read_text())
        elif isinstance(plan, str):
            plan = json.loads(plan)
        return dict(self._post("/_emulator/faults", plan))

    def clear_faults(self) -> None:
        """Replace the fault plan with an empty one."""
        self.set_faults(None)

    def faults(self) -> dict[str, Any]:
        """The fault plan as JSON, with each rule's progress."""
        return dict(self._get("/_emulator/faults"))

    def reset(self) -> None:
        """Forget invocations, counters, the request log and the fault plan."""
        self._post("/_emulator/reset")

    def invocations(self) -> list[dict[str, Any]]:
        """All retained invocations, oldest first, each with its ``_emulator`` section."""
        return list(self._get("/_emulator/invocations"))

    def invocation(self, invocation_id: str) -> dict[str, Any] | None:
        """One invocation's JSON (plus an ``_emulator`` section), or None when unknown or evicted."""
        response = self._http.get(f"/_emulator/invocations/{invocation_id}")
        if response.status_code == 404:
            return None
        response.raise_for_status()
        return dict(response.json())

    def wait_for(
        self, invocation_id: str, statuses: tuple[str, ...] = ("succeeded", "failed"), timeout: float = 10.0
    ) -> dict[str, Any]:
        """Poll until the invocation reaches one of ``statuses``; raises ``TimeoutError``."""
        return wait_for_status(self.invocation, invocation_id, statuses, timeout, interval=0.02)

    def configure(self, **values: Any) -> dict[str, Any]:
        """Change run-time settings (see ``EmulatorConfig``'s ``runtime`` fields); no values: just read them."""
        return dict(self._post("/_emulator/config", values))

    def apps(self) -> list[dict[str, Any]]:
        """Every deployed app version (``AppVersionSummary`` objects)."""
        return list(self._get("/_emulator/apps"))
