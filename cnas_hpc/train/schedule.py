"""Learning-rate schedules, built from ``torch.optim.lr_scheduler``.

The proxy task steps its scheduler once per ITERATION (a few hundred per candidate): linear
warm-up over ``warmup_epochs`` then cosine decay to 0, as DINO does. The evaluation phase steps
once per EPOCH (cosine to 0, DARTS's CIFAR protocol; or ``x gamma`` per epoch, its ImageNet one).
A scheduler's ``state_dict`` goes into the checkpoint, so a resumed run continues the same curve.
"""

from __future__ import annotations

import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, LRScheduler, SequentialLR


def warmup_cosine(
    optimizer: torch.optim.Optimizer, *, total_steps: int, warmup_steps: int = 0
) -> LRScheduler:
    """Linear warm-up from ``lr / warmup_steps`` to ``lr``, then cosine decay to 0.

    Step ``t`` (0-based) has ``lr * (t + 1) / warmup_steps`` during the warm-up and
    ``lr * (1 + cos(pi * (t - warmup_steps) / (total_steps - warmup_steps))) / 2`` after it.

    Args:
        optimizer: its ``lr`` is the peak rate.
        total_steps: scheduler steps over the whole run, ``>= 1``.
        warmup_steps: steps of the warm-up, in ``[0, total_steps]``.
    """
    cosine_steps = max(1, total_steps - warmup_steps)
    cosine = CosineAnnealingLR(optimizer, T_max=cosine_steps, eta_min=0.0)
    if warmup_steps <= 0:
        return cosine
    warmup = LinearLR(
        optimizer,
        start_factor=1.0 / warmup_steps,
        end_factor=1.0,
        # The warm-up's last step runs at the peak rate: (t + 1) / warmup_steps at t = w - 1.
        total_iters=max(1, warmup_steps - 1),
    )
    return SequentialLR(optimizer, [warmup, cosine], milestones=[warmup_steps])


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    """The learning rate of the optimizer's first parameter group."""
    return float(optimizer.param_groups[0]["lr"])
