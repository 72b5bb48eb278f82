"""Encodings of a genotype (both cells) as Optuna trial parameters, and its compact form.

One architecture, several representations, with tested round-trips between them:

* the :class:`~cnas_hpc.space.genotype.Genotype` (what models are built from);
* the trial parameters of a :class:`CellEncoding` (what the sampler models): ``compact``
  (:class:`CompactEncoding`, no redundant dimension, bijective) or ``csnas``
  (:class:`CsnasEncoding`, the reference algorithm's one-categorical-per-edge, many-to-one);
* the NASLib-style compact tuple (:func:`to_compact`, :func:`from_compact`) whose hash
  (:func:`compact_hash`) deduplicates architectures within a study.

Every genotype an encoding decodes is valid (:func:`validate_genotype`) and canonical
(:func:`canonical_genotype`): lists of ``(op, input)`` tuples, the two edges of a node sorted
by input, concat as a sorted list. Parameter names are hierarchical, ``"{cell}/n{i}/..."``
with ``cell`` in :data:`CELL_KINDS` and ``i`` the node's state index, so they read well in
optuna-dashboard; they and the order of the choices are part of every stored study.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from numbers import Integral
from typing import Any, ClassVar

from optuna.distributions import CategoricalDistribution
from optuna.trial import BaseTrial

from cnas_hpc.config.space import SpaceConfig
from cnas_hpc.space.genotype import (
    HASH_CHARS,
    Genotype,
    canonical_genotype,
    num_nodes,
    validate_genotype,
)
from cnas_hpc.space.primitives import CELL_KINDS, EDGE_OPS, PRIMITIVES

log = logging.getLogger(__name__)

#: An edge of a genotype: ``(op_name, input_state_index)``.
Edge = tuple[str, int]

#: The op the reference code ends up with on an edge it keeps although ``none`` was chosen.
FALLBACK_OP = "max_pool_3x3"


class CellEncoding(ABC):
    """A discrete search space over DARTS genotypes, expressed as Optuna categoricals.

    Both cells (``normal``, ``reduce``) have ``n_nodes`` intermediate nodes and concatenate the
    same ``concat`` states. An instance is immutable after construction and holds no device or
    trial state, so one instance may serve any number of trials and threads.

    Contract of the subclasses:

    * :meth:`distributions` lists every parameter, in a stable order, each a
      :class:`~optuna.distributions.CategoricalDistribution` over strings;
    * :meth:`from_params` decodes any complete assignment of those parameters into a valid,
      canonical genotype, and :meth:`to_params` maps a genotype to its canonical assignment,
      so that ``from_params(to_params(g)) == canonical_genotype(g)``.

    Attributes:
        name: The encoding's registry name (``"compact"`` or ``"csnas"``).
        n_nodes: Intermediate nodes per cell (>= 1; DARTS 4, the reference code 5).
        ops: The ops an edge may keep: a subset of ``EDGE_OPS`` in ``PRIMITIVES`` order.
        concat: State indices concatenated into each cell's output, ascending.
    """

    name: ClassVar[str]

    def __init__(
        self,
        *,
        n_nodes: int = 4,
        ops: Sequence[str] | None = None,
        concat_last: int | None = None,
    ) -> None:
        """Validate the space's arguments.

        Args:
            n_nodes: Intermediate nodes per cell, >= 1.
            ops: The ops an edge may keep (any order, no duplicates); ``None`` = all of
                ``EDGE_OPS``.
            concat_last: ``None`` = concatenate all intermediate nodes; ``k`` = only the last
                ``k`` (1 <= k <= n_nodes).

        Raises:
            ValueError: An argument is out of its domain (one line naming it).
        """
        if isinstance(n_nodes, bool) or not isinstance(n_nodes, int) or n_nodes < 1:
            raise ValueError(f"n_nodes must be an integer >= 1, got {n_nodes!r}")
        self.n_nodes: int = n_nodes
        self.ops: tuple[str, ...] = self._check_ops(ops)
        if concat_last is None:
            concat_last = n_nodes
        elif (
            isinstance(concat_last, bool)
            or not isinstance(concat_last, int)
            or not 1 <= concat_last <= n_nodes
        ):
            raise ValueError(f"concat_last must be in 1..{n_nodes} (n_nodes), got {concat_last!r}")
        self.concat: tuple[int, ...] = tuple(range(n_nodes + 2 - concat_last, n_nodes + 2))
        self._distributions: dict[str, CategoricalDistribution] = {
            param: dist
            for cell in CELL_KINDS
            for node in self.nodes
            for param, dist in self._node_distributions(cell, node).items()
        }

    # ---- the space ------------------------------------------------------------------------

    @property
    def nodes(self) -> range:
        """State indices of the intermediate nodes, ``2 .. n_nodes + 1``."""
        return range(2, self.n_nodes + 2)

    def distributions(self) -> dict[str, CategoricalDistribution]:
        """Every parameter of the space, ``name -> distribution``, in a stable order.

        The order is cell (``CELL_KINDS``), then node, then the encoding's own order within a
        node. The returned dict is a fresh copy; the caller may mutate it.
        """
        return dict(self._distributions)

    def fingerprint(self) -> dict[str, Any]:
        """A JSON-able description of the space, to refuse a study built for another one."""
        return {
            "name": self.name,
            "n_nodes": self.n_nodes,
            "ops": list(self.ops),
            "concat": list(self.concat),
        }

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(n_nodes={self.n_nodes}, ops={self.ops}, concat={self.concat})"
        )

    # ---- trial <-> genotype ---------------------------------------------------------------

    def suggest(self, trial: BaseTrial) -> Genotype:
        """Sample every parameter with ``trial.suggest_categorical`` and decode the result.

        Args:
            trial: Any Optuna trial (``Trial``, ``FixedTrial``, ``FrozenTrial``); its params
                afterwards are exactly the :meth:`distributions`.

        Returns:
            The decoded genotype (valid, canonical).
        """
        params = {
            param: trial.suggest_categorical(param, dist.choices)
            for param, dist in self._distributions.items()
        }
        return self.from_params(params)

    def from_params(self, params: Mapping[str, Any]) -> Genotype:
        """Decode a complete assignment of the parameters into a genotype.

        Args:
            params: ``name -> value`` for exactly the parameters of :meth:`distributions`
                (``trial.params`` of a trial of this space).

        Returns:
            A valid, canonical genotype with ``n_nodes`` nodes per cell and ``concat`` outputs.

        Raises:
            ValueError: A parameter is missing, unknown to this space, or has a value outside
                its choices.
        """
        missing = [param for param in self._distributions if param not in params]
        if missing:
            raise ValueError(
                f"{self.name} params lack {len(missing)} of {len(self._distributions)} "
                f"parameters, first {missing[0]!r}"
            )
        unknown = sorted(str(param) for param in params if param not in self._distributions)
        if unknown:
            raise ValueError(f"{self.name} params have unknown parameter(s) {', '.join(unknown)}")
        for param, dist in self._distributions.items():
            if params[param] not in dist.choices:
                raise ValueError(
                    f"{self.name} param {param!r} = {params[param]!r} is not one of its choices "
                    f"{list(dist.choices)}"
                )
        cells = {
            cell: [edge for node in self.nodes for edge in self._decode_node(cell, node, params)]
            for cell in CELL_KINDS
        }
        return Genotype(
            normal=cells["normal"],
            normal_concat=list(self.concat),
            reduce=cells["reduce"],
            reduce_concat=list(self.concat),
        )

    def to_params(self, genotype: Genotype) -> dict[str, str | int]:
        """The canonical parameter assignment of a genotype (e.g. to enqueue it in a study).

        Raises:
            ValueError: The genotype is invalid, uses an op outside ``ops``, has another node
                count or concat than this space, or a node reads the same input twice (which
                neither encoding can express).
        """
        validate_genotype(genotype, ops=self.ops)
        n = num_nodes(genotype)
        if n != self.n_nodes:
            raise ValueError(
                f"genotype has {n} nodes per cell but this {self.name} space has {self.n_nodes}"
            )
        canon = canonical_genotype(genotype)
        params: dict[str, str | int] = {}
        for cell in CELL_KINDS:
            concat = getattr(canon, f"{cell}_concat")
            if tuple(concat) != self.concat:
                raise ValueError(
                    f"genotype's {cell}_concat {concat} differs from this space's "
                    f"{list(self.concat)}"
                )
            edges = getattr(canon, cell)
            for node, k in zip(self.nodes, range(0, len(edges), 2), strict=True):
                first, second = edges[k], edges[k + 1]
                if first[1] == second[1]:
                    raise ValueError(
                        f"{cell} node {node} reads input {first[1]} twice; "
                        "no encoding can express that"
                    )
                params.update(self._encode_node(cell, node, first, second))
        return params

    # ---- hooks ----------------------------------------------------------------------------

    @classmethod
    def _check_ops(cls, ops: Sequence[str] | None) -> tuple[str, ...]:
        """Validate ``ops`` and return them in ``PRIMITIVES`` order, ``none`` excluded.

        Raises:
            ValueError: ``ops`` is a string, empty, or has an unknown or duplicated op.
        """
        if ops is None:
            return EDGE_OPS
        if isinstance(ops, str) or not isinstance(ops, Iterable):
            raise ValueError(f"ops must be a list of op names, got {ops!r}")
        given = tuple(ops)
        for op in given:
            if op not in PRIMITIVES:
                raise ValueError(f"unknown op {op!r} in ops (known: {', '.join(EDGE_OPS)})")
        duplicated = sorted({op for op in given if given.count(op) > 1})
        if duplicated:
            raise ValueError(f"ops lists {', '.join(duplicated)} more than once")
        chosen = tuple(op for op in EDGE_OPS if op in given)
        if not chosen:
            # Only reachable for csnas: compact refuses 'none' before, and csnas drops it here
            # because 'none' is always one of its choices.
            raise ValueError(f"ops must name at least one op other than 'none', got {list(given)}")
        return chosen

    @abstractmethod
    def _node_distributions(self, cell: str, node: int) -> dict[str, CategoricalDistribution]:
        """The parameters of one node, in their stable order."""

    @abstractmethod
    def _decode_node(self, cell: str, node: int, params: Mapping[str, Any]) -> list[Edge]:
        """The node's two edges, sorted by input, from already checked parameters."""

    @abstractmethod
    def _encode_node(self, cell: str, node: int, first: Edge, second: Edge) -> dict[str, str]:
        """The node's parameters for its two edges (distinct inputs, ``first`` the lower)."""


