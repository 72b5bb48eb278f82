"""Labeled train and test images for the evaluation phase (training a cell from scratch).

The test split is the source's own (torchvision ``test``; STL-10 ``test``), the file or folder
named by ``data.test_path`` (``npz``, ``folder``), or, when neither exists (``digits``, or no
``test_path``), a seeded hold-out of ``data.val_fraction`` of the images. ``data.fraction``
subsamples the TRAINING images (seeded); the test split is always used whole.

Like the search's sources, everything is one uint8 tensor in memory; the training loop moves it
to the device once and augments whole batches there.
"""

from __future__ import annotations

import dataclasses
import logging
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import torch

from cnas_hpc.config.data import TORCHVISION_SOURCES, DataConfig
from cnas_hpc.data.datasets import STREAM_SPLIT, ImageArrays, load_images, seeded_permutation

log = logging.getLogger(__name__)

#: Random stream of the training subsample (independent of the hold-out split's).
STREAM_TRAIN_FRACTION: Final[int] = 4


@dataclass(frozen=True)
class LabeledData:
    """The evaluation's images. Both splits carry labels in ``[0, num_classes)``.

    Raises:
        ValueError: on construction, a split without labels or with labels out of range.
    """

    train: ImageArrays
    test: ImageArrays
    num_classes: int

    def __post_init__(self) -> None:
        for name, split in (("train", self.train), ("test", self.test)):
            if split.labels is None:
                raise ValueError(f"the {name} split has no labels")
            if len(split) and int(split.labels.max()) >= self.num_classes:
                raise ValueError(f"the {name} split has a label >= num_classes={self.num_classes}")


def _no_labels(what: str) -> ValueError:
    return ValueError(
        f"{what} has no labels: the evaluation trains with labels (use a labeled source, an "
        "npz file with a 'labels' array, or a folder of class sub-folders)"
    )


def _has_class_folders(folder: Path) -> bool:
    """Whether an image folder holds one sub-folder per class (the labels)."""
    return any(child.is_dir() for child in folder.iterdir())


def _check_labeled_paths(
    paths: Sequence[tuple[str, str | None]],
    what: str,
    exists: Callable[[Path], bool],
    labeled: Callable[[Path], bool],
    why: str = "",
) -> None:
    """Check each set path of ``(config key, value)`` (``None``: not set, skipped): it
    ``exists`` and is ``labeled``.

    Raises:
        FileNotFoundError: ``what`` at a path does not exist (the message names its key).
        ValueError: ``what`` at a path has no labels (``why`` says what is missing).
    """
    for key, value in paths:
        if value is None:
            continue
        path = Path(value).expanduser().absolute()
        if not exists(path):
            raise FileNotFoundError(f"{what} {path} not found ({key})")
        if not labeled(path):
            raise _no_labels(f"{what} {path} ({key}{why})")


def _npz_has_labels(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            return "labels.npy" in archive.namelist()
    except zipfile.BadZipFile:
        raise ValueError(f"npz file {path} is not an .npz archive") from None


def check_labeled(cfg: DataConfig) -> None:
    """Refuse, cheaply and before anything is queued, a data config without labels.

    Checks what is cheap to know: an npz archive's member list, a folder's class
    sub-folders, STL-10's unlabeled splits; the files must exist (see ``check_available``).

    Raises:
        ValueError: one line naming the split without labels.
        FileNotFoundError: a ``test_path`` that does not exist.
    """
    if cfg.source == "stl10" and cfg.split in ("unlabeled", "train+unlabeled"):
        raise _no_labels(f"STL-10 split {cfg.split!r}")
    if cfg.source == "npz":
        paths = (("data.path", cfg.path), ("data.test_path", cfg.test_path))
        _check_labeled_paths(paths, "npz file", Path.is_file, _npz_has_labels)
    if cfg.source == "folder":
        paths = (("data.root", cfg.root), ("data.test_path", cfg.test_path))
        _check_labeled_paths(
            paths, "image folder", Path.is_dir, _has_class_folders, ": no class sub-folders"
        )
    if _holds_out_test(cfg) and cfg.val_fraction <= 0:
        raise ValueError(
            f"data.source={cfg.source} has no test split: set data.test_path or a "
            "data.val_fraction > 0 to hold one out"
        )


def _holds_out_test(cfg: DataConfig) -> bool:
    return cfg.source not in TORCHVISION_SOURCES and cfg.test_path is None


def _test_config(cfg: DataConfig) -> DataConfig:
    if cfg.source in TORCHVISION_SOURCES:
        return dataclasses.replace(cfg, split="test", max_images=None)
    if cfg.source == "npz":
        return dataclasses.replace(cfg, path=cfg.test_path, max_images=None)
    return dataclasses.replace(cfg, root=cfg.test_path, max_images=None)


def _subsample(arrays: ImageArrays, fraction: float, seed: int) -> ImageArrays:
    if fraction >= 1.0:
        return arrays
    keep = max(1, round(fraction * len(arrays)))
    index = seeded_permutation(len(arrays), seed, STREAM_TRAIN_FRACTION)[:keep].sort().values
    return arrays.subset(index)


def load_labeled(cfg: DataConfig) -> LabeledData:
    """The labeled train split (subsampled by ``fraction``) and the test split of ``cfg``.

    Raises:
        ValueError: a split without labels, or no way to get a test split.
        FileNotFoundError: missing files (see ``check_available``).
    """
    check_labeled(cfg)
    everything = load_images(cfg)
    if everything.labels is None:
        raise _no_labels(everything.name)
    if _holds_out_test(cfg):
        order = seeded_permutation(len(everything), cfg.seed, STREAM_SPLIT)
        n_test = max(1, round(cfg.val_fraction * len(everything)))
        test = everything.subset(order[:n_test].sort().values)
        train = everything.subset(order[n_test:].sort().values)
    else:
        train, test = everything, load_images(_test_config(cfg))
        if test.labels is None:
            raise _no_labels(test.name)
    before = len(train)
    train = _subsample(train, cfg.fraction, cfg.seed)
    log.info(
        "labeled data %s: %d training image(s) (data.fraction=%g of %d), %d test image(s)",
        everything.name, len(train), cfg.fraction, before, len(test),
    )  # fmt: skip
    assert train.labels is not None and test.labels is not None
    num_classes = int(max(train.labels.max(), test.labels.max())) + 1
    return LabeledData(train=train, test=test, num_classes=num_classes)


def label_count(labels: torch.Tensor, num_classes: int) -> list[int]:
    """Images per class (for logs and sanity checks)."""
    return torch.bincount(labels, minlength=num_classes).tolist()
