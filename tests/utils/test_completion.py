"""Pure rules of ``kernel_provider.utils.completion`` that no server can provoke on every Airflow version."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from kernel_provider.client.events import make_event
from kernel_provider.utils.completion import from_an_earlier_try, running_try


def event_of_try(try_number: int | None) -> dict:
    event = make_event("failed", "inv1", message="Invocation inv1 failed.")
    if try_number is not None:
        event["try_number"] = try_number
    return event


@pytest.mark.parametrize(
    ("event_try", "running_try", "stale"),
    [
        (1, 2, 1),  # Airflow 3.0 resumed try 2 with try 1's event
        (2, 2, None),  # the running try's own event
        (None, 2, None),  # a trigger from an older provider version: taken as the running try's
        (1, None, None),  # no task instance in the context (execute_complete called directly)
    ],
)
def test_an_event_is_stale_only_when_it_names_an_earlier_try(event_try, running_try, stale):
    context = {"ti": SimpleNamespace(try_number=running_try)} if running_try is not None else {}
    assert from_an_earlier_try(event_of_try(event_try), context) == stale


@pytest.mark.parametrize(
    ("context", "expected"),
    [
        ({"ti": SimpleNamespace(try_number=3)}, 3),
        ({}, None),  # a bare execute({})
        (None, None),  # no context at all
        ({"ti": SimpleNamespace(try_number=None)}, None),  # a task instance not yet numbered
        ({"ti": object()}, None),  # a stand-in without a try number
    ],
)
def test_the_running_try_is_read_only_from_a_numbered_task_instance(context, expected):
    assert running_try(context) == expected
