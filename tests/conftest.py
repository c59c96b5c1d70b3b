"""Test set-up shared by every test: an isolated AIRFLOW_HOME with a migrated SQLite metadata DB.

The environment is prepared here, before anything imports airflow, so tests never touch a user's Airflow. Under
pytest-xdist each worker gets a home of its own below the leg's (``<AIRFLOW_HOME>/gw0`` ...): SQLite, task logs
and ``airflow.cfg`` are never shared between processes that run tests at the same time. The DB is migrated once
per leg (under a lock) and copied into each worker's home.

Tests that never need Airflow are listed in ``AIRFLOW_FREE`` and marked ``airflow_free``: ``make test`` runs them
once per dependency set with Airflow made unimportable (``tests/block_airflow.py``), which also proves the list
right, and the Airflow legs deselect them.
"""

from __future__ import annotations

import fcntl
import functools
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
_major = "unknown"
try:
    from importlib.metadata import version as _dist_version

    _major = "af" + _dist_version("apache-airflow").split(".")[0]
except Exception:
    pass
os.environ.setdefault("AIRFLOW_HOME", str(ROOT / ".airflow" / _major))
LEG_HOME = Path(os.environ["AIRFLOW_HOME"])
_worker = os.environ.get("PYTEST_XDIST_WORKER")
if _worker:
    os.environ["AIRFLOW_HOME"] = str(LEG_HOME / _worker)
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(ROOT / "example_dags"))
os.environ.setdefault("AIRFLOW__CORE__TEST_CONNECTION", "Enabled")
os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "INFO")
Path(os.environ["AIRFLOW_HOME"]).mkdir(parents=True, exist_ok=True)

#: Test modules and folders (relative to ``tests/``) that never import Airflow: the client core, the emulator,
#: the audits of layout and dependencies. Run with Airflow blocked, so an entry that needs it fails loudly.
AIRFLOW_FREE = (
    "client/",
    "testing/",
    "security/test_emulator_access.py",
    "security/test_emulator_bind.py",
    "security/test_emulator_sandbox.py",
    "security/test_live_view_credentials.py",
    "test_dependencies.py",
    "test_layout.py",
    "e2e/test_error_audit.py",
    "e2e/test_harness_env.py",
)


def _airflow_free(where: str) -> bool:
    """Whether ``where`` (a path relative to ``tests/``) is listed in, or inside a folder listed in, AIRFLOW_FREE."""
    return any(where == entry or (entry.endswith("/") and where.startswith(entry)) for entry in AIRFLOW_FREE)


def _under_tests(path: Path) -> str | None:
    tests = ROOT / "tests"
    return path.relative_to(tests).as_posix() if tests in path.parents else None


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """With Airflow blocked, only the AIRFLOW_FREE modules are collected (the others import Airflow)."""
    if not config.pluginmanager.has_plugin("tests.block_airflow"):
        return None
    where = _under_tests(collection_path)
    if where is None:
        return None
    if collection_path.suffix != ".py":  # a folder: walked when listed, inside a listed one, or holding an entry
        holds_entry = any(entry.startswith(where + "/") for entry in AIRFLOW_FREE)
        return None if _airflow_free(where + "/") or holds_entry else True
    return None if _airflow_free(where) else True


#: The slowest files (most of a leg's wall time), run first, so that under xdist none of them starts last and
#: leaves the other workers idle at the end. Measured with ``--durations`` on the legs of ``make test``.
SLOWEST_FIRST = (
    "operators/test_fan_out.py",
    "e2e/",
    "cluster/",
    "operators/test_kernel.py",
    "browser/",
    "test_example_dags.py",
    "test_browser_leak_audit.py",
    "decorators/",
    "test_live_view.py",
    "triggers/test_kernel.py",
    "testing/test_browsers.py",
)


