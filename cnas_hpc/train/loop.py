"""Contrastive training of one candidate network: the proxy task every trial runs.

Contract:
    * Every rank of a worker calls :func:`train_candidate` with the same genotype, settings and
      data; model initialisation is seeded identically, so DDP starts from the same weights.
    * The images live on the training device as one uint8 tensor; augmentation is batched there.
    * ``train.batch_size`` is the global batch; rank ``r`` trains on its slice of each global batch.
    * Every abort decision (a stop request, an out-of-memory error in the forward or backward
      pass, a non-finite loss) is agreed across ranks before anyone leaves the loop, so no rank
      is left waiting in a collective.
    * The returned :class:`TrainResult` is identical on every rank (metrics are reduced).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from cnas_hpc.config import Settings, TrainConfig
from cnas_hpc.data.splits import SearchData, epoch_batches
from cnas_hpc.dist.collectives import (
    agree_across_ranks,
    all_reduce_mean,
    any_across_ranks,
    average_gradients,
    get_rank,
    get_world_size,
    is_distributed,
)
from cnas_hpc.models.networks import ProxyNetwork, build_proxy
from cnas_hpc.space.genotype import Genotype
from cnas_hpc.ssl.augment import BatchAugment
from cnas_hpc.ssl.losses import MemoryBankNCE, nt_xent_loss
from cnas_hpc.train.checkpoint import TrainState

log = logging.getLogger(__name__)

# Fixed seed of the validation views: every trial of a study is scored on the same pairs.
_VAL_VIEW_SEED = 20_240_611


class TrialAbortedError(RuntimeError):
    """Training of a candidate stopped early for a reason that is not a bug of the worker.

    Attributes:
        reason: short machine-readable reason (``non_finite_loss``, ``stopped``).
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class EpochMetrics:
    """Metrics of one finished epoch (identical on every rank)."""

    epoch: int
    train_loss: float
    val_loss: float | None
    knn_accuracy: float | None
    images_per_s: float
    lr: float


@dataclass
class TrainResult:
    """Outcome of a finished candidate; ``objective(name)`` picks the value told to the study."""

    train_loss: float
    val_loss: float | None
    knn_accuracy: float | None
    epochs_done: int
    steps: int
    wall_s: float
    images_per_s: float
    history: list[EpochMetrics] = field(default_factory=list)
    #: the epoch training resumed from (None: trained from scratch).
    resumed_from_epoch: int | None = None

    def objective(self, name: str) -> float:
        """The value of objective ``name`` (see :mod:`cnas_hpc.search.objective`)."""
        value = {
            "train_contrastive_loss": self.train_loss,
            "val_contrastive_loss": self.val_loss,
            "knn_accuracy": self.knn_accuracy,
        }[name]
        if value is None:
            raise ValueError(f"objective {name} was not computed for this trial")
        return value


StepCallback = Callable[[int, dict[str, float]], None]
EpochCallback = Callable[[EpochMetrics], None]
StopCheck = Callable[[], bool]


def lr_schedule(cfg: TrainConfig, steps_per_epoch: int) -> list[float]:
    """Per-iteration learning rates: linear warm-up then cosine decay to 0 (DINO style)."""
    total = cfg.epochs * steps_per_epoch
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    rates = []
    for it in range(total):
        if it < warmup:
            rates.append(cfg.lr * (it + 1) / warmup)
        else:
            progress = (it - warmup) / max(1, total - warmup)
            rates.append(0.5 * cfg.lr * (1.0 + math.cos(math.pi * progress)))
    return rates


def _autocast(cfg: TrainConfig, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    if cfg.amp == "none" or device.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if cfg.amp == "bf16" else torch.float16
    return torch.autocast(device_type="cuda", dtype=dtype)


def _make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )


def _steps_per_epoch(n_train: int, cfg: TrainConfig) -> int:
    full = n_train // cfg.batch_size
    if full < 1:
        raise ValueError(
            f"the search split has {n_train} images, fewer than one batch "
            f"(train.batch_size={cfg.batch_size}): raise data.fraction or lower the batch size"
        )
    return full if cfg.max_steps_per_epoch is None else min(full, cfg.max_steps_per_epoch)


