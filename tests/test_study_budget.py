"""The claim on a real PostgreSQL server: concurrent claimers never overshoot the budget, never
share a trial number or an architecture; TPE's capped history keeps the best trials; and the one
free-slot rule (:func:`~cnas_hpc.study.budget.free_slots`) decides the Python claim, the
one-transaction SQL reservation and the report's forecast alike."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from cnas_hpc.common import attrs
from cnas_hpc.common.errors import ConfigError
from cnas_hpc.config import Settings
from cnas_hpc.config.study import StudyConfig
from cnas_hpc.distributed.env import DistEnv
from cnas_hpc.search.owner import TrialOwner
from cnas_hpc.space.encoding import encoding_from_config
from cnas_hpc.study.budget import SLOT_STATES, free_slots
from cnas_hpc.study.claim import ClaimStatus, claim_trial
from cnas_hpc.study.handle import StudyHandle
from cnas_hpc.study.lifecycle import bootstrap_study, load_study
from cnas_hpc.study.optuna_internals import (
    RecentAndBestTrials,
    count_by_state,
    open_handle,
    reserve_trial_row,
)
from cnas_hpc.study.storage import make_storage
from tests.helpers import tiny_settings


def _claim_all(settings: Settings, worker: int, numbers: multiprocessing.Queue[int]) -> None:
    s = tiny_settings(
        Path(settings.output_dir),
        f"worker={worker}",
        "study=postgres",
        f"study.storage={settings.study.storage}",
        f"search.n_trials={settings.search.n_trials}",
        "study.sampler.n_startup_trials=2",
    )
    owner = TrialOwner(s, DistEnv(), encoding_from_config(s.space))
    while True:
        assignment, _ = owner.claim()
        if assignment.kind != "train":
            break
        numbers.put(assignment.number)
        owner.finish(TrialState.COMPLETE, 1.0 + assignment.number / 100, {})


@pytest.mark.postgres
def test_concurrent_claims_fill_the_budget_exactly(fresh_pg_url: str, tmp_path: Path) -> None:
    s = tiny_settings(
        tmp_path, "study=postgres", f"study.storage={fresh_pg_url}", "search.n_trials=18"
    )
    bootstrap_study(s)
    context = multiprocessing.get_context("fork")
    numbers: multiprocessing.Queue[int] = context.Queue()
    claimers = [context.Process(target=_claim_all, args=(s, w, numbers)) for w in range(6)]
    for process in claimers:
        process.start()
    for process in claimers:
        process.join(300)
    assert [p.exitcode for p in claimers] == [0] * 6
    trials = load_study(s, worker=0).study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 18
    assert sorted(t.number for t in trials) == list(range(len(trials)))  # numbers unique, dense
    hashes = [t.user_attrs[attrs.ARCH_HASH] for t in complete]
    assert len(set(hashes)) == 18  # no architecture twice
    assert all(t.user_attrs[attrs.FAIL_REASON].startswith("duplicate of") for t in trials
               if t.state == TrialState.FAIL)  # fmt: skip


def test_a_capped_history_keeps_the_best_and_the_latest_trials() -> None:
    study = optuna.create_study(direction="minimize")
    x = optuna.distributions.FloatDistribution(0, 1)
    for number in range(100):
        value = 0.0 if number in (3, 7) else 10.0 + number
        study.add_trial(optuna.trial.create_trial(params={"x": 0.5}, distributions={"x": x},
                                                  value=value))  # fmt: skip
    running = study.ask()
    seen = RecentAndBestTrials(study, 40)._get_trials(deepcopy=False)
    numbers = [t.number for t in seen]
    assert numbers == sorted(numbers)  # the samplers' order
    assert {3, 7} <= set(numbers)  # the best ones, however old
    assert set(range(70, 100)) <= set(numbers) and running.number in numbers
    assert len([t for t in seen if t.state == TrialState.COMPLETE]) == 40
    with pytest.raises(ConfigError, match="max_history"):
        tiny_settings(Path("/tmp"), "study.sampler.max_history=5")


def test_free_slots_counts_complete_running_and_waiting_trials_only() -> None:
    assert SLOT_STATES == ("COMPLETE", "RUNNING", "WAITING")
    assert free_slots(5, {}) == 5
    assert free_slots(5, {"COMPLETE": 1, "RUNNING": 1, "WAITING": 1}) == 2
    assert free_slots(5, {"COMPLETE": 1, "FAIL": 7, "PRUNED": 9}) == 4  # they hold no slot
    assert free_slots(3, {"COMPLETE": 2, "RUNNING": 4}) == 0  # never negative
    assert free_slots(3, {"COMPLETE": 5}) == 0


#: ``(n_trials, COMPLETE, RUNNING, WAITING, FAIL + PRUNED)`` of the agreement test: free slots,
#: none, retries with and without a free slot, a spent budget, and failed/pruned trials (which
#: hold no slot).
STUDIES = [
    (3, 0, 0, 0, 0),
    (3, 1, 1, 0, 2),
    (3, 1, 2, 0, 2),
    (2, 0, 2, 0, 0),
    (3, 2, 0, 1, 0),
    (3, 1, 1, 1, 0),
    (2, 2, 1, 0, 0),
    (4, 1, 1, 0, 3),
]


@pytest.fixture(params=["sqlite", "postgres"])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'budget.db'}"
    return str(request.getfixturevalue("fresh_pg_url"))


@pytest.fixture
def open_study(storage_url: str) -> Iterator[Callable[[str], StudyHandle]]:
    """Opens a new empty study of the given name in ``storage_url``."""
    storage = make_storage(
        StudyConfig(storage=storage_url, heartbeat_interval=5, grace_period=60),
        create_tables=True,
    )

    def open_one(name: str) -> StudyHandle:
        optuna.create_study(storage=storage, study_name=name)
        return open_handle(storage, name)

    yield open_one
    storage.engine.dispose()


def _fill(handle: StudyHandle, complete: int, running: int, waiting: int, ended: int) -> None:
    """Give the study these trials by state (live RUNNING ones: each with a fresh heartbeat)."""
    study = handle.study
    for i in range(complete):
        study.tell(study.ask(), float(i))
    for i in range(ended):
        study.tell(study.ask(), state=TrialState.PRUNED if i % 2 else TrialState.FAIL)
    for _ in range(running):
        trial = study.ask()
        handle.storage.record_heartbeat(
            handle.storage.get_trial_id_from_study_id_trial_number(handle.study_id, trial.number)
        )
    for i in range(waiting):  # after the asks: an ask pops a WAITING trial
        study.enqueue_trial({"x": float(i)}, skip_if_exists=False)
    wanted = {"COMPLETE": complete, "RUNNING": running, "WAITING": waiting}
    assert {state: count_by_state(handle).get(state, 0) for state in SLOT_STATES} == wanted


@pytest.mark.parametrize(("n_trials", "complete", "running", "waiting", "ended"), STUDIES)
def test_the_claim_and_the_sql_reservation_follow_free_slots(
    open_study: Callable[[str], StudyHandle],
    n_trials: int,
    complete: int,
    running: int,
    waiting: int,
    ended: int,
) -> None:
    """On a real study: the claim creates a new trial exactly when :func:`free_slots` is
    positive, hands out a WAITING retry whatever it says, WAITs otherwise, and is DONE once the
    budget is COMPLETE; on PostgreSQL the one-transaction reservation's SQL agrees."""
    by_state = {"COMPLETE": complete, "RUNNING": running, "WAITING": waiting}
    free = free_slots(n_trials, by_state)
    handle = open_study("claim")
    _fill(handle, complete, running, waiting, ended)
    claim = claim_trial(handle, n_trials)
    if complete >= n_trials:
        assert claim.status == ClaimStatus.DONE
    elif waiting or free:
        assert claim.status == ClaimStatus.CLAIMED and claim.trial is not None
        popped = handle.study.get_trials(deepcopy=False)[claim.trial.number]
        assert popped.state == TrialState.RUNNING
        # A new trial takes a free slot; a retry keeps the slot it held.
        held = {**by_state, "RUNNING": running + 1, "WAITING": waiting - bool(waiting)}
        assert free_slots(n_trials, held) == free - (not waiting)
    else:
        assert claim.status == ClaimStatus.WAIT
    assert (claim.count.complete, claim.count.running, claim.count.waiting) == (
        complete,
        running,
        waiting,
    )
    if handle.engine.dialect.name != "postgresql":
        return
    sql = open_study("sql")
    _fill(sql, complete, running, waiting, ended)
    counts, created = reserve_trial_row(sql, 7, n_trials, {}, slot_states=SLOT_STATES)
    # The SQL creates a trial only in the usual case (no retry waiting) with a free slot.
    assert (created is not None) == (not waiting and free > 0)
    assert {k: counts.get(k, 0) for k in SLOT_STATES} == by_state
