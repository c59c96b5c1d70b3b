"""A Kernel browser's filesystem (``/browsers/{id}/fs/...``), read-only: list a directory, describe a file, read a
file as a bounded stream. What comes back is checked before anyone writes with it: every listed name is a plain
base name (no ``/``, ``.``, ``..``, NUL or control character), every path is absolute, normalised and lies in the
directory listed, and every file read is cut at ``max_bytes`` (a :class:`KernelFileTooLargeError` naming the
parameter). The transports follow no redirect, and a body stream that breaks is a
:class:`~kernel_provider.client.errors.KernelTransportError` (retried from its first byte, the sink starting over).

Kernel deletes a browser's files with the browser (its docs: "Files can only be retrieved while the browser session
is still active"): read them before the browser is deleted, or released to its pool.
"""

from __future__ import annotations

import hashlib
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, BinaryIO, Protocol

from kernel_provider.client.client import KernelClient
from kernel_provider.client.errors import KernelError, KernelInputError, KernelResponseError
from kernel_provider.client.models import parse_timestamp
from kernel_provider.client.trust import require_id
from kernel_provider.client.wire import ApiCall, Endpoint, Operation

LIST_FILES = Endpoint("GET", "/browsers/{id}/fs/list_files")
FILE_INFO = Endpoint("GET", "/browsers/{id}/fs/file_info")
READ_FILE = Endpoint("GET", "/browsers/{id}/fs/read_file")

#: Where Kernel's docs have a browser's downloads saved (``Browser.setDownloadBehavior``'s ``downloadPath``).
DOWNLOAD_DIR = "/tmp/downloads"
#: The default cap of one file read (100 MiB).
DEFAULT_MAX_FILE_BYTES = 100 * 1024 * 1024
#: The default cap of all the files of one landing (1 GiB).
DEFAULT_MAX_TOTAL_BYTES = 1024 * 1024 * 1024
#: The longest file name accepted from Kernel, in UTF-8 bytes (Linux's NAME_MAX).
MAX_NAME_BYTES = 255
#: The longest path accepted, in UTF-8 bytes (Linux's PATH_MAX).
MAX_PATH_BYTES = 4096


class KernelFileTooLargeError(KernelError):
    """A file (or a landing) is larger than its limit; nothing of it is kept.

    :param parameter: the limit's parameter name (``max_bytes`` or ``max_total_bytes``).
    :param limit: its value in bytes.
    :param path: the file (in the browser) that crossed it.
    """

    def __init__(self, parameter: str, limit: int, path: str) -> None:
        self.parameter = parameter
        self.limit = limit
        self.path = path
        super().__init__(
            f"{path} is larger than {parameter}={limit} bytes; it was not landed. Raise {parameter} if the file is "
            "expected to be this large."
        )


class KernelUnsafePathError(KernelResponseError):
    """Kernel answered a file name or path that could leave the directory it was asked about (``..``, ``/`` in a
    name, NUL...); nothing was written with it."""


@dataclass(frozen=True)
class FileInfo:
    """One entry of ``GET /browsers/{id}/fs/list_files`` or ``file_info`` (Kernel's ``FileInfo``), checked.

    :param name: the base name: never empty, ``.``, ``..``, and never holding ``/``, ``\\``, NUL or controls.
    :param path: the absolute, normalised path in the browser (``<listed dir>/<name>`` for a listing).
    :param size_bytes: the size Kernel reports (0 for a directory); a read is still cut at its own limit.
    :param is_dir: whether it is a directory.
    :param mod_time: last modification, None when Kernel sent none or an unreadable one.
    :param mode: the mode bits as Kernel prints them (e.g. ``-rw-r--r--``).
    """

    name: str
    path: str
    size_bytes: int
    is_dir: bool
    mod_time: datetime | None = None
    mode: str = ""

    @classmethod
    def from_api(cls, data: Any, *, directory: str | None = None) -> FileInfo:
        """Parse and check one ``FileInfo``; ``directory``: the listed directory, which ``path`` must be in.

        :raises KernelUnsafePathError: the name or path is unsafe, or the path is not ``directory/name``.
        :raises KernelResponseError: a field is missing or of the wrong type.
        """
        if not isinstance(data, Mapping):
            raise KernelResponseError(f"Kernel's file entry is {type(data).__name__}, expected an object.")
        name, path, size = data.get("name"), data.get("path"), data.get("size_bytes")
        name = check_name(name)
        path = _answered_path(path)
        if directory is not None and path != posixpath.join(directory, name):
            raise KernelUnsafePathError(
                f"Kernel listed {path!r} as {name!r} in {directory!r}; an entry must be that directory's own child."
            )
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise KernelResponseError(f"Kernel's file entry {path!r} has no valid size_bytes ({size!r}).")
        return cls(
            name=name,
            path=path,
            size_bytes=size,
            is_dir=data.get("is_dir") is True,
            mod_time=parse_timestamp(data.get("mod_time")),
            mode=str(data.get("mode") or ""),
        )


