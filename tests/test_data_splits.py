"""Search splits and epoch batch orders: disjoint, label-free, reproducible across processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cnas_hpc.config.data import DataConfig
from cnas_hpc.data.datasets import ImageArrays
from cnas_hpc.data.splits import SearchData, epoch_batches, make_search_data


def _indexed(n: int, *, labels: bool = True) -> ImageArrays:
    """Image ``i`` encodes ``i`` in two pixels; its label is ``i % 10``."""
    images = torch.zeros(n, 3, 8, 8, dtype=torch.uint8)
    index = torch.arange(n)
    images[:, 0, 0, 0] = (index % 256).to(torch.uint8)
    images[:, 1, 0, 0] = (index // 256).to(torch.uint8)
    return ImageArrays(images, index % 10 if labels else None, "indexed")


def _ids(arrays: ImageArrays | None) -> list[int]:
    assert arrays is not None
    pixels = arrays.images[:, :2, 0, 0].long()
    return (pixels[:, 0] + 256 * pixels[:, 1]).tolist()


def test_split_sizes_are_disjoint_and_unlabeled() -> None:
    data = _indexed(1000)
    split = make_search_data(data, DataConfig(fraction=0.5, val_fraction=0.2))
    train, val = _ids(split.train), _ids(split.val)
    assert len(train) == 400 and len(val) == 100
    assert len(set(train)) == 400 and len(set(val)) == 100
    assert not set(train) & set(val)
    assert set(train) | set(val) <= set(range(1000))
    # Label-free by construction, although the source has labels.
    assert split.train.labels is None
    assert split.val is not None and split.val.labels is None
    assert split.labeled is None


def test_fraction_respected_without_validation() -> None:
    split = make_search_data(_indexed(1797), DataConfig(fraction=0.29, val_fraction=0.0))
    assert len(split.train) == round(0.29 * 1797) and split.val is None
    full = make_search_data(_indexed(50), DataConfig(fraction=1.0, val_fraction=0.0))
    assert sorted(_ids(full.train)) == list(range(50))


def test_labeled_split_keeps_true_labels_of_train_images() -> None:
    split = make_search_data(
        _indexed(1000), DataConfig(fraction=0.5, val_fraction=0.2, labeled_fraction=0.25)
    )
    assert split.labeled is not None and split.labeled.labels is not None
    labeled = _ids(split.labeled)
    assert len(labeled) == 100
    assert set(labeled) <= set(_ids(split.train))
    assert split.labeled.labels.tolist() == [i % 10 for i in labeled]


def test_labeled_split_needs_labels() -> None:
    with pytest.raises(ValueError, match=r"data.labeled_fraction=0.1 needs labels, but indexed"):
        make_search_data(_indexed(100, labels=False), DataConfig(labeled_fraction=0.1))


def test_no_training_image_left_is_an_error() -> None:
    with pytest.raises(ValueError, match="no training image is left"):
        make_search_data(_indexed(10), DataConfig(fraction=0.1, val_fraction=0.5))


def test_split_is_seeded() -> None:
    data = _indexed(500)
    first = make_search_data(data, DataConfig(fraction=0.3, seed=3))
    again = make_search_data(data, DataConfig(fraction=0.3, seed=3))
    other = make_search_data(data, DataConfig(fraction=0.3, seed=4))
    assert _ids(first.train) == _ids(again.train) and _ids(first.val) == _ids(again.val)
    assert set(_ids(first.train)) != set(_ids(other.train))


def test_split_copies_do_not_alias_the_source() -> None:
    data = _indexed(20)
    split = make_search_data(data, DataConfig(val_fraction=0.0))
    split.train.images.fill_(255)
    assert _ids(data) == list(range(20))


def test_search_data_refuses_labeled_train_or_val() -> None:
    labeled, unlabeled = _indexed(4), _indexed(4, labels=False)
    with pytest.raises(ValueError, match="train must carry no labels"):
        SearchData(train=labeled, val=None, labeled=None)
    with pytest.raises(ValueError, match="val must carry no labels"):
        SearchData(train=unlabeled, val=labeled, labeled=None)


_CHILD = """
import json
from cnas_hpc.config.data import DataConfig
from cnas_hpc.data.datasets import ImageArrays
from cnas_hpc.data.splits import epoch_batches, make_search_data
import torch
images = torch.zeros(300, 3, 8, 8, dtype=torch.uint8)
images[:, 0, 0, 0] = torch.arange(300) % 256
images[:, 1, 0, 0] = torch.arange(300) // 256
split = make_search_data(ImageArrays(images, None, "x"), DataConfig(fraction=0.5, seed=7))
pixels = split.train.images[:, :2, 0, 0].long()
print(json.dumps({
    "train": (pixels[:, 0] + 256 * pixels[:, 1]).tolist(),
    "batches": [b.tolist() for b in epoch_batches(300, 32, epoch=2, seed=7, rank=1, world_size=2)],
}))
"""


def test_same_indices_in_another_process() -> None:
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", _CHILD], capture_output=True, text=True, env=env, check=True
    )
    child = json.loads(out.stdout)
    split = make_search_data(_indexed(300, labels=False), DataConfig(fraction=0.5, seed=7))
    assert child["train"] == _ids(split.train)
    batches = epoch_batches(300, 32, epoch=2, seed=7, rank=1, world_size=2)
    assert child["batches"] == [b.tolist() for b in batches]


# ---------------------------------------------------------------- epoch_batches


def test_epoch_batches_drop_last() -> None:
    batches = epoch_batches(103, 10, epoch=0, seed=0)
    assert len(batches) == 10
    assert all(b.dtype == torch.int64 and b.shape == (10,) for b in batches)
    seen = torch.cat(batches).tolist()
    assert len(set(seen)) == 100 and set(seen) <= set(range(103))


def test_epoch_batches_keep_last_covers_everything_once() -> None:
    batches = epoch_batches(103, 10, epoch=0, seed=0, drop_last=False)
    assert len(batches) == 11 and len(batches[-1]) == 3
    assert sorted(torch.cat(batches).tolist()) == list(range(103))


def test_ranks_are_disjoint_and_make_up_the_global_batch() -> None:
    world = 4
    single = epoch_batches(200, 16, epoch=1, seed=5)
    per_rank = [
        epoch_batches(200, 16, epoch=1, seed=5, rank=r, world_size=world) for r in range(world)
    ]
    assert all(len(batches) == len(single) for batches in per_rank)
    for step, global_batch in enumerate(single):
        slices = [per_rank[r][step] for r in range(world)]
        assert all(len(s) == 4 for s in slices)
        assert torch.equal(torch.cat(slices), global_batch)
    everything = torch.cat([torch.cat(batches) for batches in per_rank]).tolist()
    assert len(everything) == len(set(everything))


def test_epochs_and_seeds_change_the_order() -> None:
    base = torch.cat(epoch_batches(64, 8, epoch=0, seed=0))
    assert torch.equal(base, torch.cat(epoch_batches(64, 8, epoch=0, seed=0)))
    assert not torch.equal(base, torch.cat(epoch_batches(64, 8, epoch=1, seed=0)))
    assert not torch.equal(base, torch.cat(epoch_batches(64, 8, epoch=0, seed=1)))


def test_epoch_batches_errors() -> None:
    with pytest.raises(
        ValueError, match=r"^train.batch_size=10 is not divisible by the world size 4$"
    ):
        epoch_batches(100, 10, epoch=0, seed=0, world_size=4)
    with pytest.raises(ValueError, match=r"the search split has 5 images, fewer than one batch"):
        epoch_batches(5, 8, epoch=0, seed=0)
    with pytest.raises(ValueError, match="rank 2 is not in"):
        epoch_batches(100, 8, epoch=0, seed=0, rank=2, world_size=2)
    assert epoch_batches(5, 8, epoch=0, seed=0, drop_last=False)[0].shape == (5,)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 150),
    local=st.integers(1, 6),
    world=st.sampled_from([1, 2, 3, 4]),
    drop_last=st.booleans(),
    epoch=st.integers(0, 3),
)
def test_epoch_batches_partition_property(
    n: int, local: int, world: int, drop_last: bool, epoch: int
) -> None:
    batch = local * world
    if drop_last and n < batch:
        with pytest.raises(ValueError, match="fewer than one batch"):
            epoch_batches(n, batch, epoch=epoch, seed=11, world_size=world)
        return
    per_rank = [
        epoch_batches(n, batch, epoch=epoch, seed=11, rank=r, world_size=world, drop_last=drop_last)
        for r in range(world)
    ]
    steps = {len(b) for b in per_rank}
    assert len(steps) == 1  # every rank runs the same number of steps
    everything = torch.cat([torch.cat(b) for b in per_rank]).tolist()
    assert len(everything) == len(set(everything))
    expected = (n // batch) * batch if drop_last else n
    assert len(everything) == expected
    assert set(everything) <= set(range(n))
