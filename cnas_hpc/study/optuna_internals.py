"""Every use cnas-hpc makes of Optuna's private API and tables, in one place, pinned by a test.

Why private at all: a fleet of ask/tell workers needs what ``optuna.Study`` does not offer
publicly, and each remaining hook is there for a measured speed (ARCHITECTURE.md, "Optuna
hooks", lists each with its reason and its test): a lean first read of a large study's finished
trials into Optuna's own trial cache (:class:`LeanCachedStorage`: about 1 s instead of 17 s for
10,000 trials), the capped TPE history (:class:`RecentAndBestTrials`), a claim and its
architecture in one transaction (:func:`open_trial`, :func:`frozen_of`, :func:`remember_rows`,
the PostgreSQL scripts). Everything else goes through public calls on the
:class:`~cnas_hpc.study.handle.StudyHandle` the study was opened with (its storage, engine and
study id), and every statement against Optuna's tables is built from
:mod:`cnas_hpc.study.optuna_schema` with SQLAlchemy Core, except the PostgreSQL scripts that
must be one round trip.

Everything here is checked against the installed Optuna by
``tests/test_study_optuna_internals.py`` (also run at the floor release by ``.ci/floors.py``):
an Optuna release that renames an attribute or changes the RDB schema fails that test with a
message naming the assumption, before a worker ever runs into it. The accepted range is
:data:`SUPPORTED_OPTUNA`; the RDB schema revisions seen by the test are
:data:`KNOWN_SCHEMA_VERSIONS`.
"""

from __future__ import annotations

import datetime
import json
import json.scanner
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any, cast

import optuna
import sqlalchemy
from optuna.distributions import BaseDistribution, json_to_distribution
from optuna.storages import RDBStorage
from optuna.storages._cached_storage import _CachedStorage, _StudyInfo
from optuna.study._constrained_optimization import _CONSTRAINTS_KEY
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from cnas_hpc.study import optuna_schema
from cnas_hpc.study.handle import StudyHandle

#: Optuna versions whose internals this module was checked against (``pyproject.toml`` admits
#: the same range).
SUPPORTED_OPTUNA = ((4, 9), (6, 0))
#: Alembic revisions of Optuna's RDB schema that have the tables and columns used below.
KNOWN_SCHEMA_VERSIONS = frozenset({"v3.2.0.a"})


def open_handle(
    storage: RDBStorage, name: str, pruner: optuna.pruners.BasePruner | None = None
) -> StudyHandle:
    """Open study ``name`` of ``storage`` through the lean trial cache (:class:`LeanCachedStorage`).

    Raises:
        KeyError: no study of that name.
    """
    cache = LeanCachedStorage(storage)
    study = optuna.load_study(study_name=name, storage=cache, pruner=pruner)
    return StudyHandle(study, cache, storage, storage.engine, storage.get_study_id_from_name(name))


def open_trial(handle: StudyHandle, trial_id: int) -> optuna.Trial:
    """The :class:`optuna.Trial` of a RUNNING trial made without ``study.ask()``.

    A hook (``Trial(study, trial_id)``, documented as not for users): ``study.ask()`` reads every
    WAITING trial to pop one, and the one-transaction claim creates its trial row itself.
    """
    return optuna.Trial(handle.study, trial_id)


_T, _H = optuna_schema.trials, optuna_schema.trial_heartbeats
_RUNNING = _T.c.state == "RUNNING"
_WITH_HEARTBEAT = _T.join(_H, _H.c.trial_id == _T.c.trial_id)
_MAYBE_HEARTBEAT = _T.outerjoin(_H, _H.c.trial_id == _T.c.trial_id)


#: Optuna's system attribute of a trial's constraint values (a list; feasible iff all <= 0):
#: what its samplers (TPE's split into feasible and infeasible trials) and
#: ``study.best_trials`` read, the key ``constraints_func`` writes.
CONSTRAINTS_KEY: str = _CONSTRAINTS_KEY


def set_constraints(storage: RDBStorage, trial_id: int, values: list[float]) -> None:
    """Record a RUNNING trial's constraint values where Optuna reads them.

    Raises:
        optuna.exceptions.UpdateFinishedTrialError: the trial is not RUNNING any more.
    """
    storage.set_trial_system_attr(trial_id, CONSTRAINTS_KEY, [float(v) for v in values])


