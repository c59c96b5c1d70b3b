"""Finding the invocation a create that got no answer may have started, without ever adopting someone else's.

``POST /invocations`` has no idempotency key. When a create fails after it may have reached Kernel (a dropped
connection, a read timeout, a 5xx, a worker that died mid-request), the only way to learn whether it started a
run is to list invocations and compare. The rules:

* **The window is one attempt's own timing**: from the moment just before the attempt that got no answer was sent
  to the moment its answer or failure was known (for a crash: sent + connect timeout + read timeout), widened by
  :data:`CLOCK_MARGIN` seconds each side for clock skew between this worker and Kernel. Earlier attempts were
  answered (a 429 or a refused connection created nothing), so the 429 budget is not part of it. An invocation
  Kernel started outside the window cannot be this request's.
* **Fields rule candidates out, never in**: an invocation is ruled out only by a field Kernel sent that differs
  (app, action, version, start time, payload). A missing field, or a payload that may have been cut short,
  rules nothing out: such an invocation stays a candidate, after one ``GET`` to read its full record.
* **The listing is read page by page, newest first**, from the window's start (Kernel's ``since``) with no upper
  bound: in a busy fan-out most listed runs started after the window and are passed over by their start time.
  Paging stops at the end of the listing or at the first invocation older than the window. Offsets shift when
  runs are created meanwhile: a run may come back on the next page (read once), none is skipped.
* **Only a token proves ownership.** With ``reconcile_token`` the request's payload carried a random per-try value
  (:data:`TOKEN_KEY`); the invocation whose payload carries it is ours, exactly, however busy the listing: tokens
  are compared while paging, and the first carrier ends the search. Without a token, a run with the same app,
  action, version and payload in the window may be a twin (a mapped task with an equal payload, another DAG, a
  backfill), so any candidate makes the caller fail loudly, naming them; only "no candidate at all" is a settled
  answer (nothing was created). More than :data:`MAX_SCAN` runs *inside the window* cannot be settled that way.
* **What is adopted or cancelled must be the request's**: :func:`check_same_request` compares app, action, version
  and token of any invocation a run record or a reconcile names before the caller acts on it.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from enum import Enum
from typing import Any

from kernel_provider.client.errors import KernelInputError, KernelRunMismatchError
from kernel_provider.client.models import Invocation

#: Seconds added to each side of a create's window for clock skew between the worker and Kernel.
CLOCK_MARGIN = 5.0
#: Most invocations inside the window a reconcile without token weighs before it gives up settling by listing.
MAX_SCAN = 500
#: Invocations asked for per listing request (Kernel's largest page).
PAGE_SIZE = 100
#: Most invocations one reconcile reads in all (newer ones included): a bound against a listing that never ends.
MAX_LISTED = 100_000
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
    free of I/O); ``list_invocations`` is called once per page (``offset``, ``limit``), filtered by app, action and
    version from the window's beginning.
    """
    seen: set[str] = set()
    ours: list[Invocation] = []
    undecided: list[Invocation] = []
    inside = 0
    offset = 0
    while offset < MAX_LISTED:
        page = list_invocations(
            app_name=request["app_name"],
            action_name=request["action_name"],
            version=request.get("version"),
            since=window.since,
            offset=offset,
            limit=PAGE_SIZE,
        )
        older_reached = False
        for invocation in page:
            if invocation.id in seen:
                continue  # shifted onto this page by a run created meanwhile
            seen.add(invocation.id)
            started = invocation.started_at
            if started is not None and started > window.until:
                continue  # started after the window: another request's, and no part of the count
            if started is not None and started < window.since:
                older_reached = True  # newest first: everything after this is older still
                continue
            inside += 1
            verdict = judge(invocation, request, window, token)
            if verdict is Verdict.OURS:
                ours.append(invocation)
            elif verdict is Verdict.CANDIDATE:
                undecided.append(invocation)
        if ours:
            break  # the token is proof: no need to read further
        if token is None and inside > MAX_SCAN:
            return Outcome(
                None,
                (),
                f"more than {MAX_SCAN} invocations of this action started in the request's window "
                f"{window.describe()}, too many to settle by listing",
            )
        if older_reached or len(page) < PAGE_SIZE:
            break
        offset += len(page)
    else:
        return Outcome(None, (), f"Kernel listed more than {MAX_LISTED} invocations without reaching the window")
    if ours:
        return Outcome(ours[0])
    # A listed record may lack fields (or carry them cut short): read the undecided ones in full first.
    still: list[Invocation] = []
    for invocation in undecided[:MAX_LOOKUPS]:
        full = get_invocation(invocation.id)
        verdict = judge(full, request, window, token)
        if verdict is Verdict.OURS:
            return Outcome(full)  # the token is proof; the rest merely could not be read in full
        if verdict is Verdict.CANDIDATE:
            still.append(full)
    undecided = still + undecided[MAX_LOOKUPS:]
    if not undecided:
        return Outcome(None)
    why = (
        "their records lack the fields that could rule them out"
        if token is not None
        else "they match the app, action, version and payload, and without reconcile_token a twin run "
        "(another task with an equal payload) cannot be told from this task's"
    )
    return Outcome(None, tuple(undecided), why)


def carries_token(payload: str | None, token: str) -> bool:
    """Whether a full (not listed, so not cut short) payload carries ``token`` under :data:`TOKEN_KEY`."""
    try:
        data = json.loads(payload) if payload else None
    except ValueError:
        return False
    return isinstance(data, dict) and data.get(TOKEN_KEY) == token


def check_same_request(invocation: Invocation, request: Mapping[str, Any], token: str | None, *, source: str) -> None:
    """Refuse to act on an invocation that is not the request's own before adopting or cancelling it.

    A run record is only as trustworthy as the store it lives in (below Airflow 3.3 an Airflow Variable anyone
    allowed to edit Variables can set), so the invocation it names must have the request's app, action and
    version, and carry the token when the record has one. A field Kernel did not send counts as different: it
    cannot be shown to match.

    :param invocation: the invocation as ``GET /invocations/{id}`` returned it (full payload).
    :param request: the create request of this task (``app_name``, ``action_name``, ``version``).
    :param token: the reconcile token the record holds, if any.
    :param source: where the id came from, for the message (e.g. "the run record").
    :raises KernelRunMismatchError: naming each difference; nothing was adopted or cancelled.
    """
    differences = [
        f"{label} {getattr(invocation, field) or '(not sent)'!r} instead of {request.get(field)!r}"
        for field, label in (("app_name", "app"), ("action_name", "action"), ("version", "version"))
        if getattr(invocation, field) != request.get(field)
    ]
    if token is not None and not carries_token(invocation.payload, token):
        differences.append("its payload lacks this task's reconcile token")
    if differences:
        raise KernelRunMismatchError(
            f"Invocation {invocation.id}, named by {source}, is not this task's request: "
            f"{'; '.join(differences)}. It was neither adopted nor cancelled. If the record was edited by hand "
            "(or the task's app, action or version changed since), check that invocation in Kernel, then clear "
            "this task to start afresh.",
            invocation.id,
            differences,
        )
