"""``Airflow2E2E``: the e2e harness on a real Airflow 2.11 (run under ``.venv-af2``): its scheduler, which parses the
DAGs itself and runs tasks with the SequentialExecutor (2.11 refuses SQLite with any other executor), and its
triggerer. With no REST API v2 there, runs are triggered, read, cleared and marked through Airflow's own ORM in
one long-lived helper subprocess (:class:`DbAgent`), as the 2.11 UI/REST API would do it.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

from tests.harness.base import LIFECYCLE_DAGS, AirflowHarness
from tests.harness.processes import AIRFLOW_VERSION, tail

SERVICES_AF2 = ("scheduler", "triggerer")
SKIP_REASON_AF2 = (
    f"the Airflow 2.11 e2e tests need Airflow 2.11 (run them with .venv-af2); "
    f"installed: {'.'.join(map(str, AIRFLOW_VERSION))}"
)

#: The Airflow 2.11 helper: one process with Airflow's ORM loaded, answering JSON commands on stdin, so a test
#: needs no ~5 s ``airflow`` CLI start-up per look at the DB. Every command does what the 2.11 UI/REST API does.
_DB_AGENT = textwrap.dedent("""
    import json, sys, traceback
    from datetime import datetime, timezone as dt_timezone

    from sqlalchemy import select, update

    from airflow.api.common.trigger_dag import trigger_dag
    from airflow.jobs.job import Job
    from airflow.models import DagModel, DagRun, TaskInstance as TI, Variable, XCom
    from airflow.models.dagbag import DagBag
    from airflow.models.serialized_dag import SerializedDagModel
    from airflow.models.taskinstance import clear_task_instances
    from airflow.models.trigger import Trigger
    from airflow.utils import timezone
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState, TaskInstanceState

    def dag_of(dag_id, session):
        dag = DagBag(read_dags_from_db=True).get_dag(dag_id, session=session)
        if dag is None:
            raise LookupError(f"no serialized DAG {dag_id}")
        return dag

    def op_ping(session):
        return True

    def op_dag_ready(session, dag_id):
        return bool(session.get(DagModel, dag_id)) and SerializedDagModel.has_dag(dag_id, session=session)

    def op_unpause(session, dag_id):
        session.execute(update(DagModel).where(DagModel.dag_id == dag_id).values(is_paused=False))
        return True

    def op_trigger(session, dag_id, conf):
        now = timezone.utcnow()
        run = trigger_dag(dag_id=dag_id, run_id=f"manual__{now.isoformat()}", conf=conf, execution_date=now,
                          replace_microseconds=False, session=session)
        return run.run_id

    def op_run_state(session, dag_id, run_id):
        return str(session.scalar(select(DagRun.state).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id)))

    def op_tis(session, dag_id, run_id):
        rows = session.scalars(select(TI).where(TI.dag_id == dag_id, TI.run_id == run_id)).all()
        return [{"task_id": ti.task_id, "map_index": ti.map_index, "state": ti.state and str(ti.state),
                 "try_number": ti.try_number, "max_tries": ti.max_tries, "trigger_id": ti.trigger_id,
                 "next_method": ti.next_method, "pid": ti.pid, "start_date": ti.start_date,
                 "end_date": ti.end_date} for ti in rows]

    def op_xcom(session, dag_id, run_id, task_id, key, map_index):
        return XCom.get_one(key=key, dag_id=dag_id, task_id=task_id, run_id=run_id, map_index=map_index,
                            session=session)

    def op_clear(session, dag_id, run_id, task_ids):
        query = select(TI).where(TI.dag_id == dag_id, TI.run_id == run_id)
        if task_ids:
            query = query.where(TI.task_id.in_(task_ids))
        tis = session.scalars(query).all()
        clear_task_instances(tis, session, dag=dag_of(dag_id, session), dag_run_state=DagRunState.QUEUED)
        return len(tis)

    def op_mark(session, dag_id, run_id, task_id, state):
        changed = dag_of(dag_id, session).set_task_instance_state(
            task_id=task_id, run_id=run_id, state=TaskInstanceState(state), commit=True, session=session)
        return len(changed)

    def op_variables(session, prefix):
        return sorted(session.scalars(select(Variable.key).where(Variable.key.like(prefix + "%"))).all())

    def op_jobs(session):
        out = {}
        for job in session.scalars(select(Job).order_by(Job.id)).all():
            age = (timezone.utcnow() - job.latest_heartbeat).total_seconds() if job.latest_heartbeat else None
            out[job.job_type] = {"id": job.id, "state": job.state and str(job.state), "age": age}
        return out

    def op_triggers(session, dag_id, run_id):
        rows = session.execute(
            select(TI.task_id, TI.map_index, TI.state, Trigger).join(Trigger, TI.trigger_id == Trigger.id)
            .where(TI.dag_id == dag_id, TI.run_id == run_id)).all()
        return [{"task_id": t, "map_index": m, "state": str(st), "trigger_id": tr.id,
                 "triggerer_id": tr.triggerer_id, "classpath": tr.classpath, "kwargs": dict(tr.kwargs)}
                for t, m, st, tr in rows]

    for line in sys.stdin:
        try:
            command = json.loads(line)
            with create_session() as session:
                result = globals()["op_" + command["op"]](session, **command.get("args", {}))
            answer = {"ok": result}
        except Exception:
            answer = {"error": traceback.format_exc()}
        sys.stdout.write("E2E-JSON " + json.dumps(answer, default=str) + "\\n")
        sys.stdout.flush()