def count_by_state(handle: StudyHandle) -> dict[str, int]:
    """Trials of the study per state name, with one SQL query (O(1) in memory).

    Optuna's in-process trial cache may miss trials other processes created (it only re-reads
    trials newer than the last finished one it saw), so the study is counted in the database.
    """
    query = (
        sqlalchemy.select(_T.c.state, sqlalchemy.func.count())
        .where(_T.c.study_id == handle.study_id)
        .group_by(_T.c.state)
    )
    with handle.engine.connect() as conn:
        rows = conn.execute(query).all()
    return {_state_name(state): int(n) for state, n in rows}


def running_without_heartbeat(handle: StudyHandle) -> list[tuple[int, int, datetime.datetime]]:
    """``(trial_id, number, datetime_start)`` of RUNNING trials that never recorded a heartbeat.

    ``datetime_start`` is Optuna's naive local time.
    """
    query = (
        sqlalchemy.select(_T.c.trial_id, _T.c.number, _T.c.datetime_start)
        .select_from(_MAYBE_HEARTBEAT)
        .where(_T.c.study_id == handle.study_id, _RUNNING, _H.c.trial_id.is_(None))
    )
    with handle.engine.connect() as conn:
        rows = conn.execute(query).all()
    out = []
    for trial_id, number, started in rows:
        if isinstance(started, str):  # SQLite hands raw timestamps back as text
            started = datetime.datetime.fromisoformat(started)
        if started is not None:
            out.append((int(trial_id), int(number), started))
    return out


def heartbeat_ages(handle: StudyHandle) -> dict[int, float]:
    """Seconds since the last heartbeat of each RUNNING trial that recorded one, by number.

    Read from Optuna's ``trial_heartbeats`` table with the DATABASE's clock (as Optuna's own
    stale check does), so worker clocks do not matter.

    Raises:
        sqlalchemy.exc.SQLAlchemyError: the tables cannot be read.
    """
    query = (
        sqlalchemy.select(_T.c.number, _H.c.heartbeat)
        .select_from(_WITH_HEARTBEAT)
        .where(_T.c.study_id == handle.study_id, _RUNNING)
    )
    with handle.engine.connect() as conn:
        now = _as_datetime(conn.execute(sqlalchemy.select(sqlalchemy.func.now())).scalar())
        rows = conn.execute(query).all()
    ages: dict[int, float] = {}
    for number, heartbeat in rows:
        when = _as_datetime(heartbeat)
        if now is not None and when is not None:
            ages[int(number)] = max(0.0, (now - when).total_seconds())
    return ages


def stale_running(handle: StudyHandle, grace_s: float) -> list[tuple[int, int, float]]:
    """``(trial_id, number, seconds since its last heartbeat)`` of RUNNING trials whose last
    heartbeat is older than ``grace_s``, by the DATABASE's clock.

    Raises:
        sqlalchemy.exc.SQLAlchemyError: the tables cannot be read.
    """
    # The database's clock in the same statement: one round trip per claim.
    query = (
        sqlalchemy.select(
            _T.c.trial_id, _T.c.number, _H.c.heartbeat, sqlalchemy.func.current_timestamp()
        )
        .select_from(_WITH_HEARTBEAT)
        .where(_T.c.study_id == handle.study_id, _RUNNING)
    )
    with handle.engine.connect() as conn:
        rows = conn.execute(query).all()
    stale = []
    for trial_id, number, heartbeat, now_raw in rows:
        now, when = _as_datetime(now_raw), _as_datetime(heartbeat)
        if now is not None and when is not None and (now - when).total_seconds() > grace_s:
            stale.append((int(trial_id), int(number), (now - when).total_seconds()))
    return stale


def budget_snapshot(handle: StudyHandle) -> tuple[dict[str, int], int]:
    """Trials per state and the number of RUNNING trials without any heartbeat (orphans), in
    one statement."""
    orphan = sqlalchemy.case((sqlalchemy.and_(_RUNNING, _H.c.trial_id.is_(None)), 1), else_=0)
    query = (
        sqlalchemy.select(_T.c.state, sqlalchemy.func.count(), sqlalchemy.func.sum(orphan))
        .select_from(_MAYBE_HEARTBEAT)
        .where(_T.c.study_id == handle.study_id)
        .group_by(_T.c.state)
    )
    with handle.engine.connect() as conn:
        rows = conn.execute(query).all()
    counts = {_state_name(state): int(n) for state, n, _ in rows}
    return counts, sum(int(orphans or 0) for _, _, orphans in rows)


