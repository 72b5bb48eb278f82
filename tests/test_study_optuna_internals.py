"""Pins every assumption cnas_hpc.study.optuna_internals makes about Optuna's private API.

An Optuna upgrade that renames an attribute or changes the RDB schema fails HERE, with the
assumption named, instead of inside a worker on the cluster. Run against every RDB storage we
support (SQLite always; PostgreSQL with the dev cluster).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState

from cnas_hpc.config.study import StudyConfig
from cnas_hpc.study import optuna_internals as internals
from cnas_hpc.study.storage import make_storage


@pytest.fixture(params=["sqlite", "postgres"])
def study(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[optuna.Study]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'pin.db'}"
    else:
        url = request.getfixturevalue("fresh_pg_url")
    storage = make_storage(
        StudyConfig(storage=url, heartbeat_interval=5, grace_period=60), create_tables=True
    )
    study = optuna.create_study(storage=storage, study_name="pin")
    yield study
    storage.engine.dispose()


def test_the_installed_optuna_is_in_the_checked_range() -> None:
    low, high = internals.SUPPORTED_OPTUNA
    version = tuple(int(part) for part in optuna.__version__.split(".")[:2])
    assert low <= version < high, (
        f"optuna {optuna.__version__} is outside {low}..{high}: re-check "
        "cnas_hpc/study/optuna_internals.py and widen SUPPORTED_OPTUNA"
    )


def test_private_attributes_match_the_public_api(study: optuna.Study) -> None:
    storage = internals.storage_of(study)
    assert isinstance(storage, optuna.storages.BaseStorage), "Study._storage"
    assert internals.study_id_of(study) == storage.get_study_id_from_name("pin"), "Study._study_id"
    trial = study.ask()
    public_id = storage.get_trial_id_from_study_id_trial_number(
        storage.get_study_id_from_name("pin"), trial.number
    )
    assert internals.trial_id_of(trial) == public_id, "Trial._trial_id"
    frozen = study.get_trials(deepcopy=False)[0]
    assert internals.trial_id_of(frozen) == public_id, "FrozenTrial._trial_id"
    assert internals.rdb_backend(study) is not None, "_CachedStorage._backend is an RDBStorage"
    assert isinstance(internals.engine_of(study), sqlalchemy.Engine), "RDBStorage.engine"
    assert internals.grace_period_of(study) == 60, "RDBStorage.grace_period"


def test_the_rdb_schema_has_what_the_queries_read(study: optuna.Study) -> None:
    engine = internals.engine_of(study)
    assert engine is not None
    with engine.connect() as conn:
        version = conn.execute(sqlalchemy.text("SELECT version_num FROM alembic_version")).scalar()
    assert version in internals.KNOWN_SCHEMA_VERSIONS, (
        f"Optuna's RDB schema is now {version!r}: re-check the SQL in optuna_internals.py, then "
        "add it to KNOWN_SCHEMA_VERSIONS"
    )
    inspector = sqlalchemy.inspect(engine)
    columns = {
        t: {c["name"] for c in inspector.get_columns(t)} for t in inspector.get_table_names()
    }
    assert {"trial_id", "number", "study_id", "state", "datetime_start"} <= columns["trials"]
    assert {"trial_id", "heartbeat"} <= columns["trial_heartbeats"]


def test_the_queries_agree_with_the_public_api(study: optuna.Study) -> None:
    done = study.ask()
    study.tell(done, 1.0)
    beating = study.ask()
    silent = study.ask()
    storage = internals.storage_of(study)
    internals.record_heartbeat(storage, internals.trial_id_of(beating))
    counts = internals.count_by_state(study)
    assert counts == {"COMPLETE": 1, "RUNNING": 2}
    public = {s.name: 0 for s in TrialState}
    for t in study.get_trials(deepcopy=False):
        public[t.state.name] += 1
    assert all(public[state] == n for state, n in counts.items())
    ages = internals.heartbeat_ages(study)
    assert set(ages) == {beating.number} and 0.0 <= ages[beating.number] < 60
    orphans = internals.running_without_heartbeat(study)
    assert [number for _, number, _ in orphans] == [silent.number]
    assert internals.fail_trial(study, internals.trial_id_of(silent))
    assert not internals.fail_trial(study, internals.trial_id_of(silent))  # already finished
    assert study.get_trials(deepcopy=False)[silent.number].state == TrialState.FAIL


def test_the_lean_read_of_finished_trials_equals_optunas(study: optuna.Study) -> None:
    """Every kind of row, every special value: the lean read must give Optuna's own trials."""
    space = {
        "c": optuna.distributions.CategoricalDistribution(["a", "b", "c"]),
        "x": optuna.distributions.FloatDistribution(0.0, 1.0),
        "n": optuna.distributions.IntDistribution(1, 9),
    }
    for value, state in ((1.5, TrialState.COMPLETE), (float("inf"), TrialState.COMPLETE)):
        trial = study.ask(space)
        trial.set_user_attr("cnas:genotype", '{"normal": [["skip_connect", 0]]}')
        trial.set_user_attr("nested", {"a": [1, 2]})
        study._storage.set_trial_system_attr(internals.trial_id_of(trial), "s", [1])
        trial.report(float("nan"), 1)
        trial.report(-float("inf"), 2)
        trial.report(0.25, 3)
        study.tell(trial, value, state=state)
    pruned = study.ask(space)
    pruned.report(2.0, 1)
    study.tell(pruned, state=TrialState.PRUNED)
    study.tell(study.ask(space), state=TrialState.FAIL)
    running = study.ask(space)
    lean = internals.load_trials(study)
    reference = study.get_trials(deepcopy=False)
    assert len(lean) == 5 and lean[-1].number == running.number
    for mine, theirs in zip(lean, reference, strict=True):
        assert repr(mine) == repr(theirs)  # repr: NaN != NaN would defeat ==
    newer = internals.load_trials(study, {internals.trial_id_of(running)}, lean[2]._trial_id)
    assert [t.number for t in newer] == [3, 4]

    # A study handle on the lean cache sees exactly what Optuna's own cache sees, then and after.
    backend = internals.rdb_backend(study)
    assert backend is not None
    lean_study = optuna.load_study(study_name="pin", storage=internals.LeanCachedStorage(backend))
    url = backend.engine.url.render_as_string(hide_password=False)
    stock = optuna.load_study(study_name="pin", storage=url)
    assert repr(lean_study.get_trials(deepcopy=False)) == repr(stock.get_trials(deepcopy=False))
    study.tell(running, 0.5)
    later = study.ask(space)  # finished and created after the first read: both seen
    assert repr(lean_study.get_trials(deepcopy=False)) == repr(stock.get_trials(deepcopy=False))
    assert later.number in {t.number for t in lean_study.get_trials(deepcopy=False)}


