"""Study storage, bootstrap and budget claims, against every storage we support.

Like Optuna's own storage conformance suites, each test runs on SQLite and on a REAL PostgreSQL
server (``postgres`` marker: the dev cluster, see conftest.py).
"""

from __future__ import annotations

import multiprocessing as mp
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
import sqlalchemy
import torch
from optuna.trial import TrialState

from cnas_hpc.common import attrs
from cnas_hpc.common.errors import ConfigError, StudyError
from cnas_hpc.common.storage_url import mask_url, normalize_storage_url
from cnas_hpc.config import Settings
from cnas_hpc.search.worker import run_worker
from cnas_hpc.space.encoding import compact_hash, encoding_from_config
from cnas_hpc.space.genotype import DARTS_V2, PC_DARTS, genotype_from_json
from cnas_hpc.study.budget import count_budget
from cnas_hpc.study.claim import ClaimStatus, claim_trial
from cnas_hpc.study.handle import StudyHandle
from cnas_hpc.study.lifecycle import bootstrap_study, load_study
from cnas_hpc.study.sampler import make_sampler, worker_seed
from tests.helpers import tiny_settings


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/study.db"
    return str(request.getfixturevalue("fresh_pg_url"))


#: The start method of the concurrent processes below: fork (as tests/test_study_budget.py),
#: so that each starts with what this process imported; a spawned one imported torch and the
#: project again (~3 CPU-s each). They share nothing but the database: each composes its own
#: settings and opens its own connections (no engine is open here when they fork).
CONCURRENT = mp.get_context("fork")


@pytest.fixture
def one_cpu(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A worker allotted one CPU (``SLURM_CPUS_PER_TASK=1``): one torch thread, no thread count
    measured per candidate (which these tests do not check; it cost 40 % more CPU here). The
    worker sets torch's threads process-wide: restored after."""
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def settings_for(tmp_path: Path, url: str, *overrides: str) -> Settings:
    return tiny_settings(tmp_path, f"study.storage={url}", "study.name=t", *overrides)


def short_grace_study(tmp_path: Path, url: str) -> StudyHandle:
    """A bootstrapped study, opened by worker 0, whose trials go stale quickly: heartbeats
    every 1 s, declared dead after 2 s without one."""
    s = settings_for(tmp_path, url, "study.heartbeat_interval=1", "study.grace_period=2")
    bootstrap_study(s)
    return load_study(s, worker=0)


def test_plain_postgresql_urls_get_the_psycopg2_driver() -> None:
    assert normalize_storage_url("postgresql://u@h:5432/db") == "postgresql+psycopg2://u@h:5432/db"
    assert normalize_storage_url("postgres://u@h/db").startswith("postgresql+psycopg2://")
    with pytest.raises(StudyError, match="psycopg2"):
        normalize_storage_url("postgresql+psycopg://u@h/db")
    with pytest.raises(StudyError, match="not supported"):
        normalize_storage_url("mysql://u@h/db")


def test_relative_sqlite_paths_become_absolute(tmp_path: Path) -> None:
    url = normalize_storage_url("sqlite:///runs/x.db", base_dir=tmp_path)
    assert url == f"sqlite:///{tmp_path}/runs/x.db"


def test_passwords_are_masked() -> None:
    masked = mask_url("postgresql+psycopg2://me:s3cr3t@db:5432/nas")
    assert "s3cr3t" not in masked
    assert masked == "postgresql+psycopg2://me:***@db:5432/nas"


def test_worker_seeds_differ_and_are_reproducible() -> None:
    seeds = [worker_seed(0, w) for w in range(64)]
    assert len(set(seeds)) == 64
    assert seeds == [worker_seed(0, w) for w in range(64)]
    assert worker_seed(None, 3) is None
    assert worker_seed(1, 0) != worker_seed(0, 0)
    # one seed per proposal: a restarted worker does not replay its earlier proposals
    per_trial = [worker_seed(0, 3, n) for n in range(64)]
    assert len(set(per_trial)) == 64 and per_trial == [worker_seed(0, 3, n) for n in range(64)]


def test_sampler_settings_are_explicit(tmp_path: Path) -> None:
    s = tiny_settings(
        tmp_path, "study.sampler.multivariate=false", "study.sampler.n_startup_trials=7"
    )
    sampler = make_sampler(s.study.sampler, worker=2)
    assert isinstance(sampler, optuna.samplers.TPESampler)
    assert sampler._n_startup_trials == 7
    assert sampler._multivariate is False
    assert sampler._constant_liar is True
    random = make_sampler(
        tiny_settings(tmp_path, "study.sampler.kind=random").study.sampler, worker=2
    )
    assert isinstance(random, optuna.samplers.RandomSampler)


@pytest.mark.usefixtures("one_cpu")
def test_known_cells_are_enqueued_once_and_evaluated_first(tmp_path: Path) -> None:
    s = tiny_settings(tmp_path, "search.n_trials=3", "search.enqueue=[DARTS_V2,PC_DARTS]")
    bootstrap_study(s)
    bootstrap_study(s)  # a rerun adds nothing
    study = load_study(s, worker=0).study
    waiting = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))
    assert [t.user_attrs[attrs.ENQUEUED_AS] for t in waiting] == ["DARTS_V2", "PC_DARTS"]
    run_worker(s)
    trials = load_study(s, worker=0).study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 3  # the budget counts them: exactly n_trials
    first = sorted(complete, key=lambda t: t.number)[:2]
    evaluated = [compact_hash(genotype_from_json(t.user_attrs[attrs.GENOTYPE])) for t in first]
    assert evaluated == [compact_hash(DARTS_V2), compact_hash(PC_DARTS)]  # the same cells
    bootstrap_study(s)
    assert len(load_study(s, worker=0).study.get_trials(deepcopy=False)) == len(trials)


