"""Contrastive losses: exact values against naive references, validation, and learning on
real images (scikit-learn's bundled 8x8 digits) with the batched augmentations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

from cnas_hpc.config.augment import AugmentConfig
from cnas_hpc.ssl.augment import BatchAugment
from cnas_hpc.ssl.losses import MemoryBankNCE, nt_xent_loss


def naive_nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> float:
    """SimCLR's loss written out: a double loop over anchors, log-sum-exp by hand."""
    rows = torch.cat([z1, z2]).double().tolist()
    z = [[x / math.sqrt(sum(y * y for y in v)) for x in v] for v in rows]
    n = len(z1)

    def sim(i: int, k: int) -> float:
        return sum(a * b for a, b in zip(z[i], z[k], strict=True)) / temperature

    total = 0.0
    for i in range(2 * n):
        positive = i + n if i < n else i - n
        denominator = sum(math.exp(sim(i, k)) for k in range(2 * n) if k != i)
        total += -(sim(i, positive) - math.log(denominator))
    return total / (2 * n)


@pytest.mark.parametrize("temperature", [0.07, 0.2, 0.5, 1.0, 3.0])
@pytest.mark.parametrize("batch", [1, 2, 7])
def test_nt_xent_matches_naive_reference(temperature: float, batch: int) -> None:
    gen = torch.Generator().manual_seed(batch * 100 + int(temperature * 100))
    z1 = torch.randn(batch, 5, generator=gen, dtype=torch.float64) * 3
    z2 = torch.randn(batch, 5, generator=gen, dtype=torch.float64)
    got = nt_xent_loss(z1, z2, temperature)
    assert got.shape == ()
    assert got.item() == pytest.approx(naive_nt_xent(z1, z2, temperature), rel=1e-10, abs=1e-12)


def test_nt_xent_known_values() -> None:
    # Identical views, orthogonal images: the positive has cos 1, the other 2N-2 cos 0.
    z = torch.eye(3, dtype=torch.float64) * 5.0  # unnormalised on purpose
    t = 0.5
    expected = -math.log(math.exp(1 / t) / (math.exp(1 / t) + 4 * math.exp(0.0)))
    assert nt_xent_loss(z, z.clone(), t).item() == pytest.approx(expected, rel=1e-12)
    # Views pointing away from each other are the worst case: the loss grows.
    assert nt_xent_loss(z, -z, t).item() > expected + 1.0