def _as_datetime(value: object) -> datetime.datetime | None:
    if isinstance(value, datetime.datetime):
        return value.replace(tzinfo=None) if value.tzinfo else value
    if isinstance(value, str) and value:
        return datetime.datetime.fromisoformat(value)
    return None


def fail_trial(handle: StudyHandle, number: int) -> bool:
    """Tell trial ``number`` FAIL (``study.tell``); False when it had already finished."""
    try:
        handle.study.tell(number, state=TrialState.FAIL)
    except (ValueError, optuna.exceptions.UpdateFinishedTrialError):
        return False  # finished before (ValueError) or while (the storage refused) we told it
    return True


def set_user_attr_of_finished_trial(
    engine: sqlalchemy.Engine, trial_id: int, key: str, value: Any
) -> None:
    """Set a user attribute of a trial that may already be finished (COMPLETE).

    Optuna's storages refuse any change to a finished trial (``UpdateFinishedTrialError``), but
    the evaluation phase must put a cell's test accuracy next to the trial that proposed it, where
    users look (optuna-dashboard, ``study.trials``). So the row is written straight into Optuna's
    ``trial_user_attributes`` table (``value_json`` holds the JSON text, as Optuna writes it).
    Processes that cached the trial before see the value after they reload the study.
    """
    table = optuna_schema.trial_user_attributes
    text = json.dumps(value)
    where = (table.c.trial_id == trial_id) & (table.c.key == key)
    with engine.begin() as conn:
        updated = conn.execute(sqlalchemy.update(table).where(where).values(value_json=text))
        if updated.rowcount == 0:
            conn.execute(
                sqlalchemy.insert(table).values(trial_id=trial_id, key=key, value_json=text)
            )


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


#: The lean read of trials: ``name -> (table, columns)``, each joined to ``trials`` and filtered.
_TRIAL_READS: dict[str, tuple[sqlalchemy.Table, tuple[str, ...]]] = {
    "trials": (
        optuna_schema.trials,
        ("trial_id", "number", "state", "datetime_start", "datetime_complete"),
    ),
    "values": (optuna_schema.trial_values, ("trial_id", "objective", "value", "value_type")),
    "params": (
        optuna_schema.trial_params,
        ("param_id", "trial_id", "param_name", "param_value", "distribution_json"),
    ),
    "user": (optuna_schema.trial_user_attributes, ("trial_id", "key", "value_json")),
    "system": (optuna_schema.trial_system_attributes, ("trial_id", "key", "value_json")),
    "steps": (
        optuna_schema.trial_intermediate_values,
        ("trial_id", "step", "intermediate_value", "intermediate_value_type"),
    ),
}


def _read_trial_rows(
    engine: sqlalchemy.Engine, study_id: int, included: set[int], greater_than: int
) -> dict[str, list[Any]]:
    """Rows of every trial table for the study's trials with an id in ``included`` or above
    ``greater_than``, in one snapshot."""
    chosen: sqlalchemy.ColumnElement[bool] = _T.c.trial_id > greater_than
    if included:
        chosen = sqlalchemy.or_(chosen, _T.c.trial_id.in_(sorted(included)))
    where = sqlalchemy.and_(_T.c.study_id == study_id, chosen)
    out = {}
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            conn.execution_options(isolation_level="REPEATABLE READ")  # one snapshot
        for name, (table, columns) in _TRIAL_READS.items():
            query = sqlalchemy.select(*(table.c[c] for c in columns)).where(where)
            if table is not _T:
                query = query.join_from(table, _T, table.c.trial_id == _T.c.trial_id)
            if name == "params":
                query = query.order_by(table.c.param_id)
            out[name] = _fetch_tuples(conn, query)
    return out


def _fetch_tuples(conn: sqlalchemy.Connection, query: sqlalchemy.Select[Any]) -> list[Any]:
    """The query's rows as the driver returns them.

    The tables' columns declare no types (:mod:`cnas_hpc.study.optuna_schema`), so
    SQLAlchemy's rows hold exactly the driver's values; taking them from the DBAPI cursor skips
    building a ``Row`` per row, which was half the read of a 10,000-trial study (400,000 rows).
    """
    result = conn.execute(query)
    try:
        return list(result.cursor.fetchall())
    finally:
        result.close()


_MISSING = object()


