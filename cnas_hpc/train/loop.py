"""Contrastive training of one candidate network: the proxy task every search trial runs.

Contract:
    * Every rank of a worker calls :func:`train_candidate` with the same genotype, task and
      data; model initialisation is seeded identically (:func:`build_candidate`), so DDP starts
      from the same weights.
    * The images live on the training device as one uint8 tensor; augmentation is batched there.
    * ``train.batch_size`` is the global batch; rank ``r`` trains on its slice of each global batch.
    * Every abort decision (a stop request, an out-of-memory error in the forward or backward
      pass, a non-finite loss, a prune asked after an epoch) is agreed across ranks before
      anyone leaves the loop, so no rank is left waiting in a collective (see
      :mod:`cnas_hpc.train.step`).
    * No host sync inside a step: the loss and the non-finite flag are read back every
      ``train.log_every_steps`` steps, at epoch ends and before a checkpoint, not per step.
    * The returned :class:`~cnas_hpc.train.outcome.TrainResult` is identical on every rank.

The loop itself is short: per epoch it runs :class:`~cnas_hpc.train.step.ContrastiveStep` over
the epoch's batches, decides before each step (agreed across ranks) whether to stop or to save,
and scores the epoch (:mod:`cnas_hpc.train.scoring`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from cnas_hpc.config.model import ProxyConfig
from cnas_hpc.config.train import TrainConfig, check_global_batch
from cnas_hpc.data.splits import SearchData, epoch_batches
from cnas_hpc.distributed.collectives import (
    agree_across_ranks,
    all_reduce_mean,
    any_across_ranks,
    get_rank,
    get_world_size,
)
from cnas_hpc.models.networks import ProxyNetwork, build_proxy
from cnas_hpc.space.genotype import Genotype
from cnas_hpc.train.checkpoint import Checkpointing, PositionSaver, TrainPosition, TrainState
from cnas_hpc.train.outcome import EpochMetrics, TrainingAbortedError, TrainResult
from cnas_hpc.train.plan import StepPlan, plan_record
from cnas_hpc.train.plan_tuning import choose_plan, stored_plan
from cnas_hpc.train.scoring import knn_accuracy, validation_loss
from cnas_hpc.train.step import ContrastiveStep, ProxyTask

StepCallback = Callable[[int, dict[str, float]], None]
#: Returns True to ask for the candidate to be pruned (see :func:`train_candidate`).
EpochCallback = Callable[[EpochMetrics], bool | None]
StopCheck = Callable[[], bool]


def build_candidate(
    genotype: Genotype, model: ProxyConfig, seed: int, device: torch.device
) -> ProxyNetwork:
    """The proxy network for ``genotype``, seeded identically on every rank, on ``device``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        network = build_proxy(genotype, model)
    return network.to(device)


def steps_per_epoch(n_train: int, cfg: TrainConfig) -> int:
    """Full global batches per epoch, capped by ``train.max_steps_per_epoch``.

    Raises:
        ConfigError: the split holds fewer images than one global batch.
    """
    check_global_batch(cfg.batch_size, get_world_size(), n_train)
    full = n_train // cfg.batch_size
    return full if cfg.max_steps_per_epoch is None else min(full, cfg.max_steps_per_epoch)


@dataclass
class _Position(TrainPosition[EpochMetrics]):
    """Where training stands (:class:`~cnas_hpc.train.checkpoint.TrainPosition`), plus the
    learning rate of the last step taken (the epoch's metrics report it)."""

    last_lr: float = 0.0


def _restore(model: ProxyNetwork, stepper: ContrastiveStep, resume: TrainState | None) -> _Position:
    if resume is None:
        return _Position()
    model.load_state_dict(resume.model)
    stepper.load_state_dict(
        {
            "optimizer": resume.optimizer,
            "scheduler": resume.scheduler,
            "scaler": resume.scaler,
            "extra": resume.extra,
        },
        steps_done=resume.step,
    )
    return _Position.of(resume, EpochMetrics)


