"""Abort decisions are agreed across DDP ranks: no rank is left waiting in a collective.

Two gloo ranks train one candidate; a failure is injected on ONE rank only (an out-of-memory
error in the forward or in the backward pass, a preemption request, a prune asked by rank 0's
pruner after an epoch). Both ranks must leave with
the same reason, quickly, instead of one of them hanging in the next collective. Likewise a
resumed candidate's stored step plan is reused by both ranks or measured by both.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp

from cnas_hpc.config import Settings
from cnas_hpc.data.datasets import load_images
from cnas_hpc.data.splits import make_search_data
from cnas_hpc.distributed.collectives import average_gradients
from cnas_hpc.distributed.env import DistEnv, distributed_session
from cnas_hpc.search.trial import proxy_task
from cnas_hpc.space.genotype import DARTS_V2
from cnas_hpc.train import plan as plan_module
from cnas_hpc.train.loop import build_candidate, train_candidate
from cnas_hpc.train.outcome import TrainingAbortedError
from cnas_hpc.train.plan import StepPlan, plan_record
from cnas_hpc.train.plan_tuning import stored_plan
from tests.helpers import tiny_settings


class _OutOfMemoryInBackward(torch.autograd.Function):
    """Identity forward; the backward runs out of memory (as a conv backward might)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory in backward (injected)")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _rank(rank: int, settings: Settings, port: int, fault: str, results: Any) -> None:
    torch.set_num_threads(1)
    env = DistEnv(global_rank=rank, local_rank=rank, world_size=2, master_port=port)
    cpu = torch.device("cpu")
    data = make_search_data(load_images(settings.data), settings.data)
    with distributed_session(env, cpu):
        model = build_candidate(DARTS_V2, settings.model, settings.seed, cpu)
        calls = {"n": 0}
        if fault in ("oom", "oom_backward") and rank == 1:
            forward = model.forward
            features = model.features

            def failing_forward(x: torch.Tensor) -> torch.Tensor:
                calls["n"] += 1
                if calls["n"] == 5 and fault == "oom":  # third step, first view
                    raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")
                if calls["n"] == 5:
                    # Inside the network, below the projections: the rank-local backward.
                    model.features = lambda y: _OutOfMemoryInBackward.apply(features(y))  # type: ignore[method-assign,assignment]
                    try:
                        return forward(x)
                    finally:
                        model.features = features  # type: ignore[method-assign]
                return forward(x)

            model.forward = failing_forward  # type: ignore[method-assign]

        def stop() -> bool:
            calls["n"] += 1
            return fault == "preempt" and rank == 0 and calls["n"] == 3

        def prune_on_rank_zero(_: object) -> bool:  # e.g. rank 0's pruner said so
            return fault == "prune" and rank == 0

        try:
            train_candidate(
                model,
                data,
                proxy_task(settings),
                cpu,
                should_stop=stop,
                on_epoch=prune_on_rank_zero,
            )
            results[rank] = "completed"
        except TrainingAbortedError as exc:
            results[rank] = exc.reason


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        ("oom", "out_of_memory"),
        ("oom_backward", "out_of_memory"),
        ("preempt", "stopped"),
        ("prune", "pruned"),
    ],
)
def test_a_failure_on_one_rank_stops_both(tmp_path: Path, fault: str, reason: str) -> None:
    # num_threads=1: no per-candidate thread probe, whose forwards would count as steps here.
    settings = tiny_settings(
        tmp_path, "train.epochs=1", "train.max_steps_per_epoch=6", "train.num_threads=1"
    )
    results = mp.Manager().dict()
    context = mp.start_processes(
        _rank, args=(settings, _free_port(), fault, results), nprocs=2, join=False
    )
    deadline = time.monotonic() + 120
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"a rank hung after a {fault} on one rank: {dict(results)}")
    assert dict(results) == {0: reason, 1: reason}


def _average(rank: int, port: int, results: Any) -> None:
    env = DistEnv(global_rank=rank, local_rank=rank, world_size=2, master_port=port)
    with distributed_session(env, torch.device("cpu")):
        layer = torch.nn.Linear(3, 2)
        layer.weight.grad = torch.full((2, 3), float(rank + 1))  # rank 0: 1, rank 1: 2
        layer.bias.grad = None  # a parameter without a gradient is left alone
        average_gradients(layer.parameters())
        results[rank] = (layer.weight.grad.tolist(), layer.bias.grad)


def test_gradients_are_averaged_like_ddp() -> None:
    results = mp.Manager().dict()
    mp.spawn(_average, args=(_free_port(), results), nprocs=2, join=True)
    assert results[0] == results[1] == ([[1.5] * 3] * 2, None)


def _stored(rank: int, settings: Settings, port: int, threads: int, results: Any) -> None:
    plan_module.available_cores = lambda: 4  # this spawned process only: a 4-core node
    env = DistEnv(global_rank=rank, local_rank=rank, world_size=2, master_port=port)
    cpu = torch.device("cpu")
    # Rank 1's allocation is one CPU, rank 0's the node's four.
    task = proxy_task(settings, max_threads=1 if rank == 1 else None)
    record = plan_record(StepPlan("channels_last", threads=threads), cpu)
    with distributed_session(env, cpu):
        plan = stored_plan(record, task, cpu)
        results[rank] = None if plan is None else plan.name


@pytest.mark.parametrize(("threads", "reused"), [(1, "channels_last+threads=1"), (2, None)])
def test_a_stored_plan_is_reused_by_every_rank_or_by_none(
    tmp_path: Path, threads: int, reused: str | None
) -> None:
    # Two threads exceed rank 1's allocation only: both ranks must measure (they meet in the
    # measurement's broadcasts), not rank 1 alone.
    settings = tiny_settings(tmp_path)
    results = mp.Manager().dict()
    mp.spawn(_stored, args=(settings, _free_port(), threads, results), nprocs=2, join=True)
    assert dict(results) == {0: reused, 1: reused}
