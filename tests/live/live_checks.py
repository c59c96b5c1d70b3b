"""The assumptions the provider rests on, checked against a Kernel API: the real one (``make test-live``, with a
key) or the emulator (in ``make test``, to show the checks themselves work).

Bounded: two invocations of the given action, each cancelled at the end. Every check reports ``held``,
``differs`` (with what was seen) or ``not checked`` (why). Raw HTTP (httpx, httpx-sse), not the provider's client:
the wire itself is what is checked.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx

HELD, DIFFERS, NOT_CHECKED = "held", "differs", "not checked"


@dataclass(frozen=True)
class Check:
    """One assumption and what the API did."""

    name: str
    verdict: str
    seen: str = ""


@dataclass(frozen=True)
class Target:
    """Where to check, and with which action (it should run for a few seconds and accept ``payload``)."""

    base_url: str
    api_key: str
    app_name: str
    action_name: str
    payload: dict[str, Any]
    version: str = "latest"


def format_table(checks: list[Check]) -> str:
    """The checks as a plain-text table."""
    width = max(len(c.name) for c in checks)
    lines = [f"{'assumption':<{width}}  verdict      seen", f"{'-' * width}  -----------  ----"]
    lines += [f"{c.name:<{width}}  {c.verdict:<11}  {c.seen}" for c in checks]
    return "\n".join(lines)


def run_checks(target: Target) -> list[Check]:
    """Run every check; never raises for an API that differs (that is a row), only for one that cannot be reached."""
    checks: list[Check] = []
    headers = {"Authorization": f"Bearer {target.api_key}", "Accept": "application/json"}
    with (
        httpx.Client(base_url=target.base_url, headers=headers, timeout=30.0) as http,
        _invocations(http, target) as (first, second, payload_text, created_at),
    ):
        checks += _list_checks(http, target, first, second, payload_text, created_at)
        checks += _stream_checks(http, target, first)
        checks.append(_patch_finished_check(http, first))
    checks.append(Check("429 carries Retry-After", NOT_CHECKED, "not provoked: it would need the account's limit"))
    return checks


@contextmanager
def _invocations(http: httpx.Client, target: Target) -> Iterator[tuple[str, str, str, datetime]]:
    created: list[str] = []
    payload_text = json.dumps({**target.payload, "live_check": time.time()}, separators=(",", ":"))
    body = {
        "app_name": target.app_name,
        "action_name": target.action_name,
        "version": target.version,
        "payload": payload_text,
        "async": True,
    }
    created_at = datetime.now(timezone.utc)
    try:
        for _ in range(2):
            answer = http.post("/invocations", json=body)
            answer.raise_for_status()
            created.append(answer.json()["id"])
        yield created[0], created[1], payload_text, created_at
    finally:
        for invocation_id in created:  # bounded: nothing is left running
            http.patch(f"/invocations/{invocation_id}", json={"status": "failed", "output": '{"error":"live check"}'})
            http.delete(f"/invocations/{invocation_id}/browsers")


def _verdict(name: str, ok: bool, seen: Any) -> Check:
    return Check(name, HELD if ok else DIFFERS, str(seen)[:160])


def _list_checks(
    http: httpx.Client, target: Target, first: str, second: str, payload_text: str, created_at: datetime
) -> list[Check]:
    filters = {"app_name": target.app_name, "action_name": target.action_name, "version": target.version}
    since = (created_at - timedelta(seconds=30)).isoformat().replace("+00:00", "Z")
    page = http.get("/invocations", params={**filters, "since": since, "limit": 100})
    items = page.json() if page.status_code == 200 else []
    by_id = {i.get("id"): i for i in items if isinstance(i, dict)}
    out = [
        _verdict(
            "list items carry `payload`, exactly as sent",
            by_id.get(first, {}).get("payload") == payload_text,
            by_id.get(first, {}).get("payload", "no payload field"),
        )
    ]
    ids = [i.get("id") for i in items]
    ordered = first in ids and second in ids and ids.index(second) < ids.index(first)
    out.append(_verdict("list is newest first", ordered, ids[:4]))
    later = (datetime.now(timezone.utc) + timedelta(seconds=60)).isoformat().replace("+00:00", "Z")
    future = http.get("/invocations", params={**filters, "since": later, "limit": 100})
    out.append(
        _verdict(
            "`since` means started since (a later `since` excludes both)",
            future.status_code == 200 and not {first, second} & {i.get("id") for i in future.json()},
            f"HTTP {future.status_code}",
        )
    )
    one = http.get("/invocations", params={**filters, "since": since, "limit": 1})
    more, nxt = one.headers.get("x-has-more"), one.headers.get("x-next-offset")
    out.append(
        _verdict(
            "paging: `limit=1` gives X-Has-More true and X-Next-Offset 1",
            len(one.json()) == 1 and (more or "").lower() == "true" and nxt == "1",
            f"X-Has-More={more} X-Next-Offset={nxt}",
        )
    )
    return out


def _stream_checks(api: httpx.Client, target: Target, invocation_id: str) -> list[Check]:
    """Open the stream, read the first event, cancel the run (PATCH ``failed``) and watch the stream end."""
    from httpx_sse import connect_sse

    headers = {"Authorization": f"Bearer {target.api_key}", "Accept": "text/event-stream"}
    events: list[dict[str, Any]] = []
    closed = False
    timeout = httpx.Timeout(90.0, connect=10.0)
    with (
        httpx.Client(base_url=target.base_url, headers=headers, timeout=timeout) as http,
        connect_sse(http, "GET", f"/invocations/{invocation_id}/events") as source,
    ):
        messages = source.iter_sse()
        for message in messages:
            if message.data:
                events.append(json.loads(message.data))
                if len(events) == 1:  # the run is bounded: stop it now and watch the stream end
                    api.patch(
                        f"/invocations/{invocation_id}", json={"status": "failed", "output": '{"error":"live check"}'}
                    )
            state = (events[-1].get("invocation") or {}).get("status") if events else None
            if events and events[-1].get("event") == "invocation_state" and state in ("succeeded", "failed"):
                closed = _ends_soon(messages)
                break
    first = events[0].get("event") if events else None
    return [
        _verdict(
            "the event stream's first event is the current `invocation_state`", first == "invocation_state", first
        ),
        _verdict("the stream closes after the terminal state", closed, "closed" if closed else "kept open"),
    ]


def _ends_soon(messages: Iterator[Any]) -> bool:
    try:
        for message in messages:
            if message.data:
                return False
    except httpx.HTTPError:
        return False
    return True


def _patch_finished_check(http: httpx.Client, invocation_id: str) -> Check:
    answer = http.patch(f"/invocations/{invocation_id}", json={"status": "failed", "output": '{"error":"again"}'})
    status = http.get(f"/invocations/{invocation_id}").json().get("status")
    return _verdict(
        "PATCH `failed` on a finished invocation is harmless (2xx or 4xx, status unchanged)",
        answer.status_code < 500 and status in ("succeeded", "failed"),
        f"HTTP {answer.status_code}, status {status}",
    )