""")


class DbAgent:
    """Runs ``_DB_AGENT`` with the harness's environment; ``call(op, **args)`` returns its answer."""

    def __init__(self, env: dict[str, str], cwd: Path, log: Path) -> None:
        import queue

        self.log = log
        self._log_file = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-u", "-c", _DB_AGENT],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log_file,
            text=True,
            env=env,
            cwd=str(cwd),
            start_new_session=True,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def call(self, op: str, timeout: float = 120.0, **args: Any) -> Any:
        """Send one command (``op_<op>`` of the helper script); returns its answer, or fails with the helper's error."""
        import queue

        with self._lock:
            assert self.proc.stdin is not None
            self.proc.stdin.write(json.dumps({"op": op, "args": args}) + "\n")
            self.proc.stdin.flush()
            deadline = time.monotonic() + timeout
            while True:
                try:
                    line = self._lines.get(timeout=max(0.1, deadline - time.monotonic()))
                except queue.Empty:
                    raise AssertionError(
                        f"the DB helper did not answer {op} within {timeout:.0f}s:\n{tail(self.log)}"
                    ) from None
                if line is None:
                    raise AssertionError(f"the DB helper exited ({self.proc.poll()}):\n{tail(self.log)}")
                if line.startswith("E2E-JSON "):
                    answer = json.loads(line[len("E2E-JSON ") :])
                    if "error" in answer:
                        raise AssertionError(f"DB helper {op}({args}) failed:\n{answer['error']}")
                    return answer["ok"]

    def stop(self) -> None:
        """Close the helper's input (it exits at end of input); kill it if it does not."""
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
            self.proc.wait(10)
        except Exception:
            self.proc.kill()
        self._log_file.close()


