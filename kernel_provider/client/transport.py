"""How a request reaches Kernel: one synchronous transport (requests) and one asynchronous (httpx, plus the
server-sent event stream through httpx-sse).

Each turns one :class:`~kernel_provider.client.wire.ApiCall` into an
:class:`~kernel_provider.client.wire.ApiResponse`, or into a :class:`KernelTransportError` whose
``request_sent`` says whether Kernel may have seen the request (the retry policy and the create rule depend on it).
Neither retries nor interprets a status: that is the client's job (see :mod:`kernel_provider.client.client`).
A call with a ``sink`` has its successful body streamed into it, never held whole. Neither follows a redirect: a
3xx comes back as the answer, and the client turns it into
:class:`~kernel_provider.client.errors.KernelRedirectError`. Both verify TLS with the one bundle the settings
resolved (:func:`ssl_context_for`), and both refuse a header that is not printable ASCII before sending.

The async side keeps what one event loop shares in ONE :class:`LoopResources` per loop: the httpx clients
(connection pools, sharded by invocation id), the SSL contexts, the request slots that bound requests in flight,
and per-loop instances of callers (the hook's shared hooks). :func:`close_loop_resources` closes all of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import ssl
import threading
import weakref
import zlib
from collections.abc import AsyncGenerator, AsyncIterator, Hashable
from typing import Any

import httpx
import requests

from kernel_provider.client.errors import KernelConnectionConfigError, KernelTransportError, is_error_status
from kernel_provider.client.settings import KernelSettings
from kernel_provider.client.trust import is_printable_ascii
from kernel_provider.client.wire import ApiCall, ApiResponse, raise_for_status

#: Requests one event loop has in flight at once (open event streams excluded). A triggerer that (re)starts
#: 1,000 waits would otherwise build and send 1,000 requests in one loop iteration: the loop stalls for a
#: fraction of a second and Kernel sees a burst that invites 429s.
MAX_REQUESTS_IN_FLIGHT = 32
#: Connection pools per event loop and Kernel host. httpcore's pool walks all its connections (and, for each
#: idle one, all of them again) whenever a request starts or ends, and closes every idle connection once it
#: holds more than max_keepalive_connections: one pool with 1,000 open event streams cost O(n^2) CPU per request
#: and no keep-alive (see bench/bench_trigger.py). Small shards keyed by invocation id keep each pool small.
POOL_SHARDS = 64
#: Bytes read at a time from a streamed body (a file read into a sink).
STREAM_CHUNK = 64 * 1024


class LoopResources:
    """What every client on one event loop shares; get the running loop's with :func:`loop_resources`.

    :ivar slots: bounds the requests in flight on the loop (:data:`MAX_REQUESTS_IN_FLIGHT`); an open event stream
        holds a slot only while it is being opened.
    :ivar clients: httpx clients by (base URL, CA bundle, pool shard).
    :ivar ssl_contexts: one per CA bundle, shared by all shards (building one costs milliseconds of loop time).
    :ivar shared: per-loop instances kept for callers (the hook keeps its shared hooks here); dropped on close.
    """

    def __init__(self) -> None:
        self.slots = asyncio.Semaphore(MAX_REQUESTS_IN_FLIGHT)
        self.clients: dict[tuple[str, str, int], httpx.AsyncClient] = {}
        self.ssl_contexts: dict[str, Any] = {}
        self.shared: dict[Hashable, Any] = {}

    def client_for(self, settings: KernelSettings, key: str = "") -> httpx.AsyncClient:
        """The httpx client for ``settings``' host and CA bundle, in the pool shard ``key`` picks.

        :param settings: only ``base_url`` and ``verify`` matter here; timeouts and headers go with each request.
        :param key: spreads connections over :data:`POOL_SHARDS` pools (the invocation id); "" uses one shard.
        """
        verify = str(settings.verify)
        shard = zlib.crc32(key.encode()) % POOL_SHARDS
        client = self.clients.get((settings.base_url, verify, shard))
        if client is None or client.is_closed:
            ssl_context = self.ssl_contexts.get(verify)
            if ssl_context is None:
                ssl_context = self.ssl_contexts[verify] = ssl_context_for(settings.verify)
            client = httpx.AsyncClient(
                verify=ssl_context,
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=None),
                follow_redirects=False,
            )
            self.clients[(settings.base_url, verify, shard)] = client
        return client

    async def aclose(self) -> None:
        """Close every client and forget everything held (the shared instances too)."""
        clients = list(self.clients.values())
        self.clients.clear()
        self.ssl_contexts.clear()
        self.shared.clear()
        for client in clients:
            await client.aclose()


def ssl_context_for(verify: bool | str) -> ssl.SSLContext:
    """The triggerer's SSL context for ``settings.verify``: the very bundle the worker's requests verify with.

    :param verify: a CA bundle file or directory resolved by the settings (see
        :func:`~kernel_provider.client.settings.resolve_ca_bundle`), or True: the bundle requests uses by
        default (certifi's). httpx's own environment lookup is not used: the settings already made that choice for both.
    """
    if verify is True:
        return ssl.create_default_context(cafile=requests.utils.DEFAULT_CA_BUNDLE_PATH)
    if not isinstance(verify, str):
        raise TypeError("TLS verification cannot be switched off")
    if os.path.isdir(verify):
        return ssl.create_default_context(capath=verify)
    return ssl.create_default_context(cafile=verify)


_LOOPS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopResources] = weakref.WeakKeyDictionary()


def loop_resources() -> LoopResources:
    """The running event loop's :class:`LoopResources` (created on first use; must be called from async code).

    Kept in a weak mapping: a loop that is gone takes its resources with it, but only
    :func:`close_loop_resources` closes their connections cleanly.
    """
    loop = asyncio.get_running_loop()
    resources = _LOOPS.get(loop)
    if resources is None:
        resources = _LOOPS[loop] = LoopResources()
    return resources


async def close_loop_resources() -> None:
    """Close the running loop's clients and drop its resources: for short-lived loops, such as a wait run on a
    worker. The next call on the loop starts afresh."""
    resources = _LOOPS.pop(asyncio.get_running_loop(), None)
    if resources is not None:
        await resources.aclose()


class SyncTransport:
    """Requests over one keep-alive ``requests.Session`` (created on first use), safe to share between threads."""

    def __init__(self) -> None:
        self._session: requests.Session | None = None
        self._lock = threading.Lock()

    @property
    def session(self) -> requests.Session:
        """The session; urllib3 never retries by itself here, so the retry policy alone decides (and never repeats
        a create)."""
        if self._session is None:
            with self._lock:
                if self._session is None:
                    session = requests.Session()
                    adapter = requests.adapters.HTTPAdapter(max_retries=0, pool_maxsize=16)
                    session.mount("http://", adapter)
                    session.mount("https://", adapter)
                    self._session = session
        return self._session

    def request(self, call: ApiCall[Any], settings: KernelSettings) -> ApiResponse:
        """Send ``call`` once and return Kernel's answer, whatever its status.

        :param call: the request; its own read timeout, if any, wins over ``settings.request_timeout``.
        :param settings: base URL, headers, timeouts and CA bundle.
        :raises KernelTransportError: no answer (DNS, refused or dropped connection, timeout, TLS failure).
        """
        method, path = call.endpoint.method, call.path
        try:
            r = self.session.request(
                method,
                settings.base_url + path,
                params=call.query,
                data=None if call.body is None else json.dumps(call.body),
                headers=_headers(settings, call),
                timeout=(settings.connect_timeout, call.read_timeout or settings.request_timeout),
                verify=settings.verify,
                # A redirect is answered to the caller as an error (see errors.is_error_status): following it
                # would send the project header, and on a 307/308 a create's payload, to another place.
                allow_redirects=False,
                stream=call.sink is not None,
            )
            headers = {k.lower(): v for k, v in r.headers.items()}
            if call.sink is not None and not is_error_status(r.status_code):
                with r:
                    call.sink.begin()
                    for chunk in r.iter_content(STREAM_CHUNK):
                        call.sink.write(chunk)
                return ApiResponse(r.status_code, headers, b"")
            body = r.content
        except requests.exceptions.RequestException as exc:
            raise KernelTransportError(
                describe_requests_error(exc), request_sent=requests_error_sent(exc), method=method, path=path
            ) from None
        return ApiResponse(r.status_code, headers, body)

    def close(self) -> None:
        """Close the session's connections (a later request opens new ones)."""
        session, self._session = self._session, None
        if session is not None:
            session.close()


class AsyncTransport:
    """httpx over the running loop's :class:`LoopResources`; holds no state of its own."""

    async def request(self, call: ApiCall[Any], settings: KernelSettings) -> ApiResponse:
        """Send ``call`` once, within a request slot of the loop, and return Kernel's answer, whatever its status.

        :raises KernelTransportError: no answer; ``request_sent`` is False only when the connection never opened.
        """
        resources = loop_resources()
        client = resources.client_for(settings, call.shard_key)
        method, path = call.endpoint.method, call.path
        async with resources.slots:
            try:
                request = client.build_request(
                    method,
                    settings.base_url + path,
                    params=call.query,
                    content=None if call.body is None else json.dumps(call.body),
                    headers=_headers(settings, call),
                    timeout=httpx.Timeout(
                        call.read_timeout or settings.request_timeout, connect=settings.connect_timeout
                    ),
                )
                r = await client.send(request, stream=True, follow_redirects=False)
                try:
                    headers = {k.lower(): v for k, v in r.headers.items()}
                    if call.sink is not None and not is_error_status(r.status_code):
                        call.sink.begin()
                        async for chunk in r.aiter_bytes(STREAM_CHUNK):
                            call.sink.write(chunk)
                        return ApiResponse(r.status_code, headers, b"")
                    body = await r.aread()
                finally:
                    await r.aclose()
            except httpx.HTTPError as exc:
                raise KernelTransportError(
                    describe_httpx_error(exc), request_sent=httpx_error_sent(exc), method=method, path=path
                ) from None
        return ApiResponse(r.status_code, headers, body)

    async def open_events(
        self, stack: contextlib.AsyncExitStack, call: ApiCall[Any], settings: KernelSettings, silence_timeout: float
    ) -> AsyncIterator[str]:
        """Open the server-sent event stream of ``call`` and return an iterator over each event's ``data``.

        :param stack: closes the stream's response (and the iterator) when it exits; nothing is left open when
            this raises.
        :param silence_timeout: seconds without any byte (Kernel sends heartbeats) before the stream counts as
            broken; not a bound on the whole stream.
        :raises KernelApiError: Kernel refused to open it (the refused response is read and closed first).
        :raises KernelTransportError: it could not be opened; the iterator raises it too when the stream breaks.
        """
        from httpx_sse import aconnect_sse

        resources = loop_resources()
        client = resources.client_for(settings, call.shard_key)
        headers = {**_headers(settings), "Accept": "text/event-stream", "Cache-Control": "no-cache"}
        try:
            async with contextlib.AsyncExitStack() as attempt:
                async with resources.slots:  # only while opening: an open stream holds no slot
                    source = await attempt.enter_async_context(
                        aconnect_sse(
                            client,
                            "GET",
                            settings.base_url + call.path,
                            params=call.query,
                            headers=headers,
                            timeout=httpx.Timeout(silence_timeout, connect=settings.connect_timeout),
                            follow_redirects=False,
                        )
                    )
                response = source.response
                if is_error_status(response.status_code):
                    body = await response.aread()
                    raise_for_status(
                        call,
                        ApiResponse(response.status_code, {k.lower(): v for k, v in response.headers.items()}, body),
                    )
                stack.push_async_exit(attempt.pop_all())  # opened: the caller's stack closes it from now on
        except httpx.HTTPError as exc:
            raise KernelTransportError(
                describe_httpx_error(exc), request_sent=httpx_error_sent(exc), method="GET", path=call.path
            ) from None
        data = _event_data(source, call)
        stack.push_async_callback(data.aclose)  # runs before the response closes (the stack is LIFO)
        return data


async def _event_data(source: Any, call: ApiCall[Any]) -> AsyncGenerator[str, None]:
    from httpx_sse import SSEError

    try:
        async for message in source.aiter_sse():
            if message.data:
                yield message.data
    except (httpx.HTTPError, SSEError) as exc:
        raise KernelTransportError(describe_httpx_error(exc), request_sent=True, method="GET", path=call.path) from None


def _headers(settings: KernelSettings, call: ApiCall[Any] | None = None) -> dict[str, str]:
    """The request's headers, each checked to be printable ASCII: an HTTP library refuses anything else and
    quotes the whole value (the API key) in its error, or sends a NUL on. Settings already refuse such values;
    this guards settings built around that check."""
    headers = settings.headers()
    if call is not None and call.body is not None:
        headers["Content-Type"] = "application/json"
    for name, value in headers.items():
        if not is_printable_ascii(value):
            raise KernelConnectionConfigError(
                f"connection {settings.conn_id!r} header {name}",
                "holds a character that is not printable ASCII (not shown); nothing was sent.",
                "Re-enter the API key (password) and project_id without line breaks or other special characters.",
            )
    return headers


def requests_error_sent(exc: requests.exceptions.RequestException) -> bool:
    """Whether Kernel may have seen the request that failed with ``exc`` (False: certainly not, e.g. refused)."""
    if isinstance(
        exc,
        (
            requests.exceptions.ConnectTimeout,
            requests.exceptions.SSLError,
            requests.exceptions.InvalidURL,
            requests.exceptions.MissingSchema,
            requests.exceptions.InvalidHeader,  # refused while the request was being built
        ),
    ):
        return False
    if isinstance(exc, requests.exceptions.ConnectionError):
        import urllib3.exceptions as u3

        cause: BaseException | None = exc
        seen = 0
        while cause is not None and seen < 10:
            if isinstance(cause, (u3.NewConnectionError, u3.NameResolutionError, ConnectionRefusedError)):
                return False
            reason = getattr(cause, "reason", None)
            cause = reason if isinstance(reason, BaseException) else (cause.__cause__ or cause.__context__)
            seen += 1
        for arg in exc.args:
            if isinstance(arg, u3.MaxRetryError) and isinstance(arg.reason, u3.NewConnectionError):
                return False
    return True


def httpx_error_sent(exc: httpx.HTTPError) -> bool:
    """Whether Kernel may have seen the request that failed with ``exc`` (False: the connection never opened)."""
    return not isinstance(
        exc,
        (
            httpx.ConnectError,
            httpx.ConnectTimeout,
            httpx.PoolTimeout,
            httpx.UnsupportedProtocol,
            httpx.LocalProtocolError,  # h11 refuses a bad request line or header before writing a byte
            httpx.InvalidURL,
        ),
    )


def describe_requests_error(exc: requests.exceptions.RequestException) -> str:
    """``exc`` in one line for a :class:`KernelTransportError` (timeouts in words, no URL repeated)."""
    kind = type(exc).__name__
    if isinstance(exc, requests.exceptions.ReadTimeout):
        return f"{kind}: no answer within the read timeout"
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return f"{kind}: could not connect within the connect timeout"
    if isinstance(exc, requests.exceptions.InvalidHeader):
        return f"{kind}: {_UNQUOTED_HEADER_ERROR}"
    return f"{kind}: {exc}"


def describe_httpx_error(exc: Exception) -> str:
    """``exc`` in one line for a :class:`KernelTransportError`."""
    if isinstance(exc, httpx.LocalProtocolError):
        return f"{type(exc).__name__}: {_UNQUOTED_HEADER_ERROR}"
    text = str(exc) or "no details"
    return f"{type(exc).__name__}: {text}"


#: What a refused request header is described as: the libraries' own text quotes the value (maybe the API key).
_UNQUOTED_HEADER_ERROR = "the HTTP library refused the request line or a header (not shown); nothing was sent"
