"""Run one ``@task.kernel_browser`` task with ``dag.test()`` in a process of its own, for the leak audit
(``tests/test_browser_leak_audit.py``), which kills that process.

Usage: ``python tests/kernel_browser_runner.py READY_FILE TIMEOUT_SECONDS``. The task gets a Kernel browser with a
connected page (from the ``kernel_default`` connection in the environment), writes the browser's session id to
READY_FILE, then holds the browser for ten minutes.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.airflow_helpers import make_dag, run_dag, task


def main(ready_file: str, timeout_seconds: int) -> None:
    with make_dag("leak_audit") as dag:

        @task.kernel_browser(headless=True, timeout_seconds=timeout_seconds)
        def hold(page: Any, kernel_browser: Any) -> None:
            page.set_content("<p>held</p>")
            Path(ready_file).write_text(kernel_browser.session_id)
            time.sleep(600)

        hold()

    run_dag(dag)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
