"""The worker loop on real (embedded) images with a real SQLite study."""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from cnas_hpc.common import attrs
from cnas_hpc.search import trial as trial_module
from cnas_hpc.search.worker import WorkerError, run_worker
from cnas_hpc.space.genotype import genotype_from_json, validate_genotype
from cnas_hpc.study.lifecycle import bootstrap_study, load_study
from cnas_hpc.tracking.progress import SearchProgress
from cnas_hpc.train.checkpoint import TrainState
from tests.helpers import tiny_settings


@pytest.fixture(autouse=True)
def _one_cpu(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each worker is allotted one CPU, as on a shared node (``SLURM_CPUS_PER_TASK=1``): torch
    runs one thread and the worker measures no thread count per candidate. What these tests
    check does not depend on threads (the bound itself is
    :func:`test_a_one_cpu_allocation_bounds_the_measured_threads`); two threads on this 2-core VM
    cost 40 % more CPU. The worker sets torch's threads process-wide: restored after."""
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_a_short_search_completes_its_budget_with_everything_recorded(tmp_path: Path) -> None:
    s = tiny_settings(tmp_path, "search.n_trials=3")
    bootstrap_study(s)
    report = run_worker(s)
    assert report.completed == 3 and report.failed == 0
    study = load_study(s, worker=0).study
    trials = study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    hashes = set()
    for t in trials:
        genotype = genotype_from_json(t.user_attrs[attrs.GENOTYPE])
        validate_genotype(genotype)
        hashes.add(t.user_attrs[attrs.ARCH_HASH])
        assert t.user_attrs[attrs.MACS] > 0 and t.user_attrs[attrs.N_PARAMS] > 0
        assert t.user_attrs[attrs.WALL_S] > 0
        assert t.user_attrs[attrs.EPOCHS_DONE] == s.train.epochs
        assert t.user_attrs[attrs.WORKER].startswith("local:")
        assert t.value == pytest.approx(t.user_attrs[attrs.VAL_LOSS])
        assert t.intermediate_values  # per-epoch objective reported
        assert all(name.startswith(("normal/", "reduce/")) for name in t.params)
    assert len(hashes) == 3  # no duplicated architecture


def test_a_one_cpu_allocation_bounds_the_measured_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Whatever the node's cores, a worker given one CPU trains every candidate with one thread:
    # the per-candidate thread measurement (perf=auto on a CPU) only chooses within it.
    monkeypatch.setattr("cnas_hpc.train.plan.available_cores", lambda: 8)
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")
    s = tiny_settings(tmp_path, "search.n_trials=2")
    bootstrap_study(s)
    assert run_worker(s).completed == 2
    for t in load_study(s, worker=0).study.get_trials(deepcopy=False):
        assert t.user_attrs[attrs.CPU_THREADS] == 1
        assert "threads=" not in t.user_attrs[attrs.STEP_PLAN]  # nothing measured above 1


def test_a_rerun_with_a_larger_budget_only_adds_the_difference(tmp_path: Path) -> None:
    s2 = tiny_settings(tmp_path, "search.n_trials=2")
    bootstrap_study(s2)
    assert run_worker(s2).completed == 2
    s3 = tiny_settings(tmp_path, "search.n_trials=3")
    bootstrap_study(s3)
    assert run_worker(s3).completed == 1
    assert run_worker(s3).completed == 0  # budget already spent: nothing asked
    study = load_study(s3, worker=0).study
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 3
    assert len(study.trials) == 3


def test_diverging_trials_are_pruned_and_a_broken_config_stops(tmp_path: Path) -> None:
    """Through the REAL training loop: a learning rate of 1e12 without clipping diverges."""
    s = tiny_settings(
        tmp_path,
        "search.n_trials=5",
        "search.max_consecutive_failures=2",
        "train.lr=1e12",
        "train.grad_clip=null",
    )
    bootstrap_study(s)
    with pytest.raises(WorkerError, match=r"2 consecutive trials failed.*non-finite"):
        run_worker(s)
    study = load_study(s, worker=0).study
    pruned = study.get_trials(states=(TrialState.PRUNED,))
    assert len(pruned) == 2  # PRUNED, not FAIL: TPE learns to avoid diverging cells
    assert all("non_finite_loss" in t.user_attrs[attrs.FAIL_REASON] for t in pruned)
    assert not study.get_trials(states=(TrialState.RUNNING,))


def test_a_proxy_too_large_for_the_node_is_pruned(tmp_path: Path) -> None:
    """200,000 channels: the CPU allocator refuses a 160 GB weight at once (nothing is touched)."""
    s = tiny_settings(
        tmp_path, "search.n_trials=1", "search.max_consecutive_failures=1", "model.channels=200000"
    )
    bootstrap_study(s)
    with pytest.raises(WorkerError, match="out_of_memory"):
        run_worker(s)
    (trial,) = load_study(s, worker=0).study.trials
    assert trial.state == TrialState.PRUNED
    assert trial.user_attrs[attrs.FAIL_REASON].startswith("out_of_memory: ")
    assert "can't allocate memory" in trial.user_attrs[attrs.FAIL_REASON]


def test_any_exception_of_a_trial_is_recorded_with_its_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Not only ValueError/RuntimeError: a KeyError while the network is built is a FAIL with
    its reason, and the progress log names the trial (seen: ``trial None: FAIL``)."""

    def broken(*args: object, **kwargs: object) -> None:
        raise KeyError("normal/n2/op0")

    monkeypatch.setattr(trial_module, "build_candidate", broken)
    s = tiny_settings(tmp_path, "search.n_trials=2", "search.max_consecutive_failures=2")
    bootstrap_study(s)
    caplog.set_level(logging.INFO, logger="cnas_hpc")
    with pytest.raises(WorkerError, match="KeyError"):
        run_worker(s, observers=lambda study: [SearchProgress(2, use_bars=False)])
    failed = load_study(s, worker=0).study.get_trials(states=(TrialState.FAIL,))
    assert [t.user_attrs[attrs.FAIL_REASON] for t in failed] == ["KeyError: 'normal/n2/op0'"] * 2
    assert "trial 0: FAIL" in caplog.text and "trial None" not in caplog.text


def test_one_failure_does_not_stop_the_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = trial_module.train_candidate
    calls = {"n": 0}

    def flaky(*args: object, **kwargs: object) -> object:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(trial_module, "train_candidate", flaky)
    s = tiny_settings(tmp_path, "search.n_trials=2")
    bootstrap_study(s)
    report = run_worker(s)
    assert (report.completed, report.failed) == (2, 1)
    study = load_study(s, worker=0).study
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 2
    (failed,) = study.get_trials(states=(TrialState.PRUNED,))
    assert failed.user_attrs[attrs.FAIL_REASON].startswith("out_of_memory: CUDA out of memory")

    def broken(*args: object, **kwargs: object) -> None:
        raise ValueError("cell has no path to the output")

    monkeypatch.setattr(trial_module, "train_candidate", broken)
    s3 = tiny_settings(tmp_path, "search.n_trials=3", "search.max_consecutive_failures=1")
    bootstrap_study(s3)
    with pytest.raises(WorkerError):
        run_worker(s3)
    (bug,) = load_study(s3, worker=0).study.get_trials(states=(TrialState.FAIL,))
    assert "cell has no path" in bug.user_attrs[attrs.FAIL_REASON]


def test_the_csnas_encoding_with_the_memory_bank_loss_runs(tmp_path: Path) -> None:
    s = tiny_settings(
        tmp_path,
        "experiment=csnas_paper",
        "model.cells=3",
        "model.channels=4",
        "model.proj_dim=16",
        "train.epochs=1",
        "train.batch_size=32",
        "train.max_steps_per_epoch=2",
        "search.n_trials=2",
    )
    bootstrap_study(s)
    assert run_worker(s).completed == 2
    study = load_study(s, worker=0).study
    assert study.user_attrs[attrs.STUDY_OBJECTIVE] == "train_contrastive_loss"
    for t in study.trials:
        assert len(t.params) == 2 * sum(range(2, 7))  # 40 edge choices: 20 per cell
        assert t.value == pytest.approx(t.user_attrs[attrs.TRAIN_LOSS])
    assert json.loads(study.trials[0].user_attrs[attrs.GENOTYPE])["normal_concat"] == [3, 4, 5, 6]


def test_knn_objective_maximises(tmp_path: Path) -> None:
    s = tiny_settings(
        tmp_path, "search.objective=knn_accuracy", "data.labeled_fraction=0.5", "search.n_trials=1"
    )
    bootstrap_study(s)
    run_worker(s)
    study = load_study(s, worker=0).study
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    assert 0.0 <= study.best_value <= 1.0


#: Seconds the first segment of the preempted trial spends in its first epoch's callback (inside
#: its checkpointed wall time), so that its time outweighs what the retry alone takes.
FIRST_SEGMENT_PAUSE_S = 2.0


class _Preempt(SearchProgress):
    """The terminal progress, which preempts its own worker after the first epoch (SIGUSR2, as
    SLURM does), after a pause of :data:`FIRST_SEGMENT_PAUSE_S`."""

    def epoch(self, epoch: int, metrics: Mapping[str, float | None]) -> None:
        super().epoch(epoch, metrics)
        if epoch == 1:
            time.sleep(FIRST_SEGMENT_PAUSE_S)
            os.kill(os.getpid(), signal.SIGUSR2)


def test_reports_follow_checkpoints_and_a_resumed_trial_counts_all_its_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An epoch's objective reaches the study only after that epoch's checkpoint is written;
    a trial stopped after its first epoch and resumed by its retry reports the time of both
    segments (seen: only the last segment's time in the best-trials table)."""
    s = tiny_settings(
        tmp_path,
        "search.n_trials=1",
        "train.epochs=3",
        "train.max_steps_per_epoch=4",
        "study.heartbeat_interval=1",
        "study.grace_period=2",
    )
    bootstrap_study(s)
    reported_at_save: list[tuple[int, list[int]]] = []
    saved_wall_s: list[float] = []
    real_save = trial_module.save_checkpoint

    def save(state: TrainState, path: Path) -> None:
        real_save(state, path)
        saved_wall_s.append(state.wall_s)
        running = load_study(s, worker=0).study.get_trials(states=(TrialState.RUNNING,))
        reported_at_save.append((state.epoch, sorted(running[0].intermediate_values)))

    monkeypatch.setattr(trial_module, "save_checkpoint", save)
    with pytest.raises(SystemExit, match="stopped by SIGUSR2"):
        run_worker(s, observers=lambda study: [_Preempt(1, use_bars=False)])
    first_segment = saved_wall_s[-1]  # what the retry resumes from
    assert first_segment > FIRST_SEGMENT_PAUSE_S
    # at the checkpoint of epoch e, the study had not yet been told epoch e's objective
    assert reported_at_save and all(epoch not in seen for epoch, seen in reported_at_save)
    time.sleep(2.5)  # the stopped trial goes stale; a local worker has no job to ask about
    assert run_worker(s).completed == 1
    trials = load_study(s, worker=0).study.trials
    (retry,) = [t for t in trials if t.state == TrialState.COMPLETE]
    assert retry.user_attrs[attrs.RESUMED_FROM_EPOCH] >= 1
    assert sorted(retry.intermediate_values) == [1, 2, 3]  # epoch 1 re-told from the checkpoint
    # Both segments: more than the first one's checkpointed time, pause included (counting the
    # retry's own time alone, the bug once seen, falls short of it: two epochs, no pause).
    assert retry.user_attrs[attrs.WALL_S] > first_segment
