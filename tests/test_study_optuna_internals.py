"""Pins every assumption cnas_hpc.study.optuna_internals makes about Optuna's private API and
tables (each hook of ARCHITECTURE.md's "Optuna hooks" table has its test here).

An Optuna upgrade that renames an attribute or changes the RDB schema fails HERE, with the
assumption named, instead of inside a worker on the cluster. Run against every RDB storage we
support (SQLite always; PostgreSQL with the dev cluster), with the installed Optuna and, by
``.ci/floors.py``, with the floor release of ``pyproject.toml``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
import sqlalchemy
from optuna.distributions import BaseDistribution
from optuna.storages._cached_storage import _CachedStorage, _StudyInfo
from optuna.trial import FrozenTrial, TrialState

from cnas_hpc.config.study import StudyConfig
from cnas_hpc.study import optuna_internals as internals
from cnas_hpc.study import optuna_schema
from cnas_hpc.study.budget import SLOT_STATES
from cnas_hpc.study.handle import StudyHandle
from cnas_hpc.study.storage import make_storage


@pytest.fixture(params=["sqlite", "postgres"])
def handle(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StudyHandle]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'pin.db'}"
    else:
        url = request.getfixturevalue("fresh_pg_url")
    storage = make_storage(
        StudyConfig(storage=url, heartbeat_interval=5, grace_period=60), create_tables=True
    )
    optuna.create_study(storage=storage, study_name="pin")
    yield internals.open_handle(storage, "pin")
    storage.engine.dispose()


def stock_of(handle: StudyHandle) -> optuna.Study:
    """The study through Optuna's own trial cache (the reference the lean read must equal)."""
    return optuna.load_study(study_name=handle.name, storage=handle.storage)


#: ``(trial_id, number, state, value)`` rows of the duplicate check.
Rows = list[tuple[int, int, str, Any]]


def trial_id_of(handle: StudyHandle, number: int) -> int:
    return handle.storage.get_trial_id_from_study_id_trial_number(handle.study_id, number)


def test_the_installed_optuna_is_in_the_checked_range() -> None:
    low, high = internals.SUPPORTED_OPTUNA
    version = tuple(int(part) for part in optuna.__version__.split(".")[:2])
    assert low <= version < high, (
        f"optuna {optuna.__version__} is outside {low}..{high}: re-check "
        "cnas_hpc/study/optuna_internals.py and widen SUPPORTED_OPTUNA"
    )


def test_the_handle_holds_what_the_public_api_says(handle: StudyHandle) -> None:
    assert handle.study_id == handle.storage.get_study_id_from_name("pin")
    assert handle.engine is handle.storage.engine and handle.name == "pin"
    assert handle.storage.grace_period == 60, "RDBStorage.grace_period"
    assert isinstance(handle.cache, internals.LeanCachedStorage)


def test_a_trial_opened_by_id_is_the_asked_one_and_its_snapshot_learns_the_batched_rows(
    handle: StudyHandle,
) -> None:
    """Hooks ``Trial(study, trial_id)`` and ``Trial._cached_frozen_trial`` (the batched claim)."""
    trial_id = handle.cache.create_new_trial(handle.study_id)
    trial = internals.open_trial(handle, trial_id)
    assert trial.number == 0 and trial_id_of(handle, trial.number) == trial_id
    frozen = internals.frozen_of(trial)
    assert isinstance(frozen, optuna.trial.FrozenTrial), "Trial._cached_frozen_trial"
    assert frozen.number == trial.number and frozen.state == TrialState.RUNNING
    choice = optuna.distributions.CategoricalDistribution(["a", "b"])
    internals.write_trial_rows(handle, trial_id, params={"c": ("b", choice)}, user_attrs={"k": 1})
    internals.remember_rows(trial, {"c": ("b", choice)}, {"k": 1})
    assert trial.params == {"c": "b"} and trial.user_attrs == {"k": 1}  # read from the snapshot
    assert trial.suggest_categorical("c", ["a", "b"]) == "b"  # Optuna sees it as suggested
    assert handle.storage.get_trial(trial_id).params == {"c": "b"}


