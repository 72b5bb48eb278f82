"""The cells of a fidelity study: seeded random cells (stable when K grows), presets, files."""

from __future__ import annotations

import pytest

from cnas_hpc.config.fidelity import FidelityConfig
from cnas_hpc.fidelity.cells import fidelity_cells
from cnas_hpc.space.encoding import make_encoding

ENCODING = make_encoding("compact")


def test_random_cells_are_seeded_and_a_larger_k_keeps_the_first_ones() -> None:
    small = fidelity_cells(FidelityConfig(n_random=4, seed=3), ENCODING)
    large = fidelity_cells(FidelityConfig(n_random=9, seed=3), ENCODING)
    assert [c.genotype_hash for c in large[:4]] == [c.genotype_hash for c in small]
    assert len({c.genotype_hash for c in large}) == 9
    other = fidelity_cells(FidelityConfig(n_random=4, seed=4), ENCODING)
    assert [c.genotype_hash for c in other] != [c.genotype_hash for c in small]


def test_presets_follow_and_duplicates_are_kept_once() -> None:
    cells = fidelity_cells(
        FidelityConfig(n_random=2, presets=("DARTS_V2", "DARTS", "PC_DARTS")), ENCODING
    )
    assert [c.key for c in cells][2:] == ["DARTS_V2", "PC_DARTS"]  # DARTS is DARTS_V2
    with pytest.raises(ValueError, match="unknown preset 'NOPE'"):
        fidelity_cells(FidelityConfig(n_random=3, presets=("NOPE",)), ENCODING)
