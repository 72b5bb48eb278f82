"""Cost-aware trials (``search.objectives`` with costs, ``search.constraints``) on a real SQLite
study: infeasible cells are never trained, costs are measured once per cell and device."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from optuna.trial import TrialState

from cnas_hpc.common import attrs
from cnas_hpc.common.observers import ObserverGroup
from cnas_hpc.data.datasets import load_images
from cnas_hpc.data.splits import make_search_data
from cnas_hpc.distributed.env import DistEnv
from cnas_hpc.distributed.preemption import Preemption
from cnas_hpc.search.owner import TrialOwner
from cnas_hpc.search.trial import TrialRunner
from cnas_hpc.space.encoding import encoding_from_config
from cnas_hpc.study.budget import count_budget
from cnas_hpc.study.lifecycle import bootstrap_study, load_study
from cnas_hpc.study.optuna_internals import CONSTRAINTS_KEY
from tests.helpers import tiny_settings

#: A small costed network: the tests check the mechanism, not DARTS's sizes (test_train_cost).
SMALL_COST = ("cost.cells=5", "cost.channels=8", "cost.warmup=0", "cost.repeats=2")


def _run_one(owner: TrialOwner) -> str | None:
    settings = owner.settings
    assignment, _ = owner.claim()
    assert assignment.kind == "train"
    data = make_search_data(load_images(settings.data), settings.data)
    runner = TrialRunner(
        assignment, settings, DistEnv(), torch.device("cpu"), data, owner, ObserverGroup(),
        Preemption(),
    )  # fmt: skip
    return runner.run()


def _owner(tmp_path: Path, *overrides: str) -> TrialOwner:
    settings = tiny_settings(tmp_path, *SMALL_COST, *overrides)
    bootstrap_study(settings)
    return TrialOwner(settings, DistEnv(), encoding_from_config(settings.space))


def test_a_cell_over_a_limit_is_pruned_untrained_with_its_constraint_values(
    tmp_path: Path,
) -> None:
    owner = _owner(tmp_path, "search.n_trials=1", 'search.constraints=["params<=1000"]')
    assert _run_one(owner) == "pruned"
    (trial,) = load_study(owner.settings, worker=0).study.get_trials(deepcopy=False)
    assert trial.state == TrialState.PRUNED and trial.values is None
    assert attrs.EPOCHS_DONE not in trial.user_attrs and attrs.N_PARAMS not in trial.user_attrs
    assert trial.user_attrs[attrs.INFEASIBLE] is True
    assert trial.user_attrs[attrs.CONSTRAINTS] == ["params<=1000"]
    assert trial.user_attrs[attrs.COST_NETWORK] == "darts_cifar 5x8"
    params = trial.user_attrs[attrs.COST_PARAMS]
    assert trial.system_attrs[CONSTRAINTS_KEY] == [params - 1000.0]  # Optuna's own: > 0
    assert trial.constraints == {"0": params - 1000.0}
    assert count_budget(owner.handle).complete == 0  # not counted toward n_trials


def test_a_multi_objective_trial_tells_every_value(tmp_path: Path) -> None:
    owner = _owner(
        tmp_path,
        "search.n_trials=1",
        "search.objectives=[score,params,latency_ms]",
        'search.constraints=["params<=1e9"]',
    )
    assert _run_one(owner) is None
    study = load_study(owner.settings, worker=0).study
    assert study.user_attrs[attrs.STUDY_OBJECTIVES] == [
        "val_contrastive_loss",
        "params",
        "latency_ms",
    ]
    (trial,) = study.get_trials(deepcopy=False)
    user = trial.user_attrs
    assert trial.state == TrialState.COMPLETE
    assert trial.values == pytest.approx(
        [user[attrs.VAL_LOSS], user[attrs.COST_PARAMS], user[attrs.COST_LATENCY_MS]]
    )
    assert user[attrs.COST_LATENCY_MS] > 0 and user[attrs.COST_DEVICE] == "cpu"
    assert user[attrs.COST_CACHED] is False and user[attrs.INFEASIBLE] is False
    assert trial.intermediate_values == {}  # one objective's reports: none in this study
    assert trial.system_attrs[CONSTRAINTS_KEY][0] < 0  # feasible


def test_a_cell_proposed_again_takes_its_latency_from_the_study(tmp_path: Path) -> None:
    owner = _owner(
        tmp_path,
        "search.n_trials=1",
        "search.objective=naswot",  # nothing trained: the test is about the cache
        "search.objectives=[score,latency_ms]",
        'search.constraints=["latency_ms<=1e-6"]',
    )
    assert _run_one(owner) == "pruned"  # timed, too slow
    study = load_study(owner.settings, worker=0).study
    (first,) = study.get_trials(deepcopy=False)
    assert first.user_attrs[attrs.COST_CACHED] is False
    # The same cell again (TPE may propose a pruned cell again; a retry or a requeued trial
    # checks its cell again too): nobody measures it, the latency is the cached one.
    study.enqueue_trial(first.params)
    assert _run_one(owner) == "pruned"
    second = load_study(owner.settings, worker=0).study.get_trials(deepcopy=False)[-1]
    assert second.user_attrs[attrs.ARCH_HASH] == first.user_attrs[attrs.ARCH_HASH]
    assert second.user_attrs[attrs.COST_CACHED] is True
    assert second.user_attrs[attrs.COST_LATENCY_MS] == first.user_attrs[attrs.COST_LATENCY_MS]
    assert second.constraints == first.constraints