def _slowness_rank(item: pytest.Item) -> int:
    where = _under_tests(Path(str(item.path))) or ""
    return next((rank for rank, entry in enumerate(SLOWEST_FIRST) if where.startswith(entry)), len(SLOWEST_FIRST))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Marks the ``airflow_free`` tests, and puts the slowest files first (a stable sort: the order within and
    between the other files is kept)."""
    for item in items:
        where = _under_tests(Path(str(item.path)))
        if where is not None and _airflow_free(where):
            item.add_marker(pytest.mark.airflow_free)
    items.sort(key=_slowness_rank)


#: Long files of independent ``dag.test()`` runs (no fixture wider than a test's but a cheap DagBag): their tests
#: are spread over the xdist workers one by one, so that no worker ends a leg alone on a whole file.
SPREAD_OVER_WORKERS = ("test_example_dags.py", "operators/test_kernel.py", "sensors/test_kernel.py")


def _xdist_scope(nodeid: str) -> str:
    """Which tests go to one xdist worker together: a test file's, all e2e files' (they share one Airflow
    harness per worker, ``airflow_e2e`` / ``airflow2_e2e``, so it starts once per leg), and each test alone in
    the files of :data:`SPREAD_OVER_WORKERS`."""
    path = nodeid.split("::", 1)[0]
    where = path.removeprefix("tests/")
    if where.startswith("e2e/test_") and not _airflow_free(where):
        return "tests/e2e (shared Airflow)"
    if where in SPREAD_OVER_WORKERS:
        return nodeid
    return path


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``--dist loadfile``, but with the e2e files as one unit (see ``_xdist_scope``). (xdist's ``loadgroup``
    does not group under pytest 9: it renames node ids, which pytest 9 no longer lets a plugin do.)"""
    if config.getoption("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class SharedHarnessScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _xdist_scope(nodeid)

    return SharedHarnessScheduling(config, log)


def _encodable(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """A failing test on a shared Airflow harness gets the tails of its service logs in its report. Reports hold
    only UTF-8-encodable text: the hostile-data tests make Airflow log lone surrogates, and an xdist worker cannot
    send a report holding one (the whole leg would end in an INTERNALERROR)."""
    outcome = yield
    report = outcome.get_result()
    if report.failed and call.when == "call":
        _add_service_logs(item, call, report)
    report.sections = [(title, _encodable(content)) for title, content in report.sections]
    if report.longrepr is not None:
        text = str(report.longrepr)
        if _encodable(text) != text:
            report.longrepr = _encodable(text)


#: The fixtures that start a shared Airflow harness (``tests/harness``): after each test that uses one, the
#: ERROR-line audit reads what its services logged, and a failing test's report gets their log tails.
HARNESS_FIXTURES = ("airflow_e2e", "airflow2_e2e", "airflow_cluster")


def _add_service_logs(item: pytest.Item, call: pytest.CallInfo[None], report: pytest.TestReport) -> None:
    funcargs = getattr(item, "funcargs", {})
    harness = next((funcargs[name] for name in HARNESS_FIXTURES if name in funcargs), None)
    if harness is None:
        return
    item.__dict__["e2e_call_failed"] = True  # the ERROR-line audit does not fail it twice
    if call.excinfo is not None and "----- " in str(call.excinfo.value):  # a wait_until timeout holds them already
        return
    try:
        report.sections.append(("Airflow service logs (tails)", harness.diagnostics()))
    except Exception as exc:
        report.sections.append(("Airflow service logs", f"could not collect: {exc}"))


@pytest.fixture
def expect_error_lines(request: pytest.FixtureRequest) -> Any:
    """``expect_error_lines(r"regex", ...)``: ERROR lines this test provokes on purpose (the audit allows them)."""
    declared: list[str] = request.node.__dict__.setdefault("declared_error_lines", [])
    return lambda *patterns: declared.extend(patterns)


@pytest.fixture(autouse=True)
def _error_line_audit(request: pytest.FixtureRequest) -> Iterator[None]:
    """The ERROR-line audit (``tests/harness/error_audit.py``) after every test on a shared Airflow harness."""
    yield
    for name in HARNESS_FIXTURES:
        if name in request.fixturenames:
            from tests.harness.error_audit import audit_error_lines

            audit_error_lines(request.node, request.getfixturevalue(name).audit)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """How much the ERROR-line audit read, per harness started in this session."""
    audit = sys.modules.get("tests.harness.error_audit")
    for each in getattr(audit, "AUDITS", []):
        terminalreporter.write_line(f"[ERROR-line audit] {each.summary()}")


@pytest.fixture(autouse=True)
def _task_failures(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test's task exceptions, for ``airflow_helpers.all_logs`` (see ``record_task_failures``)."""
    if "airflow" in sys.modules:  # tests that never load Airflow (client core, emulator) need nothing here
        from tests.airflow_helpers import record_task_failures

        record_task_failures(monkeypatch)


def _migrate(home: Path) -> None:
    env = {**os.environ, "AIRFLOW_HOME": str(home)}
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True, env=env, stdout=subprocess.DEVNULL)
    from importlib.metadata import version

    if not version("apache-airflow").startswith("2."):
        # DAGs written to the DB by tests belong to the "dags-folder" bundle, whose row a fresh DB lacks
        # until a DAG processor has run.
        sync = "from airflow.dag_processing.bundles.manager import DagBundlesManager as M; M().sync_bundles_to_db()"
        subprocess.run([sys.executable, "-c", sync], check=True, env=env, stdout=subprocess.DEVNULL)


def _one_execution_api_per_process() -> None:
    """Airflow 3.0-3.2's ``dag.test()`` builds a new in-process execution API for each task it runs, each with an
    event-loop thread (a2wsgi's) that is never stopped: a worker's ``dag.test()`` runs pile up hundreds of them,
    and their wake-ups cost more CPU than the tests (the 3.1 unit leg took 4.5 times the CPU of the same tests on
    3.3). Airflow 3.3 builds one per process (``functools.lru_cache`` on ``supervisor.in_process_api_server``);
    the tests do the same on the older 3.x."""
    try:
        from airflow.sdk.execution_time import supervisor
    except ImportError:  # Airflow 2: dag.test() runs tasks without an execution API
        return
    build = getattr(supervisor, "in_process_api_server", None)
    if build is not None and not hasattr(build, "cache_info"):
        supervisor.in_process_api_server = functools.lru_cache(maxsize=1)(build)


def _no_request_bodies_in_dag_test_logs() -> None:
    """Airflow 3.0's ``dag.test()`` logs every request a task sends its in-process supervisor at DEBUG, the body
    included (the values a task asks to be masked, XCom values), whatever ``[logging] logging_level`` says: its
    in-process comms and supervisor log through loggers no level filters. The secret-leak checks would find
    Airflow's own lines. A real 3.0 worker filters them at the configured level (INFO here), and 3.1 no longer
    writes the bodies; so on 3.0 only, those loggers get the same INFO filter, and so does the task logger of an
    in-process run, on which 3.0's task runner logs each extra link's value at DEBUG."""
    from airflow import __version__

    if not __version__.startswith("3.0."):
        return
    from airflow.sdk.execution_time import supervisor

    if getattr(supervisor, "_kernel_tests_quiet", False):
        return
    import logging

    import structlog

    config = structlog.get_config()
    info_and_up = structlog.wrap_logger(
        config["logger_factory"](),
        processors=config["processors"],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
    )
    supervisor.log = info_and_up.bind(logger_name="supervisor")  # logs each request of the in-process comms

    class _InfoAndUpStructlog:
        """The ``structlog`` the supervisor module sees: its in-process task runs get the task logger through
        ``structlog.get_logger(logger_name="task")``, and 3.0's task runner logs each extra link's value on it at
        DEBUG ("Setting xcom for operator extra link")."""

        def __getattr__(self, name: str) -> Any:
            return getattr(structlog, name)

        @staticmethod
        def get_logger(*args: Any, **initial_values: Any) -> Any:
            return info_and_up.bind(**initial_values)

    supervisor.structlog = _InfoAndUpStructlog()
    send = supervisor.InProcessSupervisorComms.send

    def quiet_send(self: Any, msg: Any) -> Any:
        self.log = supervisor.log
        return send(self, msg)

    supervisor.InProcessSupervisorComms.send = quiet_send
    supervisor._kernel_tests_quiet = True


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """A migrated metadata DB (needed by dag.test()): migrated once per leg and Airflow version, then copied into
    each xdist worker's home (a migration costs 7-15 s; a copy, milliseconds)."""
    _one_execution_api_per_process()
    _no_request_bodies_in_dag_test_logs()
    home = Path(os.environ["AIRFLOW_HOME"])
    from airflow import __version__ as airflow_version

    stamp = f".migrated-{airflow_version}"
    if (home / stamp).exists():
        return home
    if home == LEG_HOME:
        _migrate(home)
    else:
        template = LEG_HOME / "template"
        template.mkdir(parents=True, exist_ok=True)
        with open(LEG_HOME / ".template.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one worker migrates; the others wait, then copy
            if not (template / stamp).exists():
                _migrate(template)
                (template / stamp).touch()
        shutil.copyfile(template / "airflow.db", home / "airflow.db")
    (home / stamp).touch()
    return home


@pytest.fixture
def no_ca_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The machine's own CA variables (many images set them) must not decide what a TLS-trust test sees."""
    from kernel_provider.client.settings import CA_BUNDLE_ENV

    for name in CA_BUNDLE_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def site_url() -> Iterator[str]:
    """``example_dags/site/`` served on 127.0.0.1 for the length of a test (``tests.kernel_browsers.serve_site``)."""
    from tests.kernel_browsers import serve_site

    with serve_site() as url:
        yield url


@pytest.fixture
def gated_kernel(kernel_emulator_factory: Any, monkeypatch: Any, tmp_path: Any) -> Any:
    """An emulator that also serves the ``gate`` app (tests/apps/gate_app.py), set as ``kernel_default``.

    ``.gate(name)`` makes a closed :class:`tests.helpers.Gate`.
    """
    from kernel_provider.testing import airflow_connection
    from tests.helpers import GATED_APP, Gate

    emulator = kernel_emulator_factory(apps=[GATED_APP])
    monkeypatch.setenv(
        "AIRFLOW_CONN_KERNEL_DEFAULT",
        airflow_connection(emulator.url, emulator.token),
    )
    emulator.gate = lambda name="gate": Gate(tmp_path, name)
    return emulator
