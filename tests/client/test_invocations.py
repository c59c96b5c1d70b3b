"""The wire (``kernel_provider.client.wire``) and the invocation operations (``kernel_provider.client.invocations``)
as pure logic: driven with canned responses, no server.

Each test answers the calls an operation yields with :class:`ApiResponse` objects (or transport errors) and
checks what it sent, when it stopped and what it returned or raised.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

import pytest

from kernel_provider.client import invocations, wire
from kernel_provider.client.errors import (
    KernelAmbiguousCreateError,
    KernelApiError,
    KernelAuthError,
    KernelInputError,
    KernelNotFoundError,
    KernelRateLimitError,
    KernelResponseError,
    KernelServerError,
    KernelTransportError,
)
from kernel_provider.client.retry import retry_after_seconds
from kernel_provider.client.wire import ApiCall, ApiResponse, drive
from tests.helpers import Answer, answer, api_error, canned


def invocation(inv_id: str = "inv-1", status: str = "running", **fields: Any) -> dict[str, Any]:
    return {"id": inv_id, "status": status, "action_name": "echo", "app_name": "demo", **fields}


def page(items: list[Any], *, has_more: str | None = None, next_offset: str | None = None) -> ApiResponse:
    headers = {}
    if has_more is not None:
        headers["x_has_more"] = has_more
    if next_offset is not None:
        headers["x_next_offset"] = next_offset
    return answer(200, items, **headers)


def offsets(calls: list[ApiCall[Any]]) -> list[tuple[str, str]]:
    return [(c.query["limit"], c.query["offset"]) for c in calls]


# --- pagination ---------------------------------------------------------------------------------------------


def test_pages_are_followed_while_kernel_says_there_are_more() -> None:
    send, calls = canned(
        page([invocation("a"), invocation("b")], has_more="true", next_offset="2"),
        page([invocation("c"), invocation("d")], has_more="True", next_offset="4"),
        page([invocation("e")], has_more="false", next_offset="5"),
    )
    listed = drive(invocations.list_invocations(app_name="demo", page_size=2), send)
    assert [i.id for i in listed] == ["a", "b", "c", "d", "e"]
    assert offsets(calls) == [("2", "0"), ("2", "2"), ("2", "4")]
    assert all(c.query["app_name"] == "demo" and "status" not in c.query for c in calls)


@pytest.mark.parametrize(
    ("has_more", "next_offset"),
    [
        ("false", "2"),  # Kernel says there is nothing more
        (None, "2"),  # ... or does not say there is more
        ("true", "0"),  # the "no next page" sentinel
        ("true", None),  # no next offset at all
        ("true", ""),
        ("true", "soon"),  # unreadable
    ],
)
def test_pagination_stops_when_there_is_no_next_page(has_more: str | None, next_offset: str | None) -> None:
    send, calls = canned(page([invocation("a"), invocation("b")], has_more=has_more, next_offset=next_offset))
    assert len(drive(invocations.list_invocations(page_size=2), send)) == 2
    assert len(calls) == 1


def test_pagination_stops_when_the_next_offset_does_not_advance() -> None:
    send, calls = canned(
        page([invocation("a")], has_more="true", next_offset="1"),
        page([invocation("b")], has_more="true", next_offset="1"),
    )  # would loop forever
    assert [i.id for i in drive(invocations.list_invocations(page_size=1), send)] == ["a", "b"]
    assert offsets(calls) == [("1", "0"), ("1", "1")]
    send, calls = canned(
        page([invocation("a")], has_more="true", next_offset="5"),
        page([invocation("b")], has_more="true", next_offset="3"),
    )  # going backwards
    assert len(drive(invocations.list_invocations(page_size=1), send)) == 2 and len(calls) == 2


def test_an_empty_page_ends_the_listing() -> None:
    send, calls = canned(page([], has_more="true", next_offset="100"))
    assert drive(invocations.list_invocations(), send) == [] and len(calls) == 1


def test_limit_caps_what_is_asked_for_and_what_is_returned() -> None:
    send, calls = canned(
        page([invocation("a"), invocation("b")], has_more="true", next_offset="2"),
        page([invocation("c"), invocation("d")], has_more="true", next_offset="4"),
        # a server that ignores the smaller limit of the last page
        page([invocation("e"), invocation("f")], has_more="true", next_offset="6"),
    )
    listed = drive(invocations.list_invocations(limit=5, page_size=2), send)
    assert [i.id for i in listed] == ["a", "b", "c", "d", "e"]
    assert offsets(calls) == [("2", "0"), ("2", "2"), ("1", "4")]


def test_page_size_is_kept_within_kernels_maximum() -> None:
    send, calls = canned(page([]), page([]))
    drive(invocations.list_apps(page_size=1000), send)
    drive(invocations.list_apps(page_size=0), send)
    assert offsets(calls) == [("100", "0"), ("1", "0")]


def test_a_page_that_is_not_an_array_is_a_response_error() -> None:
    send, _ = canned(answer(200, {"items": []}))
    with pytest.raises(KernelResponseError, match="expected a JSON array"):
        drive(invocations.list_invocations(), send)


def test_filters_are_written_as_kernel_reads_them() -> None:
    send, calls = canned(page([]))
    since = datetime(2026, 1, 2, 3, 4, 5)  # naive: UTC
    drive(invocations.list_invocations(app_name="demo", status="failed", since=since, version=None), send)
    assert calls[0].query == {
        "app_name": "demo",
        "status": "failed",
        "since": "2026-01-02T03:04:05Z",
        "limit": "100",
        "offset": "0",
    }


def test_list_apps_parses_versions_and_skips_items_that_are_not_objects() -> None:
    send, _ = canned(
        page([{"id": "v1", "app_name": "demo", "version": "latest", "actions": [{"name": "echo"}]}, "not an app"])
    )
    [app] = drive(invocations.list_apps(app_name="demo"), send)
    assert (app.app_name, app.version, app.action_names) == ("demo", "latest", ["echo"])


# --- cancel --------------------------------------------------------------------------------------------------


def test_cancel_patches_failed_with_the_reason_then_deletes_the_browsers() -> None:
    send, calls = canned(answer(200, invocation(status="failed")), answer(204))
    result = drive(invocations.cancel_invocation("inv-1", "stopped by Airflow"), send)
    assert result is not None and result.failed
    assert [(c.endpoint.method, c.path) for c in calls] == [
        ("PATCH", "/invocations/inv-1"),
        ("DELETE", "/invocations/inv-1/browsers"),
    ]
    assert calls[0].body == {"status": "failed", "output": json.dumps({"error": "stopped by Airflow"})}
    assert json.loads(invocations.cancel_output()) == {"error": "Invocation cancelled by user"}


@pytest.mark.parametrize("bad", ["", ".", "..", "inv/1", "a b", "a\nb", "a%2F", "a?b", "a#b", "é"])
def test_a_path_parameter_that_could_change_the_path_is_refused(bad: str) -> None:
    # Quoting leaves dots alone and HTTP clients collapse dot segments: /invocations/.. would reach /.
    with pytest.raises(KernelInputError, match="path parameter 'id'"):
        ApiCall(invocations.GET_INVOCATION, {"id": bad}).path  # noqa: B018 - every transport builds the URL from it
    assert ApiCall(invocations.GET_INVOCATION, {"id": "my.pool-1_x"}).path == "/invocations/my.pool-1_x"


@pytest.mark.parametrize(
    ("patch", "delete", "expected"),
    [
        (answer(404, {"code": "not_found", "message": "gone"}), answer(204), None),
        (answer(200, invocation(status="failed")), answer(404, {"code": "not_found", "message": "gone"}), "failed"),
        (answer(404), answer(404), None),
    ],
)
def test_cancel_tolerates_a_404_on_either_step(patch: Answer, delete: Answer, expected: str | None) -> None:
    send, calls = canned(patch, delete)
    result = drive(invocations.cancel_invocation("inv-1"), send)
    assert (result.raw_status if result is not None else None) == expected
    assert len(calls) == 2


def test_cancel_still_deletes_the_browsers_when_the_patch_fails_then_raises_its_error() -> None:
    send, calls = canned(answer(500, {"code": "internal", "message": "boom"}), answer(204))
    with pytest.raises(KernelServerError, match="boom") as raised:
        drive(invocations.cancel_invocation("inv-1"), send)
    assert raised.value.method == "PATCH" and [c.endpoint.method for c in calls] == ["PATCH", "DELETE"]
    send, calls = canned(KernelTransportError("dropped", request_sent=True), answer(204))
    with pytest.raises(KernelTransportError):
        drive(invocations.cancel_invocation("inv-1"), send)
    assert [c.endpoint.method for c in calls] == ["PATCH", "DELETE"]


def test_a_delete_that_fails_otherwise_is_an_error() -> None:
    send, _ = canned(answer(200, invocation(status="failed")), answer(503))
    with pytest.raises(KernelServerError):
        drive(invocations.cancel_invocation("inv-1"), send)


def test_each_concurrent_half_tolerates_a_404_by_itself() -> None:
    patch, delete = invocations.cancel_steps("inv-1", "why")
    assert drive(patch, canned(answer(404))[0]) is None
    assert drive(delete, canned(answer(404))[0]) is None
    _, delete = invocations.cancel_steps("inv-1")
    with pytest.raises(KernelAuthError):
        drive(delete, canned(answer(403))[0])


def test_cancel_result_combines_the_halves() -> None:
    done = drive(invocations.get_invocation("inv-1"), canned(answer(200, invocation(status="failed")))[0])
    assert invocations.cancel_result("inv-1", 5.0, (True, done), (True, None)) is done
    patch_error, delete_error = KernelServerError(500, None, "patch"), KernelServerError(502, None, "delete")
    with pytest.raises(KernelServerError, match="patch"):  # the PATCH's error wins
        invocations.cancel_result("inv-1", 5.0, (False, patch_error), (False, delete_error))
    with pytest.raises(KernelServerError, match="delete"):
        invocations.cancel_result("inv-1", 5.0, (True, done), (False, delete_error))
    with pytest.raises(KernelTransportError, match=r"within the cancel budget \(5s\)") as raised:
        invocations.cancel_result("inv-1", 5.0, None, (True, None))  # the PATCH was still out
    assert raised.value.method == "PATCH" and raised.value.request_sent
    with pytest.raises(KernelTransportError) as raised:
        invocations.cancel_result("inv-1", 5.0, (True, done), None)
    assert raised.value.method == "DELETE" and raised.value.path == "/invocations/inv-1/browsers"


# --- the create rule ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "maybe"),
    [
        (KernelTransportError("read timeout", request_sent=True), True),
        (KernelTransportError("connection refused", request_sent=False), False),
        (api_error(500), True),
        (api_error(502), True),
        (api_error(503), True),
        (api_error(408), True),  # Kernel's side timed out: it may have recorded the run first
        (api_error(429), False),  # a limit refuses at once
        (api_error(400), False),
        (api_error(401), False),
        (api_error(404), False),
        (api_error(409), False),
        (api_error(503, **{"x-should-retry": "true"}), False),  # Kernel says nothing was done
        (api_error(503, **{"x-should-retry": "false"}), True),
        (ValueError("not Kernel's"), False),
    ],
)
def test_create_may_have_happened(error: BaseException, maybe: bool) -> None:
    assert invocations.create_may_have_happened(error) is maybe


BODY = {"app_name": "demo", "version": "latest", "action_name": "echo", "payload": '{"x":1}', "async": True}


@pytest.mark.parametrize(
    "failure", [KernelTransportError("dropped", request_sent=True), api_error(502), api_error(408)]
)
def test_an_ambiguous_create_failure_says_so_with_its_window(failure: BaseException) -> None:
    send, calls = canned(failure)
    with pytest.raises(KernelAmbiguousCreateError) as raised:
        drive(invocations.create_invocation(BODY), send)
    error = raised.value
    assert (error.app_name, error.action_name, error.payload) == ("demo", "echo", '{"x":1}')
    assert error.window_start < error.window_end and error.cause is failure
    assert len(calls) == 1 and calls[0].body == BODY


@pytest.mark.parametrize(
    ("failure", "kind"),
    [
        (KernelTransportError("refused", request_sent=False), KernelTransportError),
        (api_error(429, **{"retry-after": "3"}), KernelRateLimitError),
        (api_error(404), KernelNotFoundError),
        (api_error(503, **{"x-should-retry": "true"}), KernelServerError),
    ],
)
def test_a_create_that_certainly_did_nothing_keeps_its_own_error(failure: BaseException, kind: type) -> None:
    with pytest.raises(kind) as raised:
        drive(invocations.create_invocation(BODY), canned(failure)[0])
    assert not isinstance(raised.value, KernelAmbiguousCreateError)


def test_a_sync_create_outlasts_kernels_cap_and_an_async_one_uses_the_default_timeout() -> None:
    send, calls = canned(answer(200, invocation(status="succeeded", output='{"ok":true}')), answer(202, invocation()))
    assert drive(invocations.create_invocation({**BODY, "async": False}), send).result == {"ok": True}
    drive(invocations.create_invocation(BODY), send)
    assert calls[0].read_timeout == invocations.SYNC_INVOKE_READ_TIMEOUT > invocations.SYNC_INVOKE_CAP_SECONDS
    assert calls[1].read_timeout is None


# --- responses: errors and retry hints --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"retry_after": "3"}, 3.0),
        ({"retry_after_ms": "250"}, 0.25),
        ({"retry_after_ms": "100", "retry_after": "9"}, 0.1),  # the millisecond form wins, as in Kernel's SDK
        ({"retry_after_ms": "soon", "retry_after": "2"}, 2.0),  # an unreadable one falls back to the other
        ({"retry_after": "-4"}, 0.0),
        ({"retry_after": "Wed, 21 Oct 2015 07:28:00 GMT"}, 0.0),  # a date in the past: no wait
        ({"retry_after": "later"}, None),
        ({}, None),
    ],
)
def test_retry_after_headers_of_a_response_reach_the_retry_policy(
    headers: dict[str, str], seconds: float | None
) -> None:
    with pytest.raises(KernelRateLimitError) as raised:
        drive(invocations.get_invocation("inv-1"), canned(answer(429, {"code": "rate_limited"}, **headers))[0])
    assert retry_after_seconds(raised.value) == seconds


def test_kernels_error_object_is_read_into_the_error() -> None:
    body = {
        "code": "bad_request",
        "message": "invalid payload",
        "details": [{"code": "field", "message": "url"}],
        "inner_error": {"code": "schema", "message": "url is required"},
    }
    response = answer(400, body, x_request_id="req-9", authorization="Bearer secret")
    with pytest.raises(KernelApiError) as raised:
        drive(invocations.get_invocation("inv-1"), canned(response)[0])
    error = raised.value
    assert (error.status_code, error.code, error.request_id) == (400, "bad_request", "req-9")
    assert error.message == "invalid payload (schema: url is required)" and error.details[0]["message"] == "url"
    assert "GET /invocations/inv-1" in str(error) and "secret" not in repr(error.headers)


def test_an_error_body_that_is_not_kernels_is_quoted_and_a_success_body_that_is_not_json_is_refused() -> None:
    with pytest.raises(KernelAuthError, match="Forbidden by proxy"):
        drive(invocations.get_invocation("inv-1"), canned(answer(403, b"Forbidden by proxy"))[0])
    with pytest.raises(KernelResponseError, match=r"not JSON \(HTTP 200\): <html>"):
        drive(invocations.get_invocation("inv-1"), canned(answer(200, b"<html>"))[0])
    with pytest.raises(KernelResponseError, match="without an id"):
        drive(invocations.get_invocation("inv-1"), canned(answer(200, {"status": "running"}))[0])


# --- calls and drivers ------------------------------------------------------------------------------------------


def test_a_call_is_cut_to_a_budget_only_when_its_own_timeout_is_longer() -> None:
    sync_create = ApiCall(invocations.CREATE_INVOCATION, read_timeout=130.0)
    assert sync_create.within(5.0).read_timeout == 5.0
    assert sync_create.within(500.0) is sync_create
    assert sync_create.within(-1.0).read_timeout == wire.MIN_TIMEOUT
    plain = ApiCall(invocations.GET_INVOCATION, {"id": "x"})
    assert plain.within(1.0) is plain and plain.shard_key == "x"


def test_the_event_stream_call() -> None:
    call = invocations.event_stream("inv-1", since="2026-01-01T00:00:00.5Z")
    assert (call.endpoint.method, call.path, call.endpoint.stream) == ("GET", "/invocations/inv-1/events", True)
    assert call.query == {"since": "2026-01-01T00:00:00.5Z"} and invocations.event_stream("x").query == {}


def test_check_connection_asks_for_one_app() -> None:
    send, calls = canned(answer(200, []))
    assert drive(invocations.check_connection(), send) is None
    assert (calls[0].path, calls[0].query) == ("/apps", {"limit": "1"})


def test_drive_throws_kernel_errors_in_and_lets_other_exceptions_out() -> None:
    def send(call: ApiCall[Any]) -> Any:
        raise RuntimeError("a bug, not Kernel's answer")

    with pytest.raises(RuntimeError):
        drive(invocations.cancel_invocation("inv-1"), send)  # not thrown in: the DELETE is never tried


async def test_adrive_runs_the_same_operation() -> None:
    send, calls = canned(page([invocation("a")], has_more="true", next_offset="1"), page([invocation("b")]))

    async def asend(call: ApiCall[Any]) -> Any:
        return send(call)

    listed = await wire.adrive(invocations.list_invocations(page_size=1), asend)
    assert [i.id for i in listed] == ["a", "b"] and len(calls) == 2


def test_the_time_of_a_create_window_is_utc() -> None:
    send, _ = canned(KernelTransportError("dropped", request_sent=True))
    with pytest.raises(KernelAmbiguousCreateError) as raised:
        drive(invocations.create_invocation(BODY), send)
    assert raised.value.window_start.tzinfo is timezone.utc


# --- browsers and replays (live view, replays of a failed run) ---------------------------------------------------


def test_list_replays_parses_browser_replays_and_names_the_browser() -> None:
    send, calls = canned(
        answer(
            200,
            [
                {
                    "replay_id": "r1",
                    "started_at": "2026-01-01T00:00:00Z",
                    "finished_at": None,
                    "replay_view_url": "https://k/replays?replay_id=r1",
                    "new_field": 1,
                }
            ],
        )
    )
    (replay,) = drive(invocations.list_replays("b-1"), send)
    assert calls[0].endpoint.method == "GET" and calls[0].path == "/browsers/b-1/replays"
    assert (replay.replay_id, replay.browser_id, replay.replay_view_url) == (
        "r1",
        "b-1",
        "https://k/replays?replay_id=r1",
    )
    assert replay.recording and replay.extra == {"new_field": 1}


def test_list_replays_of_a_gone_browser_is_not_found() -> None:
    send, _ = canned(answer(404, {"code": "not_found", "message": "browser session not found"}))
    with pytest.raises(KernelNotFoundError, match="browser session not found"):
        drive(invocations.list_replays("gone"), send)


def test_replay_without_an_id_is_a_response_error() -> None:
    send, _ = canned(answer(200, [{"replay_view_url": "x"}]))
    with pytest.raises(KernelResponseError, match="replay_id"):
        drive(invocations.list_replays("b1"), send)


def test_invocation_browsers_are_typed_with_their_live_view_urls() -> None:
    body = {"browsers": [{"session_id": "s1", "browser_live_view_url": "https://live/s1", "cdp_ws_url": "wss://c"}]}
    send, calls = canned(answer(200, body))
    (browser,) = drive(invocations.invocation_browsers("inv-1"), send)
    assert calls[0].path == "/invocations/inv-1/browsers"
    assert (browser.session_id, browser.browser_live_view_url) == ("s1", "https://live/s1")