def test_the_capped_history_is_what_tpe_reads(handle: StudyHandle) -> None:
    """Hook ``Study._get_trials``: TPE reads its history through it, so the capped view caps."""
    space: dict[str, BaseDistribution] = {"x": optuna.distributions.FloatDistribution(0.0, 1.0)}
    for k in range(12):
        trial = handle.study.ask(space)
        handle.study.tell(trial, float(k))
    reads: list[int] = []

    class Spy(internals.RecentAndBestTrials):
        def _get_trials(self, *args: object, **kwargs: object) -> list[FrozenTrial]:
            trials = super()._get_trials(*args, **kwargs)  # type: ignore[arg-type]
            reads.append(len([t for t in trials if t.state.is_finished()]))
            return trials

    sampler = optuna.samplers.TPESampler(n_startup_trials=2, seed=0)
    frozen = internals.frozen_of(handle.study.ask())
    sampler.sample_independent(Spy(handle.study, 8), frozen, "x", space["x"])  # type: ignore[arg-type]
    assert reads and set(reads) == {8}, "TPE reads its history through Study._get_trials"


def test_the_lean_cache_keeps_optunas_bookkeeping(handle: StudyHandle) -> None:
    """Hook ``_CachedStorage._read_trials_from_remote_storage`` and its ``_StudyInfo``."""
    assert callable(getattr(_CachedStorage, "_read_trials_from_remote_storage", None))
    assert callable(getattr(_CachedStorage, "_add_trials_to_cache", None))
    info = _StudyInfo()
    assert info.unfinished_trial_ids == set() and info.last_finished_trial_id == -1
    done = handle.study.ask()
    handle.study.tell(done, 1.0)
    running = handle.study.ask()
    assert [t.number for t in handle.study.get_trials(deepcopy=False)] == [0, 1]
    studies = handle.cache._studies  # type: ignore[attr-defined]
    assert studies[handle.study_id].unfinished_trial_ids == {trial_id_of(handle, running.number)}
    assert studies[handle.study_id].last_finished_trial_id == trial_id_of(handle, done.number)


def test_the_described_tables_and_columns_exist(handle: StudyHandle) -> None:
    with handle.engine.connect() as conn:
        version = conn.execute(sqlalchemy.text("SELECT version_num FROM alembic_version")).scalar()
    assert version in internals.KNOWN_SCHEMA_VERSIONS, (
        f"Optuna's RDB schema is now {version!r}: re-check optuna_schema.py and the PostgreSQL "
        "scripts of optuna_internals.py, then add it to KNOWN_SCHEMA_VERSIONS"
    )
    inspector = sqlalchemy.inspect(handle.engine)
    for table in optuna_schema.METADATA.tables.values():
        present = {c["name"] for c in inspector.get_columns(table.name)}
        missing = {c.name for c in table.columns} - present
        assert not missing, f"Optuna's table {table.name} lacks {sorted(missing)}"


def test_the_queries_agree_with_the_public_api(handle: StudyHandle) -> None:
    study = handle.study
    done = study.ask()
    study.tell(done, 1.0)
    beating = study.ask()
    silent = study.ask()
    handle.storage.record_heartbeat(trial_id_of(handle, beating.number))
    counts = internals.count_by_state(handle)
    assert counts == {"COMPLETE": 1, "RUNNING": 2}
    public = {s.name: 0 for s in TrialState}
    for t in study.get_trials(deepcopy=False):
        public[t.state.name] += 1
    assert all(public[state] == n for state, n in counts.items())
    ages = internals.heartbeat_ages(handle)
    assert set(ages) == {beating.number} and 0.0 <= ages[beating.number] < 60
    orphans = internals.running_without_heartbeat(handle)
    assert [number for _, number, _ in orphans] == [silent.number]
    assert internals.budget_snapshot(handle) == (counts, 1)
    assert internals.fail_trial(handle, silent.number)
    assert not internals.fail_trial(handle, silent.number)  # already finished
    assert study.get_trials(deepcopy=False)[silent.number].state == TrialState.FAIL