def _build_params(
    rows: list[Any],
    params: dict[int, dict[Any, Any]],
    distributions: dict[int, dict[Any, Any]],
) -> None:
    """Each trial's parameters and distributions, in ``param_id`` order (as Optuna's); each
    distinct distribution parsed once, each distinct value converted once.

    ``rows`` come in ``param_id`` order, so inserting into each trial's dicts as they come keeps
    that order (240,000 rows for 10,000 trials of the default space: the loop is kept tight).
    """
    parsed: dict[str, BaseDistribution] = {}
    external: dict[tuple[str, float], Any] = {}
    last_trial, trial_params, trial_dists = None, {}, {}
    for _, trial_id, name, internal, dist_json in rows:
        if trial_id != last_trial:
            last_trial = trial_id
            trial_params = params.setdefault(trial_id, {})
            trial_dists = distributions.setdefault(trial_id, {})
        key = (dist_json, internal)
        value = external.get(key, _MISSING)
        if value is _MISSING:
            dist = parsed.get(dist_json)
            if dist is None:
                dist = parsed[dist_json] = json_to_distribution(dist_json)
            value = external[key] = dist.to_external_repr(internal)
        trial_params[name] = value
        trial_dists[name] = parsed[dist_json]


#: The C scanner behind ``json.loads``, called without its two Python wrappers: 80,000
#: attribute values of a 10,000-trial study decode in a third less time.
# (typeshed types make_scanner's argument as itself: a decoder is what it takes)
_SCAN_JSON = json.scanner.make_scanner(cast("Any", json.JSONDecoder()))


def _json_value(text: str) -> Any:
    """``json.loads(text)`` for the compact JSON Optuna writes (anything else takes the slow
    path, which also raises ``json.loads``'s errors)."""
    try:
        value, end = _SCAN_JSON(text, 0)
    except StopIteration:
        return json.loads(text)
    return value if end == len(text) else json.loads(text)


