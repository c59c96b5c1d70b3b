"""The exception tree of the Kernel client and provider::

    KernelError                          base of everything below (a plain Exception: no Airflow needed)
    +-- KernelInputError                 a parameter is wrong; raised before any request (``field``, fix)
    |   +-- KernelConnectionConfigError  the settings (the Airflow connection) are missing something or malformed
    +-- KernelApiError                   Kernel answered with an HTTP error (status, ``code``, ``message``)
    |   +-- KernelRedirectError          3xx: a redirect, never followed (names the Location's origin only)
    |   +-- KernelBadRequestError        400 / 422: the request itself is wrong
    |   +-- KernelAuthError              401 / 403: key rejected or not allowed
    |   +-- KernelNotFoundError          404: no such invocation, app, version or action
    |   +-- KernelConflictError          409
    |   +-- KernelRateLimitError         429: rate or concurrency limit (``Retry-After`` honoured)
    |   +-- KernelServerError            5xx and 408: Kernel's side failed or timed out
    +-- KernelTransportError             no answer: DNS, refused or dropped connection, timeout
    +-- KernelResponseError              an answer that is not what the API promises
    +-- KernelAmbiguousCreateError       ``POST /invocations`` may or may not have created a run
    +-- KernelReconcileError             a previous try's create cannot be settled; names the candidates
    |   +-- KernelRunMismatchError       the recorded (or found) invocation is not this task's request
    +-- KernelStateStoreError            the retry-safety store cannot be read or written
    +-- KernelInvocationFailed           the invocation finished ``failed``
    +-- KernelWaitTimeout                the wait passed its deadline

:func:`api_error_for_status` is the one place that maps an HTTP status to its class (and :func:`is_error_status`
the one place that tells an error status from a success: anything but 2xx, so a redirect is an error too and is
never followed, by either transport). Each error is a type callers can catch; none needs its
text parsed. ``kernel_provider.exceptions`` re-exports all of them: it is the documented import path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from kernel_provider.client.text import safe_text

__all__ = [
    "KernelAmbiguousCreateError",
    "KernelApiError",
    "KernelAuthError",
    "KernelBadRequestError",
    "KernelConflictError",
    "KernelConnectionConfigError",
    "KernelError",
    "KernelInputError",
    "KernelInvocationFailed",
    "KernelNotFoundError",
    "KernelRateLimitError",
    "KernelReconcileError",
    "KernelRedirectError",
    "KernelResponseError",
    "KernelRunMismatchError",
    "KernelServerError",
    "KernelStateStoreError",
    "KernelTransportError",
    "KernelWaitTimeout",
    "api_error_for_status",
    "is_error_status",
]


class KernelError(Exception):
    """Base class of every error the Kernel client and the provider raise."""


class KernelInputError(KernelError, ValueError):
    """A parameter is wrong; raised before any request is made. ``field`` names it, the message says the fix."""

    def __init__(self, field: str, problem: str, fix: str = "") -> None:
        self.field = field
        self.problem = problem
        self.fix = fix
        super().__init__(f"{field}: {problem}" + (f" {fix}" if fix else ""))


class KernelConnectionConfigError(KernelInputError):
    """Kernel's settings (in Airflow: the connection) are missing something or malformed."""


