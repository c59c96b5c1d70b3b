"""A reduced chaos run (``bench/chaos.py``) in the test suite: under injected faults nothing is lost, nothing
runs twice, and every final state the client reports is the emulator's.

The full run is ``python -m bench.chaos`` (1,000 invocations); this one drives 240 through the same code.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.chaos


def test_reduced_chaos_run_has_no_duplicates_no_losses_no_wrong_states() -> None:
    from bench.chaos import format_table, run

    result = run(invocations=240, seed=11, concurrency=24)
    table = format_table(result.rows)
    rows = dict(result.rows)

    assert result.duplicates == 0, f"{result.details['duplicates']}\n{table}"
    assert result.lost == 0, f"{result.details['lost']}\n{table}"
    assert result.wrong == 0, f"{result.details['wrong']}\n{table}"
    assert result.unfinished == 0, table
    # The run really was chaotic, and the create rule held under it: every ambiguous create was either found
    # by listing or failed loudly (and then, on the task retry, listed again before any new POST).
    assert rows["created (emulator count)"] == 240
    assert rows["faults injected (emulator)"] >= 50
    reported = rows["ambiguous creates: reported"]
    assert reported > 0
    assert reported == rows["ambiguous creates: reconciled by listing"] - rows.get(
        "warning: pending create reconciled on retry", 0) + rows["ambiguous creates: failed loudly (then retried)"]
    assert rows["final states (succeeded/failed)"].count("/") == 1
