"""No keyword of the provider's operators, sensors and decorators shadows an argument of ``BaseOperator`` (or of
``BaseSensorOperator`` for sensors, ``DecoratedOperator`` for decorated tasks): ``pool``, ``queue``, ``retries``,
``timeout``... keep Airflow's meaning everywhere. Operator classes are found by walking the package, so a new one
is checked without being listed here; the decorators' own keywords are checked, and Airflow's arguments are shown
to reach the operator unchanged through each decorator.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from typing import Any

import pytest
from airflow.providers.common.compat.sdk import BaseOperator, BaseSensorOperator, DecoratedOperator

import kernel_provider
from kernel_provider.decorators.kernel_browser import BROWSER_KEYWORDS
from tests.airflow_helpers import make_dag, task

#: Arguments of Airflow's classes that the provider declares only to hand them on unchanged (checked below).
PASSED_THROUGH = {"python_callable", "op_args", "op_kwargs"}
#: BaseOperator arguments given to each decorator, with the value the operator must end up with.
AIRFLOW_ARGUMENTS = {"pool": "kernel", "queue": "browsers", "retries": 3, "owner": "scraping", "pool_slots": 2}


def _parameters(cls: type) -> set[str]:
    signature = inspect.signature(cls.__init__)
    return {p.name for p in signature.parameters.values() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)} - {"self"}


def _provider_operator_classes() -> list[type]:
    """Every BaseOperator subclass defined in the provider (the emulator in ``testing`` has none to offer)."""
    found: dict[str, type] = {}
    for module_info in pkgutil.walk_packages(kernel_provider.__path__, "kernel_provider."):
        if module_info.name.startswith("kernel_provider.testing"):
            continue
        module = importlib.import_module(module_info.name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, BaseOperator) and obj.__module__.startswith("kernel_provider."):
                found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return [found[name] for name in sorted(found)]


def _split(cls: type) -> tuple[set[str], set[str]]:
    """(the provider's own keywords, Airflow's) over ``cls``'s classes."""
    own: set[str] = set()
    airflow: set[str] = set()
    for base in cls.__mro__:
        if "__init__" not in vars(base) or base is object:
            continue
        (own if base.__module__.startswith("kernel_provider.") else airflow).update(_parameters(base))
    return own, airflow


OPERATOR_CLASSES = _provider_operator_classes()


def test_the_walk_finds_the_operators_the_sensor_and_both_decorated_classes() -> None:
    names = {cls.__name__ for cls in OPERATOR_CLASSES}
    assert {"KernelInvokeOperator", "KernelInvocationSensor"} <= names
    assert {"_KernelDecoratedOperator", "_KernelBrowserDecoratedOperator"} <= names


@pytest.mark.parametrize("cls", OPERATOR_CLASSES, ids=lambda cls: cls.__name__)
def test_no_keyword_shadows_an_airflow_argument(cls: type) -> None:
    own, airflow = _split(cls)
    airflow |= _parameters(BaseOperator)
    if issubclass(cls, BaseSensorOperator):
        airflow |= _parameters(BaseSensorOperator)
    if issubclass(cls, DecoratedOperator):
        airflow |= _parameters(DecoratedOperator)
    assert sorted((own & airflow) - PASSED_THROUGH) == []


def test_the_browser_decorators_own_keywords_shadow_nothing() -> None:
    airflow = _parameters(BaseOperator) | _parameters(DecoratedOperator)
    assert sorted(set(BROWSER_KEYWORDS) & airflow) == []


def _built(decorator: Any, **kwargs: Any) -> Any:
    """The operator a decorated function's call adds to a DAG."""

    def work(page: Any = None) -> dict[str, int]:
        return {"n": 1}

    with make_dag("shadow") as dag:
        decorator(**kwargs)(work)()
    return dag.get_task("work"), work


@pytest.mark.parametrize(
    ("name", "decorator_kwargs"),
    [
        ("kernel", {"app_name": "demo", "action_name": "echo"}),
        ("kernel_browser", {"browser_pool": "scrapers", "headless": True}),
    ],
)
def test_airflows_arguments_reach_the_decorated_operator_unchanged(name: str, decorator_kwargs: dict[str, Any]) -> None:
    operator, function = _built(getattr(task, name), **decorator_kwargs, **AIRFLOW_ARGUMENTS)
    assert {key: getattr(operator, key) for key in AIRFLOW_ARGUMENTS} == AIRFLOW_ARGUMENTS
    assert getattr(operator.python_callable, "__wrapped__", operator.python_callable) is function
    assert (list(operator.op_args), dict(operator.op_kwargs)) == ([], {})
    if name == "kernel_browser":
        assert operator.browser_options == {"pool": "scrapers", "headless": True}
