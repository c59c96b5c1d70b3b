"""The reconcile rules as pure logic: which listed invocation is a lost create's, and when nobody can tell.

Kernel's listing is played by canned records here because the cases that matter (a listed item without its
payload, a payload cut short) are ones the emulator never produces; the operator tests drive the same code
against the emulator over HTTP.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from kernel_provider.client.models import Invocation
from kernel_provider.client.reconcile import (
    CLOCK_MARGIN,
    MAX_SCAN,
    PAGE_SIZE,
    TOKEN_KEY,
    CreateWindow,
    Verdict,
    add_token,
    judge,
    reconcile,
)
from kernel_provider.exceptions import KernelInputError

SENT = datetime(2026, 11, 29, 12, 0, 0, tzinfo=timezone.utc)
WINDOW = CreateWindow(SENT, SENT + timedelta(seconds=3))
REQUEST = {"app_name": "shop", "action_name": "scrape", "version": "v1", "payload": '{"url":"a"}'}


def inv(id: str, *, started: float = 1.0, payload: Any = '{"url":"a"}', **fields: Any) -> Invocation:
    data = {
        "id": id,
        "status": "running",
        "app_name": "shop",
        "action_name": "scrape",
        "version": "v1",
        "started_at": (SENT + timedelta(seconds=started)).isoformat().replace("+00:00", "Z"),
        **fields,
    }
    if payload is not None:
        data["payload"] = payload
    return Invocation.from_api(data)


class Kernel:
    """Answers the two calls reconcile makes, from canned records; counts them."""

    def __init__(self, listed: list[Invocation], full: dict[str, Invocation] | None = None) -> None:
        self.listed = listed
        self.full = full or {}
        self.list_calls: list[dict[str, Any]] = []
        self.gets: list[str] = []

    def list_invocations(self, **filters: Any) -> list[Invocation]:
        self.list_calls.append(filters)
        offset = filters["offset"]
        return self.listed[offset : offset + filters["limit"]]

    def get_invocation(self, invocation_id: str) -> Invocation:
        self.gets.append(invocation_id)
        return self.full.get(invocation_id) or next(i for i in self.listed if i.id == invocation_id)


def run(kernel: Kernel, token: str | None = None, request: dict[str, Any] = REQUEST) -> Any:
    return reconcile(
        request, WINDOW, token, list_invocations=kernel.list_invocations, get_invocation=kernel.get_invocation
    )


def test_the_listing_is_filtered_bounded_and_starts_at_the_window() -> None:
    kernel = Kernel([])
    outcome = run(kernel)
    assert outcome.settled and outcome.ours is None
    (call,) = kernel.list_calls
    assert call["app_name"] == "shop" and call["action_name"] == "scrape" and call["version"] == "v1"
    assert call["since"] == SENT - timedelta(seconds=CLOCK_MARGIN)
    assert (call["offset"], call["limit"]) == (0, PAGE_SIZE)


def test_without_a_token_an_identical_run_is_a_candidate_never_adopted() -> None:
    outcome = run(Kernel([inv("twin")]))
    assert outcome.ours is None and not outcome.settled
    assert [i.id for i in outcome.candidates] == ["twin"]
    assert "twin run" in outcome.reason


def test_fields_kernel_sent_rule_invocations_out() -> None:
    listed = [
        inv("other-payload", payload='{"url":"b"}'),
        inv("other-version", version="v2"),
        inv("other-action", action_name="login"),
        inv("too-late", started=3 + CLOCK_MARGIN + 1),
        inv("too-early", started=-CLOCK_MARGIN - 1),
    ]
    outcome = run(Kernel(listed))
    assert outcome.settled and outcome.ours is None


def test_missing_or_cut_short_payload_is_a_candidate_after_one_lookup() -> None:
    listed = [inv("no-payload", payload=None), inv("cut", payload='{"url"')]
    kernel = Kernel(listed)
    outcome = run(kernel)
    assert sorted(kernel.gets) == ["cut", "no-payload"]  # read in full before concluding
    assert sorted(i.id for i in outcome.candidates) == ["cut", "no-payload"]


def test_a_lookup_can_rule_a_candidate_out() -> None:
    kernel = Kernel([inv("no-payload", payload=None)], full={"no-payload": inv("no-payload", payload='{"x":1}')})
    outcome = run(kernel)
    assert outcome.settled and outcome.ours is None


def test_with_a_token_only_the_carrier_is_ours() -> None:
    token = "t" * 24
    body = {**REQUEST, "payload": add_token(REQUEST["payload"], token)}
    twin = inv("twin", payload=add_token(REQUEST["payload"], "x" * 24))
    mine = inv("mine", payload=body["payload"])
    outcome = run(Kernel([twin, mine]), token, body)
    assert outcome.settled and outcome.ours is not None and outcome.ours.id == "mine"
    assert run(Kernel([twin]), token, body).settled  # only a twin: nothing of ours was created


def test_with_a_token_an_unreadable_record_stays_a_candidate() -> None:
    token = "t" * 24
    body = {**REQUEST, "payload": add_token(REQUEST["payload"], token)}
    outcome = run(Kernel([inv("blank", payload=None)]), token, body)
    assert not outcome.settled and [i.id for i in outcome.candidates] == ["blank"]


def test_a_window_too_busy_to_list_is_not_settled() -> None:
    listed = [inv(f"i{n}", payload='{"url":"z"}') for n in range(MAX_SCAN + 1)]
    outcome = run(Kernel(listed))
    assert not outcome.settled and "too many" in outcome.reason


def test_add_token_needs_a_json_object() -> None:
    text = add_token('{"a":1}', "tok")
    assert json.loads(text) == {"a": 1, TOKEN_KEY: "tok"}
    assert json.loads(add_token(None, "tok")) == {TOKEN_KEY: "tok"}
    with pytest.raises(KernelInputError, match="reconcile_token"):
        add_token("[1, 2]", "tok")
    with pytest.raises(KernelInputError, match="payload"):
        add_token(json.dumps({TOKEN_KEY: "mine"}), "tok")


def test_judge_tolerates_a_record_with_no_fields_but_the_id() -> None:
    bare = Invocation.from_api({"id": "bare", "status": "queued"})
    assert judge(bare, REQUEST, WINDOW, None) is Verdict.CANDIDATE


def fan_out(count: int, *, started: float, token: bool = True) -> list[Invocation]:
    """``count`` runs of the same action from other task instances (each with its own token when ``token``)."""
    payloads = [add_token(REQUEST["payload"], f"{n:024d}") if token else REQUEST["payload"] for n in range(count)]
    return [inv(f"other{round(started * 1000)}_{n}", started=started, payload=p) for n, p in enumerate(payloads)]


def test_with_a_token_a_busy_listing_is_paged_until_the_carrier_never_too_many() -> None:
    """Issue 24 item 2: 600 newer runs of the fan-out listed first (newest first, no upper bound), ours last."""
    token = "t" * 24
    body = {**REQUEST, "payload": add_token(REQUEST["payload"], token)}
    kernel = Kernel([*fan_out(600, started=3 + CLOCK_MARGIN + 60), inv("mine", payload=body["payload"])])
    outcome = run(kernel, token, body)
    assert outcome.settled and outcome.ours is not None and outcome.ours.id == "mine"
    assert [c["offset"] for c in kernel.list_calls] == [0, 100, 200, 300, 400, 500, 600]


def test_with_a_token_hundreds_of_runs_inside_the_window_are_ruled_out_exactly() -> None:
    token = "t" * 24
    body = {**REQUEST, "payload": add_token(REQUEST["payload"], token)}
    outcome = run(Kernel(fan_out(MAX_SCAN + 101, started=1.0)), token, body)
    assert outcome.settled and outcome.ours is None  # nothing of ours: the retry may invoke


def test_without_a_token_only_runs_inside_the_window_count_towards_the_guard() -> None:
    # 600 twins (same payload) that started after the window, then nothing in it: settled, nothing created.
    kernel = Kernel(fan_out(600, started=3 + CLOCK_MARGIN + 1, token=False))
    outcome = run(kernel)
    assert outcome.settled and outcome.ours is None and kernel.gets == []
    # The same twins inside the window: still too many to tell apart by listing.
    assert "too many" in run(Kernel(fan_out(MAX_SCAN + 1, started=1.0, token=False))).reason


def test_paging_stops_at_the_first_run_older_than_the_window() -> None:
    listed = [*fan_out(150, started=3 + CLOCK_MARGIN + 1), *fan_out(150, started=-CLOCK_MARGIN - 10)]
    kernel = Kernel(listed)
    outcome = run(kernel, None)
    assert outcome.settled and [c["offset"] for c in kernel.list_calls] == [0, 100]


def test_a_run_shifted_onto_the_next_page_is_weighed_once() -> None:
    class Shifting(Kernel):
        """A run is created while paging: the second page starts with the first page's last item again."""

        def list_invocations(self, **filters: Any) -> list[Invocation]:
            self.list_calls.append(filters)
            offset = filters["offset"] - (1 if filters["offset"] else 0)
            return self.listed[offset : offset + filters["limit"]]

    twin = inv("twin")
    kernel = Shifting([*fan_out(99, started=3 + CLOCK_MARGIN + 1), twin, *fan_out(5, started=1.0)])
    outcome = run(kernel)
    assert [i.id for i in outcome.candidates] == ["twin"]  # once, not twice


def test_an_adopted_run_must_be_the_requests_own() -> None:
    from kernel_provider.client.reconcile import check_same_request
    from kernel_provider.exceptions import KernelRunMismatchError

    token = "t" * 24
    body = {**REQUEST, "payload": add_token(REQUEST["payload"], token)}
    check_same_request(inv("mine", payload=body["payload"]), body, token, source="the run record")
    with pytest.raises(KernelRunMismatchError) as failure:
        check_same_request(inv("x", app_name="bank", version="v9"), body, token, source="the run record")
    assert failure.value.candidates == ["x"]
    assert failure.value.differences == [
        "app 'bank' instead of 'shop'",
        "version 'v9' instead of 'v1'",
        "its payload lacks this task's reconcile token",
    ]
    bare = Invocation.from_api({"id": "bare", "status": "running"})
    with pytest.raises(KernelRunMismatchError, match="app '\\(not sent\\)'"):
        check_same_request(bare, REQUEST, None, source="the run record")
