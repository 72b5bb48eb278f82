"""The worker loop: claim → decode → build → train → score → tell, until the budget is spent.

Contract:
    * A worker is one process per rank (``DistEnv.world_size`` ranks, e.g. one SLURM array task
      with ``tasks_per_node=G``). Global rank 0 owns the worker's trials: it alone claims, sets
      attributes, records heartbeats and tells; it broadcasts each assignment to the other ranks,
      which build the same network and train it with DDP.
    * A claimed trial is RUNNING and owned by exactly this worker until it is told (or until its
      heartbeat goes stale, when another worker fails it and re-enqueues its parameters).
    * A trial that raises is told PRUNED (non-finite loss, out of memory: bad architectures TPE
      should learn to avoid) or FAIL (anything else), with its reason in ``cnas:fail_reason``;
      memory is released and the worker goes on.
      ``search.max_consecutive_failures`` failures in a row stop the worker with
      :class:`WorkerError` (a broken config must not loop forever).
    * The loop ends when the study holds ``search.n_trials`` COMPLETE trials.
"""

from __future__ import annotations

import gc
import logging
import math
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

from cnas_hpc.config import Settings, public_hparams
from cnas_hpc.data.datasets import load_images
from cnas_hpc.data.splits import SearchData, make_search_data
from cnas_hpc.dist.collectives import broadcast_object
from cnas_hpc.dist.env import DistEnv, distributed_session, select_device
from cnas_hpc.models.complexity import count_macs, count_parameters
from cnas_hpc.search import attrs
from cnas_hpc.search.heartbeat import Heartbeat
from cnas_hpc.search.owner import Assignment, TrialOwner
from cnas_hpc.search.preemption import Preemption
from cnas_hpc.search.study import encoding_for
from cnas_hpc.space.genotype import Genotype, genotype_from_json
from cnas_hpc.tracking.observer import TrialInfo, TrialObserver
from cnas_hpc.tracking.progress import SearchProgress
from cnas_hpc.tracking.trackers import make_trackers
from cnas_hpc.train.checkpoint import (
    TrainState,
    checkpoint_path,
    load_checkpoint,
    remove_checkpoint,
    save_checkpoint,
)
from cnas_hpc.train.loop import (
    Checkpointing,
    EpochMetrics,
    TrialAbortedError,
    build_candidate,
    train_candidate,
)

log = logging.getLogger(__name__)


class WorkerError(RuntimeError):
    """The worker cannot go on (e.g. too many consecutive failures); one-line message."""


@dataclass
class WorkerReport:
    """What one worker did."""

    completed: int = 0
    failed: int = 0
    study_complete: int = 0


def _load_data(settings: Settings) -> SearchData:
    return make_search_data(load_images(settings.data), settings.data)


def _release_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def run_worker(settings: Settings, env: DistEnv | None = None) -> WorkerReport:
    """Run one worker (all its ranks call this) until the study's budget is spent.

    Args:
        settings: validated settings (the study must already be bootstrapped).
        env: the process's distributed identity (default: read from the environment).

    Returns:
        What this worker did (the same counts on every rank).

    Raises:
        WorkerError: too many consecutive failed trials.
        StudyError: the study cannot be loaded.
    """
    env = env or DistEnv.from_environment()
    device = select_device(env, settings.device)
    if settings.train.num_threads:
        torch.set_num_threads(settings.train.num_threads)
    with distributed_session(env, device):
        return _loop(settings, env, device)


def _loop(settings: Settings, env: DistEnv, device: torch.device) -> WorkerReport:
    encoding = encoding_for(settings)
    data = _load_data(settings)
    owner = TrialOwner(settings, env, encoding) if env.is_main else None
    progress = SearchProgress(settings.search.n_trials) if env.is_main else None
    observers: list[TrialObserver] = [progress] if progress is not None else []
    if owner is not None:
        study = owner.study
        observers.extend(make_trackers(settings, study=lambda: study))
    report = WorkerReport()
    failures_in_a_row = 0
    if owner is not None:
        owner.flush_pending()
    in_flight = owner.adopt_in_flight() if owner is not None else None
    with Preemption() as preemption:
        try:
            while True:
                if owner is not None:
                    if in_flight is not None:
                        assignment, in_flight = in_flight, None
                    else:
                        assignment, complete = owner.claim()
                        report.study_complete = complete
                        if progress is not None:
                            progress.update_study(complete, owner.best_value())
                else:
                    assignment = Assignment("wait")
                assignment = broadcast_object(assignment)
                if assignment.kind == "done":
                    break
                if assignment.kind == "wait":
                    time.sleep(settings.search.poll_seconds)
                    continue
                outcome = _run_trial(
                    assignment, settings, env, device, data, owner, observers, preemption
                )
                if outcome == "stopped":
                    # Checkpointed; the trial stays RUNNING for the requeued job (or its retry).
                    if env.is_main:
                        preemption.hand_over()
                    raise SystemExit(0)
                if outcome is None:
                    report.completed += 1
                    failures_in_a_row = 0
                    continue
                report.failed += 1
                failures_in_a_row += 1
                if failures_in_a_row >= settings.search.max_consecutive_failures:
                    raise WorkerError(
                        f"{failures_in_a_row} consecutive trials failed, last: {outcome}"
                    )
        finally:
            if progress is not None:
                progress.close()
    return report


