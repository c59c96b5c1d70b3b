"""Kernel's browser filesystem in the emulator, the read side Kernel's spec gives: ``GET /browsers/{id}/fs/list_files``
(``ListFiles``), ``.../fs/file_info`` (``FileInfo``) and ``.../fs/read_file`` (``application/octet-stream``), each
with a required ``path`` query parameter matching ``^/.*``.

A standalone or pool browser's filesystem is its Chromium's throw-away root (:mod:`~.chromium`): the absolute path
asked for is looked up under that root and nowhere else; a symlink leading out of it is not followed (404). Like
Kernel: 400 ``bad_request`` for a missing or relative path (and, stricter than a shell, for one with a ``.``/``..``
segment or NUL), for a directory read as a file and for a file listed as a directory; 404 ``not_found`` for a path
that does not exist and for a browser that is unknown or deleted (its files went with it). An invocation's browsers
have no Chromium in the emulator, hence no files: every path is 404 there.
"""

from __future__ import annotations

import os
import stat
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

from kernel_provider.testing.responses import error_response, json_response, named_browser, store_of


class _FsError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def response(self) -> Response:
        return error_response(self.status, "bad_request" if self.status == 400 else "not_found", self.message)


def _resolve(request: Request) -> tuple[str, Path]:
    """The asked path and the real file under the browser's root; :class:`_FsError` for a bad or unknown one."""
    found = named_browser(request)
    if isinstance(found, Response):
        raise _FsError(404, f"browser session {request.path_params['id']!r} not found")
    if not found.live:
        raise _FsError(404, f"browser session {found.session_id!r} not found")
    raw = request.query_params.get("path")
    if not raw:
        raise _FsError(400, "path is required")
    if not raw.startswith("/"):
        raise _FsError(400, f"invalid path {raw!r}: must be absolute")
    if "\x00" in raw or any(part in (".", "..") for part in raw.split("/")):
        raise _FsError(400, f"invalid path {raw!r}")
    session = store_of(request).browser_sessions.live.get(found.session_id)
    root = session.process.fs_root if session is not None else None
    if root is None:
        raise _FsError(404, f"path {raw!r} not found")
    real_root = os.path.realpath(root)
    real = os.path.realpath(os.path.join(real_root, raw.lstrip("/")))
    if real != real_root and not real.startswith(real_root + os.sep):
        raise _FsError(404, f"path {raw!r} not found")  # a symlink out of the sandbox
    if not os.path.lexists(real):
        raise _FsError(404, f"path {raw!r} not found")
    return "/" + raw.strip("/") if raw != "/" else "/", Path(real)


def _info(path: str, real: Path) -> dict[str, Any]:
    st = real.stat()
    is_dir = stat.S_ISDIR(st.st_mode)
    return {
        "name": real.name if path != "/" else "/",
        "path": path,
        "size_bytes": 0 if is_dir else st.st_size,
        "is_dir": is_dir,
        "mod_time": datetime.fromtimestamp(st.st_mtime, timezone.utc).isoformat().replace("+00:00", "Z"),
        "mode": stat.filemode(st.st_mode),
    }


async def list_files(request: Request) -> Response:
    """``GET /browsers/{id}/fs/list_files``: the directory's entries (``ListFiles``), by name."""
    try:
        path, real = _resolve(request)
    except _FsError as exc:
        return exc.response()
    if not real.is_dir():
        return error_response(400, "bad_request", f"path {path!r} is not a directory")
    entries = []
    for child in sorted(real.iterdir()):
        if child.is_symlink():
            continue  # never point a client at something outside the sandbox
        entries.append(_info(path.rstrip("/") + "/" + child.name, child))
    return json_response(entries)


async def file_info(request: Request) -> Response:
    """``GET /browsers/{id}/fs/file_info``: one ``FileInfo``."""
    try:
        path, real = _resolve(request)
    except _FsError as exc:
        return exc.response()
    return json_response(_info(path, real))


async def read_file(request: Request) -> Response:
    """``GET /browsers/{id}/fs/read_file``: the file's bytes, streamed."""
    try:
        path, real = _resolve(request)
    except _FsError as exc:
        return exc.response()
    if real.is_dir():
        return error_response(400, "bad_request", f"path {path!r} is a directory")
    return FileResponse(real, media_type="application/octet-stream")


FS_ROUTES = [
    Route("/browsers/{id}/fs/list_files", list_files, methods=["GET"]),
    Route("/browsers/{id}/fs/file_info", file_info, methods=["GET"]),
    Route("/browsers/{id}/fs/read_file", read_file, methods=["GET"]),
]