def build_candidate(genotype: Genotype, settings: Settings, device: torch.device) -> ProxyNetwork:
    """The proxy network for ``genotype``, seeded identically on every rank, on ``device``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        model = build_proxy(genotype, settings.model)
    return model.to(device)


@dataclass(frozen=True)
class Checkpointing:
    """How :func:`train_candidate` saves and resumes (rank 0 saves, every rank resumes).

    Attributes:
        save: called on rank 0 with the state to persist (None on other ranks: nothing to do).
        every_s: also save within an epoch when this many seconds passed since the last save.
        resume: the state to continue from (loaded by every rank), or None for a fresh start.
        trial: the trial number recorded in saved states.
        genotype_json: the architecture recorded in saved states.
    """

    save: Callable[[TrainState], None] | None
    every_s: float
    resume: TrainState | None
    trial: int
    genotype_json: str


def _step_seed(seed: int, rank: int, step: int) -> int:
    # Augmentation randomness depends only on (seed, rank, global step): a resumed trial draws
    # exactly the views it would have drawn, with no generator state in the checkpoint.
    return ((seed * 1_000_003 + rank) * 1_000_033 + step) % (2**63 - 1)


def train_candidate(
    model: ProxyNetwork,
    data: SearchData,
    settings: Settings,
    device: torch.device,
    *,
    on_step: StepCallback | None = None,
    on_epoch: EpochCallback | None = None,
    should_stop: StopCheck | None = None,
    checkpointing: Checkpointing | None = None,
) -> TrainResult:
    """Train ``model`` contrastively on ``data.train`` and score it.

    Args:
        model: the candidate, already on ``device`` (not yet wrapped in DDP).
        data: search splits on the CPU (uint8 images); moved to ``device`` here once.
        settings: validated settings; ``settings.train`` drives the loop.
        device: training device of this rank.
        on_step: called on every rank every ``train.log_every_steps`` steps with local metrics.
        on_epoch: called on every rank after each epoch with reduced metrics.
        should_stop: polled once per step on every rank; if it returns True on ANY rank, all
            ranks stop together (a checkpoint is saved first) and :class:`TrialAbortedError`
            (reason ``stopped``) is raised.
        checkpointing: periodic saves and resume (see :class:`Checkpointing`).

    Returns:
        The reduced result, identical on every rank.

    Raises:
        TrialAbortedError: non-finite loss (on any rank) or a stop request.
    """
    cfg = settings.train
    rank, world = get_rank(), get_world_size()
    if cfg.batch_size % world:
        raise ValueError(
            f"train.batch_size={cfg.batch_size} is not divisible by the world size {world}"
        )
    train_images = data.train.images.to(device, non_blocking=True)
    n_train = train_images.shape[0]
    steps_per_epoch = _steps_per_epoch(n_train, cfg)
    augment = BatchAugment(settings.augment, settings.data.image_size)
    generator = torch.Generator(device=device)

    membank: MemoryBankNCE | None = None
    if cfg.loss == "membank_nce":
        membank = MemoryBankNCE(
            n_train,
            model.proj_dim,
            temperature=cfg.temperature,
            num_negatives=cfg.membank_negatives,
            momentum=cfg.membank_momentum,
            seed=settings.seed,
        ).to(device)

    optimizer = _make_optimizer(model, cfg)
    scaler = torch.amp.GradScaler(enabled=cfg.amp == "fp16" and device.type == "cuda")
    rates = lr_schedule(cfg, steps_per_epoch)
    history: list[EpochMetrics] = []
    first_epoch, skip_steps, step, resumed_loss, prior_wall = 0, 0, 0, 0.0, 0.0
    resume = checkpointing.resume if checkpointing is not None else None
    if resume is not None:
        model.load_state_dict(resume.model)
        optimizer.load_state_dict(resume.optimizer)
        scaler.load_state_dict(resume.scaler)
        if membank is not None and "bank" in resume.extra:
            membank.bank.copy_(resume.extra["bank"].to(device))
            membank.negatives_generator().set_state(resume.extra["negatives_rng"])
        history = [EpochMetrics(**h) for h in resume.history]  # type: ignore[arg-type]
        first_epoch, skip_steps, step = resume.epoch, resume.step_in_epoch, resume.step
        resumed_loss, prior_wall = resume.loss_sum, resume.wall_s
    # DistributedDataParallel without its in-backward gradient all-reduce: DDP broadcasts rank
    # 0's weights at construction, each step runs forward and backward under ``no_sync`` (both
    # rank-local: no buffer broadcast, no bucket all-reduce), and gradients are averaged after
    # the backward (average_gradients, one coalesced all-reduce). Unlike DDP's hooks, this lets
    # the ranks agree on an out-of-memory error in the forward OR the backward pass before any
    # gradient collective starts. BatchNorm statistics stay per rank.
    net: nn.Module = (
        DistributedDataParallel(model, broadcast_buffers=False) if is_distributed() else model
    )

    started = time.perf_counter()
    last_save = started

    def snapshot(epoch: int, step_in_epoch: int, loss_sum: float) -> None:
        nonlocal last_save
        last_save = time.perf_counter()
        if checkpointing is None or checkpointing.save is None:
            return
        checkpointing.save(
            TrainState(
                trial=checkpointing.trial,
                genotype_json=checkpointing.genotype_json,
                epoch=epoch,
                step_in_epoch=step_in_epoch,
                step=step,
                loss_sum=loss_sum,
                model={k: v.detach().cpu() for k, v in model.state_dict().items()},
                optimizer=optimizer.state_dict(),
                scaler=scaler.state_dict(),
                extra=(
                    {
                        "bank": membank.bank.detach().cpu(),
                        "negatives_rng": membank.negatives_generator().get_state(),
                    }
                    if membank is not None
                    else {}
                ),
                history=[dataclasses.asdict(h) for h in history],
                wall_s=prior_wall + time.perf_counter() - started,
            )
        )

    images_seen = 0
    for epoch in range(first_epoch, cfg.epochs):
        net.train()
        epoch_start = time.perf_counter()
        batches = epoch_batches(
            n_train, cfg.batch_size, epoch=epoch, seed=settings.seed, rank=rank, world_size=world
        )[:steps_per_epoch]
        loss_sum = torch.tensor(resumed_loss if epoch == first_epoch else 0.0, device=device)
        start_at = skip_steps if epoch == first_epoch else 0
        for position in range(start_at, len(batches)):
            for group in optimizer.param_groups:
                group["lr"] = rates[step]
            # Stop and save decisions come before the forward pass: BatchNorm statistics move
            # in the forward, and a checkpoint must hold the state "before this step".
            every_s = checkpointing.every_s if checkpointing is not None else math.inf
            stop, save_due = agree_across_ranks(
                (
                    should_stop() if should_stop is not None else False,
                    time.perf_counter() - last_save >= every_s,
                ),
                device,
            )
            if stop or save_due:
                snapshot(epoch, position, float(loss_sum.item()))
            if stop:
                raise TrialAbortedError(
                    "stopped", f"training stopped at epoch {epoch}, step {step} (checkpointed)"
                )
            index = batches[position].to(device)
            generator.manual_seed(_step_seed(settings.seed, rank, step))
            view1, view2 = augment.two_views(train_images[index], generator)
            local_step = (
                net.no_sync()
                if isinstance(net, DistributedDataParallel)
                else contextlib.nullcontext()
            )
            with local_step:
                # The forward pass is rank-local (no buffer broadcast), so an out-of-memory error on
                # one rank is agreed here, before the loss gathers negatives from every rank.
                with _autocast(cfg, device):
                    try:
                        z1, z2 = net(view1), net(view2)
                        oom = False
                    except torch.cuda.OutOfMemoryError:
                        oom = True
                if any_across_ranks(oom, device):
                    raise TrialAbortedError(
                        "out_of_memory", f"CUDA out of memory at epoch {epoch}, step {step}"
                    )
                with _autocast(cfg, device):
                    if membank is not None:
                        loss = membank(z1.float(), z2.float(), index)
                    else:
                        loss = nt_xent_loss(z1.float(), z2.float(), cfg.temperature)
                bad = any_across_ranks(not math.isfinite(loss.item()), device)
                if bad:
                    raise TrialAbortedError(
                        "non_finite_loss",
                        f"non-finite contrastive loss at epoch {epoch}, step {step}: "
                        "the candidate diverged",
                    )
                optimizer.zero_grad(set_to_none=True)
                # Backward in two phases: the gradient w.r.t. the projections crosses the gathered
                # negatives (a collective, on small tensors); the backward through the network is
                # rank-local, so an out-of-memory error there can still be agreed.
                grad_z = torch.autograd.grad(scaler.scale(loss), [z1, z2])
                try:
                    torch.autograd.backward([z1, z2], list(grad_z))
                    oom = False
                except torch.cuda.OutOfMemoryError:
                    oom = True
                if any_across_ranks(oom, device):
                    raise TrialAbortedError(
                        "out_of_memory", f"CUDA out of memory in the backward at epoch {epoch}"
                    )
            average_gradients(model.parameters())
            if cfg.grad_clip is not None:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            loss_sum += loss.detach()
            step += 1
            images_seen += cfg.batch_size
            if on_step is not None and step % cfg.log_every_steps == 0:
                on_step(step, {"loss": loss.item(), "lr": rates[step - 1]})
        epoch_time = time.perf_counter() - epoch_start
        train_loss = float(all_reduce_mean(loss_sum / len(batches)).item())
        metrics = EpochMetrics(
            epoch=epoch + 1,
            train_loss=train_loss,
            val_loss=validation_loss(model, data, settings, device),
            knn_accuracy=knn_accuracy(model, data, settings, device),
            images_per_s=(len(batches) - start_at) * cfg.batch_size / max(epoch_time, 1e-9),
            lr=rates[step - 1],
        )
        history.append(metrics)
        if on_epoch is not None:
            on_epoch(metrics)
        if epoch + 1 < cfg.epochs:
            snapshot(epoch + 1, 0, 0.0)
    wall = time.perf_counter() - started
    last = history[-1]
    return TrainResult(
        train_loss=last.train_loss,
        val_loss=last.val_loss,
        knn_accuracy=last.knn_accuracy,
        epochs_done=len(history),
        steps=step,
        wall_s=prior_wall + wall,
        images_per_s=images_seen / max(wall, 1e-9),
        history=history,
        resumed_from_epoch=first_epoch if resume is not None else None,
    )


def _global_batches(n: int, batch_size: int) -> Iterator[tuple[int, int]]:
    """Fixed, unshuffled [start, stop) windows of at most ``batch_size`` covering ``n`` items."""
    for start in range(0, n, batch_size):
        yield start, min(n, start + batch_size)


@torch.no_grad()
def validation_loss(
    model: ProxyNetwork, data: SearchData, settings: Settings, device: torch.device
) -> float | None:
    """NT-Xent on the held-out split with fixed views, in eval mode; ``None`` without a split.

    Every rank augments the same global batch (same seed, so the score does not depend on the
    world size), scores its slice with negatives gathered from all ranks, and the local means are
    averaged across ranks. NT-Xent is used whatever the training loss, so scores stay comparable.
    """
    if data.val is None or len(data.val) < 2:
        return None
    rank, world = get_rank(), get_world_size()
    augment = BatchAugment(settings.augment, settings.data.image_size)
    generator = torch.Generator(device=device)
    generator.manual_seed(_VAL_VIEW_SEED)
    images = data.val.images.to(device)
    model.eval()
    total, count = 0.0, 0
    # Batches whose size is a multiple of the world size, so every rank holds an equal slice.
    size = max(world * 2, (min(settings.train.batch_size, len(images)) // world) * world)
    for start, stop in _global_batches(len(images), size):
        if (stop - start) < 2 * world:
            break
        stop = start + ((stop - start) // world) * world
        view1, view2 = augment.two_views(images[start:stop], generator)
        per_rank = (stop - start) // world
        sl = slice(rank * per_rank, (rank + 1) * per_rank)
        with _autocast(settings.train, device):
            z1, z2 = model(view1[sl]), model(view2[sl])
        total += float(nt_xent_loss(z1.float(), z2.float(), settings.train.temperature).item())
        count += 1
    model.train()
    if count == 0:
        return None
    mean = torch.tensor(total / count, device=device)
    return float(all_reduce_mean(mean).item())


@torch.no_grad()
def knn_accuracy(
    model: ProxyNetwork, data: SearchData, settings: Settings, device: torch.device
) -> float | None:
    """Leave-one-out weighted kNN accuracy of backbone features on the labeled split.

    Not label-free: computed only when ``data.labeled`` exists (``data.labeled_fraction > 0``).
    Every rank computes the same number (the labeled split is small), so nothing is reduced.
    """
    if data.labeled is None or data.labeled.labels is None or len(data.labeled) < 2:
        return None
    augment = BatchAugment(settings.augment, settings.data.image_size)
    model.eval()
    images = data.labeled.images.to(device)
    labels = data.labeled.labels.to(device)
    feats = torch.cat(
        [
            F.normalize(model.features(augment.plain(images[a:b])).float(), dim=1)
            for a, b in _global_batches(len(images), 512)
        ]
    )
    model.train()
    sim = feats @ feats.T
    sim.fill_diagonal_(-math.inf)  # leave one out
    k = min(settings.train.knn_k, len(images) - 1)
    top_sim, top_idx = sim.topk(k, dim=1)
    weights = (top_sim / 0.07).exp()
    n_classes = int(labels.max().item()) + 1
    votes = torch.zeros(len(images), n_classes, device=device)
    votes.scatter_add_(1, labels[top_idx], weights)
    return float((votes.argmax(dim=1) == labels).float().mean().item())
