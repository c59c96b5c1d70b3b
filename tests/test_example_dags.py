"""The example DAGs: they parse cleanly without touching the network, stay independent of the emulator, and
each one runs green (``dag.test()``) against the emulator serving the demo app, with the expected outputs."""

from __future__ import annotations

import ast
import inspect
import json
import operator
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.kernel_browsers import SITE_PRODUCTS, live_browsers, serve_site, skip_without_chromium

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_DAGS = ROOT / "example_dags"
DEMO_APP = EXAMPLE_DAGS / "demo_app" / "app.py"
DAG_FILES = sorted(EXAMPLE_DAGS.glob("example_*.py"))
DAG_IDS = sorted(path.stem for path in DAG_FILES)  # each file holds one DAG named like the file
KERNEL_TASKS = {  # task_id -> action, for every task that invokes Kernel
    "example_kernel_sync": {"lookup_product": "lookup_product"},
    "example_kernel_scheduled": {"scrape_prices": "scrape_prices"},
    "example_kernel_async_sensor": {"start_crawl": "crawl_catalog"},
    "example_kernel_chain": {"scrape_prices": "scrape_prices", "summarize": "summarize"},
    "example_kernel_fan_out": {"check_stock": "check_stock"},
    "example_kernel_browser": {},  # no app: a Kernel browser scrapes a page (run by its own test below)
    "example_kernel_files": {},  # no app: a Kernel browser downloads a CSV, landed (run by its own test below)
    "example_kernel_asset_producer": {"scrape_prices": "scrape_prices"},
    "example_kernel_asset_consumer": {},  # reads the producer's run by id (run by its own test below)
    "example_kernel_taskflow": {
        "scrape_prices": "scrape_prices",
        "summarize": "summarize",
        "check_stock": "check_stock",
    },
}


def _imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _dagbag() -> Any:
    from airflow.models import DagBag

    kwargs: dict[str, Any] = {}
    if "include_examples" in inspect.signature(DagBag).parameters:  # Airflow 2 only
        kwargs["include_examples"] = False
    return DagBag(str(EXAMPLE_DAGS), **kwargs)


# --------------------------------------------------------------------------------------------- parsing
def test_example_dag_files_exist() -> None:
    assert sorted(KERNEL_TASKS) == DAG_IDS


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.name)
def test_example_dags_do_not_import_the_emulator(path: Path) -> None:
    imported = _imported_modules(path)
    assert not [m for m in imported if m.startswith("kernel_provider.testing")], imported


def test_demo_app_uses_only_the_kernel_sdk() -> None:
    """Deployable as is with ``kernel deploy``: nothing from Airflow or this provider."""
    imported = {m.split(".")[0] for m in _imported_modules(DEMO_APP)}
    assert "kernel" in imported
    assert not imported & {"airflow", "kernel_provider"}, imported


def test_dagbag_parses_every_example_without_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(self: socket.socket, address: Any) -> None:
        raise AssertionError(f"DAG parsing opened a network connection to {address!r}")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket.socket, "connect_ex", no_network)
    dagbag = _dagbag()

    assert dagbag.import_errors == {}
    assert sorted(dagbag.dag_ids) == DAG_IDS
    assert {Path(dag.fileloc).name for dag in dagbag.dags.values()} == {p.name for p in DAG_FILES}
    parsed_files = {Path(f).name for f in dagbag.file_last_changed}
    assert parsed_files == {p.name for p in DAG_FILES}  # .airflowignore keeps demo_app/ out
    for dag_id in DAG_IDS:
        dag = dagbag.dags[dag_id]
        assert set(dag.tags) == {"kernel", "example"}
        assert dag.catchup is False
        assert dag.start_date is not None
        for task_id in KERNEL_TASKS[dag_id]:
            task = dag.get_task(task_id)
            kwargs = getattr(task, "partial_kwargs", None)  # a mapped task keeps its .partial() arguments here
            assert (kwargs["app_name"] if kwargs is not None else task.app_name) == "demo-shop"


def test_demo_app_defines_every_action_the_dags_use() -> None:
    from kernel_provider.testing.apps import load_app_file

    apps = load_app_file(DEMO_APP)
    used = {action for tasks in KERNEL_TASKS.values() for action in tasks.values()}
    assert used <= set(apps["demo-shop"])


# --------------------------------------------------------------------------------------------- runs
@pytest.fixture
def kernel_emulator(kernel_emulator_factory: Callable[..., Any]) -> Any:
    """Overrides the plugin's fixture (used by ``kernel_conn_env``): the emulator also serves the demo app."""
    return kernel_emulator_factory(apps=[DEMO_APP])


