"""``KernelLandFilesOperator`` on real Airflow (``dag.test()``) against the emulator, the browser a real Chromium:
a live browser's files land whole with their checksums; an invocation that holds no browser any more fails saying
why; bad arguments fail at DAG parse or before any request."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from kernel_provider.client.errors import KernelInputError
from kernel_provider.hooks.kernel_browser import KernelBrowserHook
from kernel_provider.operators.land_files import KernelLandFilesOperator
from tests.airflow_helpers import all_logs, make_dag, run_dag, states, xcom
from tests.kernel_browsers import needs_chromium

pytestmark = [*needs_chromium, pytest.mark.usefixtures("airflow_db")]


def test_a_live_browsers_files_land(kernel_conn_env: Any, tmp_path: Path) -> None:
    data = b"sku,price\nA,1\n"
    with KernelBrowserHook().browser(headless=True, timeout_seconds=60) as browser:
        root = kernel_conn_env.store.browser_sessions.live[browser.session_id].process.fs_root
        Path(root, "tmp/downloads/p.csv").write_bytes(data)
        Path(root, "tmp/downloads/skip.txt").write_bytes(b"no")
        with make_dag("land_session") as dag:
            KernelLandFilesOperator(
                task_id="land",
                session_id="{{ params.sid }}",
                destination=f"file://{tmp_path}/{{{{ ds }}}}",
                pattern="*.csv",
                params={"sid": browser.session_id},
            )
        run = run_dag(dag)
        assert states(run) == {"land": "success"}
    (landed,) = xcom(run, "land")
    day = run.logical_date.strftime("%Y-%m-%d")
    assert landed["path"] == f"file://{tmp_path}/{day}/p.csv" and landed["session_id"] == browser.session_id
    assert landed["sha256"] == hashlib.sha256(data).hexdigest() and landed["size"] == len(data)
    assert sorted(p.name for p in (tmp_path / day).iterdir()) == ["p.csv"]


def test_an_invocation_without_browsers_fails_saying_why(
    kernel_conn_env: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture, capfd: Any
) -> None:
    from kernel_provider.hooks.kernel import KernelHook

    done = KernelHook().invoke("demo", "echo", payload={"n": 1}, invoke_async=False)
    with make_dag("land_invocation") as dag:
        KernelLandFilesOperator(task_id="land", invocation_id=done.id, destination=str(tmp_path))
    run = run_dag(dag)
    assert states(run) == {"land": "failed"}
    assert "holds no browser any more" in all_logs(caplog, capfd)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({}, "session_id / invocation_id"),
        ({"session_id": "a", "invocation_id": "b"}, "session_id / invocation_id"),
        ({"session_id": "a", "max_bytes": 0}, "max_bytes"),
    ],
)
def test_bad_arguments_fail_at_parse(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(KernelInputError, match=field):
        KernelLandFilesOperator(task_id="x", destination="/tmp/x", **kwargs)
