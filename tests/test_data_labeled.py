"""Labeled train/test splits for the evaluation: real test splits, hold-outs, and refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnas_hpc.config.data import DataConfig
from cnas_hpc.data.labeled import check_labeled, load_labeled
from tests.helpers import cifar10_npz


def _npz(path: Path, n: int, *, labels: bool = True, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
    if labels:
        np.savez(path, images=images, labels=rng.integers(0, 4, n))
    else:
        np.savez(path, images=images)
    return path


def test_digits_hold_out_a_seeded_test_split() -> None:
    data = load_labeled(DataConfig(source="digits", image_size=8, val_fraction=0.25))
    assert len(data.test) == round(0.25 * 1797) and len(data.train) == 1797 - len(data.test)
    assert data.num_classes == 10
    again = load_labeled(DataConfig(source="digits", image_size=8, val_fraction=0.25))
    assert torch.equal(data.test.images, again.test.images)  # seeded: the same split


def test_an_npz_test_file_is_the_test_split_and_fraction_subsamples_training(
    tmp_path: Path,
) -> None:
    train = _npz(tmp_path / "train.npz", 40)
    test = _npz(tmp_path / "test.npz", 12, seed=1)
    cfg = DataConfig(source="npz", path=str(train), test_path=str(test), image_size=8, fraction=0.5)
    data = load_labeled(cfg)
    assert (len(data.train), len(data.test)) == (20, 12)


def test_the_real_cifar10_arrays_load_with_their_test_split() -> None:
    train, test = cifar10_npz()
    data = load_labeled(
        DataConfig(source="npz", path=str(train), test_path=str(test), fraction=0.1)
    )
    assert (len(data.train), len(data.test), data.num_classes) == (1000, 10000, 10)
    assert data.test.images.shape[1:] == (3, 32, 32)


def test_sources_without_labels_are_refused_before_loading(tmp_path: Path) -> None:
    unlabeled = _npz(tmp_path / "u.npz", 10, labels=False)
    with pytest.raises(ValueError, match=r"u\.npz \(data\.path\) has no labels"):
        check_labeled(DataConfig(source="npz", path=str(unlabeled)))
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.new("RGB", (8, 8)).save(flat / "a.png")
    with pytest.raises(ValueError, match="no class sub-folders"):
        check_labeled(DataConfig(source="folder", root=str(flat)))
    with pytest.raises(ValueError, match="STL-10 split 'unlabeled' has no labels"):
        check_labeled(DataConfig(source="stl10", root=str(tmp_path), split="unlabeled"))
    with pytest.raises(ValueError, match="no test split"):
        check_labeled(DataConfig(source="digits", val_fraction=0.0))
    with pytest.raises(FileNotFoundError, match=r"data\.test_path"):
        labeled = _npz(tmp_path / "l.npz", 10)
        check_labeled(DataConfig(source="npz", path=str(labeled), test_path="/no/such.npz"))
