"""``KernelLandFilesOperator``: land the files of live Kernel browsers (their downloads) in Airflow object storage.

Kernel deletes a browser's files with the browser ("Files can only be retrieved while the browser session is still
active"), and an invocation's browsers are usually deleted when its action ends. So this operator lands from
browsers that are still alive:

* ``session_id``: one browser, e.g. a standalone one another task created and keeps, or one an action reports in
  its output and keeps alive (``timeout_seconds`` long enough for this task to run);
* ``invocation_id``: every browser the invocation still holds (``GET /invocations/{id}/browsers``), each into
  ``destination/<session_id>/``; typically with a wait that lets this task run while the action is paused or
  still running. No browser left fails clearly: the files went with the browsers.

Inside a ``@task.kernel_browser`` function, ``kernel_files.land(...)`` does the same for the task's own browser.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.providers.common.compat.sdk import BaseOperator

from kernel_provider.client.errors import KernelError, KernelInputError
from kernel_provider.client.files import DEFAULT_MAX_FILE_BYTES, DEFAULT_MAX_TOTAL_BYTES, DOWNLOAD_DIR
from kernel_provider.client.trust import require_id
from kernel_provider.hooks.kernel import KernelHook
from kernel_provider.hooks.kernel_browser import KernelBrowserHook
from kernel_provider.hooks.landing import check_limits, destination_path


class KernelLandFilesOperator(BaseOperator):
    """Land the files of a live Kernel browser, or of every browser an invocation still holds, in Airflow object
    storage; returns (XCom ``return_value``) one dict per file: ``name``, ``path`` (the landed URL), ``source``,
    ``size``, ``sha256`` (plus ``session_id``). Each file lands whole or not at all (see
    :func:`~kernel_provider.hooks.landing.land_files`).

    :param destination: the directory to land in: an ``ObjectStoragePath``, a URL (``s3://bucket/prefix``,
        ``file:///data``) or an absolute local path (templated).
    :param session_id: the browser whose files to land (templated). Exactly one of ``session_id`` and
        ``invocation_id``.
    :param invocation_id: land from every browser this invocation still holds, each into
        ``destination/<session_id>/`` (templated).
    :param source_dir: the absolute directory in the browser (default ``/tmp/downloads``; templated).
    :param pattern: a glob on file names (``*.csv``); None lands every finished file (templated).
    :param max_bytes: the largest file accepted, in bytes.
    :param max_total_bytes: the most bytes landed from one browser.
    :param kernel_conn_id: the Kernel connection.
    :param kwargs: ``BaseOperator``'s parameters (``task_id``, ``outlets``, ``retries``...).
    """

    template_fields: Sequence[str] = ("destination", "session_id", "invocation_id", "source_dir", "pattern")

    def __init__(
        self,
        *,
        destination: Any,
        session_id: str | None = None,
        invocation_id: str | None = None,
        source_dir: str = DOWNLOAD_DIR,
        pattern: str | None = None,
        max_bytes: int = DEFAULT_MAX_FILE_BYTES,
        max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
        kernel_conn_id: str = "kernel_default",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if (session_id is None) == (invocation_id is None):
            raise KernelInputError(
                "session_id / invocation_id",
                "exactly one is required.",
                "Pass session_id= for one browser, or invocation_id= for the browsers an invocation still holds.",
            )
        self.destination = destination
        self.session_id = session_id
        self.invocation_id = invocation_id
        self.source_dir = source_dir
        self.pattern = pattern
        self.max_bytes, self.max_total_bytes = check_limits(max_bytes, max_total_bytes)
        self.kernel_conn_id = kernel_conn_id

    def execute(self, context: Any) -> list[dict[str, Any]]:
        """Land the files; see the class docstring."""
        target = destination_path(self.destination)  # checked before any request
        hook = KernelBrowserHook(kernel_conn_id=self.kernel_conn_id)
        if self.session_id is not None:
            sources = [(require_id("session_id", self.session_id), target)]
        else:
            invocation_id = require_id("invocation_id", self.invocation_id)
            browsers = KernelHook(kernel_conn_id=self.kernel_conn_id).list_invocation_browsers(invocation_id)
            if not browsers:
                raise KernelError(
                    f"Invocation {invocation_id} holds no browser any more, and Kernel deletes a browser's files with "
                    "it: land them while the browsers live (e.g. from the action's own browser kept alive, by "
                    "session_id, or with kernel_files.land inside @task.kernel_browser)."
                )
            sources = [(b.session_id, target / b.session_id) for b in browsers]
        landed = []
        for session_id, where in sources:
            for item in hook.land_browser_files(
                session_id=session_id,
                destination=where,
                source_dir=self.source_dir,
                pattern=self.pattern,
                max_bytes=self.max_bytes,
                max_total_bytes=self.max_total_bytes,
            ):
                landed.append({**item, "session_id": session_id})
        self.log.info("Landed %d file(s) from %d Kernel browser(s).", len(landed), len(sources))
        return landed
