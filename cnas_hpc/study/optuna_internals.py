"""Every use cnas-hpc makes of Optuna's private API, in one place, pinned by a test.

Why private at all: a fleet of ask/tell workers needs things ``optuna.Study`` does not expose
publicly: heartbeats outside ``study.optimize`` (Optuna records them only inside it), the trial
id of an asked trial (the storage API speaks trial ids; the public route costs two queries per
call), the SQLAlchemy engine under the cache layer (for the claim's advisory lock), and counts
and heartbeat ages straight from the database (Optuna's trial cache misses trials other
processes create, and loading every trial to count them is O(trials) per claim).

Everything here is checked against the installed Optuna by
``tests/test_study_optuna_internals.py``: an Optuna release that renames an attribute or changes
the RDB schema fails that test with a message naming the assumption, before a worker ever runs
into it. The accepted range is :data:`SUPPORTED_OPTUNA`; the RDB schema revisions seen by
the test are :data:`KNOWN_SCHEMA_VERSIONS`.
"""

from __future__ import annotations

import datetime
from typing import Any

import optuna
import sqlalchemy
from optuna.storages import BaseStorage, RDBStorage
from optuna.trial import FrozenTrial, TrialState

#: Optuna versions whose internals this module was checked against (``pyproject.toml`` admits
#: the same range).
SUPPORTED_OPTUNA = ((4, 2), (6, 0))
#: Alembic revisions of Optuna's RDB schema that have the tables and columns used below.
KNOWN_SCHEMA_VERSIONS = frozenset({"v3.2.0.a"})


def storage_of(study: optuna.Study) -> BaseStorage:
    """The storage of ``study`` (``Study._storage``; the cache layer for RDB storages)."""
    storage: BaseStorage = study._storage
    return storage


def study_id_of(study: optuna.Study) -> int:
    """The study's id in its storage (``Study._study_id``)."""
    return int(study._study_id)


def trial_id_of(trial: optuna.Trial | FrozenTrial) -> int:
    """The storage's id of a trial (``Trial._trial_id`` / ``FrozenTrial._trial_id``)."""
    return int(trial._trial_id)


def rdb_backend(study: optuna.Study) -> RDBStorage | None:
    """The RDB storage under Optuna's cache layer (``_CachedStorage._backend``), if any."""
    storage: Any = storage_of(study)
    backend = getattr(storage, "_backend", storage)
    return backend if isinstance(backend, RDBStorage) else None


def engine_of(study: optuna.Study) -> sqlalchemy.Engine | None:
    """The SQLAlchemy engine behind an RDB study; None for other storages."""
    backend = rdb_backend(study)
    return backend.engine if backend is not None else None


def record_heartbeat(storage: BaseStorage, trial_id: int) -> None:
    """Record a heartbeat of a RUNNING trial (``BaseHeartbeat.record_heartbeat``)."""
    storage.record_heartbeat(trial_id)  # type: ignore[attr-defined]


def grace_period_of(study: optuna.Study) -> int | None:
    """The heartbeat grace period the RDB storage was built with (``RDBStorage.grace_period``)."""
    backend = rdb_backend(study)
    return None if backend is None else backend.grace_period


def count_by_state(study: optuna.Study) -> dict[str, int]:
    """Trials of ``study`` per state name, with one SQL query (O(1) in memory).

    Optuna's in-process trial cache may miss trials other processes created (it only re-reads
    trials newer than the last finished one it saw), so an RDB study is counted in the database.
    """
    engine = engine_of(study)
    if engine is None:
        states = [t.state.name for t in study.get_trials(deepcopy=False)]
        return {name: states.count(name) for name in set(states)}
    query = sqlalchemy.text(
        "SELECT t.state, COUNT(*) FROM trials t WHERE t.study_id = :study GROUP BY t.state"
    )
    with engine.connect() as conn:
        rows = conn.execute(query, {"study": study_id_of(study)}).all()
    return {str(state).rsplit(".", 1)[-1]: int(n) for state, n in rows}


