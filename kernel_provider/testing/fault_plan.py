"""When the Kernel API emulator injects a fault: scriptable, reproducible rules (:mod:`~.faults` says what a fault
does).

A :class:`FaultPlan` is a list of rules. Each rule matches requests by method and *templated* path (for
example ``"GET /invocations/{id}"``; ``"*"`` matches everything, ``"GET *"`` every GET, ``fnmatch``
wildcards are allowed in the path) and decides, per matching request, whether a :class:`~.faults.Fault` fires:

* ``sequence``: the next matching requests get the listed faults in order; ``null`` lets one request through
  untouched (later rules may still fire for it); once exhausted the rule is inert.
* ``rate``: probability in [0, 1] drawn from the plan's seeded RNG (same seed + same requests = same faults).
* ``times``: at most this many firings (combine with ``rate`` or use alone: "the next N matching requests").
* ``fault`` without ``rate``/``times``: fires on every matching request.

Rules are evaluated in order; the first rule that fires supplies the fault for the request.
"""

from __future__ import annotations

import fnmatch
import json
import random
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kernel_provider.testing.faults import Fault, check_object

_RULE_KEYS = {"route", "sequence", "rate", "times", "fault", "name"}
_PLAN_KEYS = {"seed", "rules", "legacy_status_reason", "plain_text_failure_output"}


@dataclass
class FaultRule:
    """One rule of a plan (see the module docstring)."""

    route: str = "*"
    sequence: list[Fault | None] | None = None
    rate: float | None = None
    times: int | None = None
    fault: Fault | None = None
    name: str | None = None
    fired: int = 0
    position: int = 0

    def __post_init__(self) -> None:
        route = self.route.strip()
        method, _, path = route.partition(" ")
        if not path:
            if method.startswith("/") or method == "*":
                method, path = "*", method
            else:
                path = "*"
        self._method = method.upper()
        self._path = path.strip() or "*"

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FaultRule:
        """Build and validate a rule from its JSON form."""
        check_object(data, "fault rule", _RULE_KEYS)
        sequence = data.get("sequence")
        if sequence is not None:
            if not isinstance(sequence, list):
                raise ValueError("sequence must be a list of faults or nulls")
            sequence = [None if item is None else Fault.from_json(item) for item in sequence]
        fault = Fault.from_json(data["fault"]) if data.get("fault") is not None else None
        if sequence is None and fault is None:
            raise ValueError("a fault rule needs 'sequence' or 'fault'")
        rate = data.get("rate")
        if rate is not None and not (isinstance(rate, (int, float)) and 0 <= rate <= 1):
            raise ValueError("rate must be a number in [0, 1]")
        times = data.get("times")
        if times is not None and (not isinstance(times, int) or times < 0):
            raise ValueError("times must be an integer >= 0")
        return cls(
            route=str(data.get("route", "*")),
            sequence=sequence,
            rate=None if rate is None else float(rate),
            times=times,
            fault=fault,
            name=data.get("name"),
        )

    def matches(self, method: str, template: str) -> bool:
        """Whether the rule applies to a request (method + templated path)."""
        if self._method != "*" and self._method != method:
            return False
        return self._path == "*" or self._path == template or fnmatch.fnmatchcase(template, self._path)

    def draw(self, rng: random.Random) -> tuple[bool, Fault | None]:
        """Decide for one matching request: ``(consumed, fault)``; ``fault`` is None when nothing fires."""
        if self.sequence is not None:
            if self.position >= len(self.sequence):
                return False, None
            item = self.sequence[self.position]
            self.position += 1
            if item is not None:
                self.fired += 1
            return True, item
        if self.times is not None and self.fired >= self.times:
            return False, None
        if self.rate is not None and rng.random() >= self.rate:
            return True, None
        self.fired += 1
        return True, self.fault


