"""Supervised training of a cell from scratch: the evaluation phase's loop (DARTS protocol).

Contract:
    * Every rank of a task calls :func:`train_supervised` with the same network (seeded
      identically by :func:`build_eval_network`), task and data. ``protocol.batch_size`` is the
      GLOBAL batch; rank ``r`` trains on its slice of each global batch (as the search does).
    * Steps run rank-local (DDP under ``no_sync``) and gradients are averaged after the backward
      (:func:`~cnas_hpc.distributed.collectives.average_gradients`), so an out-of-memory error on
      one rank is agreed by all ranks before any gradient collective.
    * Randomness depends only on ``(seed, rank, global step)`` (augmentation and drop-path) and
      ``(seed, epoch)`` (data order): a run stopped and resumed from its checkpoint ends with
      exactly the weights, hence the accuracy, of an unbroken run with the same seed (on the CPU;
      CUDA kernels may be non-deterministic). Every checkpoint records the task's memory format
      and AMP (:meth:`SupervisedTask.layout_record`), so a resumed run can keep them.
    * No host sync inside a step except where a logged value is read: losses, accuracies and a
      non-finite flag accumulate on the device and are read at log points and epoch ends.
    * The result is identical on every rank (metrics are reduced).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from cnas_hpc.config.augment import AugmentConfig
from cnas_hpc.config.protocol import ProtocolConfig
from cnas_hpc.config.train import check_global_batch
from cnas_hpc.data.datasets import ImageArrays
from cnas_hpc.data.labeled import LabeledData
from cnas_hpc.data.splits import epoch_batches
from cnas_hpc.data.transforms import (
    CIFAR_MEAN,
    CIFAR_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Normalize,
    PadCropFlipCutout,
)
from cnas_hpc.distributed.collectives import (
    agree_across_ranks,
    all_reduce_sum_float,
    any_across_ranks,
    average_gradients,
    get_rank,
    get_world_size,
    is_distributed,
)
from cnas_hpc.models.imagenet import NetworkImageNet
from cnas_hpc.models.networks import NetworkCIFAR
from cnas_hpc.space.genotype import Genotype
from cnas_hpc.ssl.augment import BatchAugment
from cnas_hpc.train.checkpoint import Checkpointing, PositionSaver, TrainPosition, TrainState
from cnas_hpc.train.outcome import TrainingAbortedError
from cnas_hpc.train.step import step_seed

#: DARTS's ImageNet training augmentation: random-resized crop, flip, colour jitter.
IMAGENET_AUGMENT = AugmentConfig(
    crop_scale=(0.08, 1.0),
    jitter_p=1.0,
    brightness=0.4,
    contrast=0.4,
    saturation=0.4,
    hue=0.2,
    grayscale_p=0.0,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
)

EvalNetwork = NetworkCIFAR | NetworkImageNet

#: The memory formats and autocast dtypes of a :class:`SupervisedTask`, by the names that
#: ``protocol.memory_format`` / ``protocol.amp`` and checkpoints use.
MEMORY_FORMATS: dict[str, torch.memory_format] = {
    "channels_last": torch.channels_last,
    "contiguous": torch.contiguous_format,
}
AMP_DTYPES: dict[str, torch.dtype | None] = {
    "none": None,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}


@dataclass(frozen=True)
class SupervisedTask:
    """What supervised training needs: the protocol, the number of classes and the seed."""

    protocol: ProtocolConfig
    num_classes: int
    seed: int
    #: ``torch.channels_last`` or ``torch.contiguous_format`` (see ``train.autotune``).
    memory_format: torch.memory_format = torch.contiguous_format
    #: autocast dtype on CUDA (None: fp32).
    amp_dtype: torch.dtype | None = None

    def layout_record(self, device: torch.device) -> dict[str, str]:
        """What a checkpoint stores of how this task's steps run on ``device``: the names of
        its memory format and AMP (keys of :data:`MEMORY_FORMATS` / :data:`AMP_DTYPES`) and the
        device type they were chosen on (read back by ``evaluate.speed.choose_layout``).
        """
        memory_format = next(n for n, f in MEMORY_FORMATS.items() if f == self.memory_format)
        amp = next(n for n, d in AMP_DTYPES.items() if d == self.amp_dtype)
        return {"device": device.type, "memory_format": memory_format, "amp": amp}


@dataclass
class EvalEpoch:
    """Metrics of one finished epoch (identical on every rank); test metrics when measured."""

    epoch: int
    train_loss: float
    train_accuracy: float
    test_accuracy: float | None
    test_loss: float | None
    lr: float
    images_per_s: float


@dataclass
class SupervisedResult:
    """The outcome of training a cell from scratch."""

    test_accuracy: float
    test_loss: float
    train_accuracy: float
    epochs_done: int
    steps: int
    wall_s: float
    images_per_s: float
    history: list[EvalEpoch] = field(default_factory=list)
    resumed_from_epoch: int | None = None


def build_eval_network(
    genotype: Genotype, protocol: ProtocolConfig, num_classes: int, seed: int
) -> EvalNetwork:
    """The evaluation network of ``protocol.network``, seeded identically on every rank (CPU)."""
    auxiliary = protocol.auxiliary_weight > 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        network = NetworkImageNet if protocol.network == "imagenet" else NetworkCIFAR
        return network(
            genotype,
            C=protocol.channels,
            num_classes=num_classes,
            layers=protocol.cells,
            auxiliary=auxiliary,
        )


def _scheduler(
    optimizer: torch.optim.Optimizer, protocol: ProtocolConfig
) -> torch.optim.lr_scheduler.LRScheduler:
    if protocol.lr_schedule == "step":
        return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=protocol.lr_gamma)
    return torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=protocol.epochs, eta_min=protocol.min_lr
    )


class SupervisedStep:
    """Optimizer, per-epoch scheduler, augmentation and loss of one cell on one rank.

    Tensor shapes: ``images`` ``[N, 3, S, S]`` uint8 and ``labels`` ``[N]`` int64 on the device;
    a batch index ``[b]`` (``b = batch_size // world_size``); logits ``[b, num_classes]``.
    """

    def __init__(
        self,
        model: EvalNetwork,
        task: SupervisedTask,
        device: torch.device,
        *,
        local: bool = False,
    ) -> None:
        protocol = task.protocol
        self.model, self.task, self.device, self.rank = model, task, device, get_rank()
        # local=True: a step on this rank alone, no collective (e.g. timed by the autotuner).
        self.collective = is_distributed() and not local
        self.net: nn.Module = (
            DistributedDataParallel(model, broadcast_buffers=False) if self.collective else model
        )
        self.optimizer = torch.optim.SGD(
            model.parameters(),
            lr=protocol.lr,
            momentum=protocol.momentum,
            weight_decay=protocol.weight_decay,
        )
        self.scheduler = _scheduler(self.optimizer, protocol)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=protocol.label_smoothing)
        self.generator = torch.Generator(device=device)
        if protocol.network == "imagenet":
            self._augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] = BatchAugment(
                IMAGENET_AUGMENT, protocol.image_size
            )
            self.normalize = Normalize(IMAGENET_MEAN, IMAGENET_STD)
        else:
            self._augment = PadCropFlipCutout(cutout=protocol.cutout)
            self.normalize = Normalize(CIFAR_MEAN, CIFAR_STD)
        # Device-side accumulators of the current epoch: read at log points and epoch ends.
        self.loss_sum = torch.zeros((), device=device)
        self.correct = torch.zeros((), device=device, dtype=torch.int64)
        self.seen = 0
        self.non_finite = torch.zeros((), device=device, dtype=torch.bool)

    def _agreed(self, flag: bool) -> bool:
        """``flag`` ORed over the ranks (this rank's own flag for a local step)."""
        return any_across_ranks(flag, self.device) if self.collective else flag

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.task.amp_dtype is None or self.device.type != "cuda":
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda", dtype=self.task.amp_dtype)

    def start_epoch(self, epoch: int) -> None:
        """DARTS's linear drop-path ramp, and fresh epoch accumulators."""
        protocol = self.task.protocol
        self.model.drop_path_prob = protocol.drop_path * epoch / protocol.epochs
        self.loss_sum.zero_()
        self.correct.zero_()
        self.seen = 0

    def views(self, images: torch.Tensor, index: torch.Tensor, step: int) -> torch.Tensor:
        """Augmented ``images[index]``; also seeds drop-path's masks for this step."""
        seed = step_seed(self.task.seed, self.rank, step)
        self.generator.manual_seed(seed)
        torch.manual_seed(seed)  # drop-path draws from the global generator
        x = self._augment(images[index], self.generator)
        return x.contiguous(memory_format=self.task.memory_format)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits and auxiliary logits; an out-of-memory error on any rank is agreed."""
        with self._autocast():
            try:
                logits, aux = self.net(x)
                oom = False
            except torch.cuda.OutOfMemoryError:
                oom = True
        if self._agreed(oom):
            raise TrainingAbortedError("out_of_memory", "CUDA out of memory in the forward pass")
        return logits, aux

    def loss(
        self, logits: torch.Tensor, aux: torch.Tensor | None, labels: torch.Tensor
    ) -> torch.Tensor:
        """Cross entropy (+ ``auxiliary_weight`` x the auxiliary head's), in fp32."""
        loss = self.criterion(logits.float(), labels)
        if aux is not None:
            loss = loss + self.task.protocol.auxiliary_weight * self.criterion(aux.float(), labels)
        return loss

    def backward(self, loss: torch.Tensor) -> None:
        """Rank-local backward; an out-of-memory error on any rank is agreed."""
        self.optimizer.zero_grad(set_to_none=True)
        try:
            loss.backward()
            oom = False
        except torch.cuda.OutOfMemoryError:
            oom = True
        if self._agreed(oom):
            raise TrainingAbortedError("out_of_memory", "CUDA out of memory in the backward pass")

    def update(self) -> None:
        """Average gradients over ranks, clip, step the optimizer."""
        if self.collective:
            average_gradients(self.model.parameters())
        if self.task.protocol.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.task.protocol.grad_clip)
        self.optimizer.step()

    def __call__(
        self, images: torch.Tensor, labels: torch.Tensor, index: torch.Tensor, step: int
    ) -> None:
        """One step on ``images[index]``; accumulates loss, accuracy and the non-finite flag."""
        x = self.views(images, index, step)
        y = labels[index]
        no_sync = (
            self.net.no_sync()
            if isinstance(self.net, DistributedDataParallel)
            else contextlib.nullcontext()
        )
        with no_sync:
            logits, aux = self.forward(x)
            loss = self.loss(logits, aux, y)
            self.backward(loss)
        self.update()
        detached = loss.detach()
        self.non_finite |= ~torch.isfinite(detached)
        self.loss_sum += detached * len(y)
        self.correct += (logits.detach().argmax(dim=1) == y).sum()
        self.seen += len(y)

    def check_finite(self, where: str) -> None:
        """Stop every rank when any rank saw a non-finite loss (one read of a device flag)."""
        if self._agreed(bool(self.non_finite.item())):
            raise TrainingAbortedError(
                "non_finite_loss", f"non-finite training loss by {where}: the network diverged"
            )

    def epoch_metrics(self) -> tuple[float, float]:
        """This epoch's training loss and accuracy over all ranks."""
        total = all_reduce_sum_float(float(self.seen), self.device)
        loss = all_reduce_sum_float(float(self.loss_sum.item()), self.device)
        correct = all_reduce_sum_float(float(self.correct.item()), self.device)
        return loss / max(total, 1.0), correct / max(total, 1.0)

    def state_dict(self) -> dict[str, Any]:
        """Optimizer and scheduler state (the model's is saved by the caller)."""
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])


