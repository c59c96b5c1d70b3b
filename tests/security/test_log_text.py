"""Kernel's log lines and texts are escaped and capped before they reach a task log or an exception (issue 25,
finding 7): an action prints ANSI colours, an OSC-8 hyperlink, clear-screen, ``\\r`` + a forged Airflow line and
Unicode line separators; the task log shows them as visible escapes, each on its own ``[kernel <id>]`` line."""

from __future__ import annotations

import re
from typing import Any

import pytest

from kernel_provider.client.errors import KernelInvocationFailed
from kernel_provider.client.models import Invocation
from kernel_provider.client.text import LINE_LIMIT, safe_log_lines, safe_text
from kernel_provider.operators.kernel import KernelInvokeOperator
from tests.airflow_helpers import (
    TASK_FAILURES,
    all_logs,
    make_dag,
    run_dag,
    states,
    task,
)
from tests.helpers import EVENTS, seen

#: Raw characters that must never reach a log line or an exception text from Kernel.
RAW = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202e]")
#: (what the action prints, what the task log must show).
LINES = [
    ("HOSTILE-1 \x1b[31mred\x1b[0m", "HOSTILE-1 \\x1b[31mred\\x1b[0m"),
    (
        "HOSTILE-2 \x1b]8;;https://evil.example\x1b\\click\x1b]8;;\x1b\\",
        "HOSTILE-2 \\x1b]8;;https://evil.example\\x1b\\",
    ),
    ("HOSTILE-3 \x1b[2J\x1b[H", "HOSTILE-3 \\x1b[2J\\x1b[H"),
    ("HOSTILE-4 done\rMarking task as SUCCESS", "HOSTILE-4 done\\rMarking task as SUCCESS"),
    ("HOSTILE-5 a\u2028INFO - forged\u2029b\x85c", "HOSTILE-5 a\\u2028INFO - forged\\u2029b\\x85c"),
    ("HOSTILE-6 \u202egnp.exe\tkept tab", "HOSTILE-6 \\u202egnp.exe\tkept tab"),
    ("HOSTILE-7 " + "x" * 20_000, "HOSTILE-7 xxx"),
]


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("plain text\twith a tab", "plain text\twith a tab"),
        ("\x1b[1mbold", "\\x1b[1mbold"),
        ("a\rb\nc", "a\\rb\\nc"),
        ("\x00\x07\x7f\x9b", "\\x00\\x07\\x7f\\x9b"),
        ("\u2028\u2029\u0085\u200f\u2066", "\\u2028\\u2029\\x85\\u200f\\u2066"),
        ("lone \ud800 surrogate", "lone \\ud800 surrogate"),
        ("é ü 日本 🙂", "é ü 日本 🙂"),
    ],
)
def test_safe_text_escapes_controls_and_separators(raw: str, shown: str) -> None:
    assert safe_text(raw) == shown


@pytest.mark.parametrize("unit", ["y", "\x1b", "\u2028"])
def test_each_line_is_capped_with_a_marker(unit: str) -> None:
    text = unit * (3 * LINE_LIMIT)
    out = safe_text(text)
    assert len(out) <= LINE_LIMIT and not RAW.search(out)
    kept = re.fullmatch(r"(.*)… \[truncated (\d+) chars\]", out, re.S)
    assert kept is not None
    # the count is of the original characters left out: what is shown plus what is counted is the whole text
    assert len(kept.group(1)) // len(safe_text(unit)) + int(kept.group(2)) == len(text)


def test_log_lines_split_at_newlines_only() -> None:
    assert safe_log_lines("one\r\ntwo\rthree\n\nfour\n") == ["one", "two\\rthree", "", "four"]


def test_exception_text_from_a_failed_invocation_is_escaped() -> None:
    invocation = Invocation.from_api(
        {"id": "abc", "status": "failed", "status_reason": "boom\r\x1b[2JMarking task as SUCCESS", "output": "\x1b]0;x"}
    )
    text = str(KernelInvocationFailed(invocation))
    assert "boom\\r\\x1b[2JMarking task as SUCCESS" in text and "\\x1b]0;x" in text
    assert not RAW.search(text)


