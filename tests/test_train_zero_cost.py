"""Zero-cost proxies against values computed by hand on tiny networks, and on real cells."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from cnas_hpc.config.zero_cost import ZeroCostConfig
from cnas_hpc.space.genotype import PRESETS
from cnas_hpc.train.zero_cost import naswot, naswot_batch, synflow, zero_cost_scores


def _linear(weight: list[list[float]]) -> nn.Linear:
    layer = nn.Linear(len(weight[0]), len(weight), bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weight))
    return layer


# Three images of two features; the identity layer hands them to the ReLU unchanged.
_X = torch.tensor([[1.0, -1.0], [1.0, 1.0], [-1.0, -1.0]])


def test_naswot_is_the_log_determinant_of_the_code_agreement_kernel() -> None:
    # Codes (x > 0): [1,0], [1,1], [0,0]. K[i,j] = units where i and j agree:
    # [[2,1,1],[1,2,0],[1,0,2]], det = 2*4 - 1*2 + 1*(-2) = 4.
    model = nn.Sequential(nn.Flatten(), _linear([[1.0, 0.0], [0.0, 1.0]]), nn.ReLU())
    assert naswot(model, _X.view(3, 2, 1, 1)) == pytest.approx(math.log(4.0))


def test_naswot_sums_the_kernels_of_every_relu() -> None:
    # Second ReLU sees [[1,0],[0,-1]] @ relu(x) = [1,0], [1,-1], [0,0]: codes [1,0],[1,0],[0,0],
    # K2 = [[2,2,1],[2,2,1],[1,1,2]]; K1 + K2 = [[4,3,2],[3,4,1],[2,1,4]], det = 20.
    model = nn.Sequential(
        nn.Flatten(),
        _linear([[1.0, 0.0], [0.0, 1.0]]),
        nn.ReLU(),
        _linear([[1.0, 0.0], [0.0, -1.0]]),
        nn.ReLU(),
    )
    assert naswot(model, _X.view(3, 2, 1, 1)) == pytest.approx(math.log(20.0))


def test_naswot_of_two_images_with_one_code_is_minus_infinity() -> None:
    model = nn.Sequential(nn.Flatten(), _linear([[1.0, 0.0], [0.0, 1.0]]), nn.ReLU())
    same = torch.tensor([[1.0, -1.0], [2.0, -3.0]]).view(2, 2, 1, 1)  # both code [1, 0]
    assert naswot(model, same) == -math.inf


def test_naswot_refuses_what_it_cannot_score() -> None:
    with pytest.raises(ValueError, match="B>=2"):
        naswot(nn.Sequential(nn.Flatten(), nn.ReLU()), torch.ones(1, 2, 1, 1))
    with pytest.raises(ValueError, match=r"nn\.ReLU"):
        naswot(nn.Flatten(), torch.ones(2, 2, 1, 1))


def test_synflow_is_the_synaptic_flow_of_the_absolute_network() -> None:
    # |W1| = [[1,2],[3,0.5]], |W2| = [[1,2]]; input of ones: h = [3, 3.5], R = 3 + 7 = 10.
    # Layer 2: sum |w * dR/dw| = 1*3 + 2*3.5 = 10; layer 1: dR/dW1[i, j] = W2[i], so
    # 1*1 + 2*1 + 3*2 + 0.5*2 = 10. Synflow = 20 (each layer carries the whole flow R).
    first, second = _linear([[1.0, -2.0], [3.0, 0.5]]), _linear([[-1.0, 2.0]])
    model = nn.Sequential(nn.Flatten(), first, nn.ReLU(), second)
    assert synflow(model, (2, 1, 1)) == pytest.approx(math.log(20.0))
    assert first.weight[0, 1].item() == -2.0  # the caller's network keeps its signs
    # BatchNorm is removed before the flow is measured (it would centre the all-ones input).
    with_bn = nn.Sequential(nn.Flatten(), first, nn.BatchNorm1d(2), nn.ReLU(), second)
    assert synflow(with_bn, (2, 1, 1)) == pytest.approx(math.log(20.0))


def test_zero_cost_scores_of_a_real_cell_are_seeded_and_finite() -> None:
    cfg = ZeroCostConfig(cells=3, channels=4, batch_size=8)
    images = torch.randint(0, 256, (32, 3, 16, 16), dtype=torch.uint8)
    device = torch.device("cpu")
    state = torch.random.get_rng_state()
    first = zero_cost_scores(PRESETS["DARTS_V2"], images, cfg, 0, device)
    assert torch.equal(state, torch.random.get_rng_state())  # the global RNG is left alone
    again = zero_cost_scores(PRESETS["DARTS_V2"], images, cfg, 0, device)
    other = zero_cost_scores(PRESETS["DARTS_V2"], images, cfg, 1, device)
    assert math.isfinite(first.value("naswot")) and math.isfinite(first.value("synflow"))
    assert (first.naswot, first.synflow) == (again.naswot, again.synflow)
    assert first.naswot != other.naswot  # another seed: another network and batch
    assert first.value("naswot") == first.naswot and first.value("synflow") == first.synflow
    with pytest.raises(ValueError, match="not a zero-cost"):
        first.value("val_contrastive_loss")
    only = zero_cost_scores(PRESETS["DARTS_V2"], images, cfg, 0, device, names=("synflow",))
    assert only.naswot is None and only.synflow == first.synflow
    with pytest.raises(ValueError, match="not computed"):
        only.value("naswot")


def test_naswot_batch_is_seeded_and_normalised_per_channel() -> None:
    images = torch.randint(0, 256, (50, 3, 8, 8), dtype=torch.uint8)
    batch = naswot_batch(images, 16, seed=3)
    assert batch.shape == (16, 3, 8, 8) and batch.dtype == torch.float32
    assert torch.allclose(batch.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.equal(batch, naswot_batch(images, 16, seed=3))
    assert not torch.equal(batch, naswot_batch(images, 16, seed=4))
