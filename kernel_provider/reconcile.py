"""Finding the invocation a create that got no answer may have started, without ever adopting someone else's.

``POST /invocations`` has no idempotency key. When a create fails after it may have reached Kernel (a dropped
connection, a read timeout, a 5xx, a worker that died mid-request), the only way to learn whether it started a
run is to list invocations and compare. The rules:

* **The window is the request's own timing**: from the moment it was sent to the moment it was answered or timed
  out (for a crash: sent + connect timeout + read timeout), widened by :data:`CLOCK_MARGIN` seconds each side for
  clock skew between this worker and Kernel. An invocation Kernel started outside it cannot be this request's.
* **Fields rule candidates out, never in**: an invocation is ruled out only by a field Kernel sent that differs
  (app, action, version, start time, payload). A missing field, or a payload that may have been cut short,
  rules nothing out: such an invocation stays a candidate, after one ``GET`` to read its full record.
* **The listing is bounded**: pages of 100, at most :data:`MAX_SCAN` invocations. A busier window cannot be
  settled by listing and is reported as such.
* **Only a token proves ownership.** With ``reconcile_token`` the request's payload carried a random per-try value
  (:data:`TOKEN_KEY`); the invocation whose payload carries it is ours, exactly. Without a token, a run with the
  same app, action, version and payload in the window may be a twin (a mapped task with an equal payload, another
  DAG, a backfill), so any candidate makes the caller fail loudly, naming them; only "no candidate at all" is a
  settled answer (nothing was created).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from enum import Enum
from typing import Any

from kernel_provider.client.errors import KernelInputError
from kernel_provider.client.models import Invocation

#: Seconds added to each side of a create's window for clock skew between the worker and Kernel.
CLOCK_MARGIN = 5.0
#: Most invocations one reconcile lists before it gives up settling the question by listing.
MAX_SCAN = 500
#: Most undecided invocations fetched one by one for their full record.
MAX_LOOKUPS = 10
#: Payload key of the reconcile token (``reconcile_token=True``).
TOKEN_KEY = "_airflow_kernel_token"


@dataclass(frozen=True)
class CreateWindow:
    """When a create could have reached Kernel (worker clock), before the margin is applied."""

    sent: datetime
    latest: datetime

    @property
    def since(self) -> datetime:
        """Start of the search, margin included."""
        return self.sent - timedelta(seconds=CLOCK_MARGIN)

    @property
    def until(self) -> datetime:
        """End of the search, margin included."""
        return self.latest + timedelta(seconds=CLOCK_MARGIN)

    @classmethod
    def from_epoch(cls, sent: float, latest: float) -> CreateWindow:
        """From epoch seconds, as the run record stores them."""
        return cls(datetime.fromtimestamp(sent, timezone.utc), datetime.fromtimestamp(latest, timezone.utc))

    def describe(self) -> str:
        """The searched window in words."""
        return f"{self.since.isoformat()} .. {self.until.isoformat()}"


class Verdict(str, Enum):
    """What one listed invocation is to the create being reconciled."""

    OURS = "ours"  # carries our token
    RULED_OUT = "ruled_out"  # a field Kernel sent shows it is another request's
    CANDIDATE = "candidate"  # nothing rules it out


@dataclass(frozen=True)
class Outcome:
    """The answer of a reconcile: the invocation that is ours (if proven), and what could not be ruled out.

    ``settled`` is True when the answer is certain: ``ours`` is the run, or (``ours`` None, no candidates) the
    create started nothing. Otherwise ``candidates`` lists what a person must look at, and ``reason`` says why.
    """

    ours: Invocation | None
    candidates: tuple[Invocation, ...] = ()
    reason: str = ""

    @property
    def settled(self) -> bool:
        """The answer is certain: no candidate is left open and nothing made it undecidable."""
        return not self.candidates and not self.reason


def new_token() -> str:
    """A fresh reconcile token (random, unguessable, 24 characters)."""
    return secrets.token_hex(12)


def add_token(payload: str | None, token: str) -> str:
    """The request payload with the token added; the payload must be a JSON object (or absent)."""
    try:
        data = json.loads(payload) if payload else {}
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise KernelInputError(
            "reconcile_token",
            f"needs a JSON-object payload (the token is added to it as {TOKEN_KEY!r}).",
            "Pass the payload as a dict, or set reconcile_token=False.",
        )
    if TOKEN_KEY in data:
        raise KernelInputError(
            "payload",
            f"already has the key {TOKEN_KEY!r}, which reconcile_token sets.",
            "Rename that key in the payload.",
        )
    data[TOKEN_KEY] = token
    return json.dumps(data, separators=(",", ":"))


def judge(invocation: Invocation, request: Mapping[str, Any], window: CreateWindow, token: str | None) -> Verdict:
    """One invocation against the create: ruled out only by a field Kernel actually sent."""
    for name in ("app_name", "action_name", "version"):
        sent = getattr(invocation, name, None)
        if sent and sent != request.get(name):
            return Verdict.RULED_OUT
    started = invocation.started_at
    if started is not None and not (window.since <= started <= window.until):
        return Verdict.RULED_OUT
    payload = invocation.payload
    if payload is None:
        return Verdict.CANDIDATE
    if token is not None:
        try:
            data = json.loads(payload)
        except ValueError:
            return Verdict.CANDIDATE  # cut short or mangled: the token may be in the part we did not get
        if not isinstance(data, dict):
            return Verdict.RULED_OUT  # a whole JSON value that is not an object cannot carry the token
        return Verdict.OURS if data.get(TOKEN_KEY) == token else Verdict.RULED_OUT
    ours = request.get("payload") or ""
    if payload == ours:
        return Verdict.CANDIDATE
    if len(payload) < len(ours) and ours.startswith(payload):
        return Verdict.CANDIDATE  # possibly cut short by the listing
    if not payload and not ours:
        return Verdict.CANDIDATE
    return Verdict.RULED_OUT


def reconcile(
    request: Mapping[str, Any],
    window: CreateWindow,
    token: str | None,
    *,
    list_invocations: Callable[..., Sequence[Invocation]],
    get_invocation: Callable[[str], Invocation],
) -> Outcome:
    """Decide which invocation (if any) a create started; see the module docstring for the rules.

    ``list_invocations`` and ``get_invocation`` are the hook's methods (kept as parameters so the rules stay
    free of I/O). The listing is filtered by app, action and version and starts at the window's beginning.
    """
    listed = list_invocations(
        app_name=request["app_name"],
        action_name=request["action_name"],
        version=request.get("version"),
        since=window.since,
        limit=MAX_SCAN + 1,
    )
    # An invocation created while paging shifts the offsets: the same one can come back on two pages.
    unique = list({i.id: i for i in listed}.values())
    if len(listed) > MAX_SCAN:
        return Outcome(
            None,
            (),
            f"more than {MAX_SCAN} invocations of this action started since "
            f"{window.since.isoformat()}, too many to settle by listing",
        )
    ours: list[Invocation] = []
    undecided: list[Invocation] = []
    for invocation in unique:
        verdict = judge(invocation, request, window, token)
        if verdict is Verdict.OURS:
            ours.append(invocation)
        elif verdict is Verdict.CANDIDATE:
            undecided.append(invocation)
    # A listed record may lack fields (or carry them cut short): read the undecided ones in full first.
    still: list[Invocation] = []
    for invocation in undecided[:MAX_LOOKUPS]:
        full = get_invocation(invocation.id)
        verdict = judge(full, request, window, token)
        if verdict is Verdict.OURS:
            ours.append(full)
        elif verdict is Verdict.CANDIDATE:
            still.append(full)
    undecided = still + undecided[MAX_LOOKUPS:]
    if len(ours) == 1 and not undecided:
        return Outcome(ours[0])
    if len(ours) > 1:
        return Outcome(None, tuple(ours), "several invocations carry this try's token")
    if ours and undecided:
        return Outcome(ours[0])  # the token is proof; the rest merely could not be read in full
    if not undecided:
        return Outcome(None)
    why = (
        "their records lack the fields that could rule them out"
        if token is not None
        else "they match the app, action, version and payload, and without reconcile_token a twin run "
        "(another task with an equal payload) cannot be told from this task's"
    )
    return Outcome(None, tuple(undecided), why)
