"""Landing a Kernel browser's files (its downloads) in Airflow object storage: any ``ObjectStoragePath`` (local
``file://``, ``s3://``, ``gs://``... through Airflow's object storage and its connections).

:func:`land_files` lists the browser's directory, picks the files (a glob ``pattern``; Chromium's unfinished
``*.crdownload`` files never), refuses before reading when the listing already shows a file over ``max_bytes`` or
all over ``max_total_bytes``, then streams each file into a temporary object next to its final name
(``.<name>.<token>.partial``) counting and hashing (sha256) as it goes, with the caps enforced on the bytes
themselves. Only once every file is whole, and its size is the one Kernel listed, are they moved to their final
names (a rename where the store has one; copy then delete where it has not, which never shows a partial object).
Any failure (a broken stream, a limit, a wrong size) deletes the temporary objects: no file under a final name is
ever half-written.

:class:`BrowserFiles` is the same bound to one browser: what ``@task.kernel_browser`` injects as ``kernel_files``.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import secrets
import time
from typing import Any

from airflow.providers.common.compat.sdk import ObjectStoragePath

from kernel_provider.client.errors import KernelInputError, KernelResponseError
from kernel_provider.client.files import (
    DEFAULT_MAX_FILE_BYTES,
    DEFAULT_MAX_TOTAL_BYTES,
    DOWNLOAD_DIR,
    CappedSink,
    FileApi,
    FileInfo,
    KernelFileTooLargeError,
    check_fs_path,
)
from kernel_provider.client.trust import require_id
from kernel_provider.client.validation import require_int_in

log = logging.getLogger(__name__)
#: Names Chromium gives a download still under way.
UNFINISHED_SUFFIXES = (".crdownload",)
#: Seconds between listings while :meth:`BrowserFiles.wait_for` waits.
WAIT_POLL_SECONDS = 0.5


def destination_path(destination: Any) -> ObjectStoragePath:
    """``destination`` as an ``ObjectStoragePath`` (a plain absolute path is ``file://``); a :class:`KernelInputError`
    naming ``destination`` otherwise."""
    if isinstance(destination, ObjectStoragePath):
        return destination
    if isinstance(destination, str) and destination.startswith("/"):
        return ObjectStoragePath("file://" + destination)
    if isinstance(destination, str) and "://" in destination:
        return ObjectStoragePath(destination)
    raise KernelInputError(
        "destination",
        f"must be an ObjectStoragePath or a URL/absolute path, got {destination!r}.",
        "Pass e.g. ObjectStoragePath('s3://bucket/prefix/', conn_id='aws_default') or 'file:///data/landing/'.",
    )


def check_limits(max_bytes: Any, max_total_bytes: Any) -> tuple[int, int]:
    """Both caps checked: whole numbers of at least 1."""
    return require_int_in("max_bytes", max_bytes, 1, None), require_int_in("max_total_bytes", max_total_bytes, 1, None)


def pick(entries: list[FileInfo], pattern: str | None) -> list[FileInfo]:
    """The finished files of ``entries`` whose name matches the glob ``pattern`` (None: all), by name."""
    return sorted(
        (
            e
            for e in entries
            if not e.is_dir
            and not e.name.endswith(UNFINISHED_SUFFIXES)
            and (pattern is None or fnmatch.fnmatchcase(e.name, pattern))
        ),
        key=lambda e: e.name,
    )


def land_files(
    api: FileApi,
    *,
    session_id: str,
    destination: Any,
    source_dir: str = DOWNLOAD_DIR,
    pattern: str | None = None,
    max_bytes: int = DEFAULT_MAX_FILE_BYTES,
    max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
) -> list[dict[str, Any]]:
    """Land the files of browser ``session_id``'s ``source_dir`` in ``destination`` (see the module docstring).

    :param api: the filesystem operations (the hook's client).
    :param session_id: the browser, alive: Kernel deletes its files with it.
    :param destination: the directory to land in: an ``ObjectStoragePath``, a URL (``s3://...``) or an absolute
        local path. Created if missing; a file of the same name is replaced.
    :param source_dir: the absolute directory in the browser (default :data:`~.files.DOWNLOAD_DIR`).
    :param pattern: a glob on the file names (``*.csv``); None lands every finished file.
    :param max_bytes: the largest file accepted, in bytes.
    :param max_total_bytes: the most bytes of one landing.
    :returns: one dict per file landed, by name: ``name``, ``path`` (the landed object's URL), ``source`` (its path
        in the browser), ``size`` (bytes) and ``sha256`` (hex). Empty when no file matched.
    :raises KernelInputError: a parameter is wrong (before any request).
    :raises KernelFileTooLargeError: a file or the landing is over its cap (nothing landed).
    :raises KernelUnsafePathError: Kernel listed a name or path that could leave the directories (nothing landed).
    """
    session_id = require_id("session_id", session_id)
    source_dir = check_fs_path("source_dir", source_dir)
    if pattern is not None and (not isinstance(pattern, str) or not pattern or "/" in pattern):
        raise KernelInputError("pattern", f"must be a glob on file names (no /), got {pattern!r}.", "E.g. '*.csv'.")
    max_bytes, max_total_bytes = check_limits(max_bytes, max_total_bytes)
    target = destination_path(destination)
    files = pick(api.list_files(session_id=session_id, path=source_dir), pattern)
    for entry in files:
        if entry.size_bytes > max_bytes:
            raise KernelFileTooLargeError("max_bytes", max_bytes, entry.path)
    if sum(e.size_bytes for e in files) > max_total_bytes:
        raise KernelFileTooLargeError("max_total_bytes", max_total_bytes, source_dir)
    if not files:
        log.info("No file to land in %s of Kernel browser %s (pattern %r).", source_dir, session_id, pattern)
        return []
    target.mkdir(parents=True, exist_ok=True)
    staged: list[tuple[FileInfo, ObjectStoragePath, CappedSink]] = []
    try:
        left = max_total_bytes
        for entry in files:
            partial = target / f".{entry.name}.{secrets.token_hex(6)}.partial"
            cap, parameter = (max_bytes, "max_bytes") if max_bytes <= left else (left, "max_total_bytes")
            sink = CappedSink(lambda p=partial: p.open("wb"), max_bytes=cap, path=entry.path, parameter=parameter)
            staged.append((entry, partial, sink))
            try:
                api.read(session_id=session_id, path=entry.path, sink=sink)
            finally:
                sink.close()
            if sink.size != entry.size_bytes:
                raise KernelResponseError(
                    f"{entry.path} was listed with {entry.size_bytes} bytes but read with {sink.size}: it changed "
                    "while it was read (a download still under way?). Nothing was landed; land it again later."
                )
            left -= sink.size
        landed = []
        for entry, partial, sink in staged:
            final = target / entry.name
            partial.replace(final)
            landed.append(
                {"name": entry.name, "path": str(final), "source": entry.path, "size": sink.size, "sha256": sink.sha256}
            )
    except BaseException:
        for _, partial, sink in staged:
            sink.close()
            _remove(partial)
        raise
    for item in landed:
        log.info("Landed %s (%d bytes, sha256 %s) at %s.", item["source"], item["size"], item["sha256"], item["path"])
    return landed


def _remove(path: ObjectStoragePath) -> None:
    try:
        if path.exists():
            path.unlink()
    except Exception as exc:  # the original failure matters more; say what is left behind
        log.warning("Could not remove the partial file %s: %s", path, exc)


class BrowserFiles:
    """One Kernel browser's files, for a task that holds the browser (``@task.kernel_browser`` injects one as
    ``kernel_files``).

    :param hook: a :class:`~kernel_provider.hooks.kernel_browser.KernelBrowserHook` (its connection and client).
    :param session_id: the browser.
    """

    def __init__(self, hook: Any, session_id: str) -> None:
        self.hook = hook
        self.session_id = session_id

    #: The browser directory downloads go to (Kernel's docs; the emulator's Chromium default).
    download_dir = DOWNLOAD_DIR

    def list_files(self, *, path: str = DOWNLOAD_DIR) -> list[FileInfo]:
        """The entries of directory ``path`` in the browser."""
        return self.hook.list_browser_files(session_id=self.session_id, path=path)

    def wait_for(self, *, pattern: str = "*", source_dir: str = DOWNLOAD_DIR, timeout: float = 30.0) -> list[FileInfo]:
        """Poll ``source_dir`` until a finished file matches ``pattern`` (a download ends a little after the click;
        Kernel's docs advise polling); returns the matching files.

        :raises TimeoutError: none within ``timeout`` seconds (the message lists what was there).
        """
        deadline = time.monotonic() + timeout
        while True:
            entries = self.list_files(path=source_dir)
            found = pick(entries, pattern)
            if found:
                return found
            if time.monotonic() >= deadline:
                names = ", ".join(e.name for e in entries) or "nothing"
                raise TimeoutError(
                    f"No finished file matching {pattern!r} in {source_dir} within {timeout:g}s ({names})."
                )
            time.sleep(WAIT_POLL_SECONDS)

    def land(
        self,
        destination: Any,
        *,
        source_dir: str = DOWNLOAD_DIR,
        pattern: str | None = None,
        max_bytes: int = DEFAULT_MAX_FILE_BYTES,
        max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
    ) -> list[dict[str, Any]]:
        """Land the browser's files in ``destination``: :func:`land_files` (same parameters and result)."""
        return self.hook.land_browser_files(
            session_id=self.session_id,
            destination=destination,
            source_dir=source_dir,
            pattern=pattern,
            max_bytes=max_bytes,
            max_total_bytes=max_total_bytes,
        )

    async def aland(
        self,
        destination: Any,
        *,
        source_dir: str = DOWNLOAD_DIR,
        pattern: str | None = None,
        max_bytes: int = DEFAULT_MAX_FILE_BYTES,
        max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
    ) -> list[dict[str, Any]]:
        """:meth:`land` on a worker thread (object storage writes block), for an ``async def`` task."""
        return await asyncio.to_thread(
            self.land,
            destination,
            source_dir=source_dir,
            pattern=pattern,
            max_bytes=max_bytes,
            max_total_bytes=max_total_bytes,
        )