def _saver(checkpointing: Checkpointing | None, stepper: ContrastiveStep) -> PositionSaver:
    """The saver of ``stepper``'s training: its optimizer, scheduler, scaler, loss state and
    step plan go with the position."""

    def parts() -> dict[str, Any]:
        state = stepper.state_dict()
        return {
            "optimizer": state["optimizer"],
            "scaler": state["scaler"],
            "extra": state["extra"],
            "scheduler": state["scheduler"],
            "plan": plan_record(stepper.plan, stepper.device),
        }

    return PositionSaver(checkpointing, stepper.model, parts)


def _run_epoch(
    images: torch.Tensor,
    batches: torch.Tensor,
    position: _Position,
    stepper: ContrastiveStep,
    saver: PositionSaver,
    should_stop: StopCheck | None,
    on_step: StepCallback | None,
) -> torch.Tensor:
    """Train the rest of epoch ``position.epoch``; returns the summed loss of its steps.

    ``batches`` is the epoch's ``[steps, b]`` index grid, already on the device. Nothing is
    read back from the device except at a log point (every ``train.log_every_steps`` steps:
    the non-finite flag, and the loss when ``on_step`` is set) and before a checkpoint.
    """
    cfg, device = stepper.task.train, stepper.device
    loss_sum = torch.tensor(position.loss_sum, device=device)
    for index_in_epoch in range(position.step_in_epoch, len(batches)):
        # Stop and save decisions come before the forward pass: BatchNorm statistics move in
        # the forward, and a checkpoint must hold the state "before this step". Both flags
        # live on the host (agreeing them never touches the device).
        stop, save_due = agree_across_ranks(
            (should_stop() if should_stop is not None else False, saver.due()), device
        )
        if stop or save_due:
            stepper.check_finite(f"epoch {position.epoch}, step {position.step}")
            position.step_in_epoch, position.loss_sum = index_in_epoch, float(loss_sum.item())
            saver.save(position)
        if stop:
            raise TrainingAbortedError(
                "stopped",
                f"training stopped at epoch {position.epoch}, step {position.step} (checkpointed)",
            )
        position.last_lr = stepper.lr
        loss = stepper(images, batches[index_in_epoch], position.step)
        loss_sum += loss
        position.step += 1
        if position.step % cfg.log_every_steps == 0:
            stepper.check_finite(f"epoch {position.epoch}, step {position.step}")
            if on_step is not None:
                on_step(position.step, {"loss": loss.item(), "lr": position.last_lr})
    return loss_sum


def _epoch_grid(
    n: int, task: ProxyTask, epoch: int, per_epoch: int, device: torch.device
) -> torch.Tensor:
    """This rank's ``[per_epoch, b]`` batch indices of ``epoch``, copied to the device at once."""
    batches = epoch_batches(
        n, task.train.batch_size, epoch=epoch, seed=task.seed, rank=get_rank(),
        world_size=get_world_size(),
    )[:per_epoch]  # fmt: skip
    return torch.stack(batches).to(device, non_blocking=True)


def _end_epoch(
    model: ProxyNetwork,
    data: SearchData,
    stepper: ContrastiveStep,
    position: _Position,
    loss_sum: torch.Tensor,
    timing: tuple[float, int, int],
) -> EpochMetrics:
    """Check the epoch's losses were finite, then score it (reduced over ranks)."""
    task, device = stepper.task, stepper.device
    epoch_start, steps, trained = timing
    stepper.check_finite(f"the end of epoch {position.epoch}")
    metrics = EpochMetrics(
        epoch=position.epoch + 1,
        train_loss=float(all_reduce_mean(loss_sum / steps).item()),
        val_loss=validation_loss(model, data, task, device, stepper.plan),
        knn_accuracy=knn_accuracy(model, data, task, device, stepper.plan),
        images_per_s=trained * task.train.batch_size / max(time.perf_counter() - epoch_start, 1e-9),
        lr=position.last_lr,
    )
    position.history.append(metrics)
    return metrics