class CompactEncoding(CellEncoding):
    """Three categoricals per node: which two inputs, and the op on each.

    Parameters of node ``i`` of ``cell``:

    * ``"{cell}/n{i}/inputs"``: the string ``"a,b"`` for every pair ``a < b < i`` (node 2 has
      only ``"0,1"``; it is emitted anyway so that every node looks alike);
    * ``"{cell}/n{i}/op0"``: the op on the edge from ``a``; ``"{cell}/n{i}/op1"``: from ``b``;
      both over ``ops`` (``none`` is never a choice).

    No dimension is redundant: the map between canonical genotypes whose nodes read two
    distinct inputs and parameter assignments is a bijection.
    """

    name = "compact"

    @classmethod
    def _check_ops(cls, ops: Sequence[str] | None) -> tuple[str, ...]:
        if ops is not None and not isinstance(ops, str) and "none" in ops:
            raise ValueError("the compact encoding never chooses 'none'; remove it from ops")
        return super()._check_ops(ops)

    def _node_distributions(self, cell: str, node: int) -> dict[str, CategoricalDistribution]:
        pairs = tuple(f"{a},{b}" for a, b in itertools.combinations(range(node), 2))
        return {
            f"{cell}/n{node}/inputs": CategoricalDistribution(pairs),
            f"{cell}/n{node}/op0": CategoricalDistribution(self.ops),
            f"{cell}/n{node}/op1": CategoricalDistribution(self.ops),
        }

    def _decode_node(self, cell: str, node: int, params: Mapping[str, Any]) -> list[Edge]:
        first, second = (int(index) for index in params[f"{cell}/n{node}/inputs"].split(","))
        return [
            (params[f"{cell}/n{node}/op0"], first),
            (params[f"{cell}/n{node}/op1"], second),
        ]

    def _encode_node(self, cell: str, node: int, first: Edge, second: Edge) -> dict[str, str]:
        return {
            f"{cell}/n{node}/inputs": f"{first[1]},{second[1]}",
            f"{cell}/n{node}/op0": first[0],
            f"{cell}/n{node}/op1": second[0],
        }