def test_a_study_scored_with_another_setup_is_refused_naming_each_key(
    storage_url: str, tmp_path: Path
) -> None:
    s = settings_for(tmp_path, storage_url, "model.cells=5", "train.epochs=2")
    bootstrap_study(s)
    other = settings_for(tmp_path, storage_url, "model.cells=2", "train.epochs=1")
    expected = (
        "study 't' was scored with another setup: model.cells 5 -> 2, train.epochs 2 -> 1; "
        "use another study.name"
    )
    with pytest.raises(StudyError) as refused:
        bootstrap_study(other)
    assert str(refused.value) == expected
    with pytest.raises(StudyError, match="another setup"):
        load_study(other, worker=0)  # a worker started by hand is refused too
    load_study(other, worker=0, scoring=False)  # a reader (the report) scores nothing: allowed
    # What does not change a score resumes: threads, step plan, pruner, W&B, paths, budget.
    same = settings_for(
        tmp_path, storage_url, "model.cells=5", "train.epochs=2", "train.num_threads=1",
        "train.perf=nchw", "train.log_every_steps=3", "search.pruner=median",
        "search.n_trials=50", "wandb=offline", f"output_dir={tmp_path}/elsewhere",
        "worker=7",
    )  # fmt: skip
    assert not bootstrap_study(same).created
    load_study(same, worker=7)


def test_an_old_study_without_a_setup_records_it_at_its_first_resume(tmp_path: Path) -> None:
    s = tiny_settings(tmp_path)
    bootstrap_study(s)
    # An old study: made by code that did not record the setup.
    engine = sqlalchemy.create_engine(s.study.storage)
    with engine.begin() as connection:
        connection.execute(
            sqlalchemy.text("DELETE FROM study_user_attributes WHERE key = :key"),
            {"key": attrs.STUDY_SCORE_SETUP},
        )
    engine.dispose()
    assert attrs.STUDY_SCORE_SETUP not in load_study(s, worker=0).study.user_attrs
    other = tiny_settings(tmp_path, "train.epochs=3")
    assert not bootstrap_study(other).created  # not refused: recorded as it is now
    assert (
        load_study(other, worker=0).study.user_attrs[attrs.STUDY_SCORE_SETUP]["train.epochs"] == 3
    )
    with pytest.raises(StudyError, match=r"train\.epochs 3 -> 1"):
        bootstrap_study(tiny_settings(tmp_path, "train.epochs=1"))


