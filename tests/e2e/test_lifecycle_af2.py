"""The lifecycle rows where Airflow 2.11 differs, on a real Airflow 2.11 (scheduler + triggerer, SQLite,
SequentialExecutor) with the Kernel emulator: the retry-safety record is an Airflow Variable, and a deferred
task's trigger gets no ``on_kill`` (its ``cleanup()`` must notice the task instance is no longer deferred).

Run under ``.venv-af2``:
``AIRFLOW_HOME=$PWD/.airflow/af2 .venv-af2/bin/python -m pytest -q -m e2e_af2 tests/e2e/test_lifecycle_af2.py -x``
(skipped on any other Airflow version). The harness is ``airflow2_e2e`` (``tests/harness/airflow2.py``).
"""

from __future__ import annotations

from importlib.metadata import version

import pytest

from tests.e2e.lifecycle_scenarios import (
    VARIABLE_PREFIX,
    clear_deferred_task,
    clear_finished_submit_only_run,
    clear_task_waiting_on_a_worker,
    execution_timeout_while_deferred,
    mark_deferred_task,
)
from tests.harness.airflow2 import Airflow2E2E
from tests.harness.error_audit import RUN_FAILED, RUNNING_TASK_CLEARED_AF2, TIMED_OUT_ON_RESUME_AF2, task_failed
from tests.harness.processes import AIRFLOW_VERSION

pytestmark = [
    pytest.mark.e2e_af2,
    pytest.mark.skipif(
        AIRFLOW_VERSION[0] != 2 or AIRFLOW_VERSION < (2, 11),
        reason=(f"needs Airflow 2.11 (run with .venv-af2); installed {version('apache-airflow')}"),
    ),
]


@pytest.mark.timeout(360)
def test_af2_clear_finished_submit_only_run_invokes_afresh_and_leaves_no_variable(airflow2_e2e: Airflow2E2E) -> None:
    """Row 1 on 2.11: the Variable is removed at hand-off (wait_for_completion=False), so the clear starts a
    fresh invocation and the sensor reports it; no ``kernel_provider.invocation.*`` Variable remains."""
    clear_finished_submit_only_run(airflow2_e2e)
    left = airflow2_e2e.variables(VARIABLE_PREFIX)
    assert left == [], f"retry-safety Variables left behind: {left}"


@pytest.mark.timeout(420)
def test_af2_clear_deferred_task_cancels_its_run_and_invokes_once_more(airflow2_e2e: Airflow2E2E) -> None:
    """Row 3 on 2.11: no trigger on_kill; the trigger's cleanup() sees the task instance is no longer deferred
    and cancels (or the new try does); the new try creates exactly one invocation."""
    clear_deferred_task(airflow2_e2e)
    left = airflow2_e2e.variables(f"{VARIABLE_PREFIX}lc_clear_deferred.")
    assert left == [], f"retry-safety Variables left behind: {left}"


@pytest.mark.timeout(300)
@pytest.mark.expect_error_lines(RUN_FAILED)  # marking the task failed fails its run
@pytest.mark.parametrize("state", ["success", "failed"])
def test_af2_mark_deferred_task_cancels_its_run_and_invokes_nothing(airflow2_e2e: Airflow2E2E, state: str) -> None:
    """Row 4 on 2.11: marking a deferred task success/failed reaches no trigger on_kill; the trigger's cleanup()
    must cancel the invocation (browsers deleted), and nothing is invoked again."""
    mark_deferred_task(airflow2_e2e, state)
    left = airflow2_e2e.variables(f"{VARIABLE_PREFIX}lc_mark.")
    assert left == [], f"retry-safety Variables left behind after the cancel: {left}"


@pytest.mark.timeout(300)
@pytest.mark.expect_error_lines(task_failed(), RUN_FAILED, TIMED_OUT_ON_RESUME_AF2)
def test_af2_execution_timeout_while_deferred_is_ended_by_the_trigger(airflow2_e2e: Airflow2E2E) -> None:
    """Row 5 on 2.11: 2.11 sets trigger_timeout = start + execution_timeout and its scheduler sweep would fail
    the task with TaskDeferralTimeout (execute_complete never runs). The provider's trigger deadline comes first:
    the trigger ends the wait and the invocation is cancelled; the sweep never fires."""
    facts = execution_timeout_while_deferred(airflow2_e2e)
    text = "\n".join(facts["logs"].values())
    for sweep in ("TaskDeferralTimeout", "Trigger/execution timeout"):
        assert sweep not in text, f"the scheduler's trigger_timeout sweep ended the wait ({sweep!r} in the log)"
    left = airflow2_e2e.variables(f"{VARIABLE_PREFIX}lc_exec_timeout.")
    assert left == [], f"retry-safety Variables left behind: {left}"


@pytest.mark.timeout(360)
@pytest.mark.parametrize("cancel_on_kill", [True, False])
@pytest.mark.expect_error_lines(*RUNNING_TASK_CLEARED_AF2, task_failed())  # SIGTERM ends the cleared try
def test_af2_clear_of_a_task_waiting_on_a_worker_follows_cancel_on_kill(
    airflow2_e2e: Airflow2E2E, cancel_on_kill: bool
) -> None:
    """The same clear on 2.11: never two runs at once; with ``cancel_on_kill=True`` the new try starts afresh."""
    outcome = clear_task_waiting_on_a_worker(airflow2_e2e, cancel_on_kill)
    print(f"\n[e2e] cancel_on_kill={cancel_on_kill}: {outcome}")
