"""Abort decisions are agreed across DDP ranks: no rank is left waiting in a collective.

Two gloo ranks train one candidate; a failure is injected on ONE rank only (an out-of-memory
error in the forward or in the backward pass, a preemption request, a prune asked by rank 0's
pruner after an epoch). Both ranks must leave with
the same reason, quickly, instead of one of them hanging in the next collective. Likewise a
resumed candidate's stored step plan is reused by both ranks or measured by both.

One pair of ranks (started once for the file: each start imports torch, ~3.5 CPU-s) runs every
scenario in turn in one process group, as a worker's ranks go on from trial to trial; each test
reads its scenario's outcome. A rank left behind in a collective holds up every later scenario:
the file's deadline then names the first scenario without an outcome.
"""

from __future__ import annotations

import socket
import time
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp

from cnas_hpc.config import Settings
from cnas_hpc.data.datasets import load_images
from cnas_hpc.data.splits import SearchData, make_search_data
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


def _fault(rank: int, settings: Settings, data: SearchData, fault: str) -> str:
    """Train one candidate with ``fault`` injected on one rank; the reason it ended with."""
    cpu = torch.device("cpu")
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
            model, data, proxy_task(settings), cpu, should_stop=stop, on_epoch=prune_on_rank_zero
        )
    except TrainingAbortedError as exc:
        return exc.reason
    return "completed"


def _average(rank: int) -> tuple[list[list[float]], None]:
    layer = torch.nn.Linear(3, 2)
    layer.weight.grad = torch.full((2, 3), float(rank + 1))  # rank 0: 1, rank 1: 2
    layer.bias.grad = None  # a parameter without a gradient is left alone
    average_gradients(layer.parameters())
    return layer.weight.grad.tolist(), layer.bias.grad


def _stored(rank: int, settings: Settings, threads: int) -> str | None:
    cpu = torch.device("cpu")
    cores = plan_module.available_cores
    plan_module.available_cores = lambda: 4  # a 4-core node (this spawned process only)
    try:
        # Rank 1's allocation is one CPU, rank 0's the node's four.
        task = proxy_task(settings, max_threads=1 if rank == 1 else 4)
        record = plan_record(StepPlan("channels_last", threads=threads), cpu)
        plan = stored_plan(record, task, cpu)
    finally:
        plan_module.available_cores = cores
    return None if plan is None else plan.name


#: The faults, each injected on one rank (see the module docstring).
FAULTS = ("oom", "oom_backward", "preempt", "prune")
#: Every scenario, in the order the ranks run them.
SCENARIOS = (*FAULTS, "average", "plan1", "plan2")


def _rank(rank: int, faulty: Settings, plain: Settings, port: int, results: Any) -> None:
    """Run every scenario on ``rank`` in one process group; ``results[(scenario, rank)]``."""
    torch.set_num_threads(1)
    env = DistEnv(global_rank=rank, local_rank=rank, world_size=2, master_port=port)
    data = make_search_data(load_images(faulty.data), faulty.data)
    with distributed_session(env, torch.device("cpu")):
        for fault in FAULTS:
            results[fault, rank] = _fault(rank, faulty, data, fault)
        results["average", rank] = _average(rank)
        for threads in (1, 2):
            results[f"plan{threads}", rank] = _stored(rank, plain, threads)


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[int, Any]]:
    """``{scenario: {rank: outcome}}`` of the two ranks, which run every scenario in turn."""
    tmp_path = tmp_path_factory.mktemp("agreement")
    # num_threads=1: no per-candidate thread probe, whose forwards would count as steps here.
    faulty = tiny_settings(
        tmp_path, "train.epochs=1", "train.max_steps_per_epoch=6", "train.num_threads=1"
    )
    results = mp.Manager().dict()
    context = mp.start_processes(
        _rank, args=(faulty, tiny_settings(tmp_path), _free_port(), results), nprocs=2, join=False
    )
    # Each scenario takes seconds; a hang is the failure looked for.
    deadline = time.monotonic() + 240
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            done = dict(results)
            hung = next(s for s in SCENARIOS if (s, 0) not in done or (s, 1) not in done)
            pytest.fail(f"a rank hung in scenario {hung!r}: {done}")
    done = dict(results)
    return {s: {r: done[s, r] for r in (0, 1) if (s, r) in done} for s in SCENARIOS}


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        ("oom", "out_of_memory"),
        ("oom_backward", "out_of_memory"),
        ("preempt", "stopped"),
        ("prune", "pruned"),
    ],
)
def test_a_failure_on_one_rank_stops_both(
    outcomes: dict[str, dict[int, Any]], fault: str, reason: str
) -> None:
    assert outcomes[fault] == {0: reason, 1: reason}


def test_gradients_are_averaged_like_ddp(outcomes: dict[str, dict[int, Any]]) -> None:
    assert outcomes["average"][0] == outcomes["average"][1] == ([[1.5] * 3] * 2, None)


@pytest.mark.parametrize(("threads", "reused"), [(1, "channels_last+threads=1"), (2, None)])
def test_a_stored_plan_is_reused_by_every_rank_or_by_none(
    outcomes: dict[str, dict[int, Any]], threads: int, reused: str | None
) -> None:
    # Two threads exceed rank 1's allocation only: both ranks must measure (they meet in the
    # measurement's broadcasts), not rank 1 alone.
    assert outcomes[f"plan{threads}"] == {0: reused, 1: reused}