class FaultPlan:
    """A seeded, thread-safe set of fault rules plus the global behaviour toggles.

    :param rules: the rules, tried in order.
    :param seed: the seed of the ``rate`` draws (default: a random one, shown by :meth:`to_json`).
    :param legacy_status_reason: answer with the ``status_reason`` older Kernel deployments sent.
    :param plain_text_failure_output: a failed invocation's ``output`` is plain text: the action's traceback (not
        ``Type: message``), or the timeout's reason (not ``{"error": reason}``).
    """

    def __init__(
        self,
        rules: list[FaultRule] | None = None,
        seed: int | None = None,
        legacy_status_reason: bool = False,
        plain_text_failure_output: bool = False,
    ) -> None:
        self.rules = list(rules or [])
        self.seed = seed if seed is not None else random.SystemRandom().randrange(2**31)
        self.legacy_status_reason = legacy_status_reason
        self.plain_text_failure_output = plain_text_failure_output
        self._rng = random.Random(self.seed)
        self._lock = threading.Lock()

    @classmethod
    def from_json(cls, data: Any, default_seed: int | None = None) -> FaultPlan:
        """Accept a plan, a dict, a JSON string, a ``Path`` to a JSON file, or ``None`` (empty plan)."""
        if isinstance(data, FaultPlan):
            return data
        if data is None:
            return cls(seed=default_seed)
        if isinstance(data, Path):
            data = json.loads(data.read_text())
        elif isinstance(data, (str, bytes)):
            data = json.loads(data)
        if isinstance(data, list):
            data = {"rules": data}
        if not isinstance(data, dict):
            raise ValueError("a fault plan must be a JSON object")
        unknown = set(data) - _PLAN_KEYS
        if unknown:
            raise ValueError(f"unknown fault plan keys: {sorted(unknown)}")
        rules = data.get("rules") or []
        if not isinstance(rules, list):
            raise ValueError("rules must be a list")
        seed = data.get("seed", default_seed)
        if seed is not None and not isinstance(seed, int):
            raise ValueError("seed must be an integer")
        return cls(
            rules=[FaultRule.from_json(rule) for rule in rules],
            seed=seed,
            legacy_status_reason=bool(data.get("legacy_status_reason", False)),
            plain_text_failure_output=bool(data.get("plain_text_failure_output", False)),
        )

    @classmethod
    def load(cls, path: str | Path, default_seed: int | None = None) -> FaultPlan:
        """Read a plan from a JSON file."""
        return cls.from_json(json.loads(Path(path).read_text()), default_seed=default_seed)

    def pick(self, method: str, template: str) -> Fault | None:
        """Return the fault for one request, or None. Advances sequences, counters and the RNG."""
        if not self.rules:
            return None
        with self._lock:
            for rule in self.rules:
                if not rule.matches(method, template):
                    continue
                _consumed, fault = rule.draw(self._rng)
                if fault is not None:
                    return fault
        return None

    def spec(self) -> dict[str, Any]:
        """The plan as written (no counters or positions): ``FaultPlan.from_json(plan.spec())`` starts afresh."""
        data = self.to_json()
        data["rules"] = [{k: v for k, v in rule.items() if k in _RULE_KEYS} for rule in data["rules"]]
        return data

    def to_json(self) -> dict[str, Any]:
        """A JSON view of the plan, with per-rule progress counters."""
        rules = []
        for rule in self.rules:
            item: dict[str, Any] = {"route": rule.route, "fired": rule.fired}
            if rule.name:
                item["name"] = rule.name
            if rule.sequence is not None:
                item["sequence"] = [None if f is None else f.raw for f in rule.sequence]
                item["position"] = rule.position
            if rule.fault is not None:
                item["fault"] = rule.fault.raw
            if rule.rate is not None:
                item["rate"] = rule.rate
            if rule.times is not None:
                item["times"] = rule.times
            rules.append(item)
        return {
            "seed": self.seed,
            "rules": rules,
            "legacy_status_reason": self.legacy_status_reason,
            "plain_text_failure_output": self.plain_text_failure_output,
        }
