"""One trial on every rank of a worker: build the candidate, train it, score it, record it.

Contract:
    * Every rank runs a :class:`TrialRunner` for the same assignment
      (:class:`~cnas_hpc.search.owner.Assignment`); only global rank 0 holds the
      :class:`~cnas_hpc.search.owner.TrialOwner` (the study) and the observers, so only rank 0
      records heartbeats, attributes and the result.
    * :meth:`TrialRunner.run` returns ``None`` when the trial completed, ``"stopped"`` when a
      preemption stopped it (checkpointed, still RUNNING for the requeued job), ``"pruned"``
      when the study's multi-fidelity pruner stopped it after an epoch (``search.pruner``;
      told PRUNED with ``cnas:pruned_at_epoch``: not a failure), else the failure reason (rank
      0 told it PRUNED or FAIL).
    * With a pruner, rank 0 asks the pruner after every epoch (not after the last epoch: a
      trial that trained to the end completes), with the epoch's objective as noted (the
      pruner sees it before it is sent, see below; one attempt: with the database down the
      trial goes on); the verdict is agreed by every rank inside the training loop. A pruned
      trial's reports go with its PRUNED result.
    * A diverging or out-of-memory candidate (CUDA out of memory, or a CPU allocation a proxy
      too large for the node cannot get) is told PRUNED: TPE ranks pruned trials below every
      COMPLETE one and so learns to avoid such cells, whereas it ignores FAIL trials and would
      keep proposing them. ANY other exception of the trial (a bug, an invalid architecture) is
      told FAIL with its reason; only the worker's own troubles (the database gone past its
      deadline, a stop request while it waited) end the worker instead.
    * Each epoch's objective is reported AFTER that epoch's checkpoint is written, and without
      blocking: reports are noted and sent with the checkpoint (:meth:`TrialOwner.flush_notes`);
      what the database did not take goes with the result. A resumed trial re-notes the epochs
      of its checkpoint, so no report is lost to a preemption.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from optuna.trial import TrialState

from cnas_hpc.common import attrs
from cnas_hpc.common.objectives import ZERO_COST_OBJECTIVES, is_cost, is_zero_cost
from cnas_hpc.common.observers import ObserverGroup
from cnas_hpc.config import Settings, public_hparams
from cnas_hpc.data.splits import SearchData
from cnas_hpc.distributed.collectives import broadcast_object
from cnas_hpc.distributed.env import DistEnv
from cnas_hpc.distributed.preemption import Preemption
from cnas_hpc.models.complexity import count_macs, count_parameters
from cnas_hpc.search.costs import CostCheck, check_cost
from cnas_hpc.search.observer import TrialInfo
from cnas_hpc.search.owner import Assignment, TrialOwner
from cnas_hpc.search.screening import earlier_values, screened_out
from cnas_hpc.space.genotype import Genotype, genotype_from_json
from cnas_hpc.study.heartbeat import Heartbeat
from cnas_hpc.study.retry import DatabaseUnavailableError, RetryStoppedError
from cnas_hpc.train.checkpoint import (
    Checkpointing,
    TrainState,
    checkpoint_path,
    load_checkpoint,
    remove_checkpoint,
    save_checkpoint,
)
from cnas_hpc.train.loop import build_candidate, train_candidate
from cnas_hpc.train.memory import memory_mb, release_memory
from cnas_hpc.train.outcome import EpochMetrics, TrainingAbortedError, TrainResult
from cnas_hpc.train.step import ProxyTask
from cnas_hpc.train.zero_cost import ZeroCostScores, zero_cost_scores

log = logging.getLogger(__name__)

#: Failures that say "this architecture is bad" rather than "the worker is broken".
PRUNED_REASONS = ("non_finite_loss", "out_of_memory")
#: How allocators word "out of memory": CUDA's, and the CPU allocator's for a proxy too large.
_OOM_TEXT = (
    "out of memory",
    "can't allocate memory",
    "defaultcpuallocator",
    "cannot allocate memory",
)
#: The worker's own troubles: they end the worker, never a trial.
WORKER_ERRORS = (DatabaseUnavailableError, RetryStoppedError)


def failure_reason(exc: BaseException) -> str:
    """The short reason a trial failed: ``out_of_memory``, the abort's reason, or the type."""
    text = str(exc).lower()
    if isinstance(exc, MemoryError | torch.cuda.OutOfMemoryError) or any(
        needle in text for needle in _OOM_TEXT
    ):
        return "out_of_memory"
    return str(getattr(exc, "reason", "") or type(exc).__name__)


