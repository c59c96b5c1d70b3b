"""No redirect is followed, on either transport (issue 25, finding 1).

A real server on 127.0.0.1 answers every request with a redirect to another origin (127.0.0.2) that records
whatever reaches it and would answer like Kernel. Nothing may reach it: not the key, not ``X-Kernel-Project-Id``,
not a create's payload; the redirect is an error naming only the other origin, never a success, never retried.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterator
from typing import Any
from unittest.mock import MagicMock

import pytest

from kernel_provider.client import KernelClient, KernelSettings
from kernel_provider.client.errors import KernelAmbiguousCreateError, KernelRedirectError
from kernel_provider.client.files import FileApi
from kernel_provider.client.transport import close_loop_resources
from tests.helpers import FAST_RETRY
from tests.security.wire_servers import Answer, Seen, recorder, scripted

KEY = "sk_redirect_canary_5b1e0c9d"
PROJECT = "proj_redirect_canary"
PAYLOAD = {"secret": "payload-canary-77"}
STATUSES = (301, 302, 307, 308)


class Setup:
    """The redirecting server, the other origin, and a client pointed at the former."""

    def __init__(self, status: int, redirector: Any, elsewhere: Any) -> None:
        self.status = status
        self.redirector = redirector
        self.elsewhere = elsewhere
        self.client = KernelClient(
            KernelSettings.from_mapping(host=redirector.url, password=KEY, extra={"project_id": PROJECT}),
            retry=FAST_RETRY,
        )

    def check(self, error: BaseException | str, requests: int = 1) -> None:
        """The error (or test message) names the other origin only; nothing reached it; each request was made once
        (``requests`` in all: a cancel sends its PATCH and DELETE)."""
        text = error if isinstance(error, str) else str(error)
        assert self.elsewhere.url in text  # scheme://host:port of the Location
        assert "leak-me" not in text and "/elsewhere" not in text  # never its path or query
        assert self.elsewhere.seen == []
        assert len(self.redirector.seen) == requests  # not retried


@pytest.fixture(params=STATUSES)
def setup(request: pytest.FixtureRequest) -> Iterator[Setup]:
    status = request.param
    with recorder() as elsewhere:

        def redirect(seen: Seen) -> Answer:
            location = f"{elsewhere.url}/elsewhere{seen.path}?token=leak-me"
            return Answer(status, {"id": "notkernel", "status": "succeeded"}, {"Location": location})

        with scripted(redirect) as redirector:
            yield Setup(status, redirector, elsewhere)
    asyncio.run(close_loop_resources())


SYNC_CALLS: dict[str, Callable[[KernelClient], Any]] = {
    "create": lambda c: c.invoke("demo", "echo", payload=PAYLOAD, invoke_async=False),
    "get": lambda c: c.get_invocation("a" * 24),
    "list": lambda c: c.list_invocations(app_name="demo"),
    "cancel": lambda c: c.cancel_invocation("a" * 24, budget=5),
    "read_file": lambda c: FileApi(c).read(session_id="b" * 24, path="/tmp/downloads/x", sink=_untouched()),
}
ASYNC_CALLS: dict[str, Callable[[KernelClient], Awaitable[Any]]] = {
    "create": lambda c: c.ainvoke("demo", "echo", payload=PAYLOAD, invoke_async=False),
    "get": lambda c: c.aget_invocation("a" * 24),
    "list": lambda c: c.alist_invocations(app_name="demo"),
    "events": lambda c: _first_event(c),
    "read_file": lambda c: FileApi(c).aread(session_id="b" * 24, path="/tmp/downloads/x", sink=_untouched()),
}


def _untouched() -> Any:
    """A sink a redirect must never reach: a streamed body is only ever a success's."""
    sink = MagicMock()
    sink.begin.side_effect = sink.write.side_effect = AssertionError("a redirect's body reached the sink")
    return sink


async def _first_event(client: KernelClient) -> Any:
    async for event in client.astream_events("a" * 24, silence_timeout=5):
        return event
    return None


@pytest.mark.parametrize("name", sorted(SYNC_CALLS))
def test_sync_redirect_is_an_error_and_reaches_nothing(setup: Setup, name: str) -> None:
    with pytest.raises(KernelRedirectError) as raised:
        SYNC_CALLS[name](setup.client)
    assert not isinstance(raised.value, KernelAmbiguousCreateError)  # a refusal: nothing reached Kernel
    assert raised.value.status_code == setup.status
    setup.check(raised.value, requests=2 if name == "cancel" else 1)


@pytest.mark.parametrize("name", sorted(ASYNC_CALLS))
def test_async_redirect_is_an_error_and_reaches_nothing(setup: Setup, name: str) -> None:
    async def run() -> BaseException:
        try:
            with pytest.raises(KernelRedirectError) as raised:
                await ASYNC_CALLS[name](setup.client)
            return raised.value
        finally:
            await close_loop_resources()

    setup.check(asyncio.run(run()))


def test_check_connection_after_a_redirect_is_not_valid(setup: Setup) -> None:
    ok, message = setup.client.check_connection()
    assert not ok and "valid" not in message and "redirect" in message
    setup.check(message)


def test_a_create_redirected_is_a_refusal_sent_once(setup: Setup) -> None:
    """On a 307/308 a follower re-sends the payload to the other origin; here it was sent once, to the first."""
    with pytest.raises(KernelRedirectError):
        setup.client.invoke("demo", "echo", payload=PAYLOAD, invoke_async=False)
    (only,) = setup.redirector.seen
    assert only.method == "POST" and json.loads(json.loads(only.body)["payload"]) == PAYLOAD
    assert setup.elsewhere.seen == []


def test_hook_test_connection_reports_the_redirect(setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    from kernel_provider.hooks.kernel import KernelHook
    from tests.helpers import conn_json

    monkeypatch.setenv("AIRFLOW_CONN_KERNEL_DEFAULT", conn_json(setup.redirector.url, KEY, project_id=PROJECT))
    ok, message = KernelHook().test_connection()
    assert not ok and "valid" not in message
    setup.check(message)
    assert KEY not in message


def test_a_location_without_host_or_header_is_named_without_its_path() -> None:
    answers = iter([Answer(302, None, {"Location": "/login?next=secret-path"}), Answer(302, None, {})])
    with scripted(lambda seen: next(answers)) as server:
        client = KernelClient(KernelSettings.from_mapping(host=server.url, password=KEY), retry=FAST_RETRY)
        with pytest.raises(KernelRedirectError) as relative:
            client.get_invocation("a" * 24)
        with pytest.raises(KernelRedirectError) as missing:
            client.get_invocation("a" * 24)
    assert "a relative location" in str(relative.value) and "secret-path" not in str(relative.value)
    assert "no Location header" in str(missing.value)
    assert relative.value.location_origin == "a relative location"
