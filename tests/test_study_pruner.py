"""Multi-fidelity pruning in a real (tiny) search: pruned trials stop early, are recorded with
their epoch and last value, do not count toward the budget, and are not failures."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from cnas_hpc.common import attrs
from cnas_hpc.common.errors import ConfigError
from cnas_hpc.config.search import SearchConfig
from cnas_hpc.search import trial as trial_module
from cnas_hpc.search.worker import run_worker
from cnas_hpc.study.lifecycle import bootstrap_study, load_study
from cnas_hpc.study.pruner import make_pruner
from cnas_hpc.train.outcome import EpochMetrics
from tests.helpers import tiny_settings


def test_each_pruner_is_built_from_its_settings() -> None:
    assert isinstance(make_pruner(SearchConfig(), 10), optuna.pruners.NopPruner)
    median = make_pruner(SearchConfig(pruner="median", pruner_startup_trials=2), 10)
    assert isinstance(median, optuna.pruners.MedianPruner)
    halving = make_pruner(SearchConfig(pruner="successive_halving"), 10)
    assert isinstance(halving, optuna.pruners.SuccessiveHalvingPruner)
    hyperband = make_pruner(SearchConfig(pruner="hyperband", pruner_reduction_factor=2), 10)
    assert isinstance(hyperband, optuna.pruners.HyperbandPruner)
    with pytest.raises(ConfigError, match=r"search\.pruner must be one of"):
        SearchConfig(pruner="asha")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"search\.pruner_reduction_factor must be"):
        SearchConfig(pruner="hyperband", pruner_reduction_factor=1)


def test_a_search_with_a_pruner_completes_exactly_its_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Which cells rank badly after one epoch depends on the proposals (seeded per proposal) and
    # on tiny loss differences: the objective is shifted so that every second trial ranks
    # clearly worse (pruned) and the others ever better (complete), whatever the cells.
    real = trial_module.objective_of
    started = {"n": -1}

    def shifted(metrics: EpochMetrics, objective: str) -> float | None:
        value = real(metrics, objective)
        if metrics.epoch == 1:
            started["n"] += 1
        k = started["n"]
        return None if value is None else value + (10.0 if k % 2 else -10.0 * k)

    monkeypatch.setattr(trial_module, "objective_of", shifted)
    s = tiny_settings(
        tmp_path,
        "search.n_trials=3",
        "search.pruner=median",
        "search.pruner_startup_trials=1",
        "search.pruner_warmup_epochs=1",
        # One failure would stop the worker: pruned trials must not count as failures.
        "search.max_consecutive_failures=1",
        "train.epochs=3",
        "train.max_steps_per_epoch=2",
    )
    bootstrap_study(s)
    report = run_worker(s)
    study = load_study(s, worker=0).study
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    pruned = study.get_trials(states=(TrialState.PRUNED,))
    assert len(complete) == report.completed == 3  # the budget counts COMPLETE trials only
    assert len(pruned) == report.pruned >= 1 and report.failed == 0
    for t in complete:
        assert sorted(t.intermediate_values) == [1, 2, 3]
    for t in pruned:
        epoch = t.user_attrs[attrs.PRUNED_AT_EPOCH]
        assert 1 <= epoch < s.train.epochs
        assert max(t.intermediate_values) == epoch  # it stopped training there
        # Its last value is its value: TPE ranks it among the pruned trials by it.
        assert t.value == t.intermediate_values[epoch]
        assert attrs.FAIL_REASON not in t.user_attrs  # pruned, not failed
    assert not study.get_trials(states=(TrialState.RUNNING,))
