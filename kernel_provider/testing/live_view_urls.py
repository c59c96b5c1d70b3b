"""The live-view URLs the emulator hands out, and where they point.

* Each headful browser lists one (``browser_live_view_url``): ``/live/{session_id}?jwt=...``, signed for that
  session (:mod:`~.signing`); as on Kernel it gives control of the browser.
* ``POST /browsers/{id}/live_view`` mints more (:class:`LiveViewGrants`): ``/live/t/{token}``, with ``read`` or
  ``control`` access and an optional time to live.

The pages behind them are :mod:`~.live_view`'s.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from kernel_provider.testing.signing import signed_url
from kernel_provider.testing.timeutil import now_ns

#: Where the emulator serves live views and replay pages (opened with the signed token their URL carries).
LIVE_PREFIX = "/live/"
#: Where a minted live-view URL points (its token follows). The unguessable token in the path is the credential,
#: so the middleware lets these through and their page checks the token (unknown, expired).
GRANT_PREFIX = f"{LIVE_PREFIX}t/"


def live_view_url(base_url: str, session_id: str, suffix: str = "") -> str:
    """The emulator's live-view page of a browser session (or a page under it), signed for that session.

    :param base_url: the emulator's own address.
    :param session_id: the browser session the page shows.
    :param suffix: a path below the page (``/replays/{replay_id}``), or nothing.
    """
    return signed_url(base_url, session_id, suffix)


@dataclass
class LiveViewGrant:
    """A live-view URL minted by ``POST /browsers/{id}/live_view``: its token opens ``/live/t/{token}``.

    :param session_id: the browser it shows.
    :param access: ``read`` (the page takes no input) or ``control``.
    :param expires_ns: when it stops working (None: when the browser ends, as on Kernel).
    """

    session_id: str
    access: str
    expires_ns: int | None = None

    def expired(self) -> bool:
        """Whether its ``ttl_seconds`` have passed."""
        return self.expires_ns is not None and now_ns() >= self.expires_ns


class LiveViewGrants:
    """Every live-view URL minted by one emulator, by token, and the input its pages received."""

    def __init__(self) -> None:
        self.by_token: dict[str, LiveViewGrant] = {}
        #: ``(session_id, how)`` of each input accepted: ``how`` is ``control`` (a minted URL) or ``listed``.
        self.inputs: list[tuple[str, str]] = []

    def mint(self, session_id: str, access: str, ttl_seconds: int | None) -> tuple[str, LiveViewGrant]:
        """A new unguessable token for ``session_id``.

        :param session_id: the browser the URL shows.
        :param access: ``read`` or ``control``.
        :param ttl_seconds: how long the URL works (None: until the browser ends).
        """
        expires = None if ttl_seconds is None else now_ns() + ttl_seconds * 1_000_000_000
        token = secrets.token_urlsafe(24)
        grant = self.by_token[token] = LiveViewGrant(session_id, access, expires)
        return token, grant

    def clear(self) -> None:
        """Forget every URL and input (emulator reset)."""
        self.by_token.clear()
        self.inputs.clear()
