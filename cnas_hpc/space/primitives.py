"""The DARTS operation vocabulary.

The order is DARTS's own (``quark0/darts/cnn/genotypes.py``): encodings index into it and
stored studies depend on it, so it must never be reordered.
"""

from __future__ import annotations

from typing import Final

#: Every candidate operation on an edge of a cell, ``none`` (the zero op) included.
PRIMITIVES: Final[tuple[str, ...]] = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)

#: The operations a genotype may keep on an edge (``none`` is never part of a final cell).
EDGE_OPS: Final[tuple[str, ...]] = tuple(op for op in PRIMITIVES if op != "none")

#: The two cell kinds of the DARTS space, in the order encodings list them.
CELL_KINDS: Final[tuple[str, ...]] = ("normal", "reduce")