@torch.no_grad()
def evaluate_accuracy(
    model: nn.Module,
    split: ImageArrays,
    normalize: Normalize,
    device: torch.device,
    *,
    batch_size: int = 512,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> tuple[float, float]:
    """Top-1 accuracy and mean cross entropy of ``model`` on ``split``, over all ranks.

    Every rank classifies a contiguous slice of the split (no padding, no duplicates) and the
    counts are summed, so the number is exact whatever the world size. The model is left in
    training mode.
    """
    assert split.labels is not None
    rank, world = get_rank(), get_world_size()
    n = len(split)
    lo, hi = rank * n // world, (rank + 1) * n // world
    model.eval()
    correct, loss_sum = 0.0, 0.0
    for start in range(lo, hi, batch_size):
        stop = min(hi, start + batch_size)
        x = normalize(split.images[start:stop].to(device)).contiguous(memory_format=memory_format)
        y = split.labels[start:stop].to(device)
        logits, _ = model(x)
        correct += float((logits.argmax(dim=1) == y).sum().item())
        loss_sum += float(nn.functional.cross_entropy(logits.float(), y, reduction="sum").item())
    model.train()
    correct = all_reduce_sum_float(correct, device)
    loss_sum = all_reduce_sum_float(loss_sum, device)
    return correct / max(n, 1), loss_sum / max(n, 1)


EpochCallback = Callable[[EvalEpoch], None]
StopCheck = Callable[[], bool]


class _Trainer:
    """The epoch loop of :func:`train_supervised` (see its docstring)."""

    def __init__(
        self,
        model: EvalNetwork,
        data: LabeledData,
        task: SupervisedTask,
        device: torch.device,
        checkpointing: Checkpointing | None,
    ) -> None:
        protocol = task.protocol
        check_global_batch(protocol.batch_size, get_world_size(), len(data.train))
        self.model, self.data, self.task, self.device = model, data, task, device
        self.checkpointing = checkpointing
        self.images = data.train.images.to(device, non_blocking=True)
        assert data.train.labels is not None
        self.labels = data.train.labels.to(device, non_blocking=True)
        full = len(data.train) // protocol.batch_size
        cap = protocol.max_steps_per_epoch
        self.steps_per_epoch = full if cap is None else min(full, cap)
        self.stepper = SupervisedStep(model, task, device)
        self.progress = self._restore(checkpointing.resume if checkpointing else None)
        self.saver = PositionSaver(checkpointing, model, self._state_parts)

    def _restore(self, resume: TrainState | None) -> TrainPosition[EvalEpoch]:
        if resume is None:
            return TrainPosition()
        self.model.load_state_dict(resume.model)
        self.stepper.load_state_dict({"optimizer": resume.optimizer, "scheduler": resume.scheduler})
        return TrainPosition.of(resume, EvalEpoch)

    def _state_parts(self) -> dict[str, Any]:
        """The stepper's entries of a saved state, with this epoch's partial sums."""
        state = self.stepper.state_dict()
        return {
            "optimizer": state["optimizer"],
            "scaler": {},
            "extra": self._epoch_sums(),
            "scheduler": state["scheduler"],
            "plan": self.task.layout_record(self.device),
        }

    def save(self) -> None:
        """Persist the state BEFORE the next step (rank 0), with this epoch's partial sums."""
        self.saver.save(self.progress)

    def _epoch_sums(self) -> dict[str, torch.Tensor]:
        s = self.stepper
        return {
            "loss_sum": s.loss_sum.detach().cpu(),
            "correct": s.correct.detach().cpu(),
            "seen": torch.tensor(s.seen),
        }

    def _resume_epoch_sums(self) -> None:
        resume = self.checkpointing.resume if self.checkpointing else None
        if resume is None or resume.epoch != self.progress.epoch or "seen" not in resume.extra:
            return
        s = self.stepper
        s.loss_sum.copy_(resume.extra["loss_sum"].to(self.device))
        s.correct.copy_(resume.extra["correct"].to(self.device))
        s.seen = int(resume.extra["seen"].item())

    def run_epoch(self, should_stop: StopCheck | None) -> int:
        """Train the rest of the current epoch; returns how many steps it took."""
        p, protocol = self.progress, self.task.protocol
        order = epoch_batches(
            len(self.data.train), protocol.batch_size, epoch=p.epoch, seed=self.task.seed,
            rank=self.stepper.rank, world_size=get_world_size(),
        )[: self.steps_per_epoch]  # fmt: skip
        # One host-to-device copy per epoch, not one per step.
        batches = torch.stack(order).to(self.device)
        start_at = p.step_in_epoch
        for position in range(start_at, len(batches)):
            # Decided before the step: a checkpoint holds the state "before this step".
            stop, save_due = agree_across_ranks(
                (
                    should_stop() if should_stop is not None else False,
                    self.saver.due(),
                ),
                self.device,
            )
            p.step_in_epoch = position
            if stop or save_due:
                self.save()
            if stop:
                raise TrainingAbortedError(
                    "stopped", f"training stopped at epoch {p.epoch}, step {p.step} (checkpointed)"
                )
            self.stepper(self.images, self.labels, batches[position], p.step)
            p.step += 1
            if p.step % protocol.log_every_steps == 0:
                self.stepper.check_finite(f"epoch {p.epoch}, step {p.step}")
        return len(batches) - start_at

    def finish_epoch(self, steps: int, seconds: float) -> EvalEpoch:
        """Check, score and record the epoch; step the scheduler; save at the boundary."""
        p, protocol = self.progress, self.task.protocol
        self.stepper.check_finite(f"the end of epoch {p.epoch}")
        train_loss, train_accuracy = self.stepper.epoch_metrics()
        last = p.epoch + 1 == protocol.epochs
        test_accuracy = test_loss = None
        if last or (p.epoch + 1) % max(1, protocol.test_every_epochs) == 0:
            test_accuracy, test_loss = evaluate_accuracy(
                self.model,
                self.data.test,
                self.stepper.normalize,
                self.device,
                batch_size=protocol.eval_batch_size,
                memory_format=self.task.memory_format,
            )
        metrics = EvalEpoch(
            epoch=p.epoch + 1,
            train_loss=train_loss,
            train_accuracy=train_accuracy,
            test_accuracy=test_accuracy,
            test_loss=test_loss,
            lr=float(self.stepper.optimizer.param_groups[0]["lr"]),
            images_per_s=steps * protocol.batch_size / max(seconds, 1e-9),
        )
        p.history.append(metrics)
        self.stepper.scheduler.step()
        p.epoch, p.step_in_epoch = p.epoch + 1, 0
        return metrics


def train_supervised(
    model: EvalNetwork,
    data: LabeledData,
    task: SupervisedTask,
    device: torch.device,
    *,
    on_epoch: EpochCallback | None = None,
    should_stop: StopCheck | None = None,
    checkpointing: Checkpointing | None = None,
) -> SupervisedResult:
    """Train ``model`` from scratch on ``data.train`` with labels and test it on ``data.test``.

    Args:
        model: the evaluation network on ``device`` (``task.memory_format`` applied).
        data: labeled train and test splits (CPU, uint8); the train split moves to the device.
        task: the protocol, number of classes and seed.
        device: this rank's device.
        on_epoch: called on every rank after each epoch with reduced metrics.
        should_stop: polled every step on every rank; True on ANY rank stops all ranks after a
            checkpoint (:class:`TrainingAbortedError` with reason ``stopped``).
        checkpointing: saves and resume (:class:`~cnas_hpc.train.checkpoint.Checkpointing`).

    Raises:
        TrainingAbortedError: non-finite loss, out of memory (any rank), or a stop request.
        ConfigError: the training split is smaller than one global batch.
    """
    trainer = _Trainer(model, data, task, device, checkpointing)
    trainer._resume_epoch_sums()
    p = trainer.progress
    images_seen = 0
    while p.epoch < task.protocol.epochs:
        if p.step_in_epoch == 0:
            trainer.stepper.start_epoch(p.epoch)
        else:
            trainer.model.drop_path_prob = task.protocol.drop_path * p.epoch / task.protocol.epochs
        started = time.perf_counter()
        steps = trainer.run_epoch(should_stop)
        images_seen += steps * task.protocol.batch_size
        metrics = trainer.finish_epoch(steps, time.perf_counter() - started)
        if on_epoch is not None:
            on_epoch(metrics)
        if p.epoch < task.protocol.epochs:
            trainer.save()
    last = p.history[-1]
    assert last.test_accuracy is not None and last.test_loss is not None
    return SupervisedResult(
        test_accuracy=last.test_accuracy,
        test_loss=last.test_loss,
        train_accuracy=last.train_accuracy,
        **p.totals(images_seen, trainer.saver.clock.elapsed_s()),
    )
