"""Collectives the training code needs, safe to call whether or not a process group exists.

Every function here is an identity or no-op when ``torch.distributed`` is not initialised (a
single process, tests, CPU debugging), so callers never branch on the world size themselves.
When a group exists, every rank must make the same calls in the same order with tensors of the
same shape and dtype, on the device that matches the backend (CUDA for NCCL, CPU for gloo).

:func:`gather_with_grad` is the one with a gradient (torch's
``torch.distributed.nn.functional.all_gather``). Its backward SUMS the incoming gradient over
ranks before returning this rank's slice: every rank's loss depends on every rank's embeddings
(they are the negatives), so the gradient of the global loss with respect to this rank's
embeddings is the sum of the gradients coming from all ranks' losses. A backward that only
returns the local slice (lightly issue #1528) silently drops the cross-rank terms, and 1-GPU and
N-GPU runs then disagree (``tests/test_distributed_collectives.py`` compares them).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn

T = TypeVar("T")

#: A gloo group over all ranks for host-side flags, set up by
#: :func:`set_up_control_group` when the default group is not gloo (NCCL): agreeing a flag then
#: never touches the GPU, so it does not wait for queued kernels. ``None``: use the default group.
_control_group: Any = None


def set_up_control_group() -> None:
    """Create the gloo group :func:`agree_across_ranks` uses (every rank calls it, once, right
    after the default group is initialised; a no-op when that group is gloo already)."""
    global _control_group
    _control_group = None
    if is_distributed() and dist.get_backend() != "gloo":
        _control_group = dist.new_group(backend="gloo")


def flags_backend() -> str | None:
    """The backend abort flags travel on (``gloo`` whenever possible), None without a group."""
    if not is_distributed():
        return None
    return "gloo" if _control_group is not None else str(dist.get_backend())


def forget_control_group() -> None:
    """Drop the control group (``destroy_process_group`` destroys it with the others)."""
    global _control_group
    _control_group = None


def is_distributed() -> bool:
    """Whether a default process group is initialised in this process."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """This process's rank in the default group (``0`` without one)."""
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    """Number of processes in the default group (``1`` without one)."""
    return dist.get_world_size() if is_distributed() else 1


def _all_gather_cat(x: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``x`` along dim 0, in rank order (no autograd)."""
    x = x.contiguous()
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x)
    return torch.cat(parts, dim=0)


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """All ranks' ``x`` concatenated in rank order, differentiable with respect to ``x``.

    Args:
        x: ``[B, ...]`` on this rank; every rank must pass the same shape and dtype.

    Returns:
        ``[W * B, ...]``, rows ``r * B .. (r + 1) * B - 1`` from rank ``r``; ``x`` itself when
        not distributed. Backward all-reduces (sums) the incoming gradient over ranks and
        returns this rank's rows, so a loss averaged over ranks (as DDP averages gradients)
        gets exactly the gradient of the single-process loss on the global batch. Every rank
        must therefore run backward through it.
    """
    if not is_distributed():
        return x
    # torch's differentiable all-gather sums the incoming gradients over ranks in its backward
    # (reduce-scatter on NCCL, all-to-all + sum on gloo), which is exactly the rule above.
    return torch.cat(dist_nn.all_gather(x.contiguous()), dim=0)


@torch.no_grad()
def all_gather_nograd(x: torch.Tensor) -> torch.Tensor:
    """All ranks' ``x`` concatenated in rank order, without gradient.

    Args:
        x: ``[B, ...]``; every rank must pass the same shape and dtype.

    Returns:
        A new ``[W * B, ...]`` tensor (``x.detach()`` when not distributed).
    """
    if not is_distributed():
        return x.detach()
    return _all_gather_cat(x.detach())


@torch.no_grad()
def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Element-wise mean of ``x`` over ranks, as a new tensor (``x`` is not modified).

    Args:
        x: A floating-point tensor of the same shape on every rank.

    Returns:
        The mean over ranks (a detached copy of ``x`` when not distributed).

    Raises:
        ValueError: ``x`` is not floating point (an integer mean would truncate).
    """
    if not x.is_floating_point():
        raise ValueError(f"all_reduce_mean needs a floating-point tensor, got {x.dtype}")
    out = x.detach().clone()
    if is_distributed():
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        out /= dist.get_world_size()
    return out


def all_reduce_sum_float(value: float, device: torch.device) -> float:
    """Sum of a Python float over ranks (computed in float64 on ``device``)."""
    if not is_distributed():
        return float(value)
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item())


def agree_across_ranks(flags: tuple[bool, ...], device: torch.device) -> tuple[bool, ...]:
    """OR each flag over all ranks in ONE collective; the same answer on every rank.

    Use it for abort decisions (a non-finite loss, a stop request, an out-of-memory error) so
    that no rank leaves a loop while the others wait in a collective. The flags are host
    values and travel on the CPU (the default gloo group, or the gloo control group next to
    NCCL): this synchronises the ranks' hosts, never a device's queue. ``device`` is only used
    when no gloo group exists.

    Without a process group: the flags themselves (no tensor, no sync).
    """
    if not is_distributed():
        return tuple(bool(f) for f in flags)
    on_cpu = _control_group is not None or dist.get_backend() == "gloo"
    t = torch.tensor([1.0 if f else 0.0 for f in flags], device="cpu" if on_cpu else device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=_control_group)
    return tuple(bool(v > 0) for v in t.tolist())


def any_across_ranks(flag: bool, device: torch.device) -> bool:
    """Whether ``flag`` is true on at least one rank (see :func:`agree_across_ranks`)."""
    return agree_across_ranks((flag,), device)[0]


def broadcast_object(obj: T, src: int = 0) -> T:
    """``obj`` of rank ``src``, returned on every rank (pickled; other ranks' ``obj`` ignored).

    On NCCL the object travels through the current CUDA device, which
    :func:`cnas_hpc.distributed.env.init_distributed` sets.

    Raises:
        ValueError: ``src`` is not a rank of the group.
    """
    if not is_distributed():
        return obj
    world = dist.get_world_size()
    if not 0 <= src < world:
        raise ValueError(f"broadcast source rank {src} is not in [0, {world})")
    box: list[Any] = [obj]
    dist.broadcast_object_list(box, src=src)
    result: T = box[0]
    return result


def average_gradients(parameters: Iterable[torch.nn.Parameter]) -> None:
    """Average the ``.grad`` of ``parameters`` over all ranks, in one coalesced all-reduce.

    What DistributedDataParallel does in its backward hooks, done after a rank-local backward
    instead, so that a failure inside the backward pass can be agreed across ranks before any
    gradient collective starts. Parameters without a gradient are skipped (identically on every
    rank, since every rank builds the same network).
    """
    if not is_distributed():
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    flat = torch._utils._flatten_dense_tensors(grads)
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= get_world_size()
    for grad, averaged in zip(
        grads, torch._utils._unflatten_dense_tensors(flat, grads), strict=True
    ):
        grad.copy_(averaged)
