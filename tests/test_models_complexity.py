"""Parameter and MAC counts: DARTS's reported numbers, and an independent FLOP counter."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from cnas_hpc.models.complexity import count_macs, count_parameters
from cnas_hpc.models.networks import NetworkCIFAR
from cnas_hpc.space.genotype import DARTS_V2, Genotype


def uniform(normal_op: str, reduce_op: str) -> Genotype:
    inputs = [0, 1, 0, 1, 1, 0, 0, 2]
    return Genotype(
        normal=[(normal_op, j) for j in inputs],
        normal_concat=[2, 3, 4, 5],
        reduce=[(reduce_op, j) for j in inputs],
        reduce_concat=[2, 3, 4, 5],
    )


def flop_counter_macs(model: nn.Module) -> int:
    """Independent count: PyTorch's FLOP counter (convolution + addmm, 2 FLOPs per MAC)."""
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, 32, 32))
    counted = {str(op) for op in counter.get_flop_counts()["Global"]}
    assert counted <= {"aten.convolution", "aten.addmm"}, counted
    return int(counter.get_total_flops()) // 2


@pytest.mark.parametrize(
    ("genotype", "expected_macs", "tolerance"),
    [
        (DARTS_V2, 528e6, 0.01),
        (uniform("sep_conv_5x5", "sep_conv_5x5"), 818e6, 0.03),
        # Parameter-free cells: only the stem, the 1x1 preprocessing and the classifier cost.
        (uniform("skip_connect", "max_pool_3x3"), 227e6, 0.03),
    ],
    ids=["DARTS_V2", "all-sep_conv_5x5", "skip-normal-pool-reduce"],
)
def test_darts_cifar_macs(genotype: Genotype, expected_macs: float, tolerance: float) -> None:
    model = NetworkCIFAR(genotype, C=36, layers=20, auxiliary=True).train()
    macs = count_macs(model)
    assert abs(macs - expected_macs) / expected_macs < tolerance, macs
    if genotype is DARTS_V2:
        # One independent count is enough; the others would only repeat its slow forward.
        assert abs(macs - flop_counter_macs(model)) / macs < 0.01
        assert 3.3e6 <= count_parameters(model) <= 3.4e6
        assert count_parameters(model, exclude=()) > 3.4e6  # the auxiliary head is real


def test_count_macs_by_hand() -> None:
    model = nn.Sequential(
        # 4 -> 8 channels, groups 2, 3x3 dilated, stride 2: a 9x9 input gives 5x5 outputs.
        nn.Conv2d(4, 8, 3, stride=2, padding=2, dilation=2, groups=2),
        nn.BatchNorm2d(8),
        nn.Conv2d(8, 8, 3, padding=1, groups=8),  # depthwise
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 3),
    )
    expected = 8 * 25 * 2 * 9 + 8 * 25 * 1 * 9 + 8 * 3
    assert count_macs(model, (4, 9, 9)) == expected


def test_count_macs_restores_modes_and_removes_hooks() -> None:
    bn = nn.BatchNorm2d(4)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), bn, nn.Flatten(), nn.LazyLinear(2))
    model(torch.randn(2, 3, 8, 8))
    model.train()
    bn.eval()
    assert bn.running_mean is not None
    stats = bn.running_mean.clone()
    assert count_macs(model, (3, 8, 8)) == 4 * 36 * 27 + 2 * 4 * 36
    assert [m.training for m in model] == [True, False, True, True] and model.training
    assert torch.equal(bn.running_mean, stats)
    assert all(not m._forward_hooks for m in model.modules())
    with pytest.raises(ValueError, match="input_shape"):
        count_macs(model, (8, 8))  # type: ignore[arg-type]


def test_count_macs_restores_state_when_forward_raises() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Linear(5, 2)).train()
    with pytest.raises(RuntimeError):
        count_macs(model, (3, 8, 8))
    assert model.training and all(not m._forward_hooks for m in model.modules())
