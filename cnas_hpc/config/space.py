"""The ``space`` config group: the search space's encoding, node count and operations.

The values are checked against the space itself (known ops, encodings) by
:func:`cnas_hpc.space.encoding.encoding_from_config`, which the submitting side calls.
"""

from __future__ import annotations

from cnas_hpc.config.build import section


@section("space")
class SpaceConfig:
    """The search space: which encoding, how many intermediate nodes, which ops."""

    encoding: str = "compact"
    n_nodes: int = 4
    ops: tuple[str, ...] | None = None
    concat_last: int | None = None
