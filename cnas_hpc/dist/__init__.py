"""Distributed training support: the job environment and the collectives.

:mod:`cnas_hpc.dist.env` is the only place that reads rank / world-size environment variables;
:mod:`cnas_hpc.dist.collectives` wraps ``torch.distributed`` so that every call is an identity
in a single process.
"""

from __future__ import annotations

from cnas_hpc.dist.collectives import (
    all_gather_nograd,
    all_reduce_mean,
    all_reduce_sum_float,
    agree_across_ranks,
    any_across_ranks,
    broadcast_object,
    gather_with_grad,
    get_rank,
    get_world_size,
    is_distributed,
)
from cnas_hpc.dist.env import (
    DistEnv,
    derive_port,
    destroy_distributed,
    distributed_session,
    init_distributed,
    select_device,
)

__all__ = [
    "DistEnv",
    "all_gather_nograd",
    "all_reduce_mean",
    "all_reduce_sum_float",
    "agree_across_ranks",
    "any_across_ranks",
    "broadcast_object",
    "derive_port",
    "destroy_distributed",
    "distributed_session",
    "gather_with_grad",
    "get_rank",
    "get_world_size",
    "init_distributed",
    "is_distributed",
    "select_device",
]
