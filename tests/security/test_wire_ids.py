"""Ids are checked against Kernel's id format before any request (issue 25, finding 6).

Before: ``quote(safe="")`` left dots alone and HTTP clients collapse dot segments, so ``cancel_invocation('..')``
sent ``PATCH /`` and ``DELETE /browsers``. The sensor's ``invocation_id`` is templated (``dag_run.conf``), so
whoever triggers a DAG could pick the path. Ids Kernel sends back are checked too: they go into paths and links.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from kernel_provider.client import KernelClient, KernelSettings
from kernel_provider.client.browsers import BrowserApi
from kernel_provider.client.errors import KernelInputError, KernelResponseError
from kernel_provider.client.transport import close_loop_resources
from kernel_provider.client.validation import build_browser_request
from tests.helpers import FAST_RETRY, conn_json
from tests.security.wire_servers import Answer, Seen, scripted

BAD_IDS = ["", ".", "..", "../browsers", "a/b", " a", "a b", "a\n", "a\x00", "x" * 65, "é", "%2e%2e", "a?b", None, 7]


def _client(url: str, key: str) -> KernelClient:
    return KernelClient(KernelSettings.from_mapping(host=url, password=key), retry=FAST_RETRY)


SYNC: dict[str, tuple[str, Callable[[KernelClient, Any], Any]]] = {
    "get": ("invocation_id", lambda c, i: c.get_invocation(i)),
    "cancel": ("invocation_id", lambda c, i: c.cancel_invocation(i, budget=5)),
    "browsers": ("invocation_id", lambda c, i: c.list_invocation_browsers(i)),
    "replays": ("browser_id", lambda c, i: c.list_replays(i)),
    "link": ("invocation_id", lambda c, i: c.invocation_url(i)),
    "deployment": ("deployment_id", lambda c, i: c.list_invocations(deployment_id=i)),
    "browser get": ("session_id", lambda c, i: BrowserApi(c).get(i)),
    "browser delete": ("session_id", lambda c, i: BrowserApi(c).delete(i)),
    "proxy": ("proxy_id", lambda c, i: build_browser_request(proxy_id=i)),
}
ASYNC: dict[str, Callable[[KernelClient, Any], Any]] = {
    "get": lambda c, i: c.aget_invocation(i),
    "cancel": lambda c, i: c.acancel_invocation(i, budget=5),
    "browsers": lambda c, i: c.alist_invocation_browsers(i),
    "replays": lambda c, i: c.alist_replays(i),
    "events": lambda c, i: c.astream_events(i).__anext__(),
}


@pytest.mark.parametrize("name", sorted(SYNC))
def test_sync_operations_refuse_a_bad_id_before_any_request(kernel_emulator: Any, name: str) -> None:
    field, call = SYNC[name]
    client = _client(kernel_emulator.url, kernel_emulator.token)
    for bad in BAD_IDS:
        if bad is None and field in ("deployment_id", "proxy_id"):
            continue  # None is "no filter" / "no proxy" there
        with pytest.raises(ValueError) as raised:  # a KernelInputError is a ValueError
            call(client, bad)
        assert isinstance(raised.value, KernelInputError) and raised.value.field == field, bad
        assert "\n" not in str(raised.value) and "\x00" not in str(raised.value)
    assert kernel_emulator.requests() == []


@pytest.mark.parametrize("name", sorted(ASYNC))
def test_async_operations_refuse_a_bad_id_before_any_request(kernel_emulator: Any, name: str) -> None:
    client = _client(kernel_emulator.url, kernel_emulator.token)

    async def run() -> None:
        try:
            for bad in BAD_IDS:
                with pytest.raises(KernelInputError, match=r"invocation_id|browser_id"):
                    await ASYNC[name](client, bad)
        finally:
            await close_loop_resources()

    asyncio.run(run())
    assert kernel_emulator.requests() == []


@pytest.mark.parametrize("bad", ["", ".", "..", "a/b", "a b", "p" * 256])
def test_a_pool_name_follows_kernels_name_rules(bad: str) -> None:
    with pytest.raises(KernelInputError, match="pool"):
        build_browser_request(pool=bad)
    assert build_browser_request(pool="my.pool_1-a").pool == "my.pool_1-a"


def test_the_hook_refuses_dot_dot_as_invocation_id(kernel_emulator: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from kernel_provider.hooks.kernel import KernelHook

    monkeypatch.setenv("AIRFLOW_CONN_KERNEL_DEFAULT", conn_json(kernel_emulator.url, kernel_emulator.token))
    for call in (lambda h: h.cancel_invocation(".."), lambda h: h.get_invocation("../apps")):
        with pytest.raises(ValueError, match="invocation_id: is not a Kernel id"):
            call(KernelHook())
    assert kernel_emulator.requests() == []


def test_real_ids_pass(kernel_emulator: Any) -> None:
    client = _client(kernel_emulator.url, kernel_emulator.token)
    done = client.invoke("demo", "echo", invoke_async=False)
    assert len(done.id) == 24 and client.get_invocation(done.id).id == done.id


# --- ids Kernel sends back --------------------------------------------------------------------------------------

HOSTILE_IDS = ["..", "../browsers", "a/b", "x" * 65, "a\nb"]


@pytest.mark.parametrize("hostile", HOSTILE_IDS)
def test_an_id_from_kernel_that_could_change_a_path_is_refused(hostile: str) -> None:
    def respond(seen: Seen) -> Answer:
        invocation = {"id": hostile, "status": "queued", "action_name": "echo"}
        if seen.path.startswith("/invocations?"):
            return Answer(200, [invocation])
        if seen.path.startswith("/browsers"):
            return Answer(200, {"session_id": hostile, "cdp_ws_url": "wss://k.example/cdp"})
        return Answer(202, invocation)

    with scripted(respond) as server:
        client = _client(server.url, "k")
        for call in (
            lambda: client.invoke("demo", "echo", invoke_async=True),
            lambda: client.list_invocations(limit=1),
            lambda: BrowserApi(client).get("a" * 24),
        ):
            with pytest.raises(KernelResponseError) as raised:
                call()
            assert "not an id" in str(raised.value) and hostile not in str(raised.value)
        # Each answer was refused where it arrived: no request followed with the hostile id in its path.
        assert [s.path.split("?")[0] for s in server.seen] == ["/invocations", "/invocations", f"/browsers/{'a' * 24}"]
