"""Kernel's replay API in the emulator, per the spec: ``POST /browsers/{id}/replays`` starts a recording (201, 409
while one records), ``GET`` lists them, ``GET .../replays/{replay_id}`` downloads one (202 + ``Retry-After`` while it
records), ``POST .../stop`` stops it. Any browser the emulator created has them: an invocation's, a standalone or a
pool one. The recordings are :mod:`~.replays`'; the page a ``replay_view_url`` opens is :mod:`~.live_view`'s.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from kernel_provider.testing.replays import Recording
from kernel_provider.testing.responses import error_response, json_response, named_browser, store_of
from kernel_provider.testing.timeutil import now_ns

#: Placeholder bytes served as a finished recording's video (the emulator records nothing real).
FAKE_VIDEO = b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom"


def _recording(request: Request) -> Recording | Response:
    """The recording ``{replay_id}`` of browser ``{id}``, or the 404 that names whichever is missing."""
    found = named_browser(request)
    if isinstance(found, Response):
        return found
    recording = store_of(request).replays.find(found.session_id, request.path_params["replay_id"])
    if recording is None:
        return error_response(404, "not_found", f"replay {request.path_params['replay_id']!r} not found")
    return recording


async def start_replay(request: Request) -> Response:
    """``POST /browsers/{id}/replays``: 201 ``BrowserReplay``; 409 while one records; 404 for a gone browser."""
    found = named_browser(request)
    if isinstance(found, Response):
        return found
    if not found.live:
        return error_response(404, "not_found", f"browser session {found.session_id!r} has ended")
    store = store_of(request)
    recording = store.replays.start(found.session_id, store.base_url)
    if recording is None:
        return error_response(409, "conflict", f"browser session {found.session_id!r} is already recording")
    return json_response(recording.to_dict(), 201)


async def list_replays(request: Request) -> Response:
    """``GET /browsers/{id}/replays``: a bare array of ``BrowserReplay`` (also for a browser that has ended)."""
    found = named_browser(request)
    if isinstance(found, Response):
        return found
    return json_response([r.to_dict() for r in store_of(request).replays.of(found.session_id)])


async def download_replay(request: Request) -> Response:
    """``GET /browsers/{id}/replays/{replay_id}``: 202 + ``Retry-After`` while recording, else an (empty) mp4."""
    recording = _recording(request)
    if isinstance(recording, Response):
        return recording
    if recording.finished_ns is None:
        return Response(status_code=202, headers={"Retry-After": "1"})
    return Response(FAKE_VIDEO, 200, media_type="video/mp4")


async def stop_replay(request: Request) -> Response:
    """``POST /browsers/{id}/replays/{replay_id}/stop``: 200 (stopping a stopped recording is harmless)."""
    recording = _recording(request)
    if isinstance(recording, Response):
        return recording
    if recording.finished_ns is None:
        recording.finished_ns = now_ns()
    return Response(status_code=200)


REPLAY_ROUTES = [
    Route("/browsers/{id}/replays", start_replay, methods=["POST"]),
    Route("/browsers/{id}/replays", list_replays, methods=["GET"]),
    Route("/browsers/{id}/replays/{replay_id}", download_replay, methods=["GET"]),
    Route("/browsers/{id}/replays/{replay_id}/stop", stop_replay, methods=["POST"]),
]
