"""The label-free scores of a trained proxy, on a real (untrained) proxy network."""

from __future__ import annotations

import pytest
import torch

from cnas_hpc.config.augment import AugmentConfig
from cnas_hpc.config.model import ProxyConfig
from cnas_hpc.config.train import TrainConfig
from cnas_hpc.data.datasets import ImageArrays
from cnas_hpc.data.splits import SearchData
from cnas_hpc.models.networks import ProxyNetwork
from cnas_hpc.space.genotype import DARTS_V2
from cnas_hpc.train.loop import build_candidate
from cnas_hpc.train.scoring import knn_accuracy, validation_loss
from cnas_hpc.train.step import ProxyTask

CPU = torch.device("cpu")
TASK = ProxyTask(TrainConfig(batch_size=8, knn_k=3), AugmentConfig(), image_size=16, seed=0)


def _images(n: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 16, 16), dtype=torch.uint8, generator=generator)


def _data(val: int = 12, labeled: ImageArrays | None = None) -> SearchData:
    return SearchData(
        train=ImageArrays(_images(16, 0), None, "train"),
        val=ImageArrays(_images(val, 1), None, "val") if val else None,
        labeled=labeled,
    )


@pytest.fixture
def model() -> ProxyNetwork:
    return build_candidate(DARTS_V2, ProxyConfig(cells=3, channels=4), seed=0, device=CPU)


def test_the_validation_loss_is_the_same_number_every_time_and_keeps_train_mode(
    model: ProxyNetwork,
) -> None:
    # Fixed views: every trial of a study is scored on the same pairs.
    first = validation_loss(model, _data(), TASK, CPU)
    assert first is not None and first > 0.0
    assert validation_loss(model, _data(), TASK, CPU) == first
    assert model.training
    assert all(p.grad is None for p in model.parameters())  # scored without gradients


def test_no_validation_split_or_a_single_image_gives_no_score(model: ProxyNetwork) -> None:
    assert validation_loss(model, _data(val=0), TASK, CPU) is None
    assert validation_loss(model, _data(val=1), TASK, CPU) is None


def test_knn_reads_identical_images_of_a_class_perfectly(model: ProxyNetwork) -> None:
    # Four classes, three copies of one image each: a leave-one-out neighbour with similarity 1
    # is always of the same class, whatever the (untrained) network's features.
    base = _images(4, 2)
    images = base.repeat_interleave(3, dim=0)
    labels = torch.arange(4).repeat_interleave(3)
    labeled = ImageArrays(images, labels, "labeled")
    task = ProxyTask(TrainConfig(batch_size=8, knn_k=2), AugmentConfig(), 16, seed=0)
    assert knn_accuracy(model, _data(labeled=labeled), task, CPU) == 1.0
    assert model.training


def test_knn_needs_labels(model: ProxyNetwork) -> None:
    assert knn_accuracy(model, _data(), TASK, CPU) is None
