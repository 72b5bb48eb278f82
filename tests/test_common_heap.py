"""The worker's start-up heap is frozen out of the cyclic collector; later garbage is not."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from cnas_hpc.common.heap import freeze_startup_heap


class _Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the cyclic collector reclaims it


@pytest.fixture
def unfrozen() -> Iterator[None]:
    yield
    gc.unfreeze()  # give pytest's own heap back to the collector


def _tracked_ids() -> set[int]:
    return {id(obj) for obj in gc.get_objects()}


@pytest.mark.usefixtures("unfrozen")
def test_what_start_up_built_is_frozen_and_later_cycles_are_still_collected() -> None:
    startup = _Node()
    assert id(startup) in _tracked_ids()
    frozen = freeze_startup_heap()
    # Frozen objects can only leave the permanent generation (another thread of the process, an
    # xdist or W&B one, may free some meanwhile), never join it without another freeze.
    assert 0 < gc.get_freeze_count() <= frozen
    assert id(startup) not in _tracked_ids()  # out of every generation the collector walks

    later = _Node()
    alive = weakref.ref(later)
    del later
    gc.collect()
    assert alive() is None
