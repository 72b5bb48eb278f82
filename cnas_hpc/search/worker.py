"""The worker loop: claim → decode → build → train → score → tell, until the budget is spent.

Contract:
    * A worker is one process per rank (``DistEnv.world_size`` ranks, e.g. one SLURM array task
      with ``tasks_per_node=G``). Global rank 0 owns the worker's trials: it alone claims, sets
      attributes, records heartbeats and tells; it broadcasts each assignment to the other ranks,
      which build the same network and train it with DDP.
    * A claimed trial is RUNNING and owned by exactly this worker until it is told (or until its
      heartbeat goes stale, when another worker fails it and re-enqueues its parameters).
    * A trial that raises is told FAIL with its reason in ``cnas:fail_reason``; the worker goes on.
      ``search.max_consecutive_failures`` failures in a row stop the worker with
      :class:`WorkerError` (a broken config must not loop forever).
    * The loop ends when the study holds ``search.n_trials`` COMPLETE trials.
"""

from __future__ import annotations

import gc
import logging
import math
import socket
import time
import traceback
from dataclasses import dataclass
from typing import Any, Literal

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
from cnas_hpc.search.budget import ClaimStatus, claim_trial
from cnas_hpc.search.heartbeat import Heartbeat
from cnas_hpc.search.study import encoding_for, load_study
from cnas_hpc.space.encoding import CellEncoding, compact_hash
from cnas_hpc.space.genotype import Genotype, genotype_from_json, genotype_to_json
from cnas_hpc.tracking.observer import TrialInfo, TrialObserver
from cnas_hpc.tracking.progress import SearchProgress
from cnas_hpc.tracking.trackers import make_trackers
from cnas_hpc.train.loop import EpochMetrics, TrialAbortedError, build_candidate, train_candidate

log = logging.getLogger(__name__)

# How many proposals to skip as duplicates before accepting one (the space may be exhausted).
_MAX_DUPLICATE_SKIPS = 20


class WorkerError(RuntimeError):
    """The worker cannot go on (e.g. too many consecutive failures); one-line message."""


@dataclass(frozen=True)
class Assignment:
    """What rank 0 tells the other ranks to do next (broadcast as a picklable object)."""

    kind: Literal["train", "wait", "done"]
    number: int = -1
    genotype_json: str = ""


@dataclass
class WorkerReport:
    """What one worker did."""

    completed: int = 0
    failed: int = 0
    study_complete: int = 0


def _is_duplicate(study: optuna.Study, trial: optuna.Trial, arch_hash: str) -> int | None:
    for other in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING)):
        if other.number != trial.number and other.user_attrs.get(attrs.ARCH_HASH) == arch_hash:
            return other.number
    return None


class _TrialOwner:
    """Rank 0's side of the loop: everything that touches the study."""

    def __init__(self, settings: Settings, env: DistEnv, encoding: CellEncoding) -> None:
        self.settings = settings
        self.env = env
        self.encoding = encoding
        self.study = load_study(settings, worker=settings.worker)
        self.trial: optuna.Trial | None = None

    def claim(self) -> tuple[Assignment, int]:
        """Claim the next trial; returns the assignment and the study's COMPLETE count."""
        claim = claim_trial(self.study, self.settings.search.n_trials, prepare=self._propose)
        if claim.status is not ClaimStatus.CLAIMED or claim.trial is None:
            kind: Literal["wait", "done"] = "done" if claim.status is ClaimStatus.DONE else "wait"
            return Assignment(kind), claim.count.complete
        self.trial = claim.trial
        genotype_json = str(claim.trial.user_attrs[attrs.GENOTYPE])
        return Assignment("train", claim.trial.number, genotype_json), claim.count.complete

    def _propose(self, trial: optuna.Trial) -> optuna.Trial:
        """Sample the architecture; skip proposals another RUNNING/COMPLETE trial already has.

        Runs under the claim lock, so two workers cannot both take one architecture.
        """
        for _ in range(_MAX_DUPLICATE_SKIPS):
            genotype = self.encoding.suggest(trial)
            arch_hash = compact_hash(genotype)
            duplicate = _is_duplicate(self.study, trial, arch_hash)
            if duplicate is None:
                break
            trial.set_user_attr(attrs.FAIL_REASON, f"duplicate of trial {duplicate}")
            self.study.tell(trial, state=TrialState.FAIL)
            log.info("trial %d duplicates trial %d: skipped", trial.number, duplicate)
            trial = self.study.ask()
        self._record_identity(trial, genotype, arch_hash)
        return trial

    def _record_identity(self, trial: optuna.Trial, genotype: Genotype, arch_hash: str) -> None:
        trial.set_user_attr(attrs.GENOTYPE, genotype_to_json(genotype))
        trial.set_user_attr(attrs.ARCH_HASH, arch_hash)
        trial.set_user_attr(attrs.WORKER, self.env.worker_label)
        trial.set_user_attr(attrs.WORKER_INDEX, self.settings.worker)
        trial.set_user_attr(attrs.HOST, socket.gethostname())
        trial.set_user_attr(attrs.WORLD_SIZE, self.env.world_size)
        if self.env.array_job_id is not None:
            trial.set_user_attr(attrs.ARRAY_JOB, self.env.array_job_id)
            trial.set_user_attr(attrs.ARRAY_TASK, self.env.array_task_id)

    def best_value(self) -> float | None:
        try:
            return float(self.study.best_value)
        except ValueError:  # no COMPLETE trial yet
            return None


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
    owner = _TrialOwner(settings, env, encoding) if env.is_main else None
    progress = SearchProgress(settings.search.n_trials) if env.is_main else None
    observers: list[TrialObserver] = [progress] if progress is not None else []
    if env.is_main:
        observers.extend(make_trackers(settings))
    report = WorkerReport()
    failures_in_a_row = 0
    try:
        while True:
            if owner is not None:
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
            reason = _run_trial(assignment, settings, env, device, data, owner, observers)
            if reason is None:
                report.completed += 1
                failures_in_a_row = 0
                continue
            report.failed += 1
            failures_in_a_row += 1
            if failures_in_a_row >= settings.search.max_consecutive_failures:
                raise WorkerError(f"{failures_in_a_row} consecutive trials failed, last: {reason}")
    finally:
        if progress is not None:
            progress.close()
    return report