class Airflow2E2E(AirflowHarness):
    """The same harness on Airflow 2.11: scheduler (parsing DAGs itself, SequentialExecutor) and triggerer.

    Runs are triggered, read, cleared and marked through :class:`DbAgent` (Airflow's ORM, as the 2.11 UI does),
    never through a REST API. Only the lifecycle DAGs are deployed (the others use ``airflow.sdk``).
    """

    def __init__(self, base: Path) -> None:
        super().__init__(base)
        self.agent: DbAgent | None = None

    service_names = SERVICES_AF2
    ready_what = "the scheduler and triggerer to heartbeat"

    def write_dags(self) -> None:
        """Only the lifecycle DAGs: the others use ``airflow.sdk``, which 2.11 does not have."""
        self.deploy([LIFECYCLE_DAGS])

    def after_start(self) -> None:
        self.start_agent()

    def build_env(self) -> None:
        """Airflow 2.11 on SQLite with the SequentialExecutor; the scheduler parses the DAGs itself."""
        env = self._common_env()
        env.update(
            {
                # 2.11 refuses SQLite with the LocalExecutor ("cannot use SQLite with the LocalExecutor").
                "AIRFLOW__CORE__EXECUTOR": "SequentialExecutor",
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.home / 'airflow.db'}",
                "AIRFLOW__WEBSERVER__SECRET_KEY": secrets.token_urlsafe(24),
                "AIRFLOW__SCHEDULER__MIN_FILE_PROCESS_INTERVAL": "120",
                "AIRFLOW__SCHEDULER__PARSING_PROCESSES": "1",
            }
        )
        self.env = env

    def start_agent(self) -> None:
        """Start the DB helper and wait until it has Airflow's ORM loaded."""
        self.agent = DbAgent(self.env, self.base, self.logs / "db-agent.log")
        self.agent.call("ping", timeout=180)

    def _agent(self) -> DbAgent:
        assert self.agent is not None
        return self.agent

    def stop_all(self, grace: float = 10.0) -> None:
        if self.agent is not None:
            self.agent.stop()
        super().stop_all(grace)

    def diagnostics(self, lines: int = 40) -> str:
        text = super().diagnostics(lines)
        if self.agent is not None:
            text += f"\n----- DB helper stderr -----\n{tail(self.agent.log, lines)}"
        return text

    # --- the harness API (AirflowHarness), through the DB helper ----------------------------------------

    def healthy(self) -> bool:
        jobs = self._agent().call("jobs")
        return all(
            (job := jobs.get(kind)) and job["state"] == "running" and (job["age"] or 99) < 20
            for kind in ("SchedulerJob", "TriggererJob")
        )

    def wait_for_dag(self, dag_id: str, timeout: float = 120) -> None:
        self.wait_until(
            f"DAG {dag_id} to be parsed", lambda: self._agent().call("dag_ready", dag_id=dag_id), timeout, interval=1.0
        )
        self._agent().call("unpause", dag_id=dag_id)

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None) -> str:
        return str(self._agent().call("trigger", dag_id=dag_id, conf=conf or {}))

    def run_state(self, dag_id: str, run_id: str) -> str:
        return str(self._agent().call("run_state", dag_id=dag_id, run_id=run_id))

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        return list(self._agent().call("tis", dag_id=dag_id, run_id=run_id))

    def ti(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> dict[str, Any]:
        found = [
            t for t in self.task_instances(dag_id, run_id) if t["task_id"] == task_id and t["map_index"] == map_index
        ]
        assert found, f"no task instance {dag_id}.{task_id}[{map_index}] in {run_id}"
        return found[0]

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value", map_index: int = -1) -> Any:
        return self._agent().call("xcom", dag_id=dag_id, run_id=run_id, task_id=task_id, key=key, map_index=map_index)

    def clear_run(self, dag_id: str, run_id: str) -> None:
        assert self._agent().call("clear", dag_id=dag_id, run_id=run_id, task_ids=None) > 0

    def clear_tasks(self, dag_id: str, run_id: str, task_ids: list[str]) -> None:
        assert self._agent().call("clear", dag_id=dag_id, run_id=run_id, task_ids=task_ids) > 0

    def mark(self, dag_id: str, run_id: str, task_id: str, state: str) -> None:
        assert self._agent().call("mark", dag_id=dag_id, run_id=run_id, task_id=task_id, state=state) > 0

    def variables(self, prefix: str) -> list[str]:
        return list(self._agent().call("variables", prefix=prefix))

    def triggers(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        return list(self._agent().call("triggers", dag_id=dag_id, run_id=run_id))
