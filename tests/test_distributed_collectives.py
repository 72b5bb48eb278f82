"""Collectives and losses across 2 real gloo processes (torch.multiprocessing, TCP on 127.0.0.1).

One spawn (module fixture) runs every check on both ranks and saves what each rank saw; the
tests compare those results with a single process on the same global batch. The key check is
lightly issue #1528: NT-Xent gradients with 2 ranks (each half of the global batch) must EQUAL
the 1-process gradients, and a gather whose backward does not all-reduce must NOT.
"""

from __future__ import annotations

import socket
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import cnas_hpc.ssl.losses as losses_module
from cnas_hpc.distributed.collectives import (
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
from cnas_hpc.distributed.env import DistEnv, distributed_session
from cnas_hpc.ssl.losses import MemoryBankNCE, nt_xent_loss

WORLD = 2
GLOBAL_BATCH = 8
TEMPERATURE = 0.3
CPU = torch.device("cpu")


def make_model() -> nn.Module:
    """The same small float64 model in every process (seeded)."""
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, 8)).double()


def make_views() -> tuple[torch.Tensor, torch.Tensor]:
    """Two correlated 'views' of a global batch of 8 inputs, identical in every process."""
    gen = torch.Generator().manual_seed(2)
    x1 = torch.randn(GLOBAL_BATCH, 10, generator=gen, dtype=torch.float64)
    x2 = x1 + 0.3 * torch.randn(GLOBAL_BATCH, 10, generator=gen, dtype=torch.float64)
    return x1, x2


def make_embeddings() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Global-batch (z_image, z_view, index) for the memory bank check."""
    gen = torch.Generator().manual_seed(3)
    z_image = torch.randn(GLOBAL_BATCH, 4, generator=gen)
    z_view = torch.randn(GLOBAL_BATCH, 4, generator=gen)
    index = torch.randperm(16, generator=gen)[:GLOBAL_BATCH]
    return z_image, z_view, index


class _NaiveGather(torch.autograd.Function):
    """The buggy layer of lightly #1528: backward returns the local slice WITHOUT all-reduce."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.batch, ctx.rank = x.shape[0], dist.get_rank()
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad[ctx.rank * ctx.batch : (ctx.rank + 1) * ctx.batch]


def naive_gather(x: torch.Tensor) -> torch.Tensor:
    out = _NaiveGather.apply(x)
    assert isinstance(out, torch.Tensor)
    return out


def ddp_like_grads(model: nn.Module, loss: torch.Tensor) -> list[torch.Tensor]:
    """Backward, then average the parameter gradients over ranks as DDP does."""
    model.zero_grad()
    loss.backward()
    grads = []
    for p in model.parameters():
        assert p.grad is not None
        grads.append(all_reduce_mean(p.grad))
    return grads


