"""Configuration of the Kernel API emulator (shared by the server, the CLI and the pytest plugin)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

DEFAULT_TOKEN = "test-token"
DEMO_APP_NAME = "demo"


@dataclass
class EmulatorConfig:
    """Every knob of the emulator.

    ``org_concurrency`` / ``app_concurrency`` limit live (queued + running) invocations per organisation and
    per
    app name; ``None`` means unlimited (the default). ``sync_timeout`` is the cap for synchronous invocations
    (Kernel documents 100 s). ``heartbeat`` is the SSE ``sse_heartbeat`` interval in seconds
    (0 < heartbeat < 60).
    """

    tokens: Sequence[str] = (DEFAULT_TOKEN,)
    app_files: Sequence[str] = ()
    app_versions: Sequence[str] = ("latest",)
    demo_versions: Sequence[str] = ("latest",)
    heartbeat: float = 15.0
    sync_timeout: float = 100.0
    org_concurrency: int | None = None
    app_concurrency: int | None = None
    retry_after: int = 1
    seed: int | None = None
    unknown_projects: Sequence[str] = ()
    request_log_size: int = 10_000
    env_vars: dict[str, dict[str, str]] = field(default_factory=dict)

    def validate(self) -> None:
        """Raise ``ValueError`` for settings Kernel clients could not cope with."""
        if not self.tokens:
            raise ValueError("at least one token is required")
        if not 0 < self.heartbeat < 60:
            raise ValueError("heartbeat must be > 0 and < 60 seconds (SDK read timeouts are 60 s)")
        if self.sync_timeout <= 0:
            raise ValueError("sync_timeout must be > 0")
        for name in ("org_concurrency", "app_concurrency"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 or None")

    def update(self, values: dict[str, Any]) -> None:
        """Change run-time tunables (used by ``POST /_emulator/config``)."""
        allowed = {"heartbeat", "sync_timeout", "org_concurrency", "app_concurrency", "retry_after"}
        unknown = set(values) - allowed
        if unknown:
            raise ValueError(f"unknown or read-only config keys: {sorted(unknown)}")
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
        """The settings without the tokens (safe to expose on the admin routes)."""
        return {
            "app_versions": list(self.app_versions),
            "demo_versions": list(self.demo_versions),
            "heartbeat": self.heartbeat,
            "sync_timeout": self.sync_timeout,
            "org_concurrency": self.org_concurrency,
            "app_concurrency": self.app_concurrency,
            "retry_after": self.retry_after,
            "seed": self.seed,
            "token_count": len(self.tokens),
        }