def test_nt_xent_gradient_flows_to_both_views() -> None:
    z1 = torch.randn(4, 3, requires_grad=True)
    z2 = torch.randn(4, 3, requires_grad=True)
    nt_xent_loss(z1, z2).backward()
    assert z1.grad is not None and z2.grad is not None
    assert z1.grad.abs().sum() > 0 and z2.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("z1", "z2", "temperature", "match"),
    [
        (torch.randn(4), torch.randn(4), 0.5, r"\[batch, dim\]"),
        (torch.randn(4, 3), torch.randn(5, 3), 0.5, "same shape"),
        (torch.randn(4, 3), torch.randn(4, 3), 0.0, "temperature must be > 0"),
        (torch.randn(4, 3), torch.randn(4, 3), -1.0, "temperature must be > 0"),
        (torch.ones(4, 3, dtype=torch.long), torch.ones(4, 3, dtype=torch.long), 0.5, "floating"),
        (torch.randn(0, 3), torch.randn(0, 3), 0.5, "empty"),
    ],
)
def test_nt_xent_rejects_bad_input(
    z1: torch.Tensor, z2: torch.Tensor, temperature: float, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        nt_xent_loss(z1, z2, temperature)


# ------------------------------------------------------------------------------------------
# MemoryBankNCE
# ------------------------------------------------------------------------------------------


def naive_membank(
    bank: torch.Tensor,
    z_image: torch.Tensor,
    z_view: torch.Tensor,
    index: torch.Tensor,
    negatives: torch.Tensor,
    temperature: float,
    momentum: float,
    image_weight: float,
) -> tuple[float, torch.Tensor]:
    """The reference code's loss, one sample at a time; returns (loss, updated bank)."""

    def nce(q: list[float], pos: list[float], negs: list[list[float]]) -> float:
        def cos(a: list[float], b: list[float]) -> float:
            return sum(x * y for x, y in zip(a, b, strict=True)) / temperature

        logits = [cos(q, pos)] + [cos(q, n) for n in negs]
        return -(logits[0] - math.log(sum(math.exp(v) for v in logits)))

    b = bank.double()
    img = F.normalize(z_image.double(), dim=1)
    view = F.normalize(z_view.double(), dim=1)
    per_view, per_image = 0.0, 0.0
    for i in range(len(index)):
        m = b[index[i]].tolist()
        negs = [b[k].tolist() for k in negatives[i]]
        per_view += nce(view[i].tolist(), m, negs)
        per_image += nce(img[i].tolist(), m, negs)
    n = len(index)
    loss = image_weight * per_view / n + (1 - image_weight) * per_image / n
    new = b.clone()
    for i in range(n):
        mixed = momentum * b[index[i]] + (1 - momentum) * img[i]
        new[index[i]] = mixed / mixed.norm()
    return loss, new


@pytest.mark.parametrize(("momentum", "image_weight"), [(0.5, 0.5), (0.9, 0.2), (0.0, 1.0)])
def test_membank_matches_per_sample_reference(
    monkeypatch: pytest.MonkeyPatch, momentum: float, image_weight: float
) -> None:
    torch.manual_seed(0)
    loss_fn = MemoryBankNCE(
        12, 4, temperature=0.2, num_negatives=5, momentum=momentum, image_weight=image_weight
    )
    loss_fn.double()
    negatives = torch.randint(12, (3, 5))
    monkeypatch.setattr(loss_fn, "sample_negatives", lambda batch: negatives[:batch])
    z_image = torch.randn(3, 4, dtype=torch.float64)
    z_view = torch.randn(3, 4, dtype=torch.float64)
    index = torch.tensor([7, 0, 11])
    bank_before = loss_fn.bank.clone()
    expected_loss, expected_bank = naive_membank(
        bank_before, z_image, z_view, index, negatives, 0.2, momentum, image_weight
    )
    got = loss_fn(z_image, z_view, index)
    assert got.item() == pytest.approx(expected_loss, rel=1e-10)
    torch.testing.assert_close(loss_fn.bank, expected_bank, rtol=1e-10, atol=1e-12)
    untouched = torch.ones(12, dtype=torch.bool)
    untouched[index] = False
    assert torch.equal(loss_fn.bank[untouched], bank_before[untouched])


def test_membank_bank_is_unit_and_seeded() -> None:
    a = MemoryBankNCE(50, 8, seed=3)
    b = MemoryBankNCE(50, 8, seed=3)
    c = MemoryBankNCE(50, 8, seed=4)
    torch.testing.assert_close(a.bank.norm(dim=1), torch.ones(50))
    assert torch.equal(a.bank, b.bank)
    assert not torch.equal(a.bank, c.bank)
    assert "bank" in a.state_dict()
    negatives = a.sample_negatives(6)
    assert negatives.shape == (6, 510) and negatives.dtype == torch.long
    assert int(negatives.min()) >= 0 and int(negatives.max()) < 50


def test_membank_gradients_reach_both_inputs_only() -> None:
    loss_fn = MemoryBankNCE(20, 4, num_negatives=8)
    z_image = torch.randn(5, 4, requires_grad=True)
    z_view = torch.randn(5, 4, requires_grad=True)
    loss_fn(z_image, z_view, torch.arange(5)).backward()
    assert z_image.grad is not None and z_image.grad.abs().sum() > 0
    assert z_view.grad is not None and z_view.grad.abs().sum() > 0
    assert not loss_fn.bank.requires_grad


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_items": 0, "dim": 4}, "num_items"),
        ({"num_items": 5, "dim": 0}, "dim"),
        ({"num_items": 5, "dim": 4, "temperature": 0.0}, "temperature"),
        ({"num_items": 5, "dim": 4, "num_negatives": 0}, "num_negatives"),
        ({"num_items": 5, "dim": 4, "momentum": 1.0}, "momentum"),
        ({"num_items": 5, "dim": 4, "image_weight": 1.5}, "image_weight"),
    ],
)
def test_membank_rejects_bad_arguments(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        MemoryBankNCE(**kwargs)  # type: ignore[arg-type]


def test_membank_rejects_bad_batches() -> None:
    loss_fn = MemoryBankNCE(10, 4, num_negatives=3)
    z = torch.randn(3, 4)
    with pytest.raises(ValueError, match="dim 5"):
        loss_fn(torch.randn(3, 5), torch.randn(3, 5), torch.arange(3))
    with pytest.raises(ValueError, match="index must be"):
        loss_fn(z, z, torch.arange(4))
    with pytest.raises(ValueError, match="int64"):
        loss_fn(z, z, torch.arange(3, dtype=torch.int32))
    with pytest.raises(ValueError, match="out of range"):
        loss_fn(z, z, torch.tensor([0, 1, 10]))
    with pytest.raises(ValueError, match="same shape"):
        loss_fn(z, torch.randn(2, 4), torch.arange(3))


# ------------------------------------------------------------------------------------------
# Learning on real images
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    """256 of scikit-learn's bundled digits as uint8 [256, 3, 16, 16] (no download)."""
    data = load_digits().images[:256]  # [256, 8, 8], values 0..16
    x = torch.from_numpy(data).float().div(16.0).unsqueeze(1)
    x = F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).expand(-1, 3, -1, -1).contiguous()


