"""One optimisation step of the contrastive proxy task, as named pieces.

A step is ``views -> forward -> loss -> finite flag -> backward -> update``; each piece is a
method of :class:`ContrastiveStep`, testable on its own, and :meth:`ContrastiveStep.__call__`
chains them. Data parallelism:

* The model is wrapped in DistributedDataParallel (DDP broadcasts rank 0's weights at
  construction) but every forward and backward runs under ``no_sync``: both are rank-local
  (no buffer broadcast, no bucket all-reduce), and :meth:`ContrastiveStep.update` averages the
  gradients afterwards in one coalesced all-reduce, which is what DDP's hooks would do. Unlike
  the hooks, this lets the ranks AGREE on an out-of-memory error in the forward or in the
  backward pass before any gradient collective starts, so no rank is left waiting.
* BatchNorm statistics stay per rank.
* Augmentation randomness depends only on ``(seed, rank, global step)``
  (:func:`step_seed`): a resumed run draws exactly the views an unbroken one would.

No host synchronisation inside a step: nothing reads a device value back (except fp16 AMP's
grad scaler, which reads its overflow check every step; fp32 and bf16 need none). A non-finite loss
only sets a flag on the device (:meth:`ContrastiveStep.flag_non_finite`); the training loop
reads it where it reads the loss anyway (every ``train.log_every_steps`` steps, at epoch ends,
before a checkpoint) through :meth:`ContrastiveStep.check_finite`, which agrees it across
ranks. A diverged candidate therefore trains at most ``log_every_steps - 1`` steps on NaNs
before it is stopped, which costs less than a device sync per step. Abort flags that live on
the host (an out-of-memory error) are agreed through
:func:`~cnas_hpc.distributed.collectives.agree_across_ranks`, which never touches the GPU.

How the step runs on the device (memory layout, autocast, compilation, CPU threads) is a
:class:`~cnas_hpc.train.plan.StepPlan`, chosen by measurement (``train.perf``).

Tensor shapes: images ``[N, 3, H, W]`` uint8 on the device; a batch index ``[b]`` int64 on the
device with ``b = batch_size // world_size``; views ``[b, 3, S, S]`` float; projections
``[b, proj_dim]``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from cnas_hpc.config.augment import AugmentConfig
from cnas_hpc.config.train import TrainConfig
from cnas_hpc.distributed.collectives import any_across_ranks, average_gradients, is_distributed
from cnas_hpc.models.networks import ProxyNetwork
from cnas_hpc.ssl.augment import BatchAugment
from cnas_hpc.ssl.registry import ContrastiveLoss, LossSetup, build_loss
from cnas_hpc.train.outcome import TrainingAbortedError
from cnas_hpc.train.plan import StepPlan
from cnas_hpc.train.schedule import warmup_cosine


@dataclass(frozen=True)
class ProxyTask:
    """What the contrastive proxy task needs from a config; any app can build one.

    Attributes:
        train: optimiser, loss, batch (GLOBAL over all ranks), epochs, AMP.
        augment: the SimCLR view parameters.
        image_size: side of the square views.
        seed: seed of model initialisation, augmentation and the memory bank's negatives.
        autotune_dir: where the measured step plans are cached (a folder every worker sees);
            ``None`` measures once per process.
        max_threads: the most intra-op CPU threads a measured step plan may use: a
            task's allocation (``distributed.env.size_cpu_threads``: a search trial, a fidelity
            score, an evaluation probe); ``None``: the threads the process runs now
            (``torch.get_num_threads()``, which every app sets from its allocation).
    """

    train: TrainConfig
    augment: AugmentConfig
    image_size: int
    seed: int
    autotune_dir: Path | None = None
    max_threads: int | None = None


def step_seed(seed: int, rank: int, step: int) -> int:
    """The augmentation seed of global step ``step`` on ``rank`` (no state to checkpoint)."""
    return ((seed * 1_000_003 + rank) * 1_000_033 + step) % (2**63 - 1)


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD with momentum (default) or AdamW, as ``train.optimizer`` says."""
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )


def _oom_agreed(oom: bool, device: torch.device, where: str) -> None:
    if any_across_ranks(oom, device):
        raise TrainingAbortedError("out_of_memory", f"CUDA out of memory {where}")


