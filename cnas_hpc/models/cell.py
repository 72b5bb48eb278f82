"""A DARTS cell built from one half of a genotype, with dead nodes pruned.

Semantics are DARTS's (``quark0/darts/cnn/model.py``): the two inputs are brought to ``C``
channels (``preprocess0`` also halves the resolution when the previous cell was a reduction
cell), every intermediate node sums the outputs of its two edges, and the cell output
concatenates the states listed in ``concat``. In a reduction cell, the edges leaving the two
inputs have stride 2.

One change: nodes whose value can never reach the output are pruned when the cell is built. A
node is *live* when it is in ``concat`` or is read, directly or through other nodes, by a node in
``concat``; dead nodes get no ops and are not computed, and an input that no live node reads gets
no preprocessing layer. Every parameter of a cell therefore lies on a path to its output and
receives a gradient, and no compute is spent on values that are thrown away.
"""

# DARTS's channel names (C, C_in, C_prev_prev, ...) are part of the published API we keep.
# ruff: noqa: N803

from __future__ import annotations

import operator
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from cnas_hpc.models.ops import (
    OPS,
    FactorizedReduce,
    Identity,
    ReLUConvBN,
    create_op,
    drop_path,
)


def live_nodes(genotype_cell: Sequence[tuple[str, int]], concat: Sequence[int]) -> tuple[int, ...]:
    """State indices of the intermediate nodes whose value reaches the cell output, ascending.

    Pure bookkeeping, no validation: op names are not looked at, and out-of-range ``concat``
    entries are ignored (:class:`Cell` rejects malformed cells before calling it).

    Args:
        genotype_cell: Two ``(op_name, input_state_index)`` pairs per node, node by node.
        concat: State indices concatenated into the cell output.

    Returns:
        The live node state indices (each ``>= 2``), sorted.
    """
    n_nodes = len(genotype_cell) // 2
    live = {i for i in concat if 2 <= i < n_nodes + 2}
    # A node only reads lower states, so one pass from the last node down closes the set.
    for state in range(n_nodes + 1, 1, -1):
        if state in live:
            k = state - 2
            live.update(j for _, j in genotype_cell[2 * k : 2 * k + 2] if j >= 2)
    return tuple(sorted(live))


def _as_index(value: object, what: str) -> int:
    """``value`` as a Python int (NumPy integers accepted); ``ValueError`` for anything else."""
    if isinstance(value, bool):
        raise ValueError(f"{what} must be an integer state index, got {value!r}")
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"{what} must be an integer state index, got {value!r}") from None


def _normalise(
    genotype_cell: Sequence[tuple[str, int]], concat: Sequence[int]
) -> tuple[list[tuple[str, int]], tuple[int, ...]]:
    """Check a cell description and return it with plain ``int`` indices.

    Raises:
        ValueError: One line naming the first structural error found.
    """
    if len(genotype_cell) < 2 or len(genotype_cell) % 2:
        raise ValueError(
            f"a cell needs two (op, input) pairs per node, got {len(genotype_cell)} pairs"
        )
    n_nodes = len(genotype_cell) // 2
    edges: list[tuple[str, int]] = []
    for edge, pair in enumerate(genotype_cell):
        if isinstance(pair, str) or len(pair) != 2:
            raise ValueError(f"edge {edge} must be an (op_name, input_index) pair, got {pair!r}")
        name, raw = pair
        state = edge // 2 + 2
        if name not in OPS:
            known = ", ".join(sorted(OPS))
            raise ValueError(f"edge {edge}: unknown op {name!r}; known ops: {known}")
        j = _as_index(raw, f"edge {edge} input")
        if not 0 <= j < state:
            raise ValueError(f"edge {edge} of node {state} reads state {j}; must be < {state}")
        edges.append((name, j))
    nodes = tuple(_as_index(i, "concat entry") for i in concat)
    if not nodes:
        raise ValueError("concat must list at least one node")
    if len(set(nodes)) != len(nodes):
        raise ValueError(f"concat lists a state twice: {list(nodes)}")
    for i in nodes:
        if not 2 <= i < n_nodes + 2:
            raise ValueError(f"concat state {i} is not an intermediate node (2..{n_nodes + 1})")
    return edges, nodes


