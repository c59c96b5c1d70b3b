"""Shared by the Kernel browser tests (client, emulator, hook, decorator, live view, leak audit): the Chromium
marker, the example site served on 127.0.0.1, the emulator's live-browser count and live-view grants."""

from __future__ import annotations

import contextlib
import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kernel_provider.testing.chromium import find_chromium

SITE = Path(__file__).resolve().parent.parent / "example_dags" / "site"
#: Every test that starts a Kernel browser in the emulator needs a real Chromium; without it, it says why.
skip_without_chromium = pytest.mark.skipif(
    find_chromium() is None,
    reason="the emulator backs Kernel browsers with Debian's Chromium: /usr/bin/chromium is missing "
    "(make browser-deps installs it; or apt-get install -y chromium)",
)
needs_chromium = [pytest.mark.chromium, skip_without_chromium]
#: The emulator's route that mints a browser's live-view URL.
LIVE_VIEW_ROUTE = "/browsers/{id}/live_view"
#: What the example site's script renders (``example_dags/site/index.html``).
SITE_PRODUCTS = [
    {"sku": "A-100", "name": "Espresso cup", "price": 4.5},
    {"sku": "A-200", "name": "Moka pot", "price": 29.0},
    {"sku": "B-300", "name": "Desk lamp", "price": 18.75},
    {"sku": "B-400", "name": "Notebook", "price": 3.2},
]


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def serve_site() -> Iterator[str]:
    """``example_dags/site/`` served on 127.0.0.1 while the block runs; yields its URL."""
    handler = functools.partial(_QuietHandler, directory=str(SITE))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def live_browsers(emulator: Any) -> int:
    """Kernel browsers the emulator has running (each a Chromium), from its stats."""
    return int(emulator.stats()["browser_sessions"]["live"])


def chromium_running(emulator: Any) -> int:
    """Chromium processes of the emulator's browsers that are still alive."""
    return int(emulator.stats()["browser_sessions"]["chromium_running"])


def grant_of(emulator: Any, url: str) -> Any:
    """What the emulator minted ``url`` as (its browser, access and expiry); KeyError when it did not mint it."""
    return emulator.store.browser_sessions.live_views.by_token[url.rsplit("/", 1)[-1]]
