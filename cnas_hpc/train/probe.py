"""Probes of a frozen encoder: kNN and linear classification of its features.

The encoder was trained without labels (the contrastive proxy task); labels are used here only to
READ its features: a weighted kNN vote (no training at all) and a linear classifier (logistic
regression on the frozen features, a few seconds), both fitted on the labeled training split and
scored on the test split. Shapes: features ``[N, D]``, L2-normalised; labels ``[N]`` int64.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from cnas_hpc.data.datasets import ImageArrays
from cnas_hpc.models.networks import ProxyNetwork
from cnas_hpc.ssl.augment import BatchAugment


@torch.no_grad()
def encoder_features(
    model: ProxyNetwork,
    split: ImageArrays,
    augment: BatchAugment,
    device: torch.device,
    *,
    batch_size: int = 512,
) -> torch.Tensor:
    """L2-normalised backbone features (before the projection head) of every image, in order.

    The model is left in training mode.
    """
    model.eval()
    chunks = []
    for start in range(0, len(split), batch_size):
        images = split.images[start : start + batch_size].to(device)
        chunks.append(F.normalize(model.features(augment.plain(images)).float(), dim=1))
    model.train()
    return torch.cat(chunks)


@torch.no_grad()
def knn_accuracy(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    *,
    k: int = 20,
    temperature: float = 0.07,
    chunk: int = 1024,
) -> float:
    """Accuracy of a cosine-weighted kNN vote (``exp(sim / temperature)``, InstDisc style)."""
    n_classes = int(max(train_labels.max(), test_labels.max())) + 1
    k = min(k, len(train_labels))
    correct = 0
    for start in range(0, len(test_labels), chunk):
        sim = test_features[start : start + chunk] @ train_features.T
        top_sim, top_idx = sim.topk(k, dim=1)
        votes = torch.zeros(len(top_sim), n_classes, device=sim.device)
        votes.scatter_add_(1, train_labels[top_idx], (top_sim / temperature).exp())
        correct += int((votes.argmax(dim=1) == test_labels[start : start + chunk]).sum())
    return correct / max(len(test_labels), 1)


def linear_probe_accuracy(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    *,
    epochs: int = 100,
    lr: float = 0.1,
    weight_decay: float = 1e-4,
    seed: int = 0,
) -> float:
    """Test accuracy of a logistic regression fitted on the frozen training features.

    Full-batch training with Adam and a cosine learning rate (the features fit in memory),
    deterministic for a given seed.
    """
    n_classes = int(max(train_labels.max(), test_labels.max())) + 1
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = nn.Linear(train_features.shape[1], n_classes).to(train_features.device)
    optimizer = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=weight_decay)
    for epoch in range(epochs):
        for group in optimizer.param_groups:
            group["lr"] = 0.5 * lr * (1.0 + math.cos(math.pi * epoch / epochs))
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(head(train_features), train_labels).backward()
        optimizer.step()
    with torch.no_grad():
        predicted = head(test_features).argmax(dim=1)
    return float((predicted == test_labels).float().mean())
