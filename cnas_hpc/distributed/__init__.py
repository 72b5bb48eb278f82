"""Distributed training support: the job environment and the collectives.

:mod:`cnas_hpc.distributed.env` is the only place that reads rank / world-size environment
variables; :mod:`cnas_hpc.distributed.collectives` wraps ``torch.distributed`` so that every call
is an identity in a single process; :mod:`cnas_hpc.distributed.preemption` turns the job's
preemption signal into a flag the training loop polls.
"""

from __future__ import annotations

from cnas_hpc.distributed.collectives import (
    agree_across_ranks,
    all_gather_nograd,
    all_reduce_mean,
    all_reduce_sum_float,
    any_across_ranks,
    broadcast_object,
    gather_with_grad,
    get_rank,
    get_world_size,
    is_distributed,
)
from cnas_hpc.distributed.env import (
    DistEnv,
    derive_port,
    destroy_distributed,
    distributed_session,
    init_distributed,
    select_device,
)

__all__ = [
    "DistEnv",
    "agree_across_ranks",
    "all_gather_nograd",
    "all_reduce_mean",
    "all_reduce_sum_float",
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
