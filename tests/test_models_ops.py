"""The edge-op registry: every op forward and backward, DARTS's definitions, registry errors."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch
from torch import nn

from cnas_hpc.models.ops import (
    OPS,
    DilConv,
    FactorizedReduce,
    Identity,
    SepConv,
    Zero,
    create_op,
    drop_path,
    register_op,
)
from cnas_hpc.space.primitives import PRIMITIVES

C = 4


def test_registry_holds_the_darts_primitives() -> None:
    assert set(PRIMITIVES) <= set(OPS)


@pytest.mark.parametrize("size", [8, 7])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("name", sorted(OPS))
def test_op_forward_backward(name: str, stride: int, size: int) -> None:
    torch.manual_seed(0)
    op = create_op(name, C, stride, affine=True)
    op.train()
    x = torch.randn(3, C, size, size, requires_grad=True)
    out = op(x)
    expected = math.ceil(size / stride)
    assert out.shape == (3, C, expected, expected)
    assert torch.isfinite(out).all()
    # Random weights: a plain sum would give zero gradients through a training-mode BatchNorm.
    (out * torch.randn_like(out)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    for pname, p in op.named_parameters():
        assert p.grad is not None, f"{name}: {pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name}: {pname} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{name}: {pname} has an all-zero gradient"


def _param_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("stride", [1, 2])
def test_ops_are_darts_definitions(stride: int) -> None:
    c = 6
    # Two stacked (depthwise k*k, pointwise c*c, BN scale+shift) blocks.
    assert _param_count(create_op("sep_conv_3x3", c, stride)) == 2 * (c * 9 + c * c + 2 * c)
    assert _param_count(create_op("sep_conv_5x5", c, stride)) == 2 * (c * 25 + c * c + 2 * c)
    assert _param_count(create_op("dil_conv_3x3", c, stride)) == c * 9 + c * c + 2 * c
    assert _param_count(create_op("dil_conv_5x5", c, stride)) == c * 25 + c * c + 2 * c
    assert _param_count(create_op("sep_conv_3x3", c, stride, affine=False)) == 2 * (c * 9 + c * c)
    for name in ("none", "max_pool_3x3", "avg_pool_3x3"):
        assert _param_count(create_op(name, c, stride)) == 0

    sep = create_op("sep_conv_3x3", c, stride)
    assert isinstance(sep, SepConv)
    depthwise = [m for m in sep.modules() if isinstance(m, nn.Conv2d) and m.groups == c]
    assert [m.stride for m in depthwise] == [(stride, stride), (1, 1)]
    dil = create_op("dil_conv_5x5", c, stride)
    assert isinstance(dil, DilConv)
    assert [m.dilation for m in dil.modules() if isinstance(m, nn.Conv2d)] == [(2, 2), (1, 1)]
    assert isinstance(create_op("none", c, stride), Zero)
    skip = create_op("skip_connect", c, stride)
    assert isinstance(skip, Identity if stride == 1 else FactorizedReduce)


def test_identity_zero_and_pools_values() -> None:
    x = torch.randn(2, C, 6, 6)
    assert create_op("skip_connect", C, 1)(x) is x
    zero = create_op("none", C, 2)(x)
    assert zero.shape == (2, C, 3, 3) and not zero.any()
    ones = torch.ones(1, C, 5, 5)
    # count_include_pad=False: border windows average only real pixels, so ones stay ones.
    assert torch.equal(create_op("avg_pool_3x3", C, 1)(ones), ones)
    ramp = torch.arange(25.0).reshape(1, 1, 5, 5).expand(1, C, 5, 5)
    assert create_op("max_pool_3x3", C, 1)(ramp)[0, 0, 0, 0] == 6.0


def test_factorized_reduce_matches_darts_on_even_sizes_and_handles_odd_ones() -> None:
    torch.manual_seed(0)
    fr = FactorizedReduce(3, 8).eval()
    x = torch.randn(2, 3, 8, 8)
    r = torch.relu(x)
    darts = fr.bn(torch.cat([fr.conv_1(r), fr.conv_2(r[:, :, 1:, 1:])], dim=1))
    torch.testing.assert_close(fr(x), darts)
    assert fr(torch.randn(2, 3, 7, 9)).shape == (2, 8, 4, 5)
    assert FactorizedReduce(3, 5)(x).shape == (2, 5, 4, 4)
    with pytest.raises(ValueError, match="C_out >= 2"):
        FactorizedReduce(3, 1)


def test_create_op_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"unknown op 'conv_9x9'.*sep_conv_3x3"):
        create_op("conv_9x9", C, 1)
    with pytest.raises(ValueError, match="stride 1 or 2"):
        create_op("sep_conv_3x3", C, 3)
    with pytest.raises(ValueError, match="C >= 1"):
        create_op("sep_conv_3x3", 0, 1)


@pytest.fixture
def scratch_op() -> Iterator[str]:
    name = "test_models_ops_scratch"
    yield name
    OPS.pop(name, None)


def test_register_op_adds_a_factory_and_refuses_duplicates(scratch_op: str) -> None:
    @register_op(scratch_op)
    def _factory(channels: int, stride: int, affine: bool) -> nn.Module:
        return nn.AvgPool2d(stride)

    assert OPS[scratch_op] is _factory
    assert isinstance(create_op(scratch_op, C, 2), nn.AvgPool2d)
    with pytest.raises(ValueError, match="already registered"):
        register_op(scratch_op)
    with pytest.raises(ValueError, match="already registered"):
        register_op("sep_conv_3x3")


def test_drop_path_drops_whole_samples_and_rescales() -> None:
    torch.manual_seed(0)
    x = torch.randn(256, 2, 3, 3)
    assert drop_path(x, 0.0) is x
    out = drop_path(x, 0.25)
    dropped = (out == 0).flatten(1).all(dim=1)
    kept = ~dropped
    torch.testing.assert_close(out[kept], x[kept] / 0.75)
    assert 0.1 < dropped.float().mean().item() < 0.4
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match=r"drop_prob must be in \[0, 1\)"):
            drop_path(x, bad)
