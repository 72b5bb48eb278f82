"""kNN and linear probes read how separable frozen features are."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cnas_hpc.train.probe import knn_accuracy, linear_probe_accuracy


def _clusters(n: int, seed: int, noise: float) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.eye(4, 16)
    labels = torch.randint(0, 4, (n,), generator=g)
    x = centres[labels] + noise * torch.randn(n, 16, generator=g)
    return F.normalize(x, dim=1), labels


def test_separable_features_are_read_perfectly_and_noise_is_not() -> None:
    train_x, train_y = _clusters(200, 0, 0.1)
    test_x, test_y = _clusters(100, 1, 0.1)
    assert knn_accuracy(train_x, train_y, test_x, test_y, k=5) == 1.0
    assert linear_probe_accuracy(train_x, train_y, test_x, test_y, epochs=50) == 1.0
    noise_x = F.normalize(torch.randn(100, 16, generator=torch.Generator().manual_seed(2)), dim=1)
    assert knn_accuracy(train_x, train_y, noise_x, test_y, k=5) < 0.5


def test_the_linear_probe_is_deterministic() -> None:
    train_x, train_y = _clusters(100, 0, 1.0)
    test_x, test_y = _clusters(50, 1, 1.0)
    first = linear_probe_accuracy(train_x, train_y, test_x, test_y, epochs=20, seed=3)
    assert first == linear_probe_accuracy(train_x, train_y, test_x, test_y, epochs=20, seed=3)
