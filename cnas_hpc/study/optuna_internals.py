"""Every use cnas-hpc makes of Optuna's private API, in one place, pinned by a test.

Why private at all: a fleet of ask/tell workers needs things ``optuna.Study`` does not expose
publicly: heartbeats outside ``study.optimize`` (Optuna records them only inside it), the trial
id of an asked trial (the storage API speaks trial ids; the public route costs two queries per
call), the SQLAlchemy engine under the cache layer (for the claim's advisory lock), counts
and heartbeat ages straight from the database (Optuna's trial cache misses trials other
processes create, and loading every trial to count them is O(trials) per claim), and a fast
first read of a large study's finished trials into Optuna's own trial cache (its ORM read takes
about 16 s for 10,000 trials; finished trials never change, so they can be read once, lean).

Everything here is checked against the installed Optuna by
``tests/test_study_optuna_internals.py``: an Optuna release that renames an attribute or changes
the RDB schema fails that test with a message naming the assumption, before a worker ever runs
into it. The accepted range is :data:`SUPPORTED_OPTUNA`; the RDB schema revisions seen by
the test are :data:`KNOWN_SCHEMA_VERSIONS`.
"""

from __future__ import annotations

import datetime
import json
from collections import defaultdict
from typing import Any

import optuna
import sqlalchemy
from optuna.distributions import BaseDistribution, json_to_distribution
from optuna.storages import BaseStorage, RDBStorage
from optuna.storages._cached_storage import _CachedStorage, _StudyInfo
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


#: States of a trial that can no longer change.
_FINISHED = ("COMPLETE", "PRUNED", "FAIL")
#: How Optuna stores a value it cannot store as a float (``TrialValueModel`` and friends).
_SPECIAL_VALUES = {"INF_POS": float("inf"), "INF_NEG": float("-inf"), "NAN": float("nan")}


def _state_name(raw: object) -> str:
    return str(raw).rsplit(".", 1)[-1]


def _utc_to_local(value: object) -> datetime.datetime | None:
    """Optuna stores naive UTC and hands out naive local time (``TrialModel.datetime_start``)."""
    when = _as_datetime(value)
    if when is None:
        return None
    return when.replace(tzinfo=datetime.UTC).astimezone().replace(tzinfo=None)


def _stored(value: float | None, kind: object) -> float:
    name = _state_name(kind)
    return _SPECIAL_VALUES[name] if name in _SPECIAL_VALUES else float(value or 0.0)


#: The lean read of the finished trials: ``name -> query`` (``{finished}`` joins ``trials``).
_FINISHED_READS = {
    "values": "SELECT x.trial_id, x.objective, x.value, x.value_type FROM trial_values x",
    "params": (
        "SELECT x.trial_id, x.param_name, x.param_value, x.distribution_json FROM trial_params x"
    ),
    "user": "SELECT x.trial_id, x.key, x.value_json FROM trial_user_attributes x",
    "system": "SELECT x.trial_id, x.key, x.value_json FROM trial_system_attributes x",
    "steps": (
        "SELECT x.trial_id, x.step, x.intermediate_value, x.intermediate_value_type "
        "FROM trial_intermediate_values x"
    ),
}
_OF_FINISHED = (
    " JOIN trials t ON t.trial_id = x.trial_id WHERE t.study_id = :study "
    "AND t.state IN ('COMPLETE', 'PRUNED', 'FAIL')"
)


