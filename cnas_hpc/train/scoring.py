"""Label-free scores of a trained proxy: the validation contrastive loss and a kNN probe.

Both run in eval mode without gradients and leave the model in train mode. Every rank calls them
together (the validation loss gathers negatives from every rank) and gets the same number. They
run under the candidate's :class:`~cnas_hpc.train.plan.StepPlan` (layout, autocast), in eval
mode one forward per view, exactly as in training.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from cnas_hpc.data.splits import SearchData
from cnas_hpc.distributed.collectives import all_reduce_mean, get_rank, get_world_size
from cnas_hpc.models.networks import ProxyNetwork
from cnas_hpc.ssl.augment import BatchAugment
from cnas_hpc.ssl.losses import nt_xent_loss
from cnas_hpc.train.plan import StepPlan
from cnas_hpc.train.step import ProxyTask

# Fixed seed of the validation views: every trial of a study is scored on the same pairs.
_VAL_VIEW_SEED = 20_240_611


def _global_batches(n: int, batch_size: int) -> Iterator[tuple[int, int]]:
    """Fixed, unshuffled [start, stop) windows of at most ``batch_size`` covering ``n`` items."""
    for start in range(0, n, batch_size):
        yield start, min(n, start + batch_size)


@torch.no_grad()
def validation_loss(
    model: ProxyNetwork,
    data: SearchData,
    task: ProxyTask,
    device: torch.device,
    plan: StepPlan | None = None,
) -> float | None:
    """NT-Xent on the held-out split with fixed views, in eval mode; ``None`` without a split.

    Every rank augments the same global batch (same seed, so the score does not depend on the
    world size), scores its slice with negatives gathered from all ranks, and the local means are
    averaged across ranks. NT-Xent is used whatever the training loss, so scores stay comparable.
    """
    if data.val is None or len(data.val) < 2:
        return None
    rank, world = get_rank(), get_world_size()
    plan = plan or StepPlan()
    augment = BatchAugment(task.augment, task.image_size)
    generator = torch.Generator(device=device)
    generator.manual_seed(_VAL_VIEW_SEED)
    images = data.val.images.to(device)
    model.eval()
    # Summed on the device: one read-back for the whole split.
    total, count = torch.zeros((), device=device), 0
    # Batches whose size is a multiple of the world size, so every rank holds an equal slice.
    size = max(world * 2, (min(task.train.batch_size, len(images)) // world) * world)
    for start, stop in _global_batches(len(images), size):
        if (stop - start) < 2 * world:
            break
        stop = start + ((stop - start) // world) * world
        view1, view2 = augment.two_views(images[start:stop], generator)
        per_rank = (stop - start) // world
        sl = slice(rank * per_rank, (rank + 1) * per_rank)
        with plan.autocast(device):
            z1, z2 = model(plan.images(view1[sl])), model(plan.images(view2[sl]))
        total += nt_xent_loss(z1.float(), z2.float(), task.train.temperature)
        count += 1
    model.train()
    if count == 0:
        return None
    return float(all_reduce_mean(total / count).item())


@torch.no_grad()
def knn_accuracy(
    model: ProxyNetwork,
    data: SearchData,
    task: ProxyTask,
    device: torch.device,
    plan: StepPlan | None = None,
) -> float | None:
    """Leave-one-out weighted kNN accuracy of backbone features on the labeled split.

    Not label-free: computed only when ``data.labeled`` exists (``data.labeled_fraction > 0``).
    Every rank computes the same number (the labeled split is small), so nothing is reduced.
    """
    if data.labeled is None or data.labeled.labels is None or len(data.labeled) < 2:
        return None
    plan = plan or StepPlan()
    augment = BatchAugment(task.augment, task.image_size)
    model.eval()
    images = data.labeled.images.to(device)
    labels = data.labeled.labels.to(device)
    feats = torch.cat(
        [
            F.normalize(model.features(plan.images(augment.plain(images[a:b]))).float(), dim=1)
            for a, b in _global_batches(len(images), 512)
        ]
    )
    model.train()
    sim = feats @ feats.T
    sim.fill_diagonal_(-math.inf)  # leave one out
    k = min(task.train.knn_k, len(images) - 1)
    top_sim, top_idx = sim.topk(k, dim=1)
    weights = (top_sim / 0.07).exp()
    n_classes = int(labels.max().item()) + 1
    votes = torch.zeros(len(images), n_classes, device=device)
    votes.scatter_add_(1, labels[top_idx], weights)
    return float((votes.argmax(dim=1) == labels).float().mean().item())
