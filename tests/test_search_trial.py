"""One claimed trial run by a ``TrialRunner`` on a real SQLite study and the embedded digits."""

from __future__ import annotations

import dataclasses
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
from cnas_hpc.search.trial import TrialRunner, failure_reason, objective_of, proxy_task
from cnas_hpc.space.encoding import encoding_from_config
from cnas_hpc.study.lifecycle import bootstrap_study, load_study
from cnas_hpc.train.outcome import EpochMetrics, TrainingAbortedError
from tests.helpers import tiny_settings

CPU = torch.device("cpu")


def _runner(tmp_path: Path, *overrides: str) -> tuple[TrialRunner, TrialOwner]:
    """Rank 0 of a one-process worker with one claimed trial, as ``run_worker`` builds it."""
    settings = tiny_settings(tmp_path, "search.n_trials=1", *overrides)
    bootstrap_study(settings)
    owner = TrialOwner(settings, DistEnv(), encoding_from_config(settings.space))
    assignment, _ = owner.claim()
    assert assignment.kind == "train"
    data = make_search_data(load_images(settings.data), settings.data)
    runner = TrialRunner(
        assignment, settings, DistEnv(), CPU, data, owner, ObserverGroup(), Preemption()
    )
    return runner, owner


def test_a_trained_trial_is_told_complete_with_its_results_and_its_checkpoint_goes(
    tmp_path: Path,
) -> None:
    runner, _ = _runner(tmp_path)
    assert runner.run() is None
    (trial,) = load_study(runner.settings, worker=0).study.get_trials(deepcopy=False)
    assert trial.state == TrialState.COMPLETE
    assert trial.value == pytest.approx(trial.user_attrs[attrs.VAL_LOSS])
    assert trial.user_attrs[attrs.EPOCHS_DONE] == runner.settings.train.epochs
    assert trial.user_attrs[attrs.WALL_S] > 0 and trial.user_attrs[attrs.N_PARAMS] > 0
    epochs = runner.settings.train.epochs
    assert sorted(trial.intermediate_values) == list(range(1, epochs + 1))  # one per epoch
    assert not runner.ckpt_path.exists()  # a finished trial keeps no checkpoint


def test_a_broken_trial_is_told_fail_with_its_reason_and_the_worker_goes_on(
    tmp_path: Path,
) -> None:
    runner, _ = _runner(tmp_path)
    runner.assignment = dataclasses.replace(runner.assignment, genotype_json='{"normal": 1}')
    reason = runner.run()  # returns the reason instead of raising: the worker claims the next
    assert reason is not None and not reason.startswith("out_of_memory")
    (trial,) = load_study(runner.settings, worker=0).study.get_trials(deepcopy=False)
    assert trial.state == TrialState.FAIL  # a bug, not a bad architecture: TPE ignores it
    assert trial.user_attrs[attrs.FAIL_REASON] == reason


def test_failure_reasons_name_memory_aborts_and_types() -> None:
    assert failure_reason(MemoryError()) == "out_of_memory"
    assert failure_reason(RuntimeError("DefaultCPUAllocator: can't allocate memory")) == (
        "out_of_memory"
    )
    assert failure_reason(TrainingAbortedError("non_finite_loss", "diverged")) == "non_finite_loss"
    assert failure_reason(KeyError("x")) == "KeyError"


def test_the_objective_of_an_epoch_and_the_proxy_task_of_a_worker(tmp_path: Path) -> None:
    metrics = EpochMetrics(0, train_loss=3.0, val_loss=2.0, knn_accuracy=None, images_per_s=1, lr=1)
    assert objective_of(metrics, "val_contrastive_loss") == 2.0
    assert objective_of(metrics, "train_contrastive_loss") == 3.0
    assert objective_of(metrics, "knn_accuracy") is None
    task = proxy_task(tiny_settings(tmp_path), max_threads=1)
    assert task.max_threads == 1 and task.autotune_dir == tmp_path / "autotune"
