"""JSON as it goes over the emulator's wire (no web framework imports here)."""

from __future__ import annotations

import json
from typing import Any


def dumps(value: Any) -> str:
    """Compact JSON (what goes on the wire)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def strict_json(text: str | bytes) -> Any:
    """``json.loads`` as RFC 8259 has it: no NaN/Infinity, no raw control characters inside strings."""
    return json.loads(text, parse_constant=_reject_constant)