def test_a_known_cell_outside_the_space_is_refused(tmp_path: Path) -> None:
    s = tiny_settings(
        tmp_path, "space.ops=[sep_conv_3x3,max_pool_3x3]", "search.enqueue=[DARTS_V2]"
    )
    with pytest.raises(ConfigError, match=r"search\.enqueue: DARTS_V2"):
        bootstrap_study(s)
    with pytest.raises(ConfigError, match=r"more than search\.n_trials"):
        tiny_settings(tmp_path, "search.n_trials=1", "search.enqueue=[DARTS_V2,PC_DARTS]")


def test_bootstrap_creates_once_then_resumes(storage_url: str, tmp_path: Path) -> None:
    s = settings_for(tmp_path, storage_url)
    first = bootstrap_study(s)
    assert first.created and first.n_complete == 0
    again = bootstrap_study(s)
    assert not again.created
    study = load_study(s, worker=0).study
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    assert study.user_attrs[attrs.STUDY_OBJECTIVE] == "val_contrastive_loss"
    # optuna-dashboard labels the value by the objective, not "Objective 0".
    assert study.metric_names == ["val_contrastive_loss"]


def test_a_study_built_for_another_space_or_objective_is_refused(
    storage_url: str, tmp_path: Path
) -> None:
    bootstrap_study(settings_for(tmp_path, storage_url))
    with pytest.raises(StudyError, match="another search space"):
        bootstrap_study(settings_for(tmp_path, storage_url, "space.n_nodes=3"))
    with pytest.raises(StudyError, match="objective"):
        bootstrap_study(
            settings_for(tmp_path, storage_url, "search.objective=train_contrastive_loss")
        )
    with pytest.raises(StudyError, match="another search space"):
        load_study(settings_for(tmp_path, storage_url, "space=csnas"), worker=0)


def test_loading_a_missing_study_fails_clearly(storage_url: str, tmp_path: Path) -> None:
    bootstrap_study(settings_for(tmp_path, storage_url))
    s = tiny_settings(tmp_path, f"study.storage={storage_url}", "study.name=other")
    with pytest.raises(StudyError, match="does not exist"):
        load_study(s, worker=0)


def _claim_and_finish(url: str, tmp: str, n_trials: int, worker: int) -> int:
    """A fake worker: claim trials and complete them at once, until the budget is spent."""
    settings = settings_for(Path(tmp), url)
    handle = load_study(settings, worker=worker)
    study = handle.study
    done = 0
    while True:
        claim = claim_trial(handle, n_trials)
        if claim.status is ClaimStatus.DONE:
            return done
        if claim.status is ClaimStatus.WAIT:
            time.sleep(0.05)
            continue
        assert claim.trial is not None
        claim.trial.suggest_float("x", 0, 1)
        study.tell(claim.trial, 1.0)
        done += 1


def _bootstrap_together(url: str, tmp: str, start: Any, results: Any) -> None:
    """A submitting process: compose the settings, wait for the other one, bootstrap at once."""
    settings = settings_for(Path(tmp), url)
    start.wait()
    try:
        results.put("created" if bootstrap_study(settings).created else "resumed")
    except Exception as exc:  # reported to the test, which names it
        results.put(f"{type(exc).__name__}: {exc}")


def test_two_bootstraps_started_together_on_a_new_database_both_succeed(
    storage_url: str, tmp_path: Path
) -> None:
    start, results = CONCURRENT.Barrier(2), CONCURRENT.Queue()
    processes = [
        CONCURRENT.Process(
            target=_bootstrap_together, args=(storage_url, str(tmp_path), start, results)
        )
        for _ in range(2)
    ]
    for process in processes:
        process.start()
    outcomes = sorted(results.get(timeout=120) for _ in processes)
    for process in processes:
        process.join(timeout=60)
    assert outcomes == ["created", "resumed"]  # one made schema and study, the other found them
    assert load_study(settings_for(tmp_path, storage_url), worker=0).study.user_attrs[
        attrs.STUDY_SPACE
    ]


def test_concurrent_claims_never_overshoot_the_budget(storage_url: str, tmp_path: Path) -> None:
    bootstrap_study(settings_for(tmp_path, storage_url))
    n_trials, n_workers = 13, 6
    with CONCURRENT.Pool(n_workers) as pool:
        done = pool.starmap(
            _claim_and_finish, [(storage_url, str(tmp_path), n_trials, w) for w in range(n_workers)]
        )
    study = load_study(settings_for(tmp_path, storage_url), worker=0).study
    states = [t.state for t in study.get_trials(deepcopy=False)]
    assert states.count(TrialState.COMPLETE) == n_trials == sum(done)
    assert len(states) == n_trials  # no surplus trial was ever asked