def _kernel_pieces(text: str) -> list[str]:
    """Every piece of the captured output that holds a hostile marker, split the way a terminal or log viewer
    could split it (``str.splitlines``: ``\\r``, U+2028, U+0085...)."""
    # (the payload itself, in Airflow's "Returned value was: {...}" / "Arguments: {...}", shows as Python's repr:
    # escaped, one line)
    return [piece for piece in text.splitlines() if "HOSTILE-" in piece and "say_after" not in piece]


@pytest.mark.usefixtures("airflow_db")
@pytest.mark.parametrize("deferrable", [True, False], ids=["trigger", "worker"])
def test_hostile_log_lines_reach_the_task_log_escaped(
    gated_kernel: Any, deferrable: bool, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    gate = gated_kernel.gate()
    with make_dag("hostile_logs") as dag:

        @task
        def lines() -> dict[str, Any]:
            # through XCom, not a literal: Jinja would turn a literal's \r into \n before Kernel saw it
            return gate.payload(say_after=[raw for raw, _ in LINES], result="ok")

        KernelInvokeOperator(
            task_id="invoke",
            app_name="gate",
            action_name="wait",
            payload=lines(),
            deferrable=deferrable,
            poll_interval=0.1,
        )
    # the lines are printed once the wait follows the run, so the stream carries them
    joined = gate.open_when(seen(gated_kernel, EVENTS), "the wait to follow the invocation's events")
    assert states(run_dag(dag)) == {"lines": "success", "invoke": "success"}
    joined()
    invocation_id = gated_kernel.invocations()[0]["id"]
    logs = all_logs(caplog, capfd)
    for _, shown in LINES:
        assert shown in logs
    pieces = _kernel_pieces(logs)
    assert len(pieces) >= len(LINES)
    for piece in pieces:
        # each hostile line is one [kernel <id>] line: nothing it printed started a line of its own
        assert f"[kernel {invocation_id}] HOSTILE-" in piece, piece[:200]
        assert not RAW.search(piece.split(f"[kernel {invocation_id}] ", 1)[1]), piece[:200]
        assert len(piece) < LINE_LIMIT + 500
    assert "… [truncated" in next(p for p in pieces if "HOSTILE-7" in p)
    assert not any(piece.startswith("Marking task as SUCCESS") for piece in logs.splitlines())


@pytest.mark.usefixtures("airflow_db")
def test_hostile_texts_in_exceptions_are_escaped(
    gated_kernel: Any, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    forged = "HOSTILE-E \x1b[2J\rMarking task as SUCCESS\u2028INFO - done"
    gate = gated_kernel.gate()
    gate.open()
    gated_kernel.set_faults(
        [{"route": "POST /invocations", "sequence": [None, {"status": 400, "code": "bad\x1b[0m", "message": forged}]}]
    )
    with make_dag("hostile_errors") as dag:

        @task
        def failing() -> dict[str, Any]:
            return gate.payload(fail=forged)

        fails = KernelInvokeOperator(task_id="fails", app_name="gate", action_name="wait", payload=failing())
        refused = KernelInvokeOperator(
            task_id="refused", app_name="gate", action_name="wait", payload=gate.payload(), trigger_rule="all_done"
        )
        fails >> refused
    assert states(run_dag(dag)) == {"failing": "success", "fails": "failed", "refused": "failed"}
    failures = "\n".join(TASK_FAILURES) or all_logs(caplog, capfd)
    assert "HOSTILE-E \\x1b[2J\\rMarking task as SUCCESS\\u2028INFO - done" in failures
    assert "bad\\x1b[0m" in failures
    for piece in _kernel_pieces(failures):
        assert not RAW.search(piece), piece[:200]