def running_without_heartbeat(study: optuna.Study) -> list[tuple[int, int, datetime.datetime]]:
    """``(trial_id, number, datetime_start)`` of RUNNING trials that never recorded a heartbeat.

    ``datetime_start`` is Optuna's naive local time.
    """
    engine = engine_of(study)
    if engine is None:
        return []
    query = sqlalchemy.text(
        "SELECT t.trial_id, t.number, t.datetime_start FROM trials t "
        "LEFT JOIN trial_heartbeats h ON h.trial_id = t.trial_id "
        "WHERE t.study_id = :study AND t.state = 'RUNNING' AND h.trial_id IS NULL"
    )
    with engine.connect() as conn:
        rows = conn.execute(query, {"study": study_id_of(study)}).all()
    out = []
    for trial_id, number, started in rows:
        if isinstance(started, str):  # SQLite hands raw timestamps back as text
            started = datetime.datetime.fromisoformat(started)
        if started is not None:
            out.append((int(trial_id), int(number), started))
    return out


def heartbeat_ages(study: optuna.Study) -> dict[int, float]:
    """Seconds since the last heartbeat of each RUNNING trial that recorded one, by number.

    Read from Optuna's ``trial_heartbeats`` table with the DATABASE's clock (as Optuna's own
    stale check does), so worker clocks do not matter. Empty without an SQL engine.

    Raises:
        sqlalchemy.exc.SQLAlchemyError: the tables cannot be read.
    """
    engine = engine_of(study)
    if engine is None:
        return {}
    query = sqlalchemy.text(
        "SELECT t.number, h.heartbeat FROM trials t "
        "JOIN trial_heartbeats h ON h.trial_id = t.trial_id "
        "WHERE t.study_id = :study AND t.state = 'RUNNING'"
    )
    with engine.connect() as conn:
        now = _as_datetime(conn.execute(sqlalchemy.select(sqlalchemy.func.now())).scalar())
        rows = conn.execute(query, {"study": study_id_of(study)}).all()
    ages: dict[int, float] = {}
    for number, heartbeat in rows:
        when = _as_datetime(heartbeat)
        if now is not None and when is not None:
            ages[int(number)] = max(0.0, (now - when).total_seconds())
    return ages


def stale_running(study: optuna.Study, grace_s: float) -> list[tuple[int, int, float]]:
    """``(trial_id, number, seconds since its last heartbeat)`` of RUNNING trials whose last
    heartbeat is older than ``grace_s``, by the DATABASE's clock. Empty without an SQL engine.

    Raises:
        sqlalchemy.exc.SQLAlchemyError: the tables cannot be read.
    """
    engine = engine_of(study)
    if engine is None:
        return []
    query = sqlalchemy.text(
        "SELECT t.trial_id, t.number, h.heartbeat FROM trials t "
        "JOIN trial_heartbeats h ON h.trial_id = t.trial_id "
        "WHERE t.study_id = :study AND t.state = 'RUNNING'"
    )
    with engine.connect() as conn:
        now = _as_datetime(conn.execute(sqlalchemy.select(sqlalchemy.func.now())).scalar())
        rows = conn.execute(query, {"study": study_id_of(study)}).all()
    stale = []
    for trial_id, number, heartbeat in rows:
        when = _as_datetime(heartbeat)
        if now is not None and when is not None and (now - when).total_seconds() > grace_s:
            stale.append((int(trial_id), int(number), (now - when).total_seconds()))
    return stale


def _as_datetime(value: object) -> datetime.datetime | None:
    if isinstance(value, datetime.datetime):
        return value.replace(tzinfo=None) if value.tzinfo else value
    if isinstance(value, str) and value:
        return datetime.datetime.fromisoformat(value)
    return None


def fail_trial(study: optuna.Study, trial_id: int) -> bool:
    """Set a trial FAIL through the storage; False when it had already finished."""
    try:
        storage_of(study).set_trial_state_values(trial_id, state=TrialState.FAIL)
    except optuna.exceptions.UpdateFinishedTrialError:
        return False
    return True