def check_name(name: Any) -> str:
    """``name`` when it is a safe base name to write under a destination, else :class:`KernelUnsafePathError`."""
    if (
        not isinstance(name, str)
        or name in ("", ".", "..")
        or "/" in name
        or "\\" in name
        or any(ord(c) < 32 or ord(c) == 127 for c in name)
        or len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES
    ):
        raise KernelUnsafePathError(f"Kernel answered an unsafe file name {name!r}; nothing was written with it.")
    return name


def check_fs_path(field: str, path: Any) -> str:
    """``path`` normalised, when it is an absolute path in the browser without ``.``/``..`` segments, NUL or control
    characters; else :class:`KernelInputError` naming ``field`` (raised before any request)."""
    problem = _path_problem(path)
    if problem:
        raise KernelInputError(field, f"{problem}, got {path!r}.", "Pass an absolute path such as /tmp/downloads.")
    return _normal(path)


def _answered_path(path: Any) -> str:
    problem = _path_problem(path)
    if problem:
        raise KernelUnsafePathError(f"Kernel answered an unsafe path {path!r} ({problem}); nothing was written.")
    return _normal(path)


def _path_problem(path: Any) -> str:
    if not isinstance(path, str) or not path.startswith("/"):
        return "must be an absolute path (starting with /)"
    if any(ord(c) < 32 or ord(c) == 127 for c in path):
        return "must hold no NUL or control character"
    if any(part in (".", "..") for part in path.split("/")):
        return "must hold no . or .. segment"
    if len(path.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
        return f"must be at most {MAX_PATH_BYTES} bytes"
    return ""


def _normal(path: str) -> str:
    normal = posixpath.normpath(path)
    return "/" + normal.lstrip("/")  # normpath keeps a leading "//"


class ByteSink(Protocol):
    """Where a streamed body goes: :meth:`begin` before the first byte of each attempt (a retry starts over)."""

    def begin(self) -> None:
        """A body starts (again): drop anything written so far."""

    def write(self, chunk: bytes) -> None:
        """The next bytes of the body; may raise to end the read (e.g. over its limit)."""


class CappedSink:
    """A :class:`ByteSink` that writes into a file it (re)opens itself, counting and hashing (sha256) what passes,
    and refuses more than ``max_bytes``.

    :param opener: opens the target for writing, truncating it (called on every :meth:`begin`).
    :param max_bytes: the most bytes accepted; one more raises :class:`KernelFileTooLargeError`.
    :param path: the file read (named in the error).
    :param parameter: the limit's parameter name, named in the error.
    """

    def __init__(self, opener: Any, *, max_bytes: int, path: str, parameter: str = "max_bytes") -> None:
        self._opener = opener
        self.max_bytes = max_bytes
        self.path = path
        self.parameter = parameter
        self.file: BinaryIO | None = None
        self.size = 0
        self._hash = hashlib.sha256()

    @property
    def sha256(self) -> str:
        """The hex sha256 of what was written since the last :meth:`begin`."""
        return self._hash.hexdigest()

    def begin(self) -> None:
        """Reopen (truncate) the target and reset the count and hash."""
        self.close()
        self.file = self._opener()
        self.size = 0
        self._hash = hashlib.sha256()

    def write(self, chunk: bytes) -> None:
        """Write ``chunk``, or raise :class:`KernelFileTooLargeError` before writing past the limit."""
        if self.file is None:
            self.begin()
        if self.size + len(chunk) > self.max_bytes:
            raise KernelFileTooLargeError(self.parameter, self.max_bytes, self.path)
        self.size += len(chunk)
        self._hash.update(chunk)
        self.file.write(chunk)  # type: ignore[union-attr]

    def close(self) -> None:
        """Close the target (flushing it); idempotent."""
        file, self.file = self.file, None
        if file is not None:
            file.close()


# --- operations -------------------------------------------------------------------------------------------


def list_files(session_id: str, path: str) -> Operation[list[FileInfo]]:
    """``GET /browsers/{id}/fs/list_files``: the directory's entries, each checked (see :class:`FileInfo`)."""
    directory = check_fs_path("source_dir", path)

    def parse(response: Any) -> list[FileInfo]:
        data = response.json()
        if not isinstance(data, list):
            raise KernelResponseError(f"Kernel's file listing is {type(data).__name__}, expected a JSON array.")
        return [FileInfo.from_api(item, directory=directory) for item in data]

    return (yield ApiCall(LIST_FILES, {"id": session_id}, params={"path": directory}, parse=parse))


def file_info(session_id: str, path: str) -> Operation[FileInfo]:
    """``GET /browsers/{id}/fs/file_info``: one file or directory, checked to be the path asked about."""
    wanted = check_fs_path("path", path)
    info: FileInfo = yield ApiCall(
        FILE_INFO, {"id": session_id}, params={"path": wanted}, parse=lambda r: FileInfo.from_api(r.json())
    )
    if info.path != wanted:
        raise KernelUnsafePathError(f"Kernel described {info.path!r} when asked about {wanted!r}.")
    return info


def read_file(session_id: str, path: str, sink: ByteSink) -> Operation[None]:
    """``GET /browsers/{id}/fs/read_file``: the file's bytes streamed into ``sink`` (which bounds them)."""
    wanted = check_fs_path("path", path)
    yield ApiCall(READ_FILE, {"id": session_id}, params={"path": wanted}, sink=sink, parse=lambda r: None)


# --- running them -----------------------------------------------------------------------------------------


class FileApi:
    """The filesystem operations on a :class:`KernelClient`, sync and asyncio.

    :param client: the client whose settings, transports and retries are used.
    """

    def __init__(self, client: KernelClient) -> None:
        self.client = client

    def list_files(self, *, session_id: str, path: str = DOWNLOAD_DIR) -> list[FileInfo]:
        """The entries of directory ``path`` of browser ``session_id``."""
        return self.client.execute(list_files(require_id("session_id", session_id), path))

    async def alist_files(self, *, session_id: str, path: str = DOWNLOAD_DIR) -> list[FileInfo]:
        """:meth:`list_files` without blocking the event loop."""
        return await self.client.aexecute(list_files(require_id("session_id", session_id), path))

    def info(self, *, session_id: str, path: str) -> FileInfo:
        """What Kernel knows of ``path`` (404: :class:`~kernel_provider.client.errors.KernelNotFoundError`)."""
        return self.client.execute(file_info(require_id("session_id", session_id), path))

    def read(self, *, session_id: str, path: str, sink: ByteSink) -> None:
        """Stream the file ``path`` into ``sink``."""
        self.client.execute(read_file(require_id("session_id", session_id), path, sink))

    async def aread(self, *, session_id: str, path: str, sink: ByteSink) -> None:
        """:meth:`read` without blocking the event loop (``sink`` is written on the loop: keep it quick)."""
        await self.client.aexecute(read_file(require_id("session_id", session_id), path, sink))
