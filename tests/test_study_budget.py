"""The claim on a real PostgreSQL server: concurrent claimers never overshoot the budget, never
share a trial number or an architecture; and TPE's capped history keeps the best trials."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from cnas_hpc.common import attrs
from cnas_hpc.common.errors import ConfigError
from cnas_hpc.config import Settings
from cnas_hpc.distributed.env import DistEnv
from cnas_hpc.search.owner import TrialOwner
from cnas_hpc.space.encoding import encoding_from_config
from cnas_hpc.study.lifecycle import bootstrap_study, load_study
from cnas_hpc.study.optuna_internals import RecentAndBestTrials
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