def _worker(rank: int, port: int, out_dir: str) -> None:
    """Body of each spawned rank: run every check, save the results for the parent."""
    torch.set_num_threads(1)
    env = DistEnv(
        global_rank=rank, local_rank=rank, world_size=WORLD, master_port=port, launcher="test"
    )
    res: dict[str, Any] = {}
    with distributed_session(env, CPU, timeout=timedelta(seconds=60)):
        res["inside"] = (is_distributed(), get_rank(), get_world_size())
        local = slice(rank * GLOBAL_BATCH // WORLD, (rank + 1) * GLOBAL_BATCH // WORLD)

        # Gathers: rank order, and the gradient of gather_with_grad is the SUM over ranks.
        x = torch.full((2, 3), float(rank), requires_grad=True)
        gathered = gather_with_grad(x)
        res["gathered"] = gathered.detach().clone()
        res["gathered_nograd"] = all_gather_nograd(x)
        (gathered * (rank + 1)).sum().backward()  # d/dx on every rank: 1 + 2 = 3
        assert x.grad is not None
        res["gather_grad"] = x.grad.clone()

        # NT-Xent: halves of the global batch on 2 ranks vs the whole batch on 1.
        x1, x2 = make_views()
        model = make_model()
        loss = nt_xent_loss(model(x1[local]), model(x2[local]), TEMPERATURE)
        res["loss_mean"] = all_reduce_mean(loss.detach()).item()
        res["grads"] = ddp_like_grads(model, loss)

        # The same with the buggy gather patched into the loss (the check must catch it).
        good_gather = losses_module.gather_with_grad
        losses_module.gather_with_grad = naive_gather
        try:
            model = make_model()
            loss = nt_xent_loss(model(x1[local]), model(x2[local]), TEMPERATURE)
            res["naive_grads"] = ddp_like_grads(model, loss)
        finally:
            losses_module.gather_with_grad = good_gather

        # Real DDP, with the two views through two forward calls as the training loop does.
        model = make_model()
        net = DistributedDataParallel(model)
        loss = nt_xent_loss(net(x1[local]), net(x2[local]), TEMPERATURE)
        loss.backward()
        res["ddp_grads"] = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        # DDP's reducer holds the process group: release it before the group is destroyed.
        del net

        # Agreed decisions and objects.
        res["any_one"] = any_across_ranks(rank == 1, CPU)
        res["any_none"] = any_across_ranks(False, CPU)
        res["any_all"] = any_across_ranks(True, CPU)
        payload = {"trial": 17, "params": {"normal/n2/op0": "sep_conv_3x3"}} if rank == 0 else None
        res["broadcast"] = broadcast_object(payload)
        res["broadcast_src1"] = broadcast_object(f"from rank {rank}", src=1)
        res["sum_float"] = all_reduce_sum_float(rank + 0.25, CPU)
        res["mean"] = all_reduce_mean(torch.tensor([float(rank), 10.0 * rank])).tolist()

        # Memory bank: every rank's bank ends identical after an update with its own slice.
        z_image, z_view, index = make_embeddings()
        bank = MemoryBankNCE(16, 4, num_negatives=5, seed=0)
        res["bank_loss"] = bank(z_image[local], z_view[local], index[local]).item()
        res["bank"] = bank.bank.clone()
    res["after"] = is_distributed()
    torch.save(res, Path(out_dir) / f"rank{rank}.pt")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """What each of 2 spawned gloo ranks saw (index = rank)."""
    out = tmp_path_factory.mktemp("dist")
    mp.spawn(_worker, args=(free_port(), str(out)), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def single_process_grads() -> tuple[float, list[torch.Tensor]]:
    x1, x2 = make_views()
    model = make_model()
    loss = nt_xent_loss(model(x1), model(x2), TEMPERATURE)
    loss.backward()
    return loss.item(), [p.grad.clone() for p in model.parameters() if p.grad is not None]


def test_session_sets_up_and_tears_down_the_group(ranks: list[dict[str, Any]]) -> None:
    assert [r["inside"] for r in ranks] == [(True, 0, 2), (True, 1, 2)]
    assert [r["after"] for r in ranks] == [False, False]


def test_gathers_concatenate_in_rank_order(ranks: list[dict[str, Any]]) -> None:
    expected = torch.cat([torch.zeros(2, 3), torch.ones(2, 3)])
    for r in ranks:
        assert torch.equal(r["gathered"], expected)
        assert torch.equal(r["gathered_nograd"], expected)
        # Rank r's loss weights the gathered rows by r + 1: the gradient sums both ranks'.
        assert torch.equal(r["gather_grad"], torch.full((2, 3), 3.0))


def test_nt_xent_two_ranks_equal_one_process(ranks: list[dict[str, Any]]) -> None:
    loss, reference = single_process_grads()
    for r in ranks:
        assert r["loss_mean"] == pytest.approx(loss, rel=1e-12)
        assert len(r["grads"]) == len(reference) == 4
        for got, want in zip(r["grads"], reference, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


def test_real_ddp_with_two_forward_calls_matches_one_process(ranks: list[dict[str, Any]]) -> None:
    _, reference = single_process_grads()
    for r in ranks:
        assert len(r["ddp_grads"]) == len(reference)
        for got, want in zip(r["ddp_grads"], reference, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


def test_gather_without_all_reduce_in_backward_gives_wrong_grads(
    ranks: list[dict[str, Any]],
) -> None:
    _, reference = single_process_grads()
    for r in ranks:
        worst = max(
            ((got - want).abs().max() / want.abs().max()).item()
            for got, want in zip(r["naive_grads"], reference, strict=True)
        )
        assert worst > 0.05  # the cross-rank terms are a large share of the gradient


def test_agreed_flags_and_broadcast_objects(ranks: list[dict[str, Any]]) -> None:
    for r in ranks:
        assert (r["any_one"], r["any_none"], r["any_all"]) == (True, False, True)
        assert r["broadcast"] == {"trial": 17, "params": {"normal/n2/op0": "sep_conv_3x3"}}
        assert r["broadcast_src1"] == "from rank 1"
        assert r["sum_float"] == pytest.approx(1.5)
        assert r["mean"] == pytest.approx([0.5, 5.0])


def test_memory_banks_stay_identical_across_ranks(ranks: list[dict[str, Any]]) -> None:
    assert torch.equal(ranks[0]["bank"], ranks[1]["bank"])
    # ... and equal to one process updating with the whole global batch.
    z_image, z_view, index = make_embeddings()
    single = MemoryBankNCE(16, 4, num_negatives=5, seed=0)
    initial = single.bank.clone()
    single(z_image, z_view, index)
    torch.testing.assert_close(ranks[0]["bank"], single.bank)
    changed = (ranks[0]["bank"] - initial).abs().amax(dim=1) > 1e-6
    expected = torch.zeros(16, dtype=torch.bool)
    expected[index] = True
    assert torch.equal(changed, expected)  # both ranks' rows moved, no other row did


def test_collectives_are_identities_without_a_group() -> None:
    assert not is_distributed()
    assert (get_rank(), get_world_size()) == (0, 1)
    x = torch.randn(3, 2, requires_grad=True)
    assert gather_with_grad(x) is x
    assert torch.equal(all_gather_nograd(x), x) and not all_gather_nograd(x).requires_grad
    y = all_reduce_mean(x)
    assert torch.equal(y, x) and y is not x
    assert all_reduce_sum_float(2.5, CPU) == 2.5
    assert any_across_ranks(True, CPU) is True and any_across_ranks(False, CPU) is False
    obj = {"a": 1}
    assert broadcast_object(obj) is obj
    with pytest.raises(ValueError, match="floating-point"):
        all_reduce_mean(torch.ones(2, dtype=torch.long))
