"""Which Kernel invocation a task instance started: the record that makes retries safe.

One record per task instance (dag, task, run, map index), kept across its tries:

* Airflow 3.3+: the task instance's ``task_state_store`` (key ``kernel_invocation``);
* older versions: an Airflow Variable ``kernel_provider.invocation.<dag>.<task>.<run>.<map_index>`` (ids too
  long for Airflow's 250-character key are shortened, see :func:`_variable_key`).

The record is written *before* ``POST /invocations`` (a pending create: when it was sent, the latest moment it
could have reached Kernel, and the optional reconcile token), replaced by the invocation id once Kernel answers,
and removed once the invocation has a final outcome or is handed off (``wait_for_completion=False``).

**Retry or clear.** Both give the task instance a new try; only a clear changes ``max_tries`` (Airflow 2.11 and
3.x set ``max_tries = try_number + retries`` when clearing; an automatic retry leaves it alone). The record
keeps the ``max_tries`` of the try that wrote it, so a later try with a different ``max_tries`` was started by a
person (clear) and must run afresh, while one with the same ``max_tries`` is an automatic retry that must not
start a second run while its own may exist. A new DAG run is a different task instance, hence a different record.
One exception is Airflow's, not ours: a task instance cleared while it *runs on a worker* is moved to
``restarting``, killed, and given a new try. Airflow 2.11 keeps its ``max_tries`` (3.3 too when the killed try
ended failed; it raises them when that try ended cleanly), so that try is a retry here: it starts afresh only when
``on_kill`` cancelled the run (``cancel_on_kill=True``), and re-attaches otherwise.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any

from kernel_provider.client.errors import KernelStateStoreError
from kernel_provider.version_compat import AIRFLOW_2

log = logging.getLogger(__name__)

#: Key in Airflow 3.3's ``task_state_store``.
STATE_KEY = "kernel_invocation"
#: Prefix of the Airflow Variable used where there is no ``task_state_store`` (Airflow < 3.3).
VARIABLE_PREFIX = "kernel_provider.invocation."
#: Longest Variable key Airflow stores (its ``variable.key`` column is 250 characters).
MAX_VARIABLE_KEY = 250
#: Characters of each id kept readable in a key that had to be shortened.
_KEY_HEAD = 58


@dataclass(frozen=True)
class RunRecord:
    """What one try left for the next.

    :param invocation_id: the invocation this task instance created; None while its create is in flight.
    :param try_number: the try that wrote the record.
    :param max_tries: that try's ``max_tries`` (tells a later retry from a clear, see the module docstring).
    :param sent_at: when the pending create was sent (epoch seconds, worker clock).
    :param window_end: the latest moment the pending create could have reached Kernel: sent + connect and read
        timeouts. An invocation Kernel started later cannot be this request's.
    :param token: the reconcile token the pending create carried in its payload, if any.
    """

    invocation_id: str | None
    try_number: int
    max_tries: int
    sent_at: float | None = None
    window_end: float | None = None
    token: str | None = None

    @property
    def pending(self) -> bool:
        """A create was in flight and never answered: whether it created a run is unknown."""
        return self.invocation_id is None

    def to_json(self) -> str:
        """The stored form (JSON text, so a Variable and the state store hold the same thing)."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_stored(cls, value: Any) -> RunRecord | None:
        """Parse a stored value; None for an empty or removed record. Unreadable values are errors."""
        if value in (None, "", {}):
            return None
        data = json.loads(value) if isinstance(value, str) else value
        if not isinstance(data, dict):
            raise ValueError(f"not a record: {value!r}")
        return cls(
            invocation_id=data.get("invocation_id") or None,
            try_number=int(data["try_number"]),
            max_tries=int(data["max_tries"]),
            sent_at=_float_or_none(data.get("sent_at")),
            window_end=_float_or_none(data.get("window_end")),
            token=data.get("token") or None,
        )


class TryKind(str, Enum):
    """How this try relates to the record a previous try left."""

    #: No record: nothing of this task instance is known to exist in Kernel.
    FIRST = "first"
    #: An automatic retry (or the same try again): the previous try's run, if any, is this one's.
    RETRY = "retry"
    #: A person cleared the task instance since the record was written: run afresh.
    CLEARED = "cleared"


def classify(record: RunRecord | None, max_tries: int | None) -> TryKind:
    """Retry or clear, from ``max_tries`` (see the module docstring). Unknown ``max_tries`` counts as a retry:
    the safe side, since a retry never starts a second run."""
    if record is None:
        return TryKind.FIRST
    if max_tries is not None and record.max_tries != max_tries:
        return TryKind.CLEARED
    return TryKind.RETRY