def _notify(observers: list[TrialObserver], method: str, *args: Any, **kwargs: Any) -> None:
    """Call ``method`` on every observer; tracking never breaks a trial."""
    for observer in observers:
        try:
            getattr(observer, method)(*args, **kwargs)
        except Exception:
            log.warning("tracker %s.%s failed", type(observer).__name__, method, exc_info=True)


def _trial_info(
    assignment: Assignment,
    genotype: Genotype,
    settings: Settings,
    env: DistEnv,
    trial: optuna.Trial,
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
    )


def _run_trial(
    assignment: Assignment,
    settings: Settings,
    env: DistEnv,
    device: torch.device,
    data: SearchData,
    owner: _TrialOwner | None,
    observers: list[TrialObserver],
) -> str | None:
    """Train the assigned trial on every rank; rank 0 tells. Returns None or the failure reason."""
    genotype = genotype_from_json(assignment.genotype_json)
    trial = owner.trial if owner is not None else None
    started = time.perf_counter()
    last_step = {"time": started, "step": 0}

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
        if trial is not None and value is not None and math.isfinite(value):
            trial.report(value, metrics.epoch)
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
        if trial is not None:
            image = (3, settings.data.image_size, settings.data.image_size)
            summary.update(n_params=count_parameters(model), macs=count_macs(model, image))
            trial.set_user_attr(attrs.N_PARAMS, summary["n_params"])
            trial.set_user_attr(attrs.MACS, summary["macs"])
            info = _trial_info(assignment, genotype, settings, env, trial)
            _notify(observers, "trial_started", info, **summary)
        result = train_candidate(model, data, settings, device, on_step=on_step, on_epoch=on_epoch)
        value = result.objective(settings.search.objective)
        log.info(
            "rank %d/%d trained trial %d: %d steps, %.0f images/s",
            env.global_rank,
            env.world_size,
            assignment.number,
            result.steps,
            result.images_per_s,
        )
    except (TrialAbortedError, ValueError, RuntimeError) as exc:
        reason = getattr(exc, "reason", type(exc).__name__)
        message = f"{reason}: {exc}".splitlines()[0]
        log.debug("trial %d failed:\n%s", assignment.number, traceback.format_exc())
        if owner is not None and trial is not None:
            summary.update(wall_s=time.perf_counter() - started, fail_reason=message)
            trial.set_user_attr(attrs.FAIL_REASON, message)
            trial.set_user_attr(attrs.WALL_S, summary["wall_s"])
            owner.study.tell(trial, state=TrialState.FAIL)
            _notify(observers, "trial_finished", "FAIL", None, summary)
        return message
    finally:
        if heartbeat is not None:
            heartbeat.__exit__(None, None, None)
        del model
        _release_memory(device)
    if owner is not None and trial is not None:
        summary.update(
            wall_s=time.perf_counter() - started,
            epochs_done=result.epochs_done,
            train_loss=result.train_loss,
            val_loss=result.val_loss,
            knn_accuracy=result.knn_accuracy,
            images_per_s=result.images_per_s,
        )
        for key, attr in _RESULT_ATTRS.items():
            if summary[key] is not None:
                trial.set_user_attr(attr, summary[key])
        owner.study.tell(trial, value)
        _notify(observers, "trial_finished", "COMPLETE", value, summary)
    return None


_RESULT_ATTRS = {
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
