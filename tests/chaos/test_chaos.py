"""A reduced chaos run (``tests/chaos/harness.py``) in the test suite: under injected faults nothing is lost, nothing
runs twice, and every final state the client reports is the emulator's.

The full run is ``python -m tests.chaos.harness`` (1,000 invocations); this one drives 240 through the same code.
"""

from __future__ import annotations

import pytest

from tests.standins import DictStateStore, FakeTI

pytestmark = pytest.mark.chaos


def test_reduced_chaos_run_has_no_duplicates_no_losses_no_wrong_states() -> None:
    from tests.chaos.harness import format_table, run

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
    assert (
        reported
        == rows["ambiguous creates: reconciled by listing"]
        - rows.get("warning: pending create reconciled on retry", 0)
        + rows["ambiguous creates: failed loudly (then retried)"]
    )
    assert rows["final states (succeeded/failed)"].count("/") == 1


@pytest.mark.parametrize(("action", "payload"), [("fail", {"message": "planned"}), ("echo", {"k": "v"})])
def test_submit_retry_after_a_failed_reconcile_returns_the_same_id(
    kernel_conn_env: object, action: str, payload: dict[str, str]
) -> None:
    """The two bugs the chaos run found, pinned down: try 1's create is ambiguous and its reconcile cannot list
    (a 500 that must not be retried), so try 1 fails loudly; the invocation then finishes. Try 2 must find it and
    return its id - not invoke a second time because it failed, nor return its output because it succeeded."""
    from kernel_provider.operators.kernel import KernelInvokeOperator

    emulator = kernel_conn_env
    emulator.set_faults(
        [  # type: ignore[attr-defined]
            {"route": "POST /invocations", "sequence": [{"status": 503, "after": True}]},
            {"route": "GET /invocations", "sequence": [{"status": 500, "should_retry": False}]},
        ]
    )
    context = {"ti": FakeTI("submit"), "task_state_store": DictStateStore()}

    def submit() -> object:
        return KernelInvokeOperator(
            task_id="submit",
            app_name="demo",
            action_name=action,
            payload=payload,
            wait_for_completion=False,
            reconcile_token=True,
        ).execute(context)

    with pytest.raises(Exception, match="500"):
        submit()
    (created,) = emulator.invocations()  # type: ignore[attr-defined]
    emulator.wait_for(created["id"])  # type: ignore[attr-defined]
    assert submit() == created["id"]
    assert emulator.created_count() == 1  # type: ignore[attr-defined]