class KernelApiError(KernelError):
    """Kernel answered with an HTTP error. Carries the status and Kernel's ``code``, ``message`` and ``details``."""

    def __init__(
        self,
        status_code: int,
        code: str | None,
        message: str,
        *,
        details: Sequence[Mapping[str, Any]] | None = None,
        request_id: str | None = None,
        method: str = "",
        path: str = "",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.status_code = status_code
        self.code = code
        self.message = message
        self.details = list(details or ())
        self.request_id = request_id
        self.method = method
        self.path = path
        # Only the headers that drive retries are kept; nothing that could carry a credential.
        self.headers = {
            k.lower(): v
            for k, v in (headers or {}).items()
            if k.lower() in {"retry-after", "retry-after-ms", "x-should-retry"}
        }
        where = f" ({method} {path})" if method else ""
        text = f"Kernel API error {status_code}{where}: {code + ': ' if code else ''}{message}"
        if self.details:
            text += " | details: " + "; ".join(
                f"{d.get('code', '')}: {d.get('message', '')}".strip(": ") for d in self.details
            )
        if request_id:
            text += f" (request id {request_id})"
        super().__init__(safe_text(text))  # Kernel's words: escaped, one capped line


class KernelRedirectError(KernelApiError):
    """3xx: the server answered with a redirect. It is never followed (the key, the project header and a create's
    payload must not go to another place) and never retried; the message names the ``Location``'s origin only.
    Kernel itself sends no redirects: the connection's host is likely not Kernel's API URL, or a proxy is in the way.

    :ivar location_origin: ``scheme://host[:port]`` of the ``Location`` header, or a phrase when there is none.
    """

    location_origin: str = ""


class KernelBadRequestError(KernelApiError):
    """400 or 422: Kernel rejected the request as malformed; repeating it cannot help."""


class KernelAuthError(KernelApiError):
    """401 or 403: the API key was rejected or lacks access (check the connection's password and project)."""


class KernelNotFoundError(KernelApiError):
    """404: the invocation, app, version or action does not exist (or no longer does)."""


class KernelConflictError(KernelApiError):
    """409: the request conflicts with the resource's current state."""


class KernelRateLimitError(KernelApiError):
    """429: a rate or concurrency limit; Kernel refused at once, so nothing was started."""


class KernelServerError(KernelApiError):
    """5xx or 408: Kernel's side failed or timed out; the request may or may not have been acted on."""


_STATUS_CLASSES: dict[int, type[KernelApiError]] = {
    400: KernelBadRequestError,
    401: KernelAuthError,
    403: KernelAuthError,
    404: KernelNotFoundError,
    408: KernelServerError,
    409: KernelConflictError,
    422: KernelBadRequestError,
    429: KernelRateLimitError,
}


def is_error_status(status_code: int) -> bool:
    """Whether an HTTP status is an error that :func:`api_error_for_status` turns into an exception: anything
    outside 2xx. A redirect (3xx) is an error: neither transport follows one, and Kernel never sends one.

    :param status_code: the status the server answered with.
    """
    return not 200 <= status_code < 300


def api_error_for_status(status_code: int) -> type[KernelApiError]:
    """The error class for an HTTP error status: the one place statuses are interpreted.

    :param status_code: an error status (see :func:`is_error_status`); a status without a class of its own
        (e.g. 413) maps to :class:`KernelApiError` itself, any 5xx to :class:`KernelServerError`, any 3xx to
        :class:`KernelRedirectError`.
    """
    if status_code >= 500:
        return KernelServerError
    if 300 <= status_code < 400:
        return KernelRedirectError
    return _STATUS_CLASSES.get(status_code, KernelApiError)


class KernelResponseError(KernelError):
    """Kernel answered with something that is not what the API promises (not JSON, missing fields)."""


class KernelTransportError(KernelError):
    """The request did not get an answer: DNS, refused or dropped connection, timeout.

    ``request_sent`` is False only when Kernel certainly never saw the request (e.g. the connection was refused);
    when True, Kernel may have acted on it.
    """

    def __init__(self, message: str, *, request_sent: bool, method: str = "", path: str = "") -> None:
        self.request_sent = request_sent
        self.method = method
        self.path = path
        super().__init__(f"{method} {path}: {message}".strip())


class KernelAmbiguousCreateError(KernelError):
    """``POST /invocations`` failed in a way that leaves open whether Kernel created the invocation.

    It is never retried blindly (Kernel has no idempotency key). Reconcile by listing invocations of
    ``app_name``/``action_name`` started between ``window_start`` and ``window_end`` with the same payload.
    """

    def __init__(
        self,
        *,
        app_name: str,
        action_name: str,
        payload: str | None,
        window_start: datetime,
        window_end: datetime,
        cause: BaseException,
    ) -> None:
        self.app_name = app_name
        self.action_name = action_name
        self.payload = payload
        self.window_start = window_start
        self.window_end = window_end
        self.cause = cause
        super().__init__(
            f"The invocation of {app_name}/{action_name} may have been created: the request failed after it "
            f"was sent ({cause}). It was NOT re-sent, to avoid a duplicate run. Look for invocations of this "
            f"action started between {window_start.isoformat()} and {window_end.isoformat()}."
        )


class KernelAmbiguousBrowserCreateError(KernelError):
    """``POST /browsers`` (or a pool's acquire) failed after it may have reached Kernel, and looking the browser
    up could not settle it. Nothing was re-sent, and nothing that may be someone else's browser was deleted.

    :param message: what happened and what a person should check.
    :param candidates: session ids that could be the lost browser (empty when Kernel lists none).
    :param cause: the failure of the request itself.
    """

    def __init__(self, message: str, *, candidates: Sequence[str] = (), cause: BaseException | None = None) -> None:
        self.candidates = list(candidates)
        self.cause = cause
        super().__init__(message)


class KernelReconcileError(KernelError):
    """A previous create may have started a run, and Kernel's answers cannot settle which invocation (if any)
    is this task instance's. Nothing is adopted and nothing is invoked. ``candidates`` lists the ids that could
    not be ruled out; the message says what a person should check (and that clearing the task starts afresh).
    """

    def __init__(self, message: str, candidates: Sequence[str] = ()) -> None:
        self.candidates = list(candidates)
        super().__init__(message)


class KernelRunMismatchError(KernelReconcileError):
    """The invocation a run record (or a reconcile) points at is not this task's request: its app, action or
    version differ, or it lacks the request's reconcile token. It is neither adopted nor cancelled (a record can
    be edited by whoever may edit Airflow Variables). ``candidates`` holds its id; ``differences`` what differs.
    """

    def __init__(self, message: str, invocation_id: str, differences: Sequence[str]) -> None:
        self.differences = list(differences)
        super().__init__(message, [invocation_id])


class KernelStateStoreError(KernelError):
    """The store that makes retries safe (``task_state_store`` or an Airflow Variable) could not be used.

    Raised before any ``POST``: without the store a retry could not know about this try's run. (When only the
    write of the created invocation's id fails, the operator logs it and follows the run instead.)
    """


class KernelInvocationFailed(KernelError):
    """The invocation finished ``failed``. ``invocation`` is the final state; ``url`` its dashboard page."""

    def __init__(self, invocation: Any, url: str | None = None) -> None:
        self.invocation = invocation
        self.url = url
        reason = safe_text(invocation.status_reason or "no reason given")
        text = f"Kernel invocation {invocation.id} failed: {reason}"
        excerpt = invocation.output_excerpt()
        if excerpt:
            text += f"\nOutput: {safe_text(excerpt)}"
        if url:
            text += f"\nSee {url}"
        super().__init__(text)


class KernelWaitTimeout(KernelError):
    """The wait for an invocation passed its deadline before the invocation finished."""
