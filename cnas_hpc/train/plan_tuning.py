"""Choose a candidate's :class:`~cnas_hpc.train.plan.StepPlan` by timing real steps.

Two stages through :func:`~cnas_hpc.train.autotune.choose_fastest` (cached per device, torch
version and model shape under ``ProxyTask.autotune_dir``, so a search measures them once):

1. the eager plans ``train.perf`` / ``train.amp`` allow (layouts x precisions), timed in turns
   (on a CPU with one intra-op thread, the measurement a busy node disturbs least);
2. where compilation is measured (``perf=auto`` on CUDA), the winner against the winner
   compiled, the compiled one charged its compile time spread over the candidate's steps
   (every candidate is a new architecture, so it compiles anew).

Then, on a CPU whose thread count is left to measurement, one thread or every core the worker's
allocation gives it (``ProxyTask.max_threads``; never more): timed for every
candidate on a small no-grad forward of a copy of it (a fraction of a second), because the
answer follows the node's load, which changes within a search
(:func:`~cnas_hpc.train.plan.thread_counts_for`).

A resumed candidate is not measured again: :func:`stored_plan` hands back the plan its
checkpoint recorded when it fits this device and allocation, so the resumed run rounds exactly
as the interrupted one did (a new measurement on a busy node may pick another thread count or
layout).

A probe step is what a training step does on one rank: two augmented views of real images,
two forwards, NT-Xent, backward, an SGD update, on a throwaway copy of the candidate, without
any collective (rank 0 measures alone; its choice is broadcast). The loss, the optimizer and
the learning rate are the same for every plan, so they do not change the ranking.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Mapping
from dataclasses import replace
from functools import partial

import torch

from cnas_hpc.models.networks import ProxyNetwork
from cnas_hpc.ssl.augment import BatchAugment
from cnas_hpc.ssl.losses import nt_xent_loss
from cnas_hpc.train.autotune import choose_fastest, measure_in_turns
from cnas_hpc.train.checkpoint import reuse_agreed
from cnas_hpc.train.plan import (
    StepPlan,
    compile_wanted,
    eager_plans,
    plan_from_record,
    thread_counts_for,
    why_unfit,
)
from cnas_hpc.train.step import ProxyTask

log = logging.getLogger(__name__)

#: Untimed calls per plan, then timed rounds (each round runs every plan once).
WARMUP, REPEAT = 1, 3
#: Images of the per-candidate thread probe (a no-grad forward).
THREAD_PROBE_IMAGES = 32


def probe_step(
    model: ProxyNetwork,
    images: torch.Tensor,
    task: ProxyTask,
    device: torch.device,
    plan: StepPlan,
    batch: int,
) -> Callable[[], None]:
    """One training step of a throwaway copy of ``model`` under ``plan`` (see module doc).

    Args:
        model: the candidate (left untouched: a deep copy is timed).
        images: uint8 ``[N, 3, H, W]`` on ``device``.
        task: the proxy task (augmentation, image size, temperature).
        device: where the step runs.
        plan: how it runs.
        batch: images per view (this rank's share of the global batch).
    """
    net = copy.deepcopy(model)
    plan.prepare(net)
    forward = plan.forward_fn(net)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.0, momentum=0.9)
    scaler = torch.amp.GradScaler(enabled=plan.precision == "fp16" and device.type == "cuda")
    augment = BatchAugment(task.augment, task.image_size)
    generator = torch.Generator(device=device).manual_seed(task.seed)
    index = torch.arange(batch, device=device) % images.shape[0]

    def step() -> None:
        with plan.threads_applied():
            view1, view2 = augment.two_views(images[index], generator)
            with plan.autocast(device):
                z1, z2 = forward(plan.images(view1)), forward(plan.images(view2))
            loss = nt_xent_loss(z1.float(), z2.float(), task.train.temperature, gather=False)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()

    return step


def workload_of(model: ProxyNetwork, task: ProxyTask, batch: int) -> dict[str, object]:
    """What decides the fastest plan besides the device: the proxy's shape and the batch.

    The genotype is left out on purpose: every candidate of a search shares the choice.
    """
    stem = model.body.stem[0]
    assert isinstance(stem, torch.nn.Conv2d)
    return {
        "net": type(model).__name__,
        "cells": len(model.body.cells),
        "stem_channels": stem.out_channels,
        "feature_dim": model.feature_dim,
        "proj_dim": model.proj_dim,
        "batch": batch,
        "image_size": task.image_size,
    }


def choose_plan(
    model: ProxyNetwork,
    images: torch.Tensor,
    task: ProxyTask,
    device: torch.device,
    *,
    total_steps: int,
    world_size: int = 1,
) -> StepPlan:
    """The fastest plan for this candidate's shape on ``device`` (every rank calls it).

    Args:
        model: the candidate on ``device`` (not modified).
        images: the training images, uint8 on ``device``.
        task: the proxy task; ``task.train`` says which plans are allowed.
        device: this rank's device.
        total_steps: steps the candidate will train (spreads a compile cost).
        world_size: ranks sharing the global batch.

    Returns:
        The same layout, precision and compilation on every rank (rank 0's measurement); the
        CPU thread count is each rank's own (it touches no collective).
    """
    batch = task.train.batch_size // world_size
    workload = workload_of(model, task, batch)
    plans = {plan.name: plan for plan in eager_plans(task.train, device)}
    thread_counts = thread_counts_for(task.train, device, task.max_threads)

    def timed(candidates: dict[str, StepPlan], **kwargs: object) -> StepPlan:
        # With the threads left to measurement, layouts are timed with one thread (see above).
        probes = {n: replace(p, threads=1) if thread_counts else p for n, p in candidates.items()}
        options = {
            name: _lazy(partial(probe_step, model, images, task, device, plan, batch))
            for name, plan in probes.items()
        }
        name = choose_fastest(
            options, device, workload=workload, cache_dir=task.autotune_dir,
            warmup=WARMUP, repeat=REPEAT, **kwargs,  # type: ignore[arg-type]
        )  # fmt: skip
        return candidates[name]

    best = timed(plans)
    wanted = compile_wanted(task.train, device)
    if wanted is None:
        compiled = StepPlan(best.layout, best.precision, True, best.threads)
        best = timed({best.name: best, compiled.name: compiled}, amortize_over=total_steps)
    elif wanted:
        best = StepPlan(best.layout, best.precision, True, best.threads)
    if thread_counts:
        best = replace(best, threads=choose_threads(model, images, task, device, best,
                                                    thread_counts))  # fmt: skip
    log.debug("step plan on %s: %s", device, best.name)
    return best


def stored_plan(
    record: Mapping[str, object], task: ProxyTask, device: torch.device
) -> StepPlan | None:
    """The plan a resumed candidate's checkpoint recorded, or ``None``: measure it anew.

    Every rank calls it with the same ``record`` (every rank loads the checkpoint); the plan is
    reused only when it fits on EVERY rank (:func:`~cnas_hpc.train.plan.why_unfit`: this device
    type, ``task.train``, at most ``task.max_threads`` threads), agreed in one collective, so
    either all ranks measure (and meet in its broadcasts) or none does. An empty ``record`` (a
    checkpoint written before plans were saved) or an unreadable one is measured too. Why a
    stored plan is not reused is logged. The thread count is rank 0's (rank 0 writes the
    checkpoint): every rank resumes with it.
    """
    plan: StepPlan | None = None
    if not record:
        reason: str | None = "the checkpoint holds no step plan (written before plans were saved)"
    else:
        try:
            plan, chosen_on = plan_from_record(record)
            reason = why_unfit(plan, chosen_on, task.train, device, task.max_threads)
        except ValueError as exc:
            reason = f"the checkpoint's step plan is unreadable: {exc}"
    if not reuse_agreed(reason, device, log, "candidate", "step plan") or plan is None:
        return None
    log.info("resumed candidate: training under its checkpoint's step plan %s", plan.name)
    return plan


def choose_threads(
    model: ProxyNetwork,
    images: torch.Tensor,
    task: ProxyTask,
    device: torch.device,
    plan: StepPlan,
    counts: tuple[int, ...],
) -> int:
    """The intra-op thread count of ``counts`` that runs a small no-grad forward of a copy of
    ``model`` (eval mode, ``plan``'s layout) fastest right now. Not cached, no collective.
    """
    net = copy.deepcopy(model).eval()
    plan.prepare(net)
    augment = BatchAugment(task.augment, task.image_size)
    x = plan.images(augment.plain(images[:THREAD_PROBE_IMAGES]))

    def forward(threads: int) -> Callable[[], None]:
        def run() -> None:
            with replace(plan, threads=threads).threads_applied(), torch.no_grad():
                net(x)

        return run

    costs = measure_in_turns({str(n): forward(n) for n in counts}, device, warmup=1, repeat=3)
    return int(min(costs, key=lambda n: costs[n]))


def _lazy(build: Callable[[], Callable[[], None]]) -> Callable[[], None]:
    """A step built on its first call (a cached choice then copies no model at all)."""
    built: list[Callable[[], None]] = []

    def run() -> None:
        if not built:
            built.append(build())
        built[0]()

    return run