class Cell(nn.Module):
    """One DARTS cell: ``(s0, s1) -> concat(live node states)``.

    Args:
        genotype_cell: ``genotype.normal`` or ``genotype.reduce``: two ``(op_name,
            input_state_index)`` pairs per intermediate node; node ``k`` (state ``k + 2``) may read
            states ``0 .. k + 1``.
        concat: Intermediate node states concatenated into the output, distinct, each in
            ``2 .. n + 1``.
        C_prev_prev: Channels of ``s0`` (output of the cell two back, or of the stem).
        C_prev: Channels of ``s1`` (output of the previous cell, or of the stem).
        C: Channels of every node; the output has ``multiplier * C`` channels.
        reduction: Whether this cell halves the resolution.
        reduction_prev: Whether the previous cell halved it (then ``s0`` has twice ``s1``'s
            resolution and is reduced by a :class:`FactorizedReduce`).

    Attributes:
        multiplier: ``len(concat)``, the output channel multiplier.
        reduction: As passed.
        live_nodes: State indices of the nodes that are built and computed.

    Raises:
        ValueError: On a malformed cell (odd number of pairs, an input index not lower than its
            node's, an empty or repeated ``concat``, a ``concat`` entry that is not a node), an
            unknown op name, or channels ``< 1``.
    """

    def __init__(
        self,
        genotype_cell: Sequence[tuple[str, int]],
        concat: Sequence[int],
        C_prev_prev: int,
        C_prev: int,
        C: int,
        reduction: bool,
        reduction_prev: bool,
    ) -> None:
        super().__init__()
        edges, nodes = _normalise(genotype_cell, concat)
        if min(C_prev_prev, C_prev, C) < 1:
            raise ValueError(f"cell channels must be >= 1, got {C_prev_prev}, {C_prev}, {C}")
        self.reduction = reduction
        self.multiplier = len(nodes)
        self._concat = nodes
        self.live_nodes = live_nodes(edges, nodes)

        # Flat lists in evaluation order: two ops and their two input states per live node.
        self._inputs: list[tuple[int, int]] = []
        self.ops = nn.ModuleList()
        for state in self.live_nodes:
            k = state - 2
            (op_a, a), (op_b, b) = edges[2 * k], edges[2 * k + 1]
            self._inputs.append((a, b))
            for name, j in ((op_a, a), (op_b, b)):
                stride = 2 if reduction and j < 2 else 1
                self.ops.append(create_op(name, C, stride, affine=True))

        used = {j for pair in self._inputs for j in pair}
        self.preprocess0: nn.Module | None = None
        self.preprocess1: nn.Module | None = None
        if 0 in used:
            self.preprocess0 = (
                FactorizedReduce(C_prev_prev, C, affine=True)
                if reduction_prev
                else ReLUConvBN(C_prev_prev, C, 1, 1, 0, affine=True)
            )
        if 1 in used:
            self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0, affine=True)

    def forward(self, s0: Tensor, s1: Tensor, drop_prob: float = 0.0) -> Tensor:
        """Compute the cell.

        Args:
            s0: ``[B, C_prev_prev, H0, W0]``; ``H0 = 2 * H`` when ``reduction_prev`` else ``H``.
            s1: ``[B, C_prev, H, W]``.
            drop_prob: Drop-path probability in ``[0, 1)``, applied per sample to the output of
                every non-identity edge op, in training mode only.

        Returns:
            ``[B, multiplier * C, H', W']`` with ``H' = ceil(H / 2)`` in a reduction cell, else
            ``H``; same dtype and device as the inputs.
        """
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"drop_prob must be in [0, 1), got {drop_prob}")
        states: dict[int, Tensor] = {}
        if self.preprocess0 is not None:
            states[0] = self.preprocess0(s0)
        if self.preprocess1 is not None:
            states[1] = self.preprocess1(s1)
        apply_drop = self.training and drop_prob > 0.0
        for n, state in enumerate(self.live_nodes):
            a, b = self._inputs[n]
            states[state] = self._edge(2 * n, states[a], apply_drop, drop_prob) + self._edge(
                2 * n + 1, states[b], apply_drop, drop_prob
            )
        return torch.cat([states[i] for i in self._concat], dim=1)

    def _edge(self, index: int, x: Tensor, apply_drop: bool, drop_prob: float) -> Tensor:
        """Run edge op ``index`` on ``x``, with drop-path unless the op is the identity."""
        op = self.ops[index]
        h: Tensor = op(x)
        if apply_drop and not isinstance(op, Identity):
            h = drop_path(h, drop_prob)
        return h
