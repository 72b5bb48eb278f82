"""The contract of every registered contrastive loss (:mod:`cnas_hpc.ssl.registry`).

Every test is parametrized over ``loss_names()``, so a loss registered later runs through all of
them: output (a finite scalar >= 0), gradients (finite, into both views, equal to finite
differences), alignment (agreeing views score below random ones), state (a stateful loss comes
back bit-identical from its ``state_dict``) and a reference value computed here by hand. The last
two need a case per loss below (``ALIGNED``, ``REFERENCE``); a new loss fails until it has one.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import numpy as np
import pytest
import torch

from cnas_hpc.config.train import LOSSES, TrainConfig
from cnas_hpc.ssl.registry import (
    ContrastiveLoss,
    LossSetup,
    build_loss,
    loss_names,
    register_loss,
)

CPU = torch.device("cpu")
NAMES = loss_names()
N_TRAIN, DIM, BATCH = 16, 16, 6


def _setup(
    *, n_train: int = N_TRAIN, dim: int = DIM, temperature: float = 0.5, negatives: int = 8
) -> LossSetup:
    cfg = TrainConfig(temperature=temperature, membank_negatives=negatives)
    return LossSetup(cfg, n_train=n_train, dim=dim, seed=3, device=CPU)


def _batch(
    seed: int, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    z1 = torch.randn(BATCH, DIM, generator=gen, dtype=dtype)
    z2 = torch.randn(BATCH, DIM, generator=gen, dtype=dtype)
    index = torch.randperm(N_TRAIN, generator=gen)[:BATCH]
    return z1, z2, index


def test_the_registry_names_exactly_the_losses_the_config_accepts() -> None:
    # config/ sits below ssl/ and cannot import the registry: this keeps the two lists one.
    assert sorted(loss_names()) == sorted(LOSSES)


def test_an_unknown_or_duplicate_name_is_refused() -> None:
    with pytest.raises(ValueError, match="no loss registered as 'nope'"):
        build_loss("nope", _setup())
    with pytest.raises(ValueError, match="already registered"):
        register_loss(NAMES[0])(lambda setup: build_loss(NAMES[0], setup))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_output_is_a_finite_non_negative_scalar(name: str, dtype: torch.dtype) -> None:
    z1, z2, index = _batch(0, dtype)
    loss = build_loss(name, _setup())(z1, z2, index)
    assert loss.shape == () and loss.dtype == dtype
    assert math.isfinite(loss.item())
    assert loss.item() >= 0.0  # a mean negative log-probability


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_both_views_and_match_finite_differences(name: str) -> None:
    z1, z2, index = _batch(1)
    z1.requires_grad_(True)
    z2.requires_grad_(True)
    build_loss(name, _setup())(z1, z2, index).backward()
    for grad in (z1.grad, z2.grad):
        assert grad is not None and bool(torch.isfinite(grad).all())
        assert float(grad.abs().sum()) > 0.0
    # A fresh instance per evaluation: a stateful loss must see the same state every time.
    small = _setup(n_train=5, dim=3, negatives=4)
    gen = torch.Generator().manual_seed(2)
    a = torch.randn(3, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    idx = torch.tensor([4, 0, 2])
    assert torch.autograd.gradcheck(lambda x, y: build_loss(name, small)(x, y, idx), (a, b))


def _aligned_ntxent(loss: ContrastiveLoss, index: torch.Tensor) -> torch.Tensor:
    # Orthogonal (well-separated) images, both views equal: the best case of NT-Xent.
    return torch.eye(len(index), DIM) * 4.0


def _aligned_membank(loss: ContrastiveLoss, index: torch.Tensor) -> torch.Tensor:
    # Both views on the image's own bank entry, its positive.
    return loss.state_dict()["bank"][index].clone()


#: For each loss, views it should score low (before its state, if any, moves).
ALIGNED: dict[str, Callable[[ContrastiveLoss, torch.Tensor], torch.Tensor]] = {
    "ntxent": _aligned_ntxent,
    "membank_nce": _aligned_membank,
}


@pytest.mark.parametrize("name", NAMES)
def test_aligned_views_score_below_random_views(name: str) -> None:
    assert name in ALIGNED, f"add an aligned case for the new loss {name!r}"
    z1, z2, index = _batch(4)
    random = build_loss(name, _setup())(z1, z2, index).item()
    loss = build_loss(name, _setup())  # the same initial state
    z = ALIGNED[name](loss, index)
    aligned = loss(z, z.clone(), index).item()
    assert 0.0 <= aligned < random - 0.5, (aligned, random)


@pytest.mark.parametrize("name", NAMES)
def test_state_is_owned_by_the_loss_and_restores_bit_identically(name: str) -> None:
    first = build_loss(name, _setup())
    # Like torch's state_dict, the tensors may alias the live state: copy to keep a snapshot.
    before = copy.deepcopy(first.state_dict())
    z1, z2, index = _batch(5)
    first(z1, z2, index)
    after = copy.deepcopy(first.state_dict())
    if not type(first).stateful:
        assert before == {} and after == {}
        return
    assert not torch.equal(before["bank"], after["bank"]), "a stateful loss updates its state"
    resumed = build_loss(name, _setup())
    resumed.load_state_dict(after)
    z1, z2, index = _batch(6)
    assert torch.equal(first(z1, z2, index), resumed(z1, z2, index))
    for key, value in first.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key


def _reference_ntxent(name: str) -> tuple[float, float]:
    # Normalised: a1 = (1, 0), a2 = (0, 1), b1 = (1, 1)/sqrt2, b2 = (0, -1); temperature 0.5,
    # so a cosine c becomes the logit 2c. Each anchor: -log e^pos / (e^pos + e^neg1 + e^neg2).
    z1 = torch.tensor([[3.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    z2 = torch.tensor([[1.0, 1.0], [0.0, -2.0]], dtype=torch.float64)
    r2, e = math.sqrt(2.0), math.exp
    per_anchor = [
        -math.log(e(r2) / (e(r2) + e(0) + e(0))),  # a1: pos b1 (1/sqrt2), neg a2 (0), b2 (0)
        -math.log(e(-2) / (e(-2) + e(0) + e(r2))),  # a2: pos b2 (-1), neg a1 (0), b1 (1/sqrt2)
        -math.log(e(r2) / (e(r2) + e(r2) + e(-r2))),  # b1: pos a1, neg a2 (1/sqrt2), b2
        -math.log(e(-2) / (e(-2) + e(0) + e(-r2))),  # b2: pos a2 (-1), neg a1 (0), b1
    ]
    got = build_loss(name, _setup(n_train=2, dim=2))(z1, z2, torch.tensor([0, 1]))
    return got.item(), sum(per_anchor) / 4


def _reference_membank(name: str) -> tuple[float, float]:
    # A hand-picked bank (through the state contract); the negatives are the next draws of the
    # saved generator: uniform rows with replacement, [B, K].
    loss = build_loss(name, _setup(n_train=3, dim=2, negatives=2))
    bank = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    rng_state = loss.state_dict()["negatives_rng"]
    loss.load_state_dict(
        {"bank": torch.tensor(bank, dtype=torch.float32), "negatives_rng": rng_state}
    )
    draw = torch.Generator().set_state(rng_state)
    negatives = torch.randint(3, (2, 2), generator=draw).numpy()
    z_image = np.array([[2.0, 0.0], [0.0, -1.0]])
    z_view = np.array([[1.0, 1.0], [1.0, 0.0]])
    index = [0, 2]

    def unit(v: np.ndarray) -> np.ndarray:
        return v / np.linalg.norm(v)

    def nce(q: np.ndarray, i: int) -> float:
        logits = [q @ bank[index[i]] / 0.5] + [q @ bank[k] / 0.5 for k in negatives[i]]
        return -(logits[0] - math.log(sum(math.exp(v) for v in logits)))

    view = np.mean([nce(unit(z_view[i]), i) for i in range(2)])
    image = np.mean([nce(unit(z_image[i]), i) for i in range(2)])
    expected = 0.5 * view + 0.5 * image  # image_weight 0.5
    got = loss(
        torch.tensor(z_image, dtype=torch.float32),
        torch.tensor(z_view, dtype=torch.float32),
        torch.tensor(index),
    )
    # The update: bank[i] = unit(0.5 * bank[i] + 0.5 * unit(z_image)), other rows untouched.
    expected_bank = [[1.0, 0.0], [0.0, 1.0], [-(0.5**0.5), -(0.5**0.5)]]
    torch.testing.assert_close(loss.state_dict()["bank"], torch.tensor(expected_bank))
    return got.item(), float(expected)


#: For each loss, (its value, the value computed here) on a tiny input.
REFERENCE: dict[str, Callable[[str], tuple[float, float]]] = {
    "ntxent": _reference_ntxent,
    "membank_nce": _reference_membank,
}


@pytest.mark.parametrize("name", NAMES)
def test_a_tiny_input_gives_the_hand_computed_value(name: str) -> None:
    assert name in REFERENCE, f"add a hand-computed reference for the new loss {name!r}"
    got, expected = REFERENCE[name](name)
    assert got == pytest.approx(expected, rel=1e-6)
