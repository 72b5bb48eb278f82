"""The ``data`` config group: where the images come from and how much of them is used."""

from __future__ import annotations

import typing
from typing import Annotated, Final, Literal

from pydantic import Field

from cnas_hpc.common.errors import ConfigError
from cnas_hpc.config.build import Count, Natural, Share, section

#: Every value ``DataConfig.source`` accepts.
Source = Literal["digits", "npz", "cifar10", "cifar100", "stl10", "folder"]
SOURCES: Final[tuple[str, ...]] = typing.get_args(Source)


#: Sources read from torchvision's files (need ``root``; ``download`` applies).
TORCHVISION_SOURCES: Final[tuple[str, ...]] = ("cifar10", "cifar100", "stl10")


#: The splits each torchvision source offers.
SPLITS: Final[dict[str, tuple[str, ...]]] = {
    "cifar10": ("train", "test"),
    "cifar100": ("train", "test"),
    "stl10": ("train", "test", "unlabeled", "train+unlabeled"),
}


@section("data")
class DataConfig:
    """Where the search images come from and how much of them the search uses.

    Attributes:
        source: One of :data:`SOURCES`.
        root: Folder of the torchvision files (``cifar10``, ``cifar100``, ``stl10``) or of the
            images (``folder``); relative paths are relative to the working directory.
        path: The ``.npz`` file (``npz``).
        split: torchvision split: ``train`` / ``test``; STL-10 also ``unlabeled`` and
            ``train+unlabeled``. Ignored by the other sources.
        image_size: Side of the square images the search sees, ``>= 8``.
        fraction: Share of the (capped) source the search uses, in ``(0, 1]``.
        val_fraction: Share of that used as held-out unlabeled validation images, in ``[0, 1)``.
        labeled_fraction: Share of the search images whose labels are kept, only for the
            optional kNN objective, in ``[0, 1]``; ``> 0`` needs a labeled source.
        max_images: Read at most this many images (the first ones after a seeded shuffle).
        seed: Seed of every data permutation (cap, split, epoch order), ``>= 0``.
        download: Let torchvision download missing files (only where there is internet).
        test_path: The evaluation phase's test images where the source has no test split of
            its own: a second ``.npz`` file (``npz``) or image folder (``folder``). Without it
            (and for ``digits``) the evaluation holds out a seeded ``val_fraction`` of the
            images as its test set. The search never reads it.

    Raises:
        ConfigError: on construction, one line naming the first invalid field.
    """

    source: Source = "digits"
    root: str | None = None
    path: str | None = None
    split: str = "train"
    image_size: Annotated[int, Field(ge=8)] = 32
    fraction: Annotated[float, Field(gt=0, le=1)] = 1.0
    val_fraction: Annotated[float, Field(ge=0, lt=1)] = 0.2
    labeled_fraction: Share = 0.0
    max_images: Count | None = None
    seed: Natural = 0
    download: bool = False
    test_path: str | None = None

    def __post_init__(self) -> None:
        if self.source == "npz" and not self.path:
            raise ConfigError("data.source=npz needs data.path (the .npz file)")
        if self.source in TORCHVISION_SOURCES and not self.root:
            raise ConfigError(
                f"data.source={self.source} needs data.root (the folder of the torchvision files)"
            )
        if self.source == "folder" and not self.root:
            raise ConfigError("data.source=folder needs data.root (the image folder)")
        if self.source in SPLITS and self.split not in SPLITS[self.source]:
            raise ConfigError(
                f"data.split for {self.source} must be one of "
                f"{', '.join(SPLITS[self.source])}, got {self.split!r}"
            )
        if self.test_path is not None and self.source not in ("npz", "folder"):
            raise ConfigError(
                f"data.test_path is for the npz and folder sources; {self.source} has its own "
                "test split"
            )
        if (
            self.source == "stl10"
            and self.split in ("unlabeled", "train+unlabeled")
            and self.labeled_fraction > 0
        ):
            raise ConfigError(
                f"data.labeled_fraction={self.labeled_fraction} needs labels, but STL-10 "
                f"split {self.split!r} has unlabeled images: use data.split=train"
            )