#: Result fields of a trial -> the user attribute they are stored in.
RESULT_ATTRS = {
    "resumed_from_epoch": attrs.RESUMED_FROM_EPOCH,
    "wall_s": attrs.WALL_S,
    "epochs_done": attrs.EPOCHS_DONE,
    "train_loss": attrs.TRAIN_LOSS,
    "val_loss": attrs.VAL_LOSS,
    "knn_accuracy": attrs.KNN_ACCURACY,
    "images_per_s": attrs.IMAGES_PER_S,
    "plan": attrs.STEP_PLAN,
}


def proxy_task(settings: Settings, max_threads: int | None = None) -> ProxyTask:
    """The proxy task of a search (step plans cached in ``<output_dir>/autotune``); a worker
    gives ``max_threads``, its allocation's intra-op threads (see ``ProxyTask.max_threads``)."""
    return ProxyTask(
        settings.train,
        settings.augment,
        settings.data.image_size,
        settings.seed,
        autotune_dir=Path(settings.output_dir) / "autotune",
        max_threads=max_threads,
    )


def objective_of(metrics: EpochMetrics, objective: str) -> float | None:
    """The value of ``objective`` after one epoch (None when not computed)."""
    return {
        "val_contrastive_loss": metrics.val_loss,
        "train_contrastive_loss": metrics.train_loss,
        "knn_accuracy": metrics.knn_accuracy,
    }[objective]