def test_the_lean_read_of_finished_trials_equals_optunas(handle: StudyHandle) -> None:
    """Every kind of row, every special value: the lean read must give Optuna's own trials."""
    study = stock_of(handle)
    space = {
        "c": optuna.distributions.CategoricalDistribution(["a", "b", "c"]),
        "x": optuna.distributions.FloatDistribution(0.0, 1.0),
        "n": optuna.distributions.IntDistribution(1, 9),
    }
    for value, state in ((1.5, TrialState.COMPLETE), (float("inf"), TrialState.COMPLETE)):
        trial = study.ask(space)
        trial.set_user_attr("cnas:genotype", '{"normal": [["skip_connect", 0]]}')
        trial.set_user_attr("nested", {"a": [1, 2]})
        handle.storage.set_trial_system_attr(trial_id_of(handle, trial.number), "s", [1])
        trial.report(float("nan"), 1)
        trial.report(-float("inf"), 2)
        trial.report(0.25, 3)
        study.tell(trial, value, state=state)
    pruned = study.ask(space)
    pruned.report(2.0, 1)
    study.tell(pruned, state=TrialState.PRUNED)
    study.tell(study.ask(space), state=TrialState.FAIL)
    running = study.ask(space)
    lean = internals.load_trials(handle)
    reference = study.get_trials(deepcopy=False)
    assert len(lean) == 5 and lean[-1].number == running.number
    for mine, theirs in zip(lean, reference, strict=True):
        assert repr(mine) == repr(theirs)  # repr: NaN != NaN would defeat ==
    third = trial_id_of(handle, lean[2].number)
    newer = internals.load_trials(handle, {trial_id_of(handle, running.number)}, third)
    assert [t.number for t in newer] == [3, 4]

    # A study handle on the lean cache sees exactly what Optuna's own cache sees, then and after.
    lean_study = handle.study
    url = handle.engine.url.render_as_string(hide_password=False)
    stock = optuna.load_study(study_name="pin", storage=url)
    assert repr(lean_study.get_trials(deepcopy=False)) == repr(stock.get_trials(deepcopy=False))
    study.tell(running, 0.5)
    later = study.ask(space)  # finished and created after the first read: both seen
    assert repr(lean_study.get_trials(deepcopy=False)) == repr(stock.get_trials(deepcopy=False))
    assert later.number in {t.number for t in lean_study.get_trials(deepcopy=False)}


def test_the_lean_read_keeps_each_trials_parameter_order_when_rows_interleave(
    handle: StudyHandle,
) -> None:
    """Two workers suggesting at once interleave their parameter rows: each trial must still
    list its parameters in its own order, as Optuna's read does."""
    study = stock_of(handle)
    first, second = study.ask(), study.ask()
    first.suggest_int("n", 1, 9)
    second.suggest_float("x", 0.0, 1.0)
    first.suggest_categorical("c", ["a", "b"])
    second.suggest_int("n", 1, 9)
    first.suggest_float("x", 0.0, 1.0)
    second.suggest_categorical("c", ["a", "b"])
    study.tell(first, 1.0)
    study.tell(second, 2.0)
    lean = internals.load_trials(handle)
    assert [list(t.params) for t in lean] == [["n", "c", "x"], ["x", "n", "c"]]
    assert repr(lean) == repr(study.get_trials(deepcopy=False))


def test_rows_written_in_one_go_read_back_as_optunas_own_and_not_after_the_end(
    handle: StudyHandle,
) -> None:
    """``write_trial_rows`` (one round trip on PostgreSQL): every kind of row and special value,
    replacements, and a refusal once the trial is finished that writes nothing."""
    study = handle.study
    trial = study.ask()
    trial_id = trial_id_of(handle, trial.number)
    choice = optuna.distributions.CategoricalDistribution(["a", "b"])
    internals.write_trial_rows(
        handle,
        trial_id,
        params={"c": ("b", choice), "x": (0.5, optuna.distributions.FloatDistribution(0, 1))},
        user_attrs={"nested": [1, "z"], "f": 1.5},
        intermediate={1: 0.5, 2: float("nan"), 3: float("inf"), 4: -float("inf")},
    )
    internals.write_trial_rows(handle, trial_id, user_attrs={"f": 2.5}, intermediate={1: 0.25})
    study.tell(trial, 1.0)
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError, match="COMPLETE"):
        internals.write_trial_rows(handle, trial_id, user_attrs={"late": 1}, intermediate={9: 1.0})
    url = handle.engine.url.render_as_string(hide_password=False)
    (stored,) = optuna.load_study(study_name="pin", storage=url).get_trials(deepcopy=False)
    assert stored.params == {"c": "b", "x": 0.5}
    assert stored.user_attrs == {"nested": [1, "z"], "f": 2.5}
    assert repr(stored.intermediate_values) == repr({1: 0.25, 2: float("nan"), 3: float("inf"),
                                                     4: -float("inf")})  # fmt: skip
    assert list(stored.params) == ["c", "x"]