def test_the_lean_read_keeps_each_trials_parameter_order_when_rows_interleave(
    study: optuna.Study,
) -> None:
    """Two workers suggesting at once interleave their parameter rows: each trial must still
    list its parameters in its own order, as Optuna's read does."""
    first, second = study.ask(), study.ask()
    first.suggest_int("n", 1, 9)
    second.suggest_float("x", 0.0, 1.0)
    first.suggest_categorical("c", ["a", "b"])
    second.suggest_int("n", 1, 9)
    first.suggest_float("x", 0.0, 1.0)
    second.suggest_categorical("c", ["a", "b"])
    study.tell(first, 1.0)
    study.tell(second, 2.0)
    lean = internals.load_trials(study)
    assert [list(t.params) for t in lean] == [["n", "c", "x"], ["x", "n", "c"]]
    assert repr(lean) == repr(study.get_trials(deepcopy=False))


def test_rows_written_in_one_go_read_back_as_optunas_own_and_not_after_the_end(
    study: optuna.Study,
) -> None:
    """``write_trial_rows`` (one round trip on PostgreSQL): every kind of row and special value,
    replacements, and a refusal once the trial is finished that writes nothing."""
    trial = study.ask()
    trial_id = internals.trial_id_of(trial)
    choice = optuna.distributions.CategoricalDistribution(["a", "b"])
    internals.write_trial_rows(
        study,
        trial_id,
        params={"c": ("b", choice), "x": (0.5, optuna.distributions.FloatDistribution(0, 1))},
        user_attrs={"nested": [1, "z"], "f": 1.5},
        intermediate={1: 0.5, 2: float("nan"), 3: float("inf"), 4: -float("inf")},
    )
    internals.write_trial_rows(study, trial_id, user_attrs={"f": 2.5}, intermediate={1: 0.25})
    study.tell(trial, 1.0)
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError, match="COMPLETE"):
        internals.write_trial_rows(study, trial_id, user_attrs={"late": 1}, intermediate={9: 1.0})
    backend = internals.rdb_backend(study)
    assert backend is not None
    url = backend.engine.url.render_as_string(hide_password=False)
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