@pytest.fixture(scope="module")
def example_dagbag(airflow_db: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    # The files example lands here; its asset's URI is read when the DAG is parsed.
    with pytest.MonkeyPatch.context() as env:
        env.setenv("KERNEL_EXAMPLE_LANDING_DIR", str(tmp_path_factory.mktemp("landing")))
        yield from _example_dagbag()


def _example_dagbag() -> Iterator[Any]:
    from airflow.models.pool import Pool

    # The fan-out example runs in the "kernel" pool, as `make demo` and the DAG's docstring set it up.
    Pool.create_or_update_pool("kernel", 4, "Kernel concurrent invocations", False)
    dagbag = _dagbag()
    assert dagbag.import_errors == {}
    yield dagbag


def _return_values(dag_id: str, run_id: str) -> dict[tuple[str, int], Any]:
    """Every task's ``return_value`` XCom of one run, as ``{(task_id, map_index): value}``."""
    from airflow.utils.session import create_session
    from sqlalchemy import select

    try:  # Airflow 3: the ORM row holds the serialized value
        from airflow.models.xcom import XComModel as XCom

        decode: Callable[[Any], Any] = XCom.deserialize_value
    except ImportError:  # Airflow 2: the ORM row deserializes its value when loaded
        from airflow.models.xcom import XCom  # type: ignore[no-redef]

        decode = operator.attrgetter("value")

    with create_session() as session:
        rows = session.scalars(
            select(XCom).where(XCom.dag_id == dag_id, XCom.run_id == run_id, XCom.key == "return_value")
        ).all()
        return {(row.task_id, row.map_index): decode(row) for row in rows}


def _check_sync(out: dict[tuple[str, int], Any], ds: str, invocations: list[dict[str, Any]]) -> None:
    assert out[("lookup_product", -1)] == {"sku": "A-100", "name": "Espresso cup", "list_price": 4.5}
    assert [i["_emulator"]["async"] for i in invocations] == [False]


def _check_scheduled(out: dict[tuple[str, int], Any], ds: str, invocations: list[dict[str, Any]]) -> None:
    result = out[("scrape_prices", -1)]
    assert (result["date"], result["store"], len(result["prices"])) == (ds, "north", 6)
    assert json.loads(invocations[0]["payload"]) == {"date": ds, "store": "north"}  # RUN_DATE rendered
    assert invocations[0]["_emulator"]["async"] is True


def _check_async_sensor(out: dict[tuple[str, int], Any], ds: str, invocations: list[dict[str, Any]]) -> None:
    assert out[("start_crawl", -1)] == invocations[0]["id"]
    assert out[("wait_for_crawl", -1)] == {"category": "office", "pages": 3, "products": ["B-300", "B-400"]}
    assert out[("report", -1)] == "2 product(s) in office: B-300, B-400"


def _check_chain(out: dict[tuple[str, int], Any], ds: str, invocations: list[dict[str, Any]]) -> None:
    scraped = out[("scrape_prices", -1)]
    prices = [p["price"] for p in scraped["prices"]]
    summary = out[("summarize", -1)]
    assert summary == {
        "date": ds,
        "store": "south",
        "items": 6,
        "min": min(prices),
        "max": max(prices),
        "average": round(sum(prices) / len(prices), 2),
    }
    by_action = {i["action_name"]: i for i in invocations}
    assert json.loads(by_action["summarize"]["payload"]) == scraped  # the first output, passed as is


def _check_fan_out(out: dict[tuple[str, int], Any], ds: str, invocations: list[dict[str, Any]]) -> None:
    assert [out[("check_stock", i)]["sku"] for i in range(4)] == ["A-100", "A-200", "B-300", "B-400"]
    assert out[("stock_report", -1)] == {"checked": 4, "total_quantity": 30, "out_of_stock": ["B-300"]}


def _check_taskflow(out: dict[tuple[str, int], Any], ds: str, invocations: list[dict[str, Any]]) -> None:
    by_action = {i["action_name"]: i for i in invocations}
    assert json.loads(by_action["scrape_prices"]["payload"]) == {"store": "east", "date": ds}  # RUN_DATE rendered
    scraped, summary = out[("scrape_prices", -1)], out[("summarize", -1)]
    assert json.loads(by_action["summarize"]["payload"]) == scraped  # one action's output, the next one's payload
    assert (summary["store"], summary["date"], summary["items"]) == ("east", ds, 6)
    assert [out[("check_stock", i)]["sku"] for i in range(2)] == ["A-100", "B-300"]
    stock = ", ".join(f"{out[('check_stock', i)]['sku']}: {out[('check_stock', i)]['quantity']}" for i in range(2))
    assert out[("report", -1)] == f"east on {ds}: average {summary['average']}; stock {stock}"


def _check_asset_producer(out: dict[tuple[str, int], Any], ds: str, invocations: list[dict[str, Any]]) -> None:
    assert out[("scrape_prices", -1)]["date"] == ds
    assert json.loads(invocations[0]["payload"]) == {"date": ds, "store": "north"}


CHECKS: dict[str, Callable[[dict[tuple[str, int], Any], str, list[dict[str, Any]]], None]] = {
    "example_kernel_sync": _check_sync,
    "example_kernel_scheduled": _check_scheduled,
    "example_kernel_asset_producer": _check_asset_producer,
    "example_kernel_async_sensor": _check_async_sensor,
    "example_kernel_chain": _check_chain,
    "example_kernel_fan_out": _check_fan_out,
    "example_kernel_taskflow": _check_taskflow,
}


def _airflow_2() -> bool:
    from airflow import __version__

    return __version__.startswith("2.")


def _register_assets(*dags: Any) -> None:
    """Write ``dags`` and their assets to the metadata DB where ``dag.test()`` does not (Airflow 2.11, which then
    records no event for an unknown dataset, and 3.0, which fails a task whose outlet is not an active asset);
    3.1+'s ``dag.test()`` writes the DAGs folder itself."""
    from airflow import __version__

    if __version__.startswith(("2.", "3.0.")):
        from tests.asset_helpers import sync_dags

        sync_dags(*dags)


#: Run by their own tests: the browser and files ones need Chromium, the asset consumer its producer's event.
OWN_TESTS = ("example_kernel_browser", "example_kernel_files", "example_kernel_asset_consumer")


@pytest.mark.parametrize("logical_date", ["set", "none"])
@pytest.mark.parametrize("dag_id", [d for d in DAG_IDS if d not in OWN_TESTS])
def test_example_dag_runs_against_the_emulator(
    dag_id: str, logical_date: str, example_dagbag: Any, kernel_conn_env: Any
) -> None:
    """Each example, with a logical date and (Airflow 3) without one, as runs triggered from the UI, the CLI or the
    REST API have: the DAGs' templates must be defined on both (a bare ``{{ ds }}`` is not)."""
    dag = example_dagbag.dags[dag_id]
    if logical_date == "none" and _airflow_2():
        pytest.skip("every Airflow 2 run has a logical date")
    if dag_id == "example_kernel_asset_producer":
        _register_assets(dag)
    run = dag.test(logical_date=None) if logical_date == "none" else dag.test()

    assert run is not None
    states = {(ti.task_id, ti.map_index): str(getattr(ti.state, "value", ti.state)) for ti in run.get_task_instances()}
    assert str(getattr(run.state, "value", run.state)) == "success", states
    assert set(states.values()) == {"success"}, states

    invocations = sorted(kernel_conn_env.client.invocations(), key=lambda i: i["started_at"])
    expected_actions = sorted(KERNEL_TASKS[dag_id].values())
    if dag_id == "example_kernel_fan_out":
        expected_actions = expected_actions * 4
    if dag_id == "example_kernel_taskflow":
        expected_actions = sorted([*expected_actions, "check_stock"])  # mapped over two SKUs
    assert sorted(i["action_name"] for i in invocations) == expected_actions
    assert {(i["app_name"], i["status"]) for i in invocations} == {("demo-shop", "succeeded")}

    if logical_date == "none":
        assert run.logical_date is None
    run_date = getattr(run, "logical_date", None) or getattr(run, "run_after", None) or run.execution_date
    CHECKS[dag_id](_return_values(dag_id, run.run_id), run_date.strftime("%Y-%m-%d"), invocations)


@pytest.mark.chromium
@skip_without_chromium
def test_example_kernel_browser_scrapes_the_site_served_locally(example_dagbag: Any, kernel_conn_env: Any) -> None:
    """``example_dags/site/`` served on 127.0.0.1, its URL passed as the DAG's ``site_url`` param."""
    with serve_site() as url:
        run = example_dagbag.dags["example_kernel_browser"].test(run_conf={"site_url": url})
    out = _return_values("example_kernel_browser", run.run_id)
    assert out[("scrape_catalog", -1)] == SITE_PRODUCTS
    assert out[("cheapest", -1)] == {"sku": "B-400", "name": "Notebook", "price": 3.2}
    assert live_browsers(kernel_conn_env) == 0 and kernel_conn_env.invocations() == []


@pytest.mark.chromium
@skip_without_chromium
def test_example_kernel_files_lands_the_csv_and_emits_its_asset_event(
    example_dagbag: Any, kernel_conn_env: Any
) -> None:
    """The site's CSV, downloaded by a real Chromium, landed under ``KERNEL_EXAMPLE_LANDING_DIR`` with its sha256,
    and an asset event for the landed file carrying ``{sha256, size}``."""
    import hashlib

    from airflow.utils.session import create_session
    from sqlalchemy import select

    dag = example_dagbag.dags["example_kernel_files"]
    _register_assets(dag)
    with serve_site() as url:
        run = dag.test(run_conf={"site_url": url})
    expected = (EXAMPLE_DAGS / "site" / "prices.csv").read_bytes()
    landing = Path(os.environ["KERNEL_EXAMPLE_LANDING_DIR"])
    landed = _return_values("example_kernel_files", run.run_id)[("download_prices", -1)]
    sha256 = hashlib.sha256(expected).hexdigest()
    assert landed["path"] == f"file://{landing}/prices.csv" and landed["sha256"] == sha256
    assert sorted(p.name for p in landing.iterdir()) == ["prices.csv"]  # no partial file left
    assert (landing / "prices.csv").read_bytes() == expected
    try:  # Airflow 3
        from airflow.models.asset import AssetEvent as Event
        from airflow.models.asset import AssetModel as Model

        by_uri = Event.asset_id == Model.id
    except ImportError:  # Airflow 2
        from airflow.models.dataset import DatasetEvent as Event  # type: ignore[no-redef]
        from airflow.models.dataset import DatasetModel as Model

        by_uri = Event.dataset_id == Model.id
    with create_session() as session:
        extras = session.scalars(
            select(Event.extra).join(Model, by_uri).where(Model.uri == f"file://{landing}/prices.csv")
        ).all()
    assert [{k: e[k] for k in ("sha256", "size")} for e in extras] == [{"sha256": sha256, "size": len(expected)}]
    assert live_browsers(kernel_conn_env) == 0


def test_example_asset_consumer_uses_the_run_the_producer_recorded(example_dagbag: Any, kernel_conn_env: Any) -> None:
    """The producer's asset event carries its Kernel run; the consumer (scheduled on the asset) reads the event and
    fetches that run's output from Kernel by id. ``dag.test()`` starts no asset-triggered run, so the consumer reads
    the asset's latest event, as ``make demo`` shows; the scheduler's side (the queued run) is tested in
    ``tests/utils/test_asset_events.py``."""
    from tests.asset_helpers import asset_events

    producer = example_dagbag.dags["example_kernel_asset_producer"]
    consumer = example_dagbag.dags["example_kernel_asset_consumer"]
    assert [getattr(a, "uri", None) for a in producer.get_task("scrape_prices").outlets] == [
        "kernel://demo-shop/scrape_prices"
    ]
    assert type(consumer.timetable).__name__ in {"AssetTriggeredTimetable", "DatasetTriggeredTimetable"}
    _register_assets(producer, consumer)

    produced = producer.test()
    [inv] = kernel_conn_env.client.invocations()
    [event] = [e for e in asset_events("kernel://demo-shop/scrape_prices") if e["source_run_id"] == produced.run_id]
    assert event["extra"]["kernel_invocation_id"] == inv["id"]
    assert (event["extra"]["app_name"], event["extra"]["action_name"], event["extra"]["status"]) == (
        "demo-shop",
        "scrape_prices",
        "succeeded",
    )

    consumed = consumer.test()

    assert str(getattr(consumed.state, "value", consumed.state)) == "success"
    out = _return_values("example_kernel_asset_consumer", consumed.run_id)
    assert out[("read_event", -1)] == event["extra"]
    scraped = _return_values("example_kernel_asset_producer", produced.run_id)[("scrape_prices", -1)]
    assert out[("fetch_prices", -1)] == scraped  # the producer's output, from Kernel by the event's id
    assert out[("report", -1)].startswith(f"demo-shop/scrape_prices@{inv['version']} run {inv['id']} succeeded in ")
    assert [i["id"] for i in kernel_conn_env.client.invocations()] == [inv["id"]]  # nothing invoked again
