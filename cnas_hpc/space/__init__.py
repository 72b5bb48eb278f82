"""The search space: DARTS primitives, genotypes, and their encodings as trial parameters.

Data flows ``trial params -> CellEncoding.from_params -> Genotype -> model``; every genotype
that leaves this package is valid and canonical.
"""

from __future__ import annotations

from cnas_hpc.space.encoding import (
    ENCODINGS,
    CellEncoding,
    CompactEncoding,
    CsnasEncoding,
    compact_hash,
    from_compact,
    make_encoding,
    to_compact,
)
from cnas_hpc.space.genotype import (
    DARTS_V1,
    DARTS_V2,
    PC_DARTS,
    PRESETS,
    Genotype,
    canonical_genotype,
    genotype_from_dict,
    genotype_from_json,
    genotype_hash,
    genotype_to_dict,
    genotype_to_json,
    load_genotype,
    num_nodes,
    validate_genotype,
)
from cnas_hpc.space.primitives import CELL_KINDS, EDGE_OPS, PRIMITIVES

__all__ = [
    "CELL_KINDS",
    "DARTS_V1",
    "DARTS_V2",
    "EDGE_OPS",
    "ENCODINGS",
    "PC_DARTS",
    "PRESETS",
    "PRIMITIVES",
    "CellEncoding",
    "CompactEncoding",
    "CsnasEncoding",
    "Genotype",
    "canonical_genotype",
    "compact_hash",
    "from_compact",
    "genotype_from_dict",
    "genotype_from_json",
    "genotype_hash",
    "genotype_to_dict",
    "genotype_to_json",
    "load_genotype",
    "make_encoding",
    "num_nodes",
    "to_compact",
    "validate_genotype",
]