class TrialRunner:
    """Trains one assigned trial on this rank; see the module docstring for the contract.

    Args:
        assignment: what rank 0 broadcast (trial number, genotype, checkpoint key).
        settings: the search's validated settings.
        env: this process's place in its job.
        device: this rank's training device.
        data: the search splits (CPU).
        owner: rank 0's study handle (None on other ranks).
        observers: rank 0's observers (empty on other ranks).
        preemption: the process's USR2 flag, polled by the training loop.
        max_threads: the worker's intra-op threads from its CPU allocation: the most a measured
            step plan may use (``None``: the CPU affinity).
    """

    def __init__(
        self,
        assignment: Assignment,
        settings: Settings,
        env: DistEnv,
        device: torch.device,
        data: SearchData,
        owner: TrialOwner | None,
        observers: ObserverGroup,
        preemption: Preemption,
        *,
        max_threads: int | None = None,
    ) -> None:
        self.assignment, self.settings, self.env = assignment, settings, env
        self.device, self.data, self.owner = device, data, owner
        self.observers, self.preemption = observers, preemption
        self.max_threads = max_threads
        self.ckpt_path: Path = checkpoint_path(
            settings.checkpoint_root, settings.study.name, assignment.checkpoint_key
        )
        # "trial" first: a trial that fails before it trains is still named in every log line.
        self.summary: dict[str, Any] = {"trial": assignment.number}
        self.pruned_at_epoch: int | None = None
        self.started = time.perf_counter()
        self.prior_wall_s = 0.0
        self._last_step = (self.started, 0)
        self._scores: ZeroCostScores | None = None
        #: rank 0, cost-aware search: the proposal's costs and constraint values
        self._cost: CostCheck | None = None

    # -- the trial ------------------------------------------------------------------------------

    def run(self) -> str | None:
        """Train and record the trial; see the module docstring for the return value.

        Raises:
            DatabaseUnavailableError: rank 0 could not tell the result (it is kept on disk).
            RetryStoppedError: a stop request came while rank 0 waited to tell it (kept too).
        """
        try:
            self.genotype: Genotype = genotype_from_json(self.assignment.genotype_json)
            if not self.settings.search.trains:
                with self._heartbeat():
                    if self._infeasible():
                        return self._refuse_infeasible()
                    scores = self._score_untrained()
                self._complete_zero_cost(scores)
                return None
            resume = self._resume_state()
            with self._heartbeat():
                if self._infeasible():
                    return self._refuse_infeasible()
                if resume is None and self._screened():
                    return self._screen_out()
                result = self._train(resume)
        except TrainingAbortedError as exc:
            if exc.reason == "stopped":
                self.observers.notify("trial_finished", "INTERRUPTED", None, self.summary)
                return "stopped"
            if exc.reason == "pruned":
                return self._pruned()
            return self._fail(exc)
        except WORKER_ERRORS:
            raise
        except Exception as exc:  # whatever broke this trial is its reason; the worker goes on
            return self._fail(exc)
        finally:
            release_memory(self.device)
        self._complete(result)
        return None

    def _resume_state(self) -> TrainState | None:
        """The checkpoint to continue from; rank 0 re-notes the epochs it already reported."""
        if not self.settings.checkpoint.enabled:
            return None
        resume = load_checkpoint(self.ckpt_path, genotype_json=self.assignment.genotype_json)
        if resume is not None:
            self.prior_wall_s = resume.wall_s
            # Reports are one objective's: a multi-objective study has none (no pruner).
            if self.owner is not None and not self.settings.search.multi_objective:
                for past in resume.history:
                    value = objective_of(EpochMetrics(**past), self.settings.search.objective)  # type: ignore[arg-type]
                    if value is not None and math.isfinite(value):
                        self.owner.note_report(int(past["epoch"] or 0), value)
        return resume

    def _heartbeat(self) -> contextlib.AbstractContextManager[object]:
        owner = self.owner
        if owner is None or owner.trial_id is None:
            return contextlib.nullcontext()
        interval = self.settings.study.heartbeat_interval
        return Heartbeat(owner.storage, owner.trial_id, interval, release=owner.release)

    def _train(self, resume: TrainState | None) -> TrainResult:
        model = build_candidate(self.genotype, self.settings.model, self.settings.seed, self.device)
        if self.owner is not None and self.owner.trial is not None:
            self._record_complexity(model, resume)
            wanted = self.settings.zero_cost.record or self.settings.search.zero_cost_values
            if wanted and self._scores is None:
                self._zero_cost()
        result = train_candidate(
            model,
            self.data,
            proxy_task(self.settings, self.max_threads),
            self.device,
            on_step=self.on_step,
            on_epoch=self.on_epoch,
            should_stop=self.stop_requested,
            checkpointing=self._checkpointing(resume),
        )
        log.info(
            "rank %d/%d trained trial %d: %d steps, %.0f images/s%s",
            self.env.global_rank,
            self.env.world_size,
            self.assignment.number,
            result.steps,
            result.images_per_s,
            f", resumed at epoch {result.resumed_from_epoch}" if resume is not None else "",
        )
        return result

    def _zero_cost(self, names: tuple[str, ...] = ZERO_COST_OBJECTIVES) -> ZeroCostScores:
        """The cell's zero-cost proxies (seeded like the candidate); rank 0 notes them."""
        scores = zero_cost_scores(
            self.genotype,
            self.data.train.images,
            self.settings.zero_cost,
            self.settings.seed,
            self.device,
            names=names,
        )
        self._scores = scores
        self.summary.update(naswot=scores.naswot, synflow=scores.synflow)
        if self.owner is not None:
            self.owner.note_attrs(
                {
                    attrs.NASWOT: scores.naswot,
                    attrs.SYNFLOW: scores.synflow,
                    attrs.ZERO_COST_S: scores.wall_s,
                }
            )
        return scores

    def _screened(self) -> bool:
        """``search.screen``: whether the proposal's zero-cost proxy refuses it (rank 0 decides
        from the study, every rank gets the verdict; see :mod:`cnas_hpc.search.screening`)."""
        cfg = self.settings.search
        if cfg.screen == "none" or not cfg.trains:
            return False
        refuse = False
        if self.owner is not None:
            value = self._zero_cost().value(cfg.screen)
            try:
                earlier = earlier_values(
                    self.owner.study, cfg.screen, current=self.assignment.number
                )
            except Exception as exc:  # the screen never waits for the database: train it
                log.warning("screen skipped for trial %d: %s", self.assignment.number, exc)
                earlier = []
            refuse = screened_out(value, earlier, keep=cfg.screen_keep, startup=cfg.screen_startup)
        return bool(broadcast_object(refuse))

    def _screen_out(self) -> str:
        """End a proposal the screen refused: PRUNED, untrained (rank 0 tells)."""
        if self.owner is not None:
            self.summary.update(wall_s=self._wall_s(), screened=True)
            self.owner.finish(
                TrialState.PRUNED,
                None,
                {attrs.SCREENED: True, attrs.WALL_S: self.summary["wall_s"]},
                constraints=self._constraints(),
            )
            self.observers.notify("trial_finished", "PRUNED", None, self.summary)
        return "pruned"

    def _score_untrained(self) -> ZeroCostScores:
        """A zero-cost objective: record the proxy's size, score the untrained network."""
        if self.owner is not None and self.owner.trial is not None:
            model = build_candidate(
                self.genotype, self.settings.model, self.settings.seed, torch.device("cpu")
            )
            self._record_complexity(model, None)
        # Only the objectives: a zero-cost search is seconds per trial, the other proxy adds more.
        names = self.settings.search.zero_cost_values
        return self._zero_cost(names) if names else ZeroCostScores(None, None, 0.0)

    def _complete_zero_cost(self, scores: ZeroCostScores) -> None:
        if self.owner is None:
            return
        value = self._value(lambda name: scores.value(name))
        self.summary.update(wall_s=self._wall_s())
        self.owner.finish(
            TrialState.COMPLETE,
            value,
            {attrs.WALL_S: self.summary["wall_s"]},
            constraints=self._constraints(),
        )
        self.observers.notify("trial_finished", "COMPLETE", self._shown(value), self.summary)

    # -- cost-aware search ----------------------------------------------------------------------

    def _infeasible(self) -> bool:
        """Cost-aware search: rank 0 measures the proposal's costs (or reads them from the
        study's cache, :mod:`cnas_hpc.search.costs`) and notes them; every rank gets the verdict
        of ``search.constraints``. False when no cost is used."""
        if not self.settings.search.costs:
            return False
        refuse = False
        if self.owner is not None:
            self._cost = check_cost(self.genotype, self.settings, self.owner)
            self.owner.note_attrs(self._cost.trial_attrs(self.settings))
            self.summary.update(
                cost_params=self._cost.cost.params,
                cost_macs=self._cost.cost.macs,
                cost_latency_ms=self._cost.cost.latency_ms,
            )
            refuse = self._cost.infeasible
        return bool(broadcast_object(refuse))

    def _refuse_infeasible(self) -> str:
        """End a proposal that breaks a constraint: PRUNED, untrained, with Optuna's constraint
        values (TPE learns to avoid it); it does not count toward ``search.n_trials``."""
        if self.owner is not None:
            self.summary.update(wall_s=self._wall_s(), infeasible=True)
            self.owner.finish(
                TrialState.PRUNED,
                None,
                {attrs.WALL_S: self.summary["wall_s"]},
                constraints=self._constraints(),
            )
            self.observers.notify("trial_finished", "PRUNED", None, self.summary)
        return "pruned"

    def _constraints(self) -> list[float] | None:
        """Optuna's constraint values of the cell (None without ``search.constraints``)."""
        if self._cost is None or not self.settings.search.constraints:
            return None
        return list(self._cost.violations)

    def _value(self, score: Callable[[str], float]) -> float | list[float]:
        """The trial's value: one float, or one per objective of a multi-objective study
        (``score`` gives the trained or zero-cost ones; costs come from the cost check)."""
        search = self.settings.search
        if not search.multi_objective:
            return score(search.objective)
        values = []
        for name in search.values:
            if is_cost(name):
                assert self._cost is not None
                values.append(self._cost.cost.value(name))
            else:
                values.append(score(name))
        self.summary.update(
            {f"objective/{n}": v for n, v in zip(search.values, values, strict=True)}
        )
        return values

    @staticmethod
    def _shown(value: float | list[float]) -> float:
        """What observers get as THE value: the first objective's (all of them are in the
        summary as ``objective/<name>``)."""
        return value[0] if isinstance(value, list) else value

    def _record_complexity(self, model: torch.nn.Module, resume: TrainState | None) -> None:
        assert self.owner is not None and self.owner.trial is not None
        image = (3, self.settings.data.image_size, self.settings.data.image_size)
        self.summary.update(n_params=count_parameters(model), macs=count_macs(model, image))
        self.owner.note_attrs(
            {attrs.N_PARAMS: self.summary["n_params"], attrs.MACS: self.summary["macs"]}
        )
        self.owner.flush_notes()
        sizes = {"n_params": self.summary["n_params"], "macs": self.summary["macs"]}
        self.observers.notify("trial_started", self._info(resume), **sizes)

    def _info(self, resume: TrainState | None) -> TrialInfo:
        assert self.owner is not None and self.owner.trial is not None
        trial, settings, env = self.owner.trial, self.settings, self.env
        return TrialInfo(
            study_name=settings.study.name,
            number=self.assignment.number,
            genotype=self.genotype,
            params=dict(trial.params),
            worker=env.worker_label,
            worker_index=settings.worker,
            world_size=env.world_size,
            array_job_id=env.array_job_id,
            array_task_id=env.array_task_id,
            hparams=public_hparams(settings),
            segment=int(trial.user_attrs.get(attrs.REQUEUES, 0)) + (resume is not None),
            start_epoch=resume.epoch if resume is not None else 0,
        )

    def _checkpointing(self, resume: TrainState | None) -> Checkpointing:
        enabled = self.settings.checkpoint.enabled
        return Checkpointing(
            # Rank 0 always gets the call: it sends the epoch's reports after the checkpoint.
            save=self.save if self.env.is_main else None,
            every_s=self.settings.checkpoint.every_minutes * 60 if enabled else math.inf,
            resume=resume,
            trial=self.assignment.number,
            genotype_json=self.assignment.genotype_json,
        )

    # -- hooks of the training loop -------------------------------------------------------------

    def stop_requested(self) -> bool:
        """Whether a preemption or timeout signal asked this process to stop."""
        return self.preemption.requested

    def save(self, state: TrainState) -> None:
        """Persist the trial's training state, THEN send what the epoch recorded (rank 0).

        In that order: a report the study holds is never ahead of the checkpoint a resumed trial
        starts from. While stopping (preemption) nothing is sent: the stop must be quick, and a
        resumed trial re-notes its checkpoint's epochs.
        """
        if self.settings.checkpoint.enabled:
            save_checkpoint(state, self.ckpt_path)
        if self.owner is not None and not self.stop_requested():
            self.owner.flush_notes()

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        """Per-step metrics with throughput and memory, to the observers."""
        now = time.perf_counter()
        last_time, last_step = self._last_step
        images_per_s = (step - last_step) * self.settings.train.batch_size
        metrics = {
            **metrics,
            "images_per_s": images_per_s / max(now - last_time, 1e-9),
            "memory_mb": memory_mb(self.device),
        }
        self._last_step = (now, step)
        self.observers.notify("step", step, metrics)

    def on_epoch(self, metrics: EpochMetrics) -> bool:
        """Note the epoch's objective (rank 0; sent after the checkpoint), ask the study's pruner
        (rank 0, with ``search.pruner``) and tell observers.

        Returns:
            Whether the study's pruner asks to stop the trial (rank 0; False elsewhere, and
            after the last epoch). The training loop agrees it across ranks.
        """
        value = objective_of(metrics, self.settings.search.objective)
        prune = False
        reports = self.owner is not None and not self.settings.search.multi_objective
        if reports and self.owner is not None and value is not None and math.isfinite(value):
            self.owner.note_report(metrics.epoch, value)
            if self.settings.search.pruner != "none" and metrics.epoch < self.settings.train.epochs:
                prune = self.owner.should_prune()
        if prune:
            self.pruned_at_epoch = metrics.epoch
        self.observers.notify(
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
        return prune

    # -- the outcome ----------------------------------------------------------------------------

    def _complete(self, result: TrainResult) -> None:
        if self.owner is None:
            return
        value = self._value(self._score_of(result))
        self.summary.update(
            wall_s=self._wall_s(),
            epochs_done=result.epochs_done,
            train_loss=result.train_loss,
            val_loss=result.val_loss,
            knn_accuracy=result.knn_accuracy,
            images_per_s=result.images_per_s,
            resumed_from_epoch=result.resumed_from_epoch,
            plan=result.plan,
        )
        self.owner.finish(
            TrialState.COMPLETE,
            value,
            {attr: self.summary.get(key) for key, attr in RESULT_ATTRS.items()},
            constraints=self._constraints(),
        )
        self.observers.notify("trial_finished", "COMPLETE", self._shown(value), self.summary)
        remove_checkpoint(self.ckpt_path)

    def _score_of(self, result: TrainResult) -> Callable[[str], float]:
        """Trained objectives from ``result``, zero-cost ones from the recorded proxies."""

        def score(name: str) -> float:
            if is_zero_cost(name):
                assert self._scores is not None
                return self._scores.value(name)
            return result.objective(name)

        return score

    def _pruned(self) -> str:
        """End a trial the pruner stopped: PRUNED with its epoch; its last report is its value."""
        if self.owner is not None:
            self.summary.update(wall_s=self._wall_s(), pruned_at_epoch=self.pruned_at_epoch)
            self.owner.finish(
                TrialState.PRUNED,
                None,
                {
                    attrs.PRUNED_AT_EPOCH: self.pruned_at_epoch,
                    attrs.EPOCHS_DONE: self.pruned_at_epoch,
                    attrs.WALL_S: self.summary["wall_s"],
                },
                constraints=self._constraints(),
            )
            self.observers.notify("trial_finished", "PRUNED", None, self.summary)
            remove_checkpoint(self.ckpt_path)
        return "pruned"

    def _wall_s(self) -> float:
        """The trial's time over all its segments (a resumed trial adds its earlier ones)."""
        return self.prior_wall_s + time.perf_counter() - self.started

    def _fail(self, exc: BaseException) -> str:
        """End the trial with its reason (rank 0 tells); every rank returns the reason."""
        reason = failure_reason(exc)
        message = f"{reason}: {exc}".splitlines()[0][:500]
        log.debug("trial %d failed:\n%s", self.assignment.number, traceback.format_exc())
        if self.owner is not None:
            state = TrialState.PRUNED if reason in PRUNED_REASONS else TrialState.FAIL
            self.summary.update(wall_s=self._wall_s(), fail_reason=message)
            self.owner.finish(
                state,
                None,
                {attrs.FAIL_REASON: message, attrs.WALL_S: self.summary["wall_s"]},
                constraints=self._constraints() if state == TrialState.PRUNED else None,
            )
            self.observers.notify("trial_finished", state.name, None, self.summary)
            remove_checkpoint(self.ckpt_path)
        return message
