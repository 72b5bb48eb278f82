"""Cells and networks: forward + backward on presets and random genotypes, pruning, heads."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn

from cnas_hpc.config.model import REFERENCE_PROXY, ProxyConfig
from cnas_hpc.models.cell import Cell, live_nodes
from cnas_hpc.models.complexity import count_macs, count_parameters
from cnas_hpc.models.networks import NetworkCIFAR, ProxyNetwork, build_proxy, reduction_indices
from cnas_hpc.space.genotype import DARTS_V1, DARTS_V2, PC_DARTS, PRESETS, Genotype
from cnas_hpc.space.primitives import EDGE_OPS

CONCAT_KINDS = ("all", "last_k", "subset")


def random_cell(rng: random.Random, n_nodes: int) -> list[tuple[str, int]]:
    """Two edges with DISTINCT inputs per node, ops drawn from the 7 non-``none`` primitives."""
    cell = []
    for k in range(n_nodes):
        for j in rng.sample(range(k + 2), 2):
            cell.append((rng.choice(EDGE_OPS), j))
    return cell


def random_concat(rng: random.Random, n_nodes: int, kind: str) -> list[int]:
    """All nodes, the last k < n nodes (CSNAS: last 4 of 5), or a random proper subset."""
    nodes = list(range(2, n_nodes + 2))
    if kind == "all":
        return nodes
    if kind == "last_k":
        return nodes[-rng.randint(1, n_nodes - 1) :]
    return sorted(rng.sample(nodes, rng.randint(1, n_nodes - 1)))


def random_genotype(seed: int, kind: str) -> Genotype:
    rng = random.Random(seed)
    n = rng.choice([4, 5])
    return Genotype(
        normal=random_cell(rng, n),
        normal_concat=random_concat(rng, n, kind),
        reduce=random_cell(rng, n),
        reduce_concat=random_concat(rng, n, kind),
    )


GENOTYPES = {
    **{name: PRESETS[name] for name in ("DARTS_V1", "DARTS_V2", "PC_DARTS")},
    **{
        f"random-{kind}-{seed}": random_genotype(seed, kind)
        for kind in CONCAT_KINDS
        for seed in (0, 1, 2)
    },
}


def test_random_genotypes_exercise_pruning() -> None:
    # Otherwise the gradient checks below would not show that dead nodes are pruned.
    dead = [
        name
        for name, g in GENOTYPES.items()
        for cell, concat in ((g.normal, g.normal_concat), (g.reduce, g.reduce_concat))
        if len(live_nodes(cell, concat)) < len(cell) // 2
    ]
    assert len(dead) >= 2, dead


def assert_all_gradients(model: nn.Module) -> None:
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"


def weighted_sum(*outputs: torch.Tensor) -> torch.Tensor:
    # Random weights: a plain sum would give zero gradients through a training-mode BatchNorm.
    return sum((o * torch.randn_like(o)).sum() for o in outputs)  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------- cells


def test_cell_shapes_normal_and_reduction() -> None:
    torch.manual_seed(0)
    normal = Cell(DARTS_V2.normal, DARTS_V2.normal_concat, 6, 5, 4, False, True)
    out = normal(torch.randn(2, 6, 16, 16), torch.randn(2, 5, 8, 8))
    assert out.shape == (2, 4 * 4, 8, 8) and normal.multiplier == 4
    reduce = Cell(DARTS_V2.reduce, DARTS_V2.reduce_concat, 6, 5, 4, True, False)
    assert reduce(torch.randn(2, 6, 8, 8), torch.randn(2, 5, 8, 8)).shape == (2, 16, 4, 4)


# Node 2 (state 2) is built from two costly ops but read by nobody: nodes 3..5 read 0, 1, 3, 4.
UNUSED_NODE_2 = [
    ("dil_conv_5x5", 0), ("sep_conv_5x5", 1),
    ("sep_conv_3x3", 0), ("skip_connect", 1),
    ("max_pool_3x3", 1), ("dil_conv_3x3", 3),
    ("avg_pool_3x3", 0), ("sep_conv_3x3", 4),
]  # fmt: skip


def test_dead_node_is_pruned_and_every_parameter_gets_a_gradient() -> None:
    torch.manual_seed(0)
    cell = Cell(UNUSED_NODE_2, [3, 4, 5], 4, 4, 4, reduction=False, reduction_prev=False)
    assert cell.live_nodes == (3, 4, 5)
    assert len(cell.ops) == 6
    built = [type(m).__name__ for m in cell.ops]
    assert built == ["SepConv", "Identity", "MaxPool2d", "DilConv", "AvgPool2d", "SepConv"]
    assert not any(m.kernel_size == (5, 5) for m in cell.modules() if isinstance(m, nn.Conv2d))
    out = cell(torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8))
    assert out.shape == (2, 12, 8, 8)
    weighted_sum(out).backward()
    assert_all_gradients(cell)
    # The same node, once something reads it, is built again.
    assert Cell(UNUSED_NODE_2, [2, 3, 4, 5], 4, 4, 4, False, False).live_nodes == (2, 3, 4, 5)


def test_live_nodes_follow_reads_transitively() -> None:
    # 2 <- 3 is a dead chain (nobody reads 3); 5 reads 4, which reads 0 and 1.
    cell = [("a", 0), ("a", 1), ("a", 2), ("a", 0), ("a", 0), ("a", 1), ("a", 4), ("a", 1)]
    assert live_nodes(cell, [5]) == (4, 5)
    assert live_nodes(cell, [3]) == (2, 3)
    assert live_nodes(cell, [2, 5]) == (2, 4, 5)


def test_cell_skips_an_unread_input() -> None:
    torch.manual_seed(0)
    cell = Cell([("sep_conv_3x3", 1), ("max_pool_3x3", 1)], [2], 4, 4, 4, False, False)
    assert cell.preprocess0 is None and cell.preprocess1 is not None
    out = cell(torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8))
    weighted_sum(out).backward()
    assert_all_gradients(cell)


def test_cell_drop_path_only_in_training_and_never_on_identity() -> None:
    torch.manual_seed(0)
    s0, s1 = torch.randn(4, 4, 8, 8), torch.randn(4, 4, 8, 8)
    cell = Cell(DARTS_V2.normal, DARTS_V2.normal_concat, 4, 4, 4, False, False).eval()
    torch.testing.assert_close(cell(s0, s1, 0.5), cell(s0, s1, 0.0))
    cell.train()
    with torch.no_grad():
        a, b = cell(s0, s1, 0.5), cell(s0, s1, 0.5)
    assert not torch.equal(a, b)
    skips = Cell([("skip_connect", 0), ("skip_connect", 1)] * 2, [2, 3], 4, 4, 4, False, False)
    with torch.no_grad():
        torch.testing.assert_close(skips(s0, s1, 0.9), skips(s0, s1, 0.0))
    with pytest.raises(ValueError, match="drop_prob"):
        cell(s0, s1, 1.0)


def test_cell_accepts_numpy_indices() -> None:
    cell_def = [(op, np.int64(j)) for op, j in DARTS_V2.normal]
    cell = Cell(cell_def, np.arange(2, 6), 4, 4, 4, False, False)  # type: ignore[arg-type]
    assert cell.live_nodes == (2, 3, 4, 5)


@pytest.mark.parametrize(
    ("cell_def", "concat", "match"),
    [
        ([("sep_conv_3x3", 0)], [2], "two .* pairs per node"),
        ([("sep_conv_3x3", 0), ("sep_conv_3x3", 2)], [2], "reads state 2; must be < 2"),
        ([("sep_conv_3x3", 0), ("sep_conv_3x3", -1)], [2], "reads state -1"),
        ([("sep_conv_3x3", 0), ("sep_conv_3x3", 1.5)], [2], "integer state index"),
        ([("sep_conv_3x3", 0), ("sep_conv_3x3", 1)], [], "at least one node"),
        ([("sep_conv_3x3", 0), ("sep_conv_3x3", 1)], [2, 2], "twice"),
        ([("sep_conv_3x3", 0), ("sep_conv_3x3", 1)], [1, 2], "not an intermediate node"),
        ([("sep_conv_3x3", 0), ("sep_conv_3x3", 1)], [3], "not an intermediate node"),
        # Checked even on a dead node, which is never built.
        ([("conv", 0), ("sep_conv_3x3", 1)] + [("skip_connect", 0)] * 2, [3], "unknown op 'conv'"),
    ],
)
def test_cell_rejects_malformed_cells(cell_def: list, concat: list, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Cell(cell_def, concat, 4, 4, 4, False, False)


# ---------------------------------------------------------------------------------- networks


@pytest.mark.parametrize("name", sorted(GENOTYPES))
def test_proxy_forward_backward(name: str) -> None:
    torch.manual_seed(0)
    genotype = GENOTYPES[name]
    model = ProxyNetwork(genotype, C=4, layers=5, proj_hidden_dim=16, proj_dim=8).train()
    x = torch.randn(3, 3, 16, 16)
    z = model(x)
    assert z.shape == (3, 8) and torch.isfinite(z).all()
    feats = model.features(x)
    assert feats.shape == (3, model.feature_dim)
    assert model.feature_dim == 4 * 4 * len(genotype.normal_concat)
    weighted_sum(z).backward()
    assert_all_gradients(model)
    for cell in model.body.cells:
        assert isinstance(cell, Cell)
        assert len(cell.ops) == 2 * len(cell.live_nodes)


@pytest.mark.parametrize("name", sorted(GENOTYPES))
def test_network_cifar_forward_backward(name: str) -> None:
    torch.manual_seed(0)
    model = NetworkCIFAR(GENOTYPES[name], C=4, num_classes=5, layers=4, drop_path_prob=0.2)
    model.train()
    logits, logits_aux = model(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 5) and logits_aux is not None and logits_aux.shape == (2, 5)
    assert torch.isfinite(logits).all() and torch.isfinite(logits_aux).all()
    weighted_sum(logits, 0.4 * logits_aux).backward()
    assert_all_gradients(model)
    model.eval()
    logits_eval, aux_eval = model(torch.randn(2, 3, 32, 32))
    assert logits_eval.shape == (2, 5) and aux_eval is None


def test_network_cifar_drop_path_prob_is_settable_and_train_only() -> None:
    torch.manual_seed(0)
    model = NetworkCIFAR(DARTS_V1, C=4, layers=3, auxiliary=False)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        model.train()
        assert model(x)[1] is None
        torch.testing.assert_close(model(x)[0], model(x)[0])  # no drop-path yet: deterministic
        model.drop_path_prob = 0.5
        assert not torch.equal(model(x)[0], model(x)[0])
        model.eval()
        torch.testing.assert_close(model(x)[0], model(x)[0])


def test_auxiliary_head_needs_32x32_images() -> None:
    model = NetworkCIFAR(DARTS_V2, C=4, layers=3).train()
    with pytest.raises(ValueError, match="8x8 feature maps"):
        model(torch.randn(2, 3, 16, 16))
    assert NetworkCIFAR(DARTS_V2, C=4, layers=3, auxiliary=False)(torch.randn(2, 3, 16, 16))[
        0
    ].shape == (2, 10)


def test_auxiliary_head_is_left_out_of_parameter_counts() -> None:
    with_aux = NetworkCIFAR(PC_DARTS, C=4, layers=3)
    without = NetworkCIFAR(PC_DARTS, C=4, layers=3, auxiliary=False)
    assert with_aux.auxiliary_head is not None
    aux = sum(p.numel() for p in with_aux.auxiliary_head.parameters())
    assert count_parameters(with_aux) == count_parameters(without)
    assert count_parameters(with_aux, exclude=()) == count_parameters(without) + aux


@pytest.mark.parametrize(("layers", "expected"), [(1, (0,)), (2, (0, 1)), (5, (1, 3)), (8, (2, 5))])
def test_reduction_positions(layers: int, expected: tuple[int, ...]) -> None:
    assert reduction_indices(layers) == expected
    model = ProxyNetwork(DARTS_V2, C=2, layers=layers, proj_hidden_dim=None, proj_dim=4)
    assert tuple(i for i, c in enumerate(model.body.cells) if c.reduction) == expected
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 4)


def test_build_proxy_and_reference_preset() -> None:
    cfg = ProxyConfig(cells=3, channels=4, stem_multiplier=2, proj_hidden_dim=None, proj_dim=6)
    model = build_proxy(DARTS_V2, cfg)
    assert len(model.body.cells) == 3 and model.proj_dim == 6
    assert model.body.stem[0].out_channels == 8
    assert isinstance(model.projector, nn.Linear)
    assert (REFERENCE_PROXY.cells, REFERENCE_PROXY.channels) == (8, 32)
    # METHOD.md: the reference proxy (5 nodes, last 4 concatenated) pools 512 features, projects
    # to 256, and has ~1.0 M parameters and 134-210 M MACs per 32x32 image for random cells.
    rng = random.Random(7)
    genotype = Genotype(random_cell(rng, 5), [3, 4, 5, 6], random_cell(rng, 5), [3, 4, 5, 6])
    ref = build_proxy(genotype, REFERENCE_PROXY)
    assert ref.feature_dim == 512 and isinstance(ref.projector, nn.Linear)
    assert ref.projector.out_features == 256
    assert 0.8e6 < count_parameters(ref) < 1.4e6
    assert 120e6 < count_macs(ref) < 220e6


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("cells", 0),
        ("channels", -1),
        ("stem_multiplier", 0),
        ("proj_hidden_dim", 0),
        ("proj_dim", 0),
        ("channels", 2.5),
        ("cells", True),
    ],
)
def test_proxy_config_rejects_bad_fields(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=rf"^model\.{field} must be an integer"):
        ProxyConfig(**{field: value})  # type: ignore[arg-type]


def test_network_constructors_reject_bad_arguments() -> None:
    with pytest.raises(ValueError, match="C must be"):
        ProxyNetwork(DARTS_V2, C=0)
    with pytest.raises(ValueError, match="layers must be"):
        NetworkCIFAR(DARTS_V2, layers=0)
    with pytest.raises(ValueError, match="drop_path_prob"):
        NetworkCIFAR(DARTS_V2, drop_path_prob=1.0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_networks_run_where_they_are_moved() -> None:
    torch.manual_seed(0)
    device = torch.device("cuda")
    proxy = ProxyNetwork(GENOTYPES["random-subset-0"], C=4, layers=5).to(device)
    weighted_sum(proxy(torch.randn(2, 3, 16, 16, device=device))).backward()
    assert_all_gradients(proxy)
    model = NetworkCIFAR(DARTS_V2, C=4, layers=4, drop_path_prob=0.2)
    cpu_macs = count_macs(model)
    model = model.to(device).train()
    logits, logits_aux = model(torch.randn(2, 3, 32, 32, device=device))
    assert logits.device.type == "cuda" and logits_aux is not None
    weighted_sum(logits, logits_aux).backward()
    assert_all_gradients(model)
    assert count_macs(model) == cpu_macs
    assert all(p.device.type == "cuda" for p in model.parameters()) and model.training