def _notify(observers: list[TrialObserver], method: str, *args: Any, **kwargs: Any) -> None:
    """Call ``method`` on every observer; tracking never breaks a trial."""
    for observer in observers:
        try:
            getattr(observer, method)(*args, **kwargs)
        except Exception:  # tracking is best effort by contract
            log.warning("tracker %s.%s failed", type(observer).__name__, method, exc_info=True)


def _trial_info(
    assignment: Assignment,
    genotype: Genotype,
    settings: Settings,
    env: DistEnv,
    trial: optuna.Trial,
    resume: TrainState | None,
) -> TrialInfo:
    return TrialInfo(
        study_name=settings.study.name,
        number=assignment.number,
        genotype=genotype,
        params=dict(trial.params),
        worker=env.worker_label,
        worker_index=settings.worker,
        world_size=env.world_size,
        array_job_id=env.array_job_id,
        array_task_id=env.array_task_id,
        hparams=public_hparams(settings),
        segment=int(trial.user_attrs.get(attrs.REQUEUES, 0)) + (1 if resume is not None else 0),
        start_epoch=resume.epoch if resume is not None else 0,
    )


def _run_trial(
    assignment: Assignment,
    settings: Settings,
    env: DistEnv,
    device: torch.device,
    data: SearchData,
    owner: TrialOwner | None,
    observers: list[TrialObserver],
    preemption: Preemption,
) -> str | None:
    """Train the assigned trial on every rank; rank 0 tells.

    Returns:
        None when the trial completed, ``"stopped"`` when a preemption stopped it (checkpointed,
        not told), else the failure reason (the trial was told FAIL).
    """
    genotype = genotype_from_json(assignment.genotype_json)
    trial = owner.trial if owner is not None else None
    started = time.perf_counter()
    last_step = {"time": started, "step": 0}
    ckpt_path = checkpoint_path(
        settings.checkpoint_root, settings.study.name, assignment.checkpoint_key
    )
    resume = (
        load_checkpoint(ckpt_path, genotype_json=assignment.genotype_json)
        if settings.checkpoint.enabled
        else None
    )

    def on_step(step: int, metrics: dict[str, float]) -> None:
        now = time.perf_counter()
        steps = step - last_step["step"]
        metrics = {
            **metrics,
            "images_per_s": steps * settings.train.batch_size / max(now - last_step["time"], 1e-9),
            "memory_mb": _memory_mb(device),
        }
        last_step.update(time=now, step=step)
        _notify(observers, "step", step, metrics)

    def on_epoch(metrics: EpochMetrics) -> None:
        value = _objective_of(metrics, settings.search.objective)
        if owner is not None and value is not None and math.isfinite(value):
            owner.report(value, metrics.epoch)
        _notify(
            observers,
            "epoch",
            metrics.epoch,
            {
                "train_loss": metrics.train_loss,
                "val_loss": metrics.val_loss,
                "knn_accuracy": metrics.knn_accuracy,
                "objective": value,
                "images_per_s": metrics.images_per_s,
                "lr": metrics.lr,
            },
        )

    def save(state: TrainState) -> None:
        save_checkpoint(state, ckpt_path)

    checkpointing = Checkpointing(
        save=save if env.is_main and settings.checkpoint.enabled else None,
        every_s=settings.checkpoint.every_minutes * 60 if settings.checkpoint.enabled else math.inf,
        resume=resume,
        trial=assignment.number,
        genotype_json=assignment.genotype_json,
    )
    heartbeat = (
        Heartbeat(owner.study, trial._trial_id, settings.study.heartbeat_interval)
        if owner is not None and trial is not None
        else None
    )
    summary: dict[str, Any] = {}
    model = None
    try:
        if heartbeat is not None:
            heartbeat.__enter__()
        model = build_candidate(genotype, settings, device)
        if owner is not None and trial is not None:
            image = (3, settings.data.image_size, settings.data.image_size)
            summary.update(n_params=count_parameters(model), macs=count_macs(model, image))
            owner.set_attrs({attrs.N_PARAMS: summary["n_params"], attrs.MACS: summary["macs"]})
            info = _trial_info(assignment, genotype, settings, env, trial, resume)
            _notify(observers, "trial_started", info, **summary)
        result = train_candidate(
            model,
            data,
            settings,
            device,
            on_step=on_step,
            on_epoch=on_epoch,
            should_stop=lambda: preemption.requested,
            checkpointing=checkpointing,
        )
        value = result.objective(settings.search.objective)
        log.info(
            "rank %d/%d trained trial %d: %d steps, %.0f images/s%s",
            env.global_rank,
            env.world_size,
            assignment.number,
            result.steps,
            result.images_per_s,
            f", resumed at epoch {result.resumed_from_epoch}" if resume is not None else "",
        )
    except TrialAbortedError as exc:
        if exc.reason == "stopped":
            _notify(observers, "trial_finished", "INTERRUPTED", None, summary)
            return "stopped"
        return _fail(assignment, owner, observers, summary, started, exc, ckpt_path)
    except (ValueError, RuntimeError) as exc:
        return _fail(assignment, owner, observers, summary, started, exc, ckpt_path)
    finally:
        if heartbeat is not None:
            heartbeat.__exit__(None, None, None)
        del model
        _release_memory(device)
    if owner is not None:
        summary.update(
            wall_s=time.perf_counter() - started,
            epochs_done=result.epochs_done,
            train_loss=result.train_loss,
            val_loss=result.val_loss,
            knn_accuracy=result.knn_accuracy,
            images_per_s=result.images_per_s,
            resumed_from_epoch=result.resumed_from_epoch,
        )
        owner.finish(
            TrialState.COMPLETE,
            value,
            {attr: summary.get(key) for key, attr in _RESULT_ATTRS.items()},
        )
        _notify(observers, "trial_finished", "COMPLETE", value, summary)
        remove_checkpoint(ckpt_path)
    return None