def _read_study_rows(study: optuna.Study) -> dict[str, list[Any]]:
    """The rows of every trial table for the study's finished trials, in one snapshot."""
    engine = engine_of(study)
    assert engine is not None
    params = {"study": study_id_of(study)}
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(sqlalchemy.text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
        out = {
            "trials": list(
                conn.execute(
                    sqlalchemy.text(
                        "SELECT trial_id, number, state, datetime_start, datetime_complete "
                        "FROM trials WHERE study_id = :study"
                    ),
                    params,
                ).all()
            )
        }
        for name, query in _FINISHED_READS.items():
            order = " ORDER BY x.param_id" if name == "params" else ""
            statement = sqlalchemy.text(query + _OF_FINISHED + order)
            out[name] = list(conn.execute(statement, params).all())
    return out


def load_finished_trials(study: optuna.Study) -> tuple[list[FrozenTrial], set[int]]:
    """Every FINISHED trial of an RDB study read lean, and the ids of the unfinished ones.

    Six plain queries in one snapshot instead of Optuna's ORM read; distributions are parsed once
    per distinct JSON (all trials of a search share them). The trials equal what
    ``RDBStorage.get_all_trials`` returns (pinned by ``tests/test_study_optuna_internals.py``).
    """
    rows = _read_study_rows(study)
    parts: dict[str, dict[int, dict[Any, Any]]] = {
        name: defaultdict(dict) for name in ("values", "params", "dists", "user", "system", "steps")
    }
    for trial_id, objective, value, kind in rows["values"]:
        parts["values"][trial_id][objective] = _stored(value, kind)
    parsed: dict[str, BaseDistribution] = {}
    for trial_id, name, internal, dist_json in rows["params"]:
        if dist_json not in parsed:
            parsed[dist_json] = json_to_distribution(dist_json)
        parts["params"][trial_id][name] = parsed[dist_json].to_external_repr(internal)
        parts["dists"][trial_id][name] = parsed[dist_json]
    for kind in ("user", "system"):
        for trial_id, key, value_json in rows[kind]:
            parts[kind][trial_id][key] = json.loads(value_json)
    for trial_id, step, value, value_kind in rows["steps"]:
        parts["steps"][trial_id][step] = _stored(value, value_kind)
    loaded, unfinished = [], set()
    for trial_id, number, state, started, completed in rows["trials"]:
        if _state_name(state) not in _FINISHED:
            unfinished.add(int(trial_id))
            continue
        objectives = parts["values"].get(trial_id)
        loaded.append(
            FrozenTrial(
                number=int(number),
                state=TrialState[_state_name(state)],
                value=None,
                values=[objectives[k] for k in sorted(objectives)] if objectives else None,
                datetime_start=_utc_to_local(started),
                datetime_complete=_utc_to_local(completed),
                params=parts["params"].get(trial_id, {}),
                distributions=parts["dists"].get(trial_id, {}),
                user_attrs=parts["user"].get(trial_id, {}),
                system_attrs=parts["system"].get(trial_id, {}),
                intermediate_values=parts["steps"].get(trial_id, {}),
                trial_id=int(trial_id),
            )
        )
    return loaded, unfinished


def prime_trial_cache(study: optuna.Study) -> int:
    """Fill Optuna's trial cache (``_CachedStorage``) with the study's finished trials, read lean.

    The cache then only reads the unfinished trials and newer ones from the database, as it does
    after its own first read (its invariant: every trial id up to ``last_finished_trial_id`` is
    either cached finished or listed unfinished). A no-op for other storages, or when the cache
    already holds trials of this study.

    Returns:
        How many finished trials were cached.
    """
    storage = storage_of(study)
    if not isinstance(storage, _CachedStorage) or engine_of(study) is None:
        return 0
    study_id = study_id_of(study)
    finished, unfinished = load_finished_trials(study)
    with storage._lock:
        info = storage._studies.setdefault(study_id, _StudyInfo())
        if info.trials:
            return 0
        storage._add_trials_to_cache(study_id, finished)
        info.unfinished_trial_ids.update(unfinished)
        info.last_finished_trial_id = max((t._trial_id for t in finished), default=-1)
    return len(finished)


def fixed_params_of(trial: FrozenTrial) -> dict[str, Any]:
    """The parameters a trial must take (``enqueue_trial``'s ``system_attrs["fixed_params"]``)."""
    fixed = trial.system_attrs.get("fixed_params", {})
    return dict(fixed) if isinstance(fixed, dict) else {}


def _stored_float(value: float) -> tuple[float | None, str]:
    """``(value, type)`` as Optuna stores a float that may be NaN or infinite."""
    if value != value:  # NaN
        return None, "NAN"
    if value in (float("inf"), float("-inf")):
        return None, "INF_POS" if value > 0 else "INF_NEG"
    return float(value), "FINITE"


def write_trial_rows(
    study: optuna.Study,
    trial_id: int,
    *,
    params: dict[str, tuple[Any, BaseDistribution]] | None = None,
    user_attrs: dict[str, Any] | None = None,
    intermediate: dict[int, float] | None = None,
) -> None:
    """Write parameters, user attributes and intermediate values of a RUNNING trial in ONE
    transaction: the rows ``set_trial_param``, ``set_trial_user_attr`` and
    ``set_trial_intermediate_value`` write one transaction (and, without a pool, one connection)
    at a time. Attributes and values replace existing ones; a parameter is written once.

    Raises:
        optuna.exceptions.UpdateFinishedTrialError: the trial is not RUNNING any more.
    """
    engine = engine_of(study)
    assert engine is not None
    lock = " FOR UPDATE" if engine.dialect.name == "postgresql" else ""
    with engine.begin() as conn:
        state = conn.execute(
            sqlalchemy.text(f"SELECT state FROM trials WHERE trial_id = :t{lock}"), {"t": trial_id}
        ).scalar()
        if _state_name(state) != "RUNNING":
            raise optuna.exceptions.UpdateFinishedTrialError(
                f"trial id {trial_id} is {_state_name(state)}: its rows cannot change"
            )
        rows = [
            {"t": trial_id, "n": name, "v": dist.to_internal_repr(value), "d": _dist_json(dist)}
            for name, (value, dist) in (params or {}).items()
        ]
        if rows:
            conn.execute(
                sqlalchemy.text(
                    "INSERT INTO trial_params (trial_id, param_name, param_value, "
                    "distribution_json) VALUES (:t, :n, :v, :d) "
                    "ON CONFLICT (trial_id, param_name) DO NOTHING"
                ),
                rows,
            )
        attrs = [
            {"t": trial_id, "k": key, "v": json.dumps(value)}
            for key, value in (user_attrs or {}).items()
        ]
        if attrs:
            conn.execute(
                sqlalchemy.text(
                    "INSERT INTO trial_user_attributes (trial_id, key, value_json) "
                    "VALUES (:t, :k, :v) ON CONFLICT (trial_id, key) "
                    "DO UPDATE SET value_json = excluded.value_json"
                ),
                attrs,
            )
        steps = [
            {"t": trial_id, "s": int(step), "v": stored, "k": kind}
            for step, (stored, kind) in (
                (step, _stored_float(value)) for step, value in (intermediate or {}).items()
            )
        ]
        if steps:
            conn.execute(
                sqlalchemy.text(
                    "INSERT INTO trial_intermediate_values (trial_id, step, intermediate_value, "
                    "intermediate_value_type) VALUES (:t, :s, :v, :k) "
                    "ON CONFLICT (trial_id, step) DO UPDATE SET "
                    "intermediate_value = excluded.intermediate_value, "
                    "intermediate_value_type = excluded.intermediate_value_type"
                ),
                steps,
            )


def _dist_json(dist: BaseDistribution) -> str:
    return optuna.distributions.distribution_to_json(dist)


def arch_hashes(
    study: optuna.Study, key: str, after_trial_id: int
) -> list[tuple[int, int, str, Any]]:
    """``(trial_id, number, state, value)`` of user attribute ``key`` of the RUNNING trials and
    of the COMPLETE trials with an id above ``after_trial_id``: what a duplicate check needs to
    learn since it last looked (a COMPLETE trial never changes).
    """
    engine = engine_of(study)
    assert engine is not None
    query = sqlalchemy.text(
        "SELECT t.trial_id, t.number, t.state, a.value_json FROM trials t "
        "JOIN trial_user_attributes a ON a.trial_id = t.trial_id AND a.key = :key "
        "WHERE t.study_id = :study AND (t.state = 'RUNNING' "
        "OR (t.state = 'COMPLETE' AND t.trial_id > :after))"
    )
    with engine.connect() as conn:
        rows = conn.execute(
            query, {"key": key, "study": study_id_of(study), "after": after_trial_id}
        ).all()
    return [(int(i), int(n), _state_name(s), json.loads(v)) for i, n, s, v in rows]