class CsnasEncoding(CellEncoding):
    """The reference algorithm's encoding: one categorical per edge, ``none`` included.

    Node ``i`` of ``cell`` has parameters ``"{cell}/n{i}/e{j}"`` for every input ``j`` in
    ``0 .. i - 1``, over ``("none",) + ops`` (8 choices by default; 40 dimensions per trial with
    5 nodes). It is redundant and many-to-one.

    Decoding a node (what DARTS's genotype parser does on the one-hot weights the reference
    code feeds it):

    1. keep the FIRST TWO edges, in input order, whose op is not ``none``; ops chosen on
       further edges are ignored;
    2. fallback, when fewer than two edges are not ``none``: fill up with the lowest-index
       inputs not already kept, with op ``max_pool_3x3`` if allowed, else the first op of
       ``ops``. (In the parser the kept ``none`` edges tie at weight 0 and the first non-``none``
       primitive, ``max_pool_3x3``, wins the tie.) E.g. all edges ``none`` gives
       ``[("max_pool_3x3", 0), ("max_pool_3x3", 1)]``.

    :meth:`to_params` gives the canonical assignment: the two kept edges carry their ops, every
    other edge ``none``.
    """

    name = "csnas"

    @property
    def fallback_op(self) -> str:
        """The op given to an edge kept by the fallback rule."""
        return FALLBACK_OP if FALLBACK_OP in self.ops else self.ops[0]

    def _node_distributions(self, cell: str, node: int) -> dict[str, CategoricalDistribution]:
        choices = ("none", *self.ops)
        return {f"{cell}/n{node}/e{j}": CategoricalDistribution(choices) for j in range(node)}

    def _decode_node(self, cell: str, node: int, params: Mapping[str, Any]) -> list[Edge]:
        chosen = [(str(params[f"{cell}/n{node}/e{j}"]), j) for j in range(node)]
        kept = [edge for edge in chosen if edge[0] != "none"][:2]
        if len(kept) < 2:
            log.debug("%s node %d: %d edge(s) not none; fallback fills up", cell, node, len(kept))
            taken = {index for _, index in kept}
            spare = (j for j in range(node) if j not in taken)
            kept += [(self.fallback_op, j) for j in itertools.islice(spare, 2 - len(kept))]
        return sorted(kept, key=lambda edge: edge[1])

    def _encode_node(self, cell: str, node: int, first: Edge, second: Edge) -> dict[str, str]:
        params = {f"{cell}/n{node}/e{j}": "none" for j in range(node)}
        params[f"{cell}/n{node}/e{first[1]}"] = first[0]
        params[f"{cell}/n{node}/e{second[1]}"] = second[0]
        return params