class RunRecordStore:
    """Reads and writes the record of one task instance. Every failure is a :class:`KernelStateStoreError`:
    without the record a retry could not know about this try's run, so the caller must not ``POST``."""

    def __init__(self, context: Any) -> None:
        self._state_store = context.get("task_state_store") if hasattr(context, "get") else None
        ti = context["ti"]
        self.try_number = int(getattr(ti, "try_number", 1) or 1)
        max_tries = getattr(ti, "max_tries", None)
        self.max_tries: int | None = int(max_tries) if isinstance(max_tries, int) else None
        self.variable_key = _variable_key(ti.dag_id, ti.task_id, ti.run_id, getattr(ti, "map_index", -1))

    @property
    def where(self) -> str:
        """Where the record lives, for messages."""
        return "task_state_store" if self._state_store is not None else f"Airflow Variable {self.variable_key}"

    def get(self) -> RunRecord | None:
        """The record a previous try left, or None."""
        if self._state_store is None and self.try_number <= 1 and not AIRFLOW_2:
            # Airflow 3.0-3.2 (Variable-backed record): try 1 has no previous try, so there is nothing to read,
            # and the Task SDK logs an ERROR ("Variable not found") for every missing Variable it is asked for,
            # which would mark every healthy first try. (Airflow 3 gives every new try, retry or clear, a higher
            # try_number; a record left by a deleted DAG run of the same run id is stale, and put() replaces it.)
            return None
        try:
            if self._state_store is not None:
                value = self._state_store.get(STATE_KEY)
            else:
                value = _read_variable(self.variable_key)
            return RunRecord.from_stored(value)
        except Exception as exc:
            raise KernelStateStoreError(
                f"Could not read this task instance's Kernel run record from the {self.where} "
                f"({type(exc).__name__}: {exc}). Nothing was invoked: without it a retry could start a second "
                "run. Fix the metadata DB / state store access and retry the task."
            ) from exc

    def new(
        self,
        *,
        invocation_id: str | None = None,
        sent_at: float | None = None,
        window_end: float | None = None,
        token: str | None = None,
    ) -> RunRecord:
        """A record of this try."""
        return RunRecord(
            invocation_id=invocation_id,
            try_number=self.try_number,
            max_tries=self.max_tries if self.max_tries is not None else -1,
            sent_at=sent_at,
            window_end=window_end,
            token=token,
        )

    def put(self, record: RunRecord) -> None:
        """Write the record; raises :class:`KernelStateStoreError` when it cannot."""
        try:
            if self._state_store is not None:
                self._state_store.set(STATE_KEY, record.to_json())
            else:
                _variable().set(
                    self.variable_key,
                    record.to_json(),
                    description=(
                        "airflow-provider-kernel: the Kernel invocation this task instance started; removed when "
                        "it has an outcome (used so a retry never starts a second run)"
                    ),
                )
        except Exception as exc:
            problem = f"({type(exc).__name__}: {exc})"
            if record.pending:
                raise KernelStateStoreError(
                    f"Could not write this task instance's Kernel run record to the {self.where} {problem}. The "
                    "task fails before invoking: without the record a retry could start a second run. Fix the "
                    "metadata DB / state store access and retry the task."
                ) from exc
            raise KernelStateStoreError(
                f"Invocation {record.invocation_id} was created, but its id could not be saved in this task "
                f"instance's Kernel run record ({self.where}) {problem}. The run goes on and this try follows it "
                "(XCom kernel_invocation_id names it; killing the task cancels it). The record still says a create "
                "was in flight: should this try die, its retry looks for the run in Kernel's listing before invoking - "
                "found exactly with reconcile_token=True; without a token the retry fails naming this invocation "
                "rather than start a second run."
            ) from exc

    def forget(self) -> None:
        """Remove the record (the run has an outcome or was handed off). Best effort: a leftover record only
        makes a later clear check an invocation that is already finished."""
        try:
            if self._state_store is not None:
                delete = getattr(self._state_store, "delete", None)
                if callable(delete):
                    delete(STATE_KEY)
                else:
                    self._state_store.set(STATE_KEY, "")
            else:
                _variable().delete(self.variable_key)
        except Exception as exc:
            log.warning("Could not remove the Kernel run record from the %s: %s", self.where, exc)


def forget_airflow2_record(dag_id: str, task_id: str, run_id: str, map_index: int, invocation_id: str) -> bool:
    """Remove a task instance's record Variable (Airflow < 3.3) if it still names ``invocation_id``.

    Used by the trigger once it has cancelled the run of a task a person marked or cleared. A record naming
    another invocation belongs to a newer try (a clear already started afresh) and is left alone. Blocking
    (metadata DB): call it from a worker thread. Returns whether a record was removed.
    """
    key = _variable_key(dag_id, task_id, run_id, map_index)
    try:
        record = RunRecord.from_stored(_read_variable(key))
    except (TypeError, ValueError, KeyError):
        return False
    if record is None or record.invocation_id != invocation_id:
        return False
    _variable().delete(key)
    return True


def _variable_key(dag_id: str, task_id: str, run_id: str, map_index: int) -> str:
    """The record's Variable key: readable, and at most :data:`MAX_VARIABLE_KEY` characters.

    Airflow's ``variable.key`` column holds 250 characters (PostgreSQL and MySQL refuse longer ones), while a
    dag id, task id and run id may each be 250 long. A key that would not fit keeps a readable head of each part
    and ends with a digest of the full ids, so it stays deterministic (every try and the trigger compute the same
    key) and distinct for distinct task instances.
    """
    parts = (str(dag_id), str(task_id), str(run_id), str(map_index))
    key = VARIABLE_PREFIX + ".".join(parts)
    if len(key) <= MAX_VARIABLE_KEY:
        return key
    digest = hashlib.sha256("\0".join(parts).encode("utf-8", "surrogatepass")).hexdigest()[:32]
    # prefix (26) + 3 heads of 58 + map index (<= 11) + digest (32) + 4 dots <= 250
    heads = [part[:_KEY_HEAD] for part in parts[:3]]
    return VARIABLE_PREFIX + ".".join([*heads, parts[3][:11], digest])


def _read_variable(key: str) -> Any:
    # Airflow 2's Variable.get names its default ``default_var``; Airflow 3's, ``default``.
    variable = _variable()
    return variable.get(key, default_var=None) if AIRFLOW_2 else variable.get(key, default=None)


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)


def _variable() -> Any:
    try:
        from airflow.sdk import Variable
    except ImportError:
        from airflow.models import Variable  # type: ignore[no-redef]
    return Variable