def tiny_encoder(dim: int = 16) -> nn.Module:
    # Batch norm keeps the freshly initialised embeddings from all pointing the same way,
    # which would stall a contrastive loss at log(2N - 1) for many steps.
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1, bias=False),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 32, bias=False),
        nn.BatchNorm1d(32),
        nn.ReLU(),
        nn.Linear(32, dim),
    )


AUGMENT = AugmentConfig(crop_scale=(0.5, 1.0), jitter_p=0.5, grayscale_p=0.0)


def test_nt_xent_goes_down_on_digits(digits: torch.Tensor) -> None:
    torch.set_num_threads(2)
    model = tiny_encoder()
    augment = BatchAugment(AUGMENT, 16)
    eval_views = augment.two_views(digits[:128], torch.Generator().manual_seed(123))

    def eval_loss() -> float:
        model.eval()
        with torch.no_grad():
            value = nt_xent_loss(model(eval_views[0]), model(eval_views[1]), 0.2).item()
        model.train()
        return value

    before = eval_loss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9)
    generator = torch.Generator().manual_seed(0)
    for step in range(30):
        batch = digits[(step % 4) * 64 : (step % 4 + 1) * 64]
        v1, v2 = augment.two_views(batch, generator)
        loss = nt_xent_loss(model(v1), model(v2), 0.2)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = eval_loss()
    assert math.isfinite(after)
    assert after < before - 0.4, (before, after)


def test_membank_nce_goes_down_on_digits(digits: torch.Tensor) -> None:
    torch.set_num_threads(2)
    model = tiny_encoder()
    augment = BatchAugment(AUGMENT, 16)
    loss_fn = MemoryBankNCE(len(digits), 16, num_negatives=64, seed=0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    generator = torch.Generator().manual_seed(0)
    epoch_losses = []
    for epoch in range(4):
        order = torch.randperm(len(digits), generator=torch.Generator().manual_seed(epoch))
        total = 0.0
        for start in range(0, len(digits), 64):
            index = order[start : start + 64]
            v1, v2 = augment.two_views(digits[index], generator)
            loss = loss_fn(model(v1), model(v2), index)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item()
        epoch_losses.append(total / 4)
    assert all(math.isfinite(v) for v in epoch_losses)
    assert epoch_losses[-1] < epoch_losses[0] - 0.5, epoch_losses