def train_candidate(
    model: ProxyNetwork,
    data: SearchData,
    task: ProxyTask,
    device: torch.device,
    *,
    on_step: StepCallback | None = None,
    on_epoch: EpochCallback | None = None,
    should_stop: StopCheck | None = None,
    checkpointing: Checkpointing | None = None,
) -> TrainResult:
    """Train ``model`` contrastively on ``data.train`` and score it.

    How the steps run on ``device`` (layout, precision, compilation, CPU threads) is chosen
    first by measurement (:func:`~cnas_hpc.train.plan_tuning.choose_plan`, cached per device
    and model shape), saved in every checkpoint and recorded in the result. A resumed run
    trains under its checkpoint's plan without measuring, when that plan fits this device and
    allocation (:func:`~cnas_hpc.train.plan_tuning.stored_plan`; else it measures, logged), so
    it ends where an unbroken run under that plan would.

    Args:
        model: the candidate, already on ``device`` (not yet wrapped in DDP). Its parameters
            are put in the chosen plan's memory layout, in place.
        data: search splits on the CPU (uint8 images); moved to ``device`` here once.
        task: the proxy task (``task.train`` drives the loop).
        device: training device of this rank.
        on_step: called on every rank every ``train.log_every_steps`` steps with local metrics.
        on_epoch: called on every rank after each epoch with reduced metrics; when it returns
            True on ANY rank (e.g. rank 0's pruner said so), every rank stops and
            :class:`~cnas_hpc.train.outcome.TrainingAbortedError` (reason ``pruned``) is raised.
        should_stop: polled once per step on every rank; if it returns True on ANY rank, all
            ranks stop together (a checkpoint is saved first) and
            :class:`~cnas_hpc.train.outcome.TrainingAbortedError` (reason ``stopped``) is raised.
        checkpointing: periodic saves and resume (see
            :class:`~cnas_hpc.train.checkpoint.Checkpointing`).

    Returns:
        The reduced result, identical on every rank.

    Raises:
        TrainingAbortedError: non-finite loss or out-of-memory error (on any rank), a stop, or
            an agreed prune.
    """
    images = data.train.images.to(device, non_blocking=True)
    per_epoch = steps_per_epoch(images.shape[0], task.train)
    total_steps = task.train.epochs * per_epoch
    resume = checkpointing.resume if checkpointing is not None else None
    plan = stored_plan(resume.plan, task, device) if resume is not None else None
    if plan is None:
        plan = choose_plan(
            model, images, task, device, total_steps=total_steps, world_size=get_world_size()
        )
    with plan.threads_applied():
        plan.prepare(model)
        stepper = ContrastiveStep(
            model, task, device, n_train=images.shape[0], total_steps=total_steps,
            warmup_steps=round(task.train.warmup_epochs * per_epoch), rank=get_rank(), plan=plan,
        )  # fmt: skip
        position = _restore(model, stepper, resume)
        saver = _saver(checkpointing, stepper)
        images_seen = 0
        while position.epoch < task.train.epochs:
            batches = _epoch_grid(images.shape[0], task, position.epoch, per_epoch, device)
            epoch_start, start_at = time.perf_counter(), position.step_in_epoch
            loss_sum = _run_epoch(images, batches, position, stepper, saver, should_stop, on_step)
            trained = len(batches) - start_at
            images_seen += trained * task.train.batch_size
            timing = (epoch_start, len(batches), trained)
            metrics = _end_epoch(model, data, stepper, position, loss_sum, timing)
            prune = on_epoch(metrics) if on_epoch is not None else False
            if any_across_ranks(bool(prune), device):
                raise TrainingAbortedError(
                    "pruned", f"pruned after epoch {metrics.epoch}: ranked below its peers"
                )
            position.epoch, position.step_in_epoch, position.loss_sum = position.epoch + 1, 0, 0.0
            if position.epoch < task.train.epochs:
                saver.save(position)
    return _result(position, saver, images_seen, plan)


def _result(
    position: _Position, saver: PositionSaver, images_seen: int, plan: StepPlan
) -> TrainResult:
    last = position.history[-1]
    return TrainResult(
        train_loss=last.train_loss,
        val_loss=last.val_loss,
        knn_accuracy=last.knn_accuracy,
        plan=plan.name,
        **position.totals(images_seen, saver.clock.elapsed_s()),
    )
