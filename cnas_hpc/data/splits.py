"""Search splits and per-epoch batch orders, reproducible in every process.

Every permutation here is a pure function of ``(seed, what, epoch)`` (see
:func:`~cnas_hpc.data.datasets.seeded_permutation`): all ranks and all workers of a study agree
on the splits and on each epoch's order without communicating.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cnas_hpc.config.data import DataConfig
from cnas_hpc.config.train import check_global_batch
from cnas_hpc.data.datasets import STREAM_EPOCH, STREAM_SPLIT, ImageArrays, seeded_permutation


@dataclass(frozen=True)
class SearchData:
    """The images one search uses, split once per study.

    Attributes:
        train: Images the candidates are trained on. Never labeled: the search is label-free.
        val: Held-out images (disjoint from ``train``), unlabeled, for the validation
            objective; ``None`` when ``data.val_fraction == 0``.
        labeled: Images of ``train`` WITH their labels, only for the optional kNN objective;
            ``None`` when ``data.labeled_fraction == 0``.

    Raises:
        ValueError: on construction, if ``train`` or ``val`` carries labels.
    """

    train: ImageArrays
    val: ImageArrays | None
    labeled: ImageArrays | None

    def __post_init__(self) -> None:
        if self.train.labels is not None:
            raise ValueError("SearchData.train must carry no labels: the search is label-free")
        if self.val is not None and self.val.labels is not None:
            raise ValueError("SearchData.val must carry no labels: the search is label-free")


def _unlabeled(arrays: ImageArrays) -> ImageArrays:
    return ImageArrays(arrays.images, None, arrays.name)


def make_search_data(data: ImageArrays, cfg: DataConfig) -> SearchData:
    """Split ``data`` into the search's train / validation / labeled sets.

    A permutation fixed by ``cfg.seed`` picks ``round(fraction * N)`` images (at least 1); of
    those, the first ``round(val_fraction * used)`` (at least 1 when ``val_fraction > 0``) are
    the validation images and the rest the training images. With ``labeled_fraction > 0``,
    ``round(labeled_fraction * len(train))`` (at least 1) training images keep their labels in
    ``labeled``. Whether a full batch fits in ``train`` is the caller's concern.

    Args:
        data: All the images read from the source (uint8, CPU).
        cfg: The data config (``seed``, ``fraction``, ``val_fraction``, ``labeled_fraction``).

    Returns:
        New tensors (copies): ``data`` is left untouched and shares nothing with the result.

    Raises:
        ValueError: no training image is left, or ``labeled_fraction > 0`` on unlabeled data.
    """
    n = len(data)
    if n == 0:
        raise ValueError(f"{data.name} has no images")
    if cfg.labeled_fraction > 0 and data.labels is None:
        raise ValueError(
            f"data.labeled_fraction={cfg.labeled_fraction} needs labels, but {data.name} has none"
        )
    order = seeded_permutation(n, cfg.seed, STREAM_SPLIT)
    used = max(1, round(cfg.fraction * n))
    n_val = max(1, round(cfg.val_fraction * used)) if cfg.val_fraction > 0 else 0
    if used - n_val < 1:
        raise ValueError(
            f"data.fraction={cfg.fraction} of {n} images gives {used}, all taken by "
            f"data.val_fraction={cfg.val_fraction}: no training image is left"
        )
    val_index, train_index = order[:n_val], order[n_val:used]
    train = data.subset(train_index)
    val = _unlabeled(data.subset(val_index)) if n_val else None
    labeled = None
    if cfg.labeled_fraction > 0:
        n_labeled = max(1, round(cfg.labeled_fraction * len(train_index)))
        labeled = data.subset(train_index[:n_labeled])
    return SearchData(train=_unlabeled(train), val=val, labeled=labeled)


def epoch_batches(
    n: int,
    batch_size: int,
    *,
    epoch: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    drop_last: bool = True,
) -> list[torch.Tensor]:
    """This rank's image indices for every step of one epoch.

    One permutation per ``(seed, epoch)``, shared by all ranks, is cut into global batches of
    ``batch_size``; rank ``r`` gets the contiguous slice ``[r * b, (r + 1) * b)`` of each, with
    ``b = batch_size // world_size``. The ranks' slices of a step are disjoint and together
    are exactly the single-process batch, so results do not depend on the world size.

    Args:
        n: Number of training images.
        batch_size: GLOBAL batch size (over all ranks).
        epoch: Epoch number (``>= 0``); each epoch has its own order.
        seed: Data seed (``>= 0``).
        rank: This process's rank in ``[0, world_size)``.
        world_size: Number of ranks.
        drop_last: Drop the last, partial global batch. Without it the partial batch is split
            as evenly as possible, so a rank may get fewer (even zero) images on that step.

    Returns:
        One int64 CPU tensor per step (``n // batch_size`` steps with ``drop_last``); every
        index appears at most once per epoch over all ranks.

    Raises:
        ValueError: ``batch_size`` not divisible by ``world_size``, fewer than ``batch_size``
            images with ``drop_last``, or an argument out of range.
    """
    if batch_size < 1:
        raise ValueError(f"train.batch_size must be >= 1, got {batch_size}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, world size {world_size})")
    if epoch < 0 or seed < 0:
        raise ValueError(f"epoch and seed must be >= 0, got epoch={epoch}, seed={seed}")
    if n < 0:
        raise ValueError(f"the number of images must be >= 0, got {n}")
    check_global_batch(batch_size, world_size, n if drop_last else None)
    order = seeded_permutation(n, seed, STREAM_EPOCH, epoch)
    local = batch_size // world_size
    full = n // batch_size
    grid = order[: full * batch_size].view(full, batch_size)
    batches = list(grid[:, rank * local : (rank + 1) * local].unbind(0))
    rest = order[full * batch_size :]
    if not drop_last and len(rest):
        batches.append(torch.tensor_split(rest, world_size)[rank])
    return batches