#: The encodings by name (the ``space.encoding`` config value).
ENCODINGS: dict[str, type[CellEncoding]] = {
    CompactEncoding.name: CompactEncoding,
    CsnasEncoding.name: CsnasEncoding,
}


def make_encoding(
    name: str,
    *,
    n_nodes: int = 4,
    ops: Sequence[str] | None = None,
    concat_last: int | None = None,
) -> CellEncoding:
    """Build the encoding called ``name`` (see :data:`ENCODINGS`).

    Args:
        name: ``"compact"`` (default space) or ``"csnas"`` (the reference algorithm).
        n_nodes: Intermediate nodes per cell, >= 1 (DARTS 4, the reference code 5).
        ops: The ops an edge may keep; ``None`` = all of ``EDGE_OPS``. ``none`` is refused by
            ``compact`` and ignored by ``csnas`` (for which it is always a choice).
        concat_last: ``None`` = concatenate all intermediate nodes; ``k`` = the last ``k``
            (the reference code: 5 nodes, last 4).

    Raises:
        ValueError: Unknown ``name`` or an argument out of its domain (one line naming it).
    """
    if name not in ENCODINGS:
        raise ValueError(f"unknown encoding {name!r}; choose one of {', '.join(ENCODINGS)}")
    return ENCODINGS[name](n_nodes=n_nodes, ops=ops, concat_last=concat_last)