class ContrastiveStep:
    """The optimiser, scheduler, AMP scaler, loss and augmentation of one candidate on one rank.

    Every rank builds one with the same arguments (the same ``plan`` included); rank ``r``
    trains on its slice of each global batch. ``state_dict()`` / ``load_state_dict()`` cover
    everything a resume needs besides the model (optimizer, scheduler, scaler, memory bank and
    its negative sampler). The model must already be in ``plan``'s layout
    (:meth:`~cnas_hpc.train.plan.StepPlan.prepare`).
    """

    def __init__(
        self,
        model: ProxyNetwork,
        task: ProxyTask,
        device: torch.device,
        *,
        n_train: int,
        total_steps: int,
        warmup_steps: int,
        rank: int = 0,
        plan: StepPlan | None = None,
    ) -> None:
        cfg = task.train
        self.model, self.task, self.device, self.rank = model, task, device, rank
        self.plan = plan or StepPlan()
        self.net: nn.Module = (
            DistributedDataParallel(model, broadcast_buffers=False) if is_distributed() else model
        )
        self.run_net = self.plan.forward_fn(self.net)
        # Set (on the device) when a step's loss was not finite; read by check_finite().
        self.non_finite = torch.zeros((), dtype=torch.bool, device=device)
        self.optimizer = make_optimizer(model, cfg)
        self.scheduler = warmup_cosine(
            self.optimizer, total_steps=total_steps, warmup_steps=warmup_steps
        )
        self.scaler = torch.amp.GradScaler(
            enabled=self.plan.precision == "fp16" and device.type == "cuda"
        )
        self.augment = BatchAugment(task.augment, task.image_size)
        self.generator = torch.Generator(device=device)
        # The loss by its config name (cnas_hpc.ssl.registry); a stateful one (the memory
        # bank) keeps its state on the device and in this stepper's state_dict.
        self.criterion: ContrastiveLoss = build_loss(
            cfg.loss,
            LossSetup(cfg, n_train=n_train, dim=model.proj_dim, seed=task.seed, device=device),
        )

    # -- the pieces of a step -------------------------------------------------------------------

    def views(
        self, images: torch.Tensor, index: torch.Tensor, step: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Two augmented views of ``images[index]``, seeded by ``(seed, rank, step)``, in the
        plan's memory layout."""
        self.generator.manual_seed(step_seed(self.task.seed, self.rank, step))
        view1, view2 = self.augment.two_views(images[index], self.generator)
        return self.plan.images(view1), self.plan.images(view2)

    def forward(
        self, view1: torch.Tensor, view2: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Projections of both views (rank-local); an out-of-memory error on any rank is agreed.

        Raises:
            TrainingAbortedError: ``out_of_memory`` on every rank when any rank ran out.
        """
        with self.plan.autocast(self.device):
            try:
                z1, z2 = self.run_net(view1), self.run_net(view2)
                oom = False
            except torch.cuda.OutOfMemoryError:
                oom = True
        _oom_agreed(oom, self.device, "in the forward pass")
        return z1, z2

    def loss(self, z1: torch.Tensor, z2: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """The contrastive loss of this rank's slice (negatives gathered from every rank).

        Computed in float32 outside autocast by the registered ``train.loss``; the batch indices
        come from :func:`~cnas_hpc.data.splits.epoch_batches`, valid by construction, which is
        what the registry's contract asks of them.
        """
        return self.criterion(z1.float(), z2.float(), index)

    def flag_non_finite(self, loss: torch.Tensor) -> None:
        """Remember, on the device, whether ``loss`` is not finite (no host sync)."""
        torch.logical_or(self.non_finite, ~torch.isfinite(loss.detach()), out=self.non_finite)

    def check_finite(self, where: str) -> None:
        """Stop every rank when any rank's loss was not finite since the start.

        Reads this rank's flag back from the device (a host sync: call it where a value is read
        anyway) and agrees it across ranks.

        Raises:
            TrainingAbortedError: ``non_finite_loss`` on every rank.
        """
        if any_across_ranks(bool(self.non_finite.item()), self.device):
            raise TrainingAbortedError(
                "non_finite_loss",
                f"non-finite contrastive loss by {where}: the candidate diverged",
            )

    def backward(self, loss: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor) -> None:
        """Gradients of ``loss`` on this rank, in two phases.

        The gradient with respect to the projections crosses the gathered negatives (a
        collective on small tensors); the backward through the network is rank-local, so an
        out-of-memory error there can still be agreed.

        Raises:
            TrainingAbortedError: ``out_of_memory`` on every rank when any rank ran out.
        """
        self.optimizer.zero_grad(set_to_none=True)
        grad_z = torch.autograd.grad(self.scaler.scale(loss), [z1, z2])
        try:
            torch.autograd.backward([z1, z2], list(grad_z))
            oom = False
        except torch.cuda.OutOfMemoryError:
            oom = True
        _oom_agreed(oom, self.device, "in the backward pass")

    def update(self) -> None:
        """Average the gradients over ranks, clip them, step the optimizer and the scheduler."""
        average_gradients(self.model.parameters())
        if self.task.train.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.task.train.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()

    def __call__(self, images: torch.Tensor, index: torch.Tensor, step: int) -> torch.Tensor:
        """One full step on ``images[index]``; returns this rank's loss (detached, on the device).

        Reads nothing back from the device; a non-finite loss is only flagged
        (:meth:`check_finite` raises later).

        Raises:
            TrainingAbortedError: an agreed out-of-memory error.
        """
        view1, view2 = self.views(images, index, step)
        no_sync = (
            self.net.no_sync()
            if isinstance(self.net, DistributedDataParallel)
            else contextlib.nullcontext()
        )
        with no_sync:
            z1, z2 = self.forward(view1, view2)
            loss = self.loss(z1, z2, index)
            self.flag_non_finite(loss)
            self.backward(loss, z1, z2)
        self.update()
        return loss.detach()

    # -- state ----------------------------------------------------------------------------------

    @property
    def lr(self) -> float:
        """The learning rate the next step uses."""
        return float(self.optimizer.param_groups[0]["lr"])

    def state_dict(self) -> dict[str, Any]:
        """The optimizer, scheduler, scaler and the loss's own state (``extra``: the memory bank).

        Optimizer state keeps the plan's memory layout; loading it under another plan is fine
        (``copy_`` converts layouts).
        """
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "extra": self.criterion.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any], *, steps_done: int) -> None:
        """Restore :meth:`state_dict`; a state without a scheduler (older checkpoints) is
        fast-forwarded by ``steps_done`` scheduler steps instead."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        if state.get("scheduler"):
            self.scheduler.load_state_dict(state["scheduler"])
        else:
            for _ in range(steps_done):
                self.scheduler.step()
        self.criterion.load_state_dict(state.get("extra") or {})