#: Failures that say "this architecture is bad" rather than "the worker is broken".
_PRUNED_REASONS = ("non_finite_loss", "out_of_memory")


def _fail(
    assignment: Assignment,
    owner: TrialOwner | None,
    observers: list[TrialObserver],
    summary: dict[str, Any],
    started: float,
    exc: BaseException,
    ckpt_path: Path,
) -> str:
    """End the trial with its reason (rank 0 tells); every rank returns the reason.

    A diverging or out-of-memory candidate is told PRUNED: TPE ranks pruned trials below every
    COMPLETE one and so learns to avoid such cells, whereas it ignores FAIL trials and would keep
    proposing them. Any other exception (a bug, an invalid architecture) is told FAIL.
    """
    reason = getattr(exc, "reason", type(exc).__name__)
    if isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower():
        reason = "out_of_memory"
    message = f"{reason}: {exc}".splitlines()[0]
    log.debug("trial %d failed:\n%s", assignment.number, traceback.format_exc())
    if owner is not None:
        state = TrialState.PRUNED if reason in _PRUNED_REASONS else TrialState.FAIL
        summary.update(wall_s=time.perf_counter() - started, fail_reason=message)
        owner.finish(state, None, {attrs.FAIL_REASON: message, attrs.WALL_S: summary["wall_s"]})
        _notify(observers, "trial_finished", state.name, None, summary)
        remove_checkpoint(ckpt_path)
    return message


_RESULT_ATTRS = {
    "resumed_from_epoch": attrs.RESUMED_FROM_EPOCH,
    "wall_s": attrs.WALL_S,
    "epochs_done": attrs.EPOCHS_DONE,
    "train_loss": attrs.TRAIN_LOSS,
    "val_loss": attrs.VAL_LOSS,
    "knn_accuracy": attrs.KNN_ACCURACY,
    "images_per_s": attrs.IMAGES_PER_S,
}


def _memory_mb(device: torch.device) -> float:
    """Peak device memory of this process (CUDA) or its resident set size (CPU), in MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _objective_of(metrics: EpochMetrics, objective: str) -> float | None:
    return {
        "val_contrastive_loss": metrics.val_loss,
        "train_contrastive_loss": metrics.train_loss,
        "knn_accuracy": metrics.knn_accuracy,
    }[objective]