@pytest.mark.filterwarnings("ignore::FutureWarning")  # constraints_func, deprecated in Optuna 5
def test_constraint_values_are_read_where_optuna_writes_them() -> None:
    def limit(trial: optuna.trial.FrozenTrial) -> list[float]:
        return [trial.params.get("x", 9.0) - 0.5]

    sampler = optuna.samplers.TPESampler(seed=0, constraints_func=limit)
    study = optuna.create_study(sampler=sampler)
    study.optimize(lambda t: t.suggest_float("x", 0.0, 1.0), n_trials=3)
    for done in study.trials:
        assert internals.constraint_values_of(done) == [done.params["x"] - 0.5]
    assert internals.constraint_values_of(optuna.trial.create_trial(value=1.0)) is None
    # Optuna >= 5: one key per constraint, through Trial.set_constraint.
    asked = study.ask()
    if hasattr(asked, "set_constraint"):
        asked.set_constraint("params", 2.0)
        study.tell(asked, 1.0)
        frozen = study.trials[-1]
        assert internals.constraint_values_of(frozen) == [8.5, 2.0]  # the sampler's too
        assert sorted(frozen.constraints.values()) == [2.0, 8.5]


def test_the_duplicate_check_reads_what_changed_and_writes_only_an_original(
    handle: StudyHandle,
) -> None:
    """``write_rows_unless`` (on PostgreSQL one round trip: the advisory lock, then the Core
    query compiled for the driver): it reads RUNNING trials and COMPLETE ones after the given id,
    and writes nothing when the check names a duplicate."""
    study = handle.study
    done = study.ask()
    done_id = trial_id_of(handle, done.number)
    internals.write_trial_rows(handle, done_id, user_attrs={"h": "aa"})
    study.tell(done, 1.0)
    new_id = handle.cache.create_new_trial(handle.study_id)
    lock = 7 if handle.engine.dialect.name == "postgresql" else None
    seen: list[Rows] = []

    def write(after: int, answer: int | None, value: str) -> int | None:
        def check(rows: Rows) -> int | None:
            seen.append(rows)
            return answer

        return internals.write_rows_unless(
            handle, new_id, lock_key=lock, key="h", after_trial_id=after, duplicate_of=check,
            params={}, user_attrs={"h": value},
        )  # fmt: skip

    assert write(-1, 0, "aa") == 0
    assert seen[-1] == [(done_id, done.number, "COMPLETE", "aa")]
    assert "h" not in handle.storage.get_trial(new_id).user_attrs  # a duplicate: nothing written
    assert write(done_id, None, "bb") is None
    assert seen[-1] == []  # the COMPLETE trial is old news; the new one has no hash yet
    assert handle.storage.get_trial(new_id).user_attrs == {"h": "bb"}
    assert internals.arch_hashes(handle, "h", done_id) == [(new_id, 1, "RUNNING", "bb")]


def test_the_one_round_trip_reservation_makes_the_trial_optuna_would(
    handle: StudyHandle,
) -> None:
    """``reserve_trial_row`` (PostgreSQL): the RUNNING trial as ``RDBStorage.create_new_trial``
    makes it (next number, start time), with its first heartbeat and identity; nothing when
    no slot is free."""
    if handle.engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL only (SQLite claims take the file lock and Optuna's calls)")
    done = handle.study.ask()
    handle.study.tell(done, 1.0)
    counts, created = internals.reserve_trial_row(
        handle, 42, 3, {"who": "w"}, slot_states=SLOT_STATES
    )
    assert counts == {"COMPLETE": 1} and created is not None
    trial_id, number = created
    assert number == 1 and trial_id_of(handle, number) == trial_id
    stock = stock_of(handle).get_trials(deepcopy=False)[number]
    assert stock.state == TrialState.RUNNING and stock.user_attrs == {"who": "w"}
    assert stock.datetime_start is not None
    assert set(internals.heartbeat_ages(handle)) == {number}
    counts, created = internals.reserve_trial_row(handle, 42, 2, {}, slot_states=SLOT_STATES)
    assert created is None and counts == {"COMPLETE": 1, "RUNNING": 1}  # the budget is held
