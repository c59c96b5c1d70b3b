"""The log position's writes (``kernel_provider.triggers.log_cursor``): never two of one cursor at once.

A write that timed out on the loop goes on in its thread; a second write of the same XCom beside it would race it in
Airflow's API server (its XCom set deletes, then inserts: one of two at once is refused, with an ERROR line). The
stand-in below replaces only the blocking XCom call, whose slowness no emulator can provoke.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

from kernel_provider.triggers import log_cursor
from kernel_provider.triggers.task_instance import TiKey

KEY = TiKey("dag", "task", "run", -1, 1)


def _slow_writes(monkeypatch: Any, seconds: float) -> tuple[list[Any], list[int]]:
    written: list[Any] = []
    at_once = [0, 0]  # now, most ever
    lock = threading.Lock()

    def write(key: TiKey, value: Any) -> None:
        with lock:
            at_once[0] += 1
            at_once[1] = max(at_once[1], at_once[0])
        time.sleep(seconds)
        with lock:
            at_once[0] -= 1
        written.append(value["since"])

    monkeypatch.setattr(log_cursor, "write_cursor", write)
    return written, at_once


async def test_a_write_still_out_after_its_timeout_is_never_raced_by_the_next(monkeypatch):
    written, at_once = _slow_writes(monkeypatch, 0.6)
    monkeypatch.setattr(log_cursor, "CURSOR_WRITE_TIMEOUT", 0.1)  # the first write times out here, goes on there
    cursor = log_cursor.LogCursor(key=KEY, invocation_id="inv", log=logging.getLogger("test"))
    position = {"since": "first"}
    cursor.source = lambda: dict(position)
    cursor.moved()
    await asyncio.sleep(0.3)
    position["since"] = "last"
    cursor.moved()
    await cursor.flush()  # the trigger ends: the newest position, once the first write has returned
    await asyncio.sleep(1.0)  # that write, too, outlives its 0.1 s here
    assert at_once[1] == 1
    assert written == ["first", "last"]


async def test_a_flush_gives_up_rather_than_race_a_write_that_never_returns(monkeypatch):
    written, at_once = _slow_writes(monkeypatch, 3.0)
    monkeypatch.setattr(log_cursor, "CURSOR_WRITE_TIMEOUT", 0.1)
    monkeypatch.setattr(log_cursor, "DB_CALL_TIMEOUT", 0.5)
    cursor = log_cursor.LogCursor(key=KEY, invocation_id="inv", log=logging.getLogger("test"))
    cursor.source = lambda: {"since": "first"}
    cursor.moved()
    await asyncio.sleep(0.3)
    cursor.moved()
    started = time.monotonic()
    await cursor.flush()
    assert time.monotonic() - started < 2.5  # bounded: it did not wait for the stuck call, nor write beside it
    await asyncio.sleep(3.0)
    assert at_once[1] == 1 and written == ["first"]
