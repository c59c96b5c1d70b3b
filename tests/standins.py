"""The stand-ins tests share for the few Airflow objects a unit test cannot get from a real run."""

from __future__ import annotations

from typing import Any


class FakeTI:
    """The task-instance attributes the operator and the run record read (and the XComs it pushes)."""

    def __init__(
        self,
        task_id: str = "invoke",
        *,
        try_number: int = 1,
        max_tries: int = 0,
        dag_id: str = "standin",
        run_id: str = "standin_run",
        map_index: int = -1,
    ) -> None:
        self.dag_id = dag_id
        self.task_id = task_id
        self.run_id = run_id
        self.map_index = map_index
        self.try_number = try_number
        self.max_tries = max_tries
        self.start_date = None
        self.xcom: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any, **_: Any) -> None:
        self.xcom[key] = value


class DictStateStore:
    """A dict-backed ``task_state_store`` (Airflow 3.3's per-task-instance store, kept across tries)."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def set(self, key: str, value: Any) -> None:
        self.data[key] = value

    def delete(self, key: str) -> None:
        self.data.pop(key, None)


class BrokenStateStore(DictStateStore):
    """A state store whose backend is down: every call fails as a real one would (the API server is away)."""

    def get(self, key: str, default: Any = None) -> Any:
        raise ConnectionError("state store unavailable")

    def set(self, key: str, value: Any) -> None:
        raise ConnectionError("state store unavailable")

    def delete(self, key: str) -> None:
        raise ConnectionError("state store unavailable")


class ReadOnlyStateStore(DictStateStore):
    """A state store that answers reads but refuses writes (e.g. a full or read-only backend)."""

    def set(self, key: str, value: Any) -> None:
        raise PermissionError("state store is read-only")

    def delete(self, key: str) -> None:
        raise PermissionError("state store is read-only")