def test_a_stale_trial_is_failed_and_retried_with_the_same_params(
    storage_url: str, tmp_path: Path
) -> None:
    handle = short_grace_study(tmp_path, storage_url)
    study = handle.study
    claimed = claim_trial(handle, 3)
    dead = claimed.trial
    assert dead is not None and claimed.trial_id is not None
    dead.suggest_categorical("c", ["a", "b", "c"])
    handle.storage.record_heartbeat(claimed.trial_id)
    time.sleep(3.5)  # no heartbeat for longer than the grace period: the worker "died"
    retry = claim_trial(handle, 3)
    assert retry.trial is not None
    assert study.get_trials(deepcopy=False)[dead.number].state == TrialState.FAIL
    assert retry.trial.suggest_categorical("c", ["a", "b", "c"]) == dead.params["c"]
    assert retry.trial.user_attrs[attrs.RETRY_OF] == dead.number
    assert retry.trial.user_attrs[attrs.RETRY_COUNT] == 1
    assert count_budget(handle).running == 1


@pytest.mark.usefixtures("one_cpu")
def test_a_retried_known_cell_keeps_its_identity_and_the_one_arch_hash(tmp_path: Path) -> None:
    s = tiny_settings(
        tmp_path, "search.n_trials=1", "search.enqueue=[DARTS_V2]",
        "study.heartbeat_interval=1", "study.grace_period=2",
    )  # fmt: skip
    bootstrap_study(s)
    handle = load_study(s, worker=0)
    claimed = claim_trial(handle, 1)
    dead = claimed.trial
    assert dead is not None and dead.user_attrs[attrs.ENQUEUED_AS] == "DARTS_V2"
    assert claimed.trial_id is not None
    for name, distribution in encoding_from_config(s.space).distributions().items():
        dead.suggest_categorical(name, distribution.choices)  # the enqueued (fixed) values
    handle.storage.record_heartbeat(claimed.trial_id)
    time.sleep(3.5)  # its worker "died": the real worker below retries and trains the cell
    assert run_worker(s).completed == 1
    trials = load_study(s, worker=0).study.get_trials(deepcopy=False)
    (done,) = [t for t in trials if t.state == TrialState.COMPLETE]
    assert done.user_attrs[attrs.RETRY_OF] == dead.number
    assert done.user_attrs[attrs.ENQUEUED_AS] == "DARTS_V2"
    assert done.user_attrs[attrs.ARCH_HASH] == compact_hash(DARTS_V2)  # evaluate/fidelity's hash


def test_a_trial_that_never_sent_a_heartbeat_is_failed_as_orphaned(
    storage_url: str, tmp_path: Path
) -> None:
    handle = short_grace_study(tmp_path, storage_url)
    study = handle.study
    orphan = study.ask()  # a worker lost the database right after asking: no heartbeat ever
    # At once, no grace period: a claim records its first heartbeat inside the lock, so under
    # the lock a trial without one is a claim that was cut.
    claim = claim_trial(handle, 1)
    assert claim.status is ClaimStatus.CLAIMED  # the orphan no longer holds the only slot
    failed = study.get_trials(deepcopy=False)[orphan.number]
    assert failed.state == TrialState.FAIL
    assert failed.user_attrs[attrs.FAIL_REASON].startswith("orphaned: ")


def test_a_multi_objective_study_records_its_objectives_and_refuses_others(
    tmp_path: Path,
) -> None:
    settings = tiny_settings(tmp_path, "search.objectives=[score,params,latency_ms]")
    assert bootstrap_study(settings).created
    study = load_study(settings, worker=0).study
    assert [d.name for d in study.directions] == ["MINIMIZE"] * 3
    assert study.user_attrs[attrs.STUDY_OBJECTIVES] == [
        "val_contrastive_loss",
        "params",
        "latency_ms",
    ]
    assert study.metric_names == ["val_contrastive_loss", "params", "latency_ms"]
    single = tiny_settings(tmp_path)
    with pytest.raises(StudyError, match="was built for objectives"):
        bootstrap_study(single)
    load_study(single, worker=0, scoring=False)  # a reader (the report) is not refused