def _build_trials(rows: dict[str, list[Any]]) -> list[FrozenTrial]:
    """FrozenTrials from :func:`_read_trial_rows`, as ``RDBStorage`` builds them."""
    parts: dict[str, dict[int, dict[Any, Any]]] = {
        name: defaultdict(dict) for name in ("values", "params", "dists", "user", "system", "steps")
    }
    for trial_id, objective, value, kind in rows["values"]:
        parts["values"][trial_id][objective] = _stored(value, kind)
    _build_params(rows["params"], parts["params"], parts["dists"])
    decoded: dict[str, Any] = {}
    for kind in ("user", "system"):
        for trial_id, key, value_json in rows[kind]:
            value = decoded.get(value_json, _MISSING)
            if value is _MISSING:
                value = _json_value(value_json)
                if isinstance(value, str | int | float | bool) or value is None:
                    decoded[value_json] = value  # immutable: one object for every equal text
            parts[kind][trial_id][key] = value
    for trial_id, step, value, value_kind in rows["steps"]:
        parts["steps"][trial_id][step] = _stored(value, value_kind)
    trials = []
    for trial_id, number, state, started, completed in sorted(rows["trials"]):
        objectives = parts["values"].get(trial_id)
        trials.append(
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
    return trials


def load_trials(
    handle: StudyHandle, included: set[int] | None = None, greater_than: int = -1
) -> list[FrozenTrial]:
    """The study's trials with an id in ``included`` or above ``greater_than`` (all by
    default), read lean: six plain queries in one snapshot instead of Optuna's ORM read (16 s
    for 10,000 trials on the development machine), distributions parsed once per distinct JSON.
    They equal what ``RDBStorage`` returns (pinned by ``tests/test_study_optuna_internals.py``).
    """
    rows = _read_trial_rows(handle.engine, handle.study_id, included or set(), greater_than)
    return _build_trials(rows)


class LeanCachedStorage(_CachedStorage):
    """Optuna's trial cache (``_CachedStorage``) reading through :func:`load_trials`.

    Same contract and bookkeeping as Optuna's (finished trials are cached for good; at every
    read it fetches the unfinished trials and those newer than the last finished one), only the
    read itself is lean: a worker's first claim on a 10,000-trial study reads it in about a
    second instead of 16, and every claim re-reads the RUNNING trials (TPE's constant liar) in
    milliseconds instead of an ORM load per trial, which saturated two cores with 48 workers.
    """

    def _read_trials_from_remote_storage(self, study_id: int) -> None:
        with self._lock:
            if study_id not in self._studies:
                self._studies[study_id] = _StudyInfo()
            study = self._studies[study_id]
            rows = _read_trial_rows(
                self._backend.engine,
                study_id,
                {i for i in study.unfinished_trial_ids if i <= study.last_finished_trial_id},
                study.last_finished_trial_id,
            )
            trials = _build_trials(rows)
            if not trials:
                return
            self._add_trials_to_cache(study_id, trials)
            for trial in trials:
                if not trial.state.is_finished():
                    study.unfinished_trial_ids.add(trial._trial_id)
                    continue
                study.last_finished_trial_id = max(study.last_finished_trial_id, trial._trial_id)
                study.unfinished_trial_ids.discard(trial._trial_id)


def fixed_params_of(trial: FrozenTrial) -> dict[str, Any]:
    """The parameters a trial must take (``enqueue_trial``'s ``system_attrs["fixed_params"]``)."""
    fixed = trial.system_attrs.get("fixed_params", {})
    return dict(fixed) if isinstance(fixed, dict) else {}


def constraint_values_of(trial: FrozenTrial) -> list[float] | None:
    """The trial's constraint values as Optuna records them (feasible iff all <= 0).

    Both of Optuna's formats: the list a sampler's ``constraints_func`` writes under the system
    attribute ``"constraints"`` (``optuna.study._constrained_optimization._CONSTRAINTS_KEY``),
    and the ``"constraints:<name>"`` keys of ``Trial.set_constraint`` (Optuna >= 5, which
    deprecates ``constraints_func``; ``FrozenTrial.constraints`` reads both there). None when
    the trial has none.
    """
    values: list[float] = []
    raw = trial.system_attrs.get("constraints")
    if isinstance(raw, list | tuple):
        values += [float(value) for value in raw]
    values += [float(v) for k, v in trial.system_attrs.items() if k.startswith("constraints:")]
    return values or None


def frozen_of(trial: optuna.Trial) -> FrozenTrial:
    """The trial's own snapshot (``Trial._cached_frozen_trial``), read when it was opened."""
    frozen: FrozenTrial = trial._cached_frozen_trial
    return frozen


def remember_rows(
    trial: optuna.Trial,
    params: dict[str, tuple[Any, BaseDistribution]],
    user_attrs: dict[str, Any],
) -> None:
    """Record rows written with :func:`write_trial_rows` in the trial's snapshot, as
    ``Trial._suggest`` and ``Trial.set_user_attr`` do after their own writes."""
    frozen = frozen_of(trial)
    for name, (value, dist) in params.items():
        frozen.params[name] = value
        frozen.distributions[name] = dist
    frozen.user_attrs.update(user_attrs)


def _stored_float(value: float) -> tuple[float | None, str]:
    """``(value, type)`` as Optuna stores a float that may be NaN or infinite."""
    if value != value:  # NaN
        return None, "NAN"
    if value in (float("inf"), float("-inf")):
        return None, "INF_POS" if value > 0 else "INF_NEG"
    return float(value), "FINITE"


def write_trial_rows(
    handle: StudyHandle,
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
    with handle.engine.begin() as conn:
        _write_rows(conn, trial_id, params, user_attrs, intermediate)


def _write_rows(
    conn: sqlalchemy.Connection,
    trial_id: int,
    params: dict[str, tuple[Any, BaseDistribution]] | None = None,
    user_attrs: dict[str, Any] | None = None,
    intermediate: dict[int, float] | None = None,
) -> None:
    """:func:`write_trial_rows` inside the caller's transaction."""
    if conn.dialect.name == "postgresql":
        _write_rows_postgres(conn, trial_id, params or {}, user_attrs or {}, intermediate or {})
        return
    # SQLite: the caller's transaction holds the database's write lock, no row lock needed.
    state = conn.execute(sqlalchemy.select(_T.c.state).where(_T.c.trial_id == trial_id)).scalar()
    if _state_name(state) != "RUNNING":
        raise optuna.exceptions.UpdateFinishedTrialError(
            f"trial id {trial_id} is {_state_name(state)}: its rows cannot change"
        )
    rows = [
        {
            "trial_id": trial_id,
            "param_name": name,
            "param_value": dist.to_internal_repr(value),
            "distribution_json": _dist_json(dist),
        }
        for name, (value, dist) in (params or {}).items()
    ]
    if rows:
        insert = sqlite_insert(optuna_schema.trial_params)
        conn.execute(insert.on_conflict_do_nothing(index_elements=["trial_id", "param_name"]), rows)
    attrs = [
        {"trial_id": trial_id, "key": key, "value_json": json.dumps(value)}
        for key, value in (user_attrs or {}).items()
    ]
    if attrs:
        insert = sqlite_insert(optuna_schema.trial_user_attributes)
        replace = {"value_json": insert.excluded.value_json}
        conn.execute(
            insert.on_conflict_do_update(index_elements=["trial_id", "key"], set_=replace), attrs
        )
    steps = []
    for step, value in (intermediate or {}).items():
        stored, kind = _stored_float(value)
        steps.append(
            {
                "trial_id": trial_id,
                "step": int(step),
                "intermediate_value": stored,
                "intermediate_value_type": kind,
            }
        )
    if steps:
        insert = sqlite_insert(optuna_schema.trial_intermediate_values)
        replace = {
            "intermediate_value": insert.excluded.intermediate_value,
            "intermediate_value_type": insert.excluded.intermediate_value_type,
        }
        conn.execute(
            insert.on_conflict_do_update(index_elements=["trial_id", "step"], set_=replace), steps
        )


#: :func:`_write_rows` on PostgreSQL: every row in ONE round trip (a statement per table, rows
#: as arrays), so a writer under the claim lock is never descheduled between two of its 30-odd
#: statements while the other workers queue behind it. Each insert writes only while the trial is
#: RUNNING (its row locked first); the last statement says what the state was.
_WRITE_ROWS_SQL = """
SELECT 1 FROM trials WHERE trial_id = %(t)s FOR UPDATE;
INSERT INTO trial_params (trial_id, param_name, param_value, distribution_json)
SELECT %(t)s, p.name, p.value, p.dist
FROM unnest(%(names)s::text[], %(values)s::float8[], %(dists)s::text[]) AS p(name, value, dist)
WHERE EXISTS (SELECT 1 FROM trials WHERE trial_id = %(t)s AND state = 'RUNNING')
ON CONFLICT (trial_id, param_name) DO NOTHING;
INSERT INTO trial_user_attributes (trial_id, key, value_json)
SELECT %(t)s, a.key, a.value FROM unnest(%(keys)s::text[], %(jsons)s::text[]) AS a(key, value)
WHERE EXISTS (SELECT 1 FROM trials WHERE trial_id = %(t)s AND state = 'RUNNING')
ON CONFLICT (trial_id, key) DO UPDATE SET value_json = excluded.value_json;
INSERT INTO trial_intermediate_values
    (trial_id, step, intermediate_value, intermediate_value_type)
SELECT %(t)s, v.step, v.value, CAST(v.kind AS trialintermediatevaluetype)
FROM unnest(%(steps)s::int[], %(step_values)s::float8[], %(kinds)s::text[])
    AS v(step, value, kind)
WHERE EXISTS (SELECT 1 FROM trials WHERE trial_id = %(t)s AND state = 'RUNNING')
ON CONFLICT (trial_id, step) DO UPDATE SET
    intermediate_value = excluded.intermediate_value,
    intermediate_value_type = excluded.intermediate_value_type;
SELECT state::text FROM trials WHERE trial_id = %(t)s
"""


def _write_rows_postgres(
    conn: sqlalchemy.Connection,
    trial_id: int,
    params: dict[str, tuple[Any, BaseDistribution]],
    user_attrs: dict[str, Any],
    intermediate: dict[int, float],
) -> None:
    steps = {int(step): _stored_float(value) for step, value in intermediate.items()}
    values = {
        "t": trial_id,
        "names": list(params),
        "values": [dist.to_internal_repr(value) for value, dist in params.values()],
        "dists": [_dist_json(dist) for _, dist in params.values()],
        "keys": list(user_attrs),
        "jsons": [json.dumps(value) for value in user_attrs.values()],
        "steps": list(steps),
        "step_values": [value for value, _ in steps.values()],
        "kinds": [kind for _, kind in steps.values()],
    }
    state = conn.exec_driver_sql(_WRITE_ROWS_SQL, values).scalar()
    if _state_name(state) != "RUNNING":
        raise optuna.exceptions.UpdateFinishedTrialError(
            f"trial id {trial_id} is {_state_name(state)}: its rows cannot change"
        )


#: :func:`reserve_trial_row`'s transaction in ONE round trip: the claim lock, Optuna's
#: trial-creation lock, then (each statement reading after the locks) the counts and, when a slot
#: is free, the trial, its first heartbeat and identity. Its number is the count of the study's
#: trials before it, as ``RDBStorage.create_new_trial`` numbers trials.
_RESERVE_SQL = """
SELECT pg_advisory_xact_lock(%(k)s);
SELECT study_id FROM studies WHERE study_id = %(s)s FOR UPDATE;
WITH counts AS (
    SELECT state::text AS state, COUNT(*) AS n FROM trials WHERE study_id = %(s)s GROUP BY state
), orphans AS (
    SELECT COUNT(*) AS n FROM trials t LEFT JOIN trial_heartbeats h ON h.trial_id = t.trial_id
    WHERE t.study_id = %(s)s AND t.state = 'RUNNING' AND h.trial_id IS NULL
), free AS (
    SELECT 1 WHERE (SELECT n FROM orphans) = 0
    AND NOT EXISTS (SELECT 1 FROM counts WHERE state = 'WAITING')
    AND (SELECT COALESCE(SUM(n), 0) FROM counts WHERE state = ANY(%(held)s::text[])) < %(n)s
), created AS (
    INSERT INTO trials (number, study_id, state, datetime_start)
    SELECT (SELECT COALESCE(SUM(n), 0) FROM counts), %(s)s, 'RUNNING', %(now)s FROM free
    RETURNING trial_id, number
), beat AS (
    INSERT INTO trial_heartbeats (trial_id, heartbeat) SELECT trial_id, now() FROM created
), identity AS (
    INSERT INTO trial_user_attributes (trial_id, key, value_json)
    SELECT c.trial_id, a.key, a.value
    FROM created c, unnest(%(keys)s::text[], %(jsons)s::text[]) AS a(key, value)
)
SELECT (SELECT json_object_agg(state, n) FROM counts), (SELECT n FROM orphans),
    (SELECT trial_id FROM created), (SELECT number FROM created)
"""


def reserve_trial_row(
    handle: StudyHandle,
    lock_key: int,
    n_trials: int,
    identity: dict[str, Any],
    *,
    slot_states: Sequence[str],
) -> tuple[dict[str, int], tuple[int, int] | None]:
    """The whole reservation of a claim in ONE PostgreSQL transaction (a few milliseconds of
    lock), when nothing unusual is in the study.

    Under the transaction-level advisory lock ``lock_key`` (the claim lock) and Optuna's own
    trial-creation lock (the study row, ``FOR UPDATE``): count trials by state; when a slot is
    free (the trials in ``slot_states`` number fewer than ``n_trials``: the budget rule of
    :func:`cnas_hpc.study.budget.free_slots`, whose :data:`~cnas_hpc.study.budget.SLOT_STATES`
    the claim passes here, so the SQL never restates it), no trial WAITs (a retry to hand out)
    and no RUNNING trial lacks a heartbeat (an orphan to fail), insert the RUNNING trial exactly
    as ``RDBStorage.create_new_trial`` does (its number: the count of the study's earlier
    trials), its first heartbeat and ``identity``.
    The lock ends with the transaction: a holder that dies releases it.

    Returns:
        ``(trials by state, (trial id, number))``; None instead of the trial when nothing was
        created (no slot, or the full claim must run: the counts say which).
    """
    assert handle.engine.dialect.name == "postgresql"
    values = {
        "k": lock_key,
        "s": handle.study_id,
        "n": n_trials,
        "held": list(slot_states),
        "now": datetime.datetime.now(datetime.UTC).replace(tzinfo=None),
        "keys": list(identity),
        "jsons": [json.dumps(value) for value in identity.values()],
    }
    with handle.engine.begin() as conn:
        row = conn.exec_driver_sql(_RESERVE_SQL, values).one()
    by_state, orphans, trial_id, number = row
    counts = {_state_name(state): int(n) for state, n in (by_state or {}).items()}
    if orphans:
        counts["ORPHANED"] = int(orphans)
    if trial_id is None:
        return counts, None
    return counts, (int(trial_id), int(number))


def _dist_json(dist: BaseDistribution) -> str:
    return optuna.distributions.distribution_to_json(dist)


def arch_hashes(
    handle: StudyHandle, key: str, after_trial_id: int
) -> list[tuple[int, int, str, Any]]:
    """``(trial_id, number, state, value)`` of user attribute ``key`` of the RUNNING trials and
    of the COMPLETE trials with an id above ``after_trial_id``: what a duplicate check needs to
    learn since it last looked (a COMPLETE trial never changes).
    """
    with handle.engine.connect() as conn:
        return _arch_rows(conn, handle.study_id, key, after_trial_id)


def _arch_query(study_id: int, key: str, after_trial_id: int) -> sqlalchemy.Select[Any]:
    attr = optuna_schema.trial_user_attributes
    complete_news = sqlalchemy.and_(_T.c.state == "COMPLETE", _T.c.trial_id > after_trial_id)
    return (
        sqlalchemy.select(_T.c.trial_id, _T.c.number, _T.c.state, attr.c.value_json)
        .join_from(_T, attr, sqlalchemy.and_(attr.c.trial_id == _T.c.trial_id, attr.c.key == key))
        .where(_T.c.study_id == study_id, sqlalchemy.or_(_RUNNING, complete_news))
    )


def _arch_rows(
    conn: sqlalchemy.Connection,
    study_id: int,
    key: str,
    after_trial_id: int,
    lock_key: int | None = None,
) -> list[tuple[int, int, str, Any]]:
    """The rows :func:`arch_hashes` returns; with ``lock_key`` (PostgreSQL), taken after the
    transaction-level advisory lock in the same round trip (the query compiled for the driver
    and sent after the lock as one script)."""
    query = _arch_query(study_id, key, after_trial_id)
    if lock_key is None:
        rows = conn.execute(query).all()
    else:
        compiled = query.compile(dialect=conn.dialect)
        script = "SELECT pg_advisory_xact_lock(%(cnas_lock)s); " + str(compiled)
        rows = conn.exec_driver_sql(script, {**compiled.params, "cnas_lock": lock_key}).all()
    return [(int(i), int(n), _state_name(s), json.loads(v)) for i, n, s, v in rows]


def write_rows_unless(
    handle: StudyHandle,
    trial_id: int,
    *,
    lock_key: int | None,
    key: str,
    after_trial_id: int,
    duplicate_of: Callable[[list[tuple[int, int, str, Any]]], int | None],
    params: dict[str, tuple[Any, BaseDistribution]],
    user_attrs: dict[str, Any],
) -> int | None:
    """In one transaction (under the transaction-level advisory lock ``lock_key`` on
    PostgreSQL; the caller holds the file lock on SQLite): read what :func:`arch_hashes` reads,
    ask ``duplicate_of`` about it, and write the trial's rows unless it names a duplicate.

    Returns:
        What ``duplicate_of`` returned (None: the rows were written).
    """
    with handle.engine.begin() as conn:
        rows = _arch_rows(conn, handle.study_id, key, after_trial_id, lock_key)
        duplicate = duplicate_of(rows)
        if duplicate is None:
            _write_rows(conn, trial_id, params, user_attrs)
    return duplicate


class RecentAndBestTrials:
    """A view of a study whose trial list keeps, of the finished trials, only the best quarter
    of ``keep`` and the most recent others (RUNNING ones all): what a sampler reads through
    ``Study._get_trials`` when its history is capped. Everything else is the study's own.

    Used by :class:`cnas_hpc.study.sampler.SpaceTPESampler` with ``study.sampler.max_history``:
    TPE's cost grows with every trial it reads (0.2 s per proposal at 10,000 trials here).
    """

    def __init__(self, study: optuna.Study, keep: int) -> None:
        self._study = study
        self._keep = keep

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def _get_trials(
        self,
        deepcopy: bool = True,
        states: Any = None,
        use_cache: bool = False,
    ) -> list[FrozenTrial]:
        trials = self._study._get_trials(deepcopy=deepcopy, states=states, use_cache=use_cache)
        finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
        if len(finished) <= self._keep:
            return trials
        sign = -1.0 if self._study.direction == optuna.study.StudyDirection.MAXIMIZE else 1.0
        complete = [t for t in finished if t.state == TrialState.COMPLETE and t.values]
        best = sorted(complete, key=lambda t: sign * t.values[0])[: self._keep // 4]
        chosen = {t.number for t in best}
        for trial in reversed(finished):
            if len(chosen) >= self._keep:
                break
            chosen.add(trial.number)
        return [t for t in trials if t.number in chosen or not t.state.is_finished()]
