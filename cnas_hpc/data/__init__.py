"""Search data: whole image sets as uint8 tensors in memory, seeded splits and batch orders."""

from __future__ import annotations

from cnas_hpc.config.data import SOURCES, DataConfig
from cnas_hpc.data.datasets import (
    ImageArrays,
    check_available,
    download_dataset,
    load_images,
    resize_images,
    seeded_permutation,
)
from cnas_hpc.data.splits import SearchData, epoch_batches, make_search_data

__all__ = [
    "SOURCES",
    "DataConfig",
    "ImageArrays",
    "SearchData",
    "check_available",
    "download_dataset",
    "epoch_batches",
    "load_images",
    "make_search_data",
    "resize_images",
    "seeded_permutation",
]