def encoding_from_config(cfg: SpaceConfig) -> CellEncoding:
    """The encoding the ``space`` config group describes (see :func:`make_encoding`).

    Raises:
        ValueError: an unknown encoding or op, or a size out of its domain (one line).
    """
    return make_encoding(
        cfg.encoding, n_nodes=cfg.n_nodes, ops=cfg.ops, concat_last=cfg.concat_last
    )


# --------------------------------------------------------------------------------------------
# The compact tuple (NASLib style).
# --------------------------------------------------------------------------------------------


def to_compact(genotype: Genotype) -> tuple[int, ...]:
    """The genotype's cells as a flat tuple of ints, canonical.

    Per cell (``normal`` then ``reduce``), per node: ``(in0, op0, in1, op1)`` with op indices
    into ``PRIMITIVES``, edges in canonical order. The concat fields are NOT part of it: within
    one space they are fixed.

    Raises:
        ValueError: The genotype fails :func:`validate_genotype`.
    """
    validate_genotype(genotype)
    canon = canonical_genotype(genotype)
    out: list[int] = []
    for cell in CELL_KINDS:
        for op, index in getattr(canon, cell):
            out += [index, PRIMITIVES.index(op)]
    return tuple(out)


def from_compact(compact: Sequence[int], *, concat: Sequence[int] | None = None) -> Genotype:
    """Inverse of :func:`to_compact`.

    Args:
        compact: The flat tuple, ``8 * n`` ints for ``n`` nodes per cell.
        concat: State indices both cells concatenate; ``None`` = all intermediate nodes.

    Returns:
        The canonical, valid genotype.

    Raises:
        ValueError: Wrong length, a non-integer entry, an op index outside ``PRIMITIVES``, or a
            genotype that fails :func:`validate_genotype`.
    """
    values = tuple(compact)
    if not values or len(values) % 8:
        raise ValueError(
            f"compact form has {len(values)} entries; expected a positive multiple of 8 "
            "(2 cells x nodes x (in0, op0, in1, op1))"
        )
    for value in values:
        if isinstance(value, bool) or not isinstance(value, Integral):
            raise ValueError(f"compact form entries must be integers, got {value!r}")
    edges: list[Edge] = []
    for k in range(0, len(values), 2):
        index, op_index = int(values[k]), int(values[k + 1])
        if not 0 <= op_index < len(PRIMITIVES):
            raise ValueError(
                f"compact form: op index {op_index} out of range 0..{len(PRIMITIVES) - 1}"
            )
        edges.append((PRIMITIVES[op_index], index))
    half = len(edges) // 2
    n = half // 2
    outputs = list(range(2, n + 2)) if concat is None else list(concat)
    genotype = Genotype(
        normal=edges[:half], normal_concat=outputs, reduce=edges[half:], reduce_concat=outputs
    )
    validate_genotype(genotype)
    return canonical_genotype(genotype)


def compact_hash(genotype: Genotype) -> str:
    """The hash of :func:`to_compact` (process-stable, 16 hex chars), to deduplicate trials.

    Equal for genotypes that differ only by edge order within a node or by concat.

    Raises:
        ValueError: The genotype fails :func:`validate_genotype`.
    """
    text = json.dumps(list(to_compact(genotype)), separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:HASH_CHARS]
