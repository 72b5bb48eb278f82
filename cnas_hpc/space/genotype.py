"""DARTS-compatible genotypes: the architecture as data.

A :class:`Genotype` has DARTS's exact field names, so genotypes published by DARTS and its
successors (``Genotype(normal=[...], normal_concat=[2, 3, 4, 5], ...)``) load unchanged.

Conventions (DARTS's): a cell has two input states (index 0 = output of the cell two back,
index 1 = output of the previous cell) and ``n`` intermediate nodes with state indices
``2 .. n + 1``. ``normal`` / ``reduce`` list exactly two ``(op_name, input_index)`` pairs per
intermediate node, node by node; node ``i`` (state index ``i``) may read any state ``< i``.
The cell's output concatenates the states listed in ``*_concat``.

Besides the data model, this module owns the genotype's identity: JSON (de)serialisation, the
canonical form (the two edges of a node are unordered), a process-stable hash, validation, and
:func:`load_genotype` for command lines and configs. Functions never mutate their argument.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from numbers import Integral
from pathlib import Path
from typing import Any, NamedTuple

from cnas_hpc.space.primitives import CELL_KINDS, EDGE_OPS, PRIMITIVES


class Genotype(NamedTuple):
    """A normal cell and a reduction cell, DARTS style.

    Attributes:
        normal: ``2 * n`` pairs ``(op_name, input_state_index)``, two per intermediate node.
        normal_concat: State indices concatenated into the normal cell's output.
        reduce: Same as ``normal`` for the reduction cell.
        reduce_concat: Same as ``normal_concat`` for the reduction cell.
    """

    normal: Sequence[tuple[str, int]]
    normal_concat: Sequence[int]
    reduce: Sequence[tuple[str, int]]
    reduce_concat: Sequence[int]


# Published genotypes, verbatim from their papers' code (quark0/darts, yuhuixu1993/PC-DARTS).
# fmt: off
DARTS_V1 = Genotype(
    normal=[
        ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 0), ("sep_conv_3x3", 1),
        ("skip_connect", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 2),
    ],
    normal_concat=[2, 3, 4, 5],
    reduce=[
        ("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 0),
        ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("avg_pool_3x3", 0),
    ],
    reduce_concat=[2, 3, 4, 5],
)
DARTS_V2 = Genotype(
    normal=[
        ("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
        ("sep_conv_3x3", 1), ("skip_connect", 0), ("skip_connect", 0), ("dil_conv_3x3", 2),
    ],
    normal_concat=[2, 3, 4, 5],
    reduce=[
        ("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 1),
        ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("max_pool_3x3", 1),
    ],
    reduce_concat=[2, 3, 4, 5],
)
PC_DARTS = Genotype(
    normal=[
        ("sep_conv_3x3", 1), ("skip_connect", 0), ("sep_conv_3x3", 0), ("dil_conv_3x3", 1),
        ("sep_conv_5x5", 0), ("sep_conv_3x3", 1), ("avg_pool_3x3", 0), ("dil_conv_3x3", 1),
    ],
    normal_concat=range(2, 6),
    reduce=[
        ("sep_conv_5x5", 1), ("max_pool_3x3", 0), ("sep_conv_5x5", 1), ("sep_conv_5x5", 2),
        ("sep_conv_3x3", 0), ("sep_conv_3x3", 3), ("sep_conv_3x3", 1), ("sep_conv_3x3", 2),
    ],
    reduce_concat=range(2, 6),
)
# More published DARTS-space cells (SNAS, P-DARTS, CDARTS, CARS), as their authors' code
# defines them; all use DARTS's 7 edge ops, 4 nodes and concatenate nodes 2-5.
SNAS = Genotype(
    normal=[
        ("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("skip_connect", 0), ("dil_conv_3x3", 1),
        ("skip_connect", 1), ("skip_connect", 0), ("skip_connect", 0), ("sep_conv_3x3", 1),
    ],
    normal_concat=range(2, 6),
    reduce=[
        ("max_pool_3x3", 0), ("max_pool_3x3", 1), ("max_pool_3x3", 1), ("skip_connect", 2),
        ("skip_connect", 2), ("max_pool_3x3", 1), ("max_pool_3x3", 0), ("dil_conv_5x5", 2),
    ],
    reduce_concat=range(2, 6),
)
P_DARTS = Genotype(
    normal=[
        ("skip_connect", 0), ("dil_conv_3x3", 1), ("skip_connect", 0), ("sep_conv_3x3", 1),
        ("sep_conv_3x3", 1), ("sep_conv_3x3", 3), ("sep_conv_3x3", 0), ("dil_conv_5x5", 4),
    ],
    normal_concat=range(2, 6),
    reduce=[
        ("avg_pool_3x3", 0), ("sep_conv_5x5", 1), ("sep_conv_3x3", 0), ("dil_conv_5x5", 2),
        ("max_pool_3x3", 0), ("dil_conv_3x3", 1), ("dil_conv_3x3", 1), ("dil_conv_5x5", 3),
    ],
    reduce_concat=range(2, 6),
)
CDARTS = Genotype(
    normal=[
        ("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 1), ("sep_conv_3x3", 2),
        ("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("skip_connect", 0), ("skip_connect", 2),
    ],
    normal_concat=range(2, 6),
    reduce=[
        ("sep_conv_5x5", 1), ("max_pool_3x3", 0), ("dil_conv_5x5", 2), ("skip_connect", 0),
        ("sep_conv_3x3", 0), ("sep_conv_5x5", 1), ("sep_conv_3x3", 0), ("dil_conv_5x5", 2),
    ],
    reduce_concat=range(2, 6),
)
CARS_I = Genotype(
    normal=[
        ("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("skip_connect", 0), ("sep_conv_5x5", 1),
        ("skip_connect", 2), ("sep_conv_3x3", 3), ("sep_conv_3x3", 0), ("dil_conv_5x5", 4),
    ],
    normal_concat=range(2, 6),
    reduce=[
        ("dil_conv_3x3", 0), ("skip_connect", 1), ("max_pool_3x3", 0), ("max_pool_3x3", 2),
        ("skip_connect", 1), ("sep_conv_5x5", 3), ("dil_conv_3x3", 1), ("max_pool_3x3", 4),
    ],
    reduce_concat=range(2, 6),
)
CARS_H = Genotype(
    normal=[
        ("sep_conv_5x5", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("dil_conv_5x5", 2),
        ("avg_pool_3x3", 0), ("skip_connect", 1), ("sep_conv_5x5", 2), ("max_pool_3x3", 0),
    ],
    normal_concat=range(2, 6),
    reduce=[
        ("sep_conv_5x5", 0), ("max_pool_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 1),
        ("dil_conv_3x3", 2), ("max_pool_3x3", 0), ("sep_conv_5x5", 0), ("avg_pool_3x3", 3),
    ],
    reduce_concat=range(2, 6),
)
# fmt: on

#: Named presets, addressable from configs (``eval.genotype=DARTS_V2``) without ``eval()``.
PRESETS: dict[str, Genotype] = {
    "DARTS_V1": DARTS_V1,
    "DARTS": DARTS_V2,
    "DARTS_V2": DARTS_V2,
    "PC_DARTS": PC_DARTS,
    "SNAS": SNAS,
    "P_DARTS": P_DARTS,
    "CDARTS": CDARTS,
    "CARS_I": CARS_I,
    "CARS_H": CARS_H,
}


def num_nodes(genotype: Genotype) -> int:
    """Number of intermediate nodes per cell (two edges per node)."""
    return len(genotype.normal) // 2


# --------------------------------------------------------------------------------------------
# Serialisation, canonical form, identity, validation.
# --------------------------------------------------------------------------------------------

#: Hex characters kept from the sha256 digest in :func:`genotype_hash` (64 bits: collisions
#: are negligible for the few thousand architectures a study ever sees).
HASH_CHARS = 16


def _is_index(value: object) -> bool:
    # bool is an int subclass, but ``true`` as a state index is a bug, never an intent.
    return isinstance(value, Integral) and not isinstance(value, bool)


def _edges(value: object, cell: str) -> list[tuple[str, int]]:
    """Check the shape of one cell's edge list and return it as ``[(op, input), ...]``.

    Raises:
        ValueError: ``value`` is not a sequence of ``(str, int)`` pairs.
    """
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise ValueError(
            f"{cell}: expected a list of [op, input] pairs, got {type(value).__name__}"
        )
    edges: list[tuple[str, int]] = []
    for k, edge in enumerate(value):
        if isinstance(edge, str | bytes) or not isinstance(edge, Sequence) or len(edge) != 2:
            raise ValueError(f"{cell} edge {k}: expected an [op, input] pair, got {edge!r}")
        op, index = edge
        if not isinstance(op, str):
            raise ValueError(f"{cell} edge {k}: op must be a string, got {op!r}")
        if not _is_index(index):
            raise ValueError(f"{cell} edge {k}: input must be an integer, got {index!r}")
        edges.append((op, int(index)))
    return edges


def _concat(value: object, field: str) -> list[int]:
    """Check the shape of a ``*_concat`` field and return it as a list of ints.

    Raises:
        ValueError: ``value`` is not a sequence (list, tuple, range) of integers.
    """
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise ValueError(f"{field}: expected a list of state indices, got {type(value).__name__}")
    for index in value:
        if not _is_index(index):
            raise ValueError(f"{field}: state index must be an integer, got {index!r}")
    return [int(index) for index in value]


def genotype_to_dict(genotype: Genotype) -> dict[str, Any]:
    """A JSON-able dict with the genotype's four fields, order of edges kept as given.

    Edges become ``[op, input]`` lists and concat ranges become lists, e.g.
    ``{"normal": [["sep_conv_3x3", 0], ...], "normal_concat": [2, 3, 4, 5], ...}``.

    Raises:
        ValueError: A field has the wrong shape (see :func:`genotype_from_dict`).
    """
    out: dict[str, Any] = {}
    for cell in CELL_KINDS:
        out[cell] = [[op, index] for op, index in _edges(getattr(genotype, cell), cell)]
        field = f"{cell}_concat"
        out[field] = _concat(getattr(genotype, field), field)
    return out


def genotype_from_dict(data: Mapping[str, Any]) -> Genotype:
    """Inverse of :func:`genotype_to_dict`: edges come back as ``(op, input)`` tuples.

    Only the structure is checked here; call :func:`validate_genotype` for the semantics.

    Raises:
        ValueError: ``data`` is not a mapping, misses a field, has an extra one, or a field
            has the wrong shape.
    """
    if not isinstance(data, Mapping):
        raise ValueError(f"genotype: expected a JSON object, got {type(data).__name__}")
    missing = [field for field in Genotype._fields if field not in data]
    if missing:
        raise ValueError(f"genotype: missing field(s) {', '.join(missing)}")
    extra = sorted(str(key) for key in data if key not in Genotype._fields)
    if extra:
        raise ValueError(f"genotype: unknown field(s) {', '.join(extra)}")
    return Genotype(
        normal=_edges(data["normal"], "normal"),
        normal_concat=_concat(data["normal_concat"], "normal_concat"),
        reduce=_edges(data["reduce"], "reduce"),
        reduce_concat=_concat(data["reduce_concat"], "reduce_concat"),
    )


def genotype_to_json(genotype: Genotype) -> str:
    """The genotype as one line of JSON (the format of :func:`genotype_to_dict`)."""
    return json.dumps(genotype_to_dict(genotype))


def genotype_from_json(text: str) -> Genotype:
    """Parse a genotype written by :func:`genotype_to_json` (structure checked, not semantics).

    Raises:
        ValueError: ``text`` is not valid JSON, or not a genotype object.
    """
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"genotype: invalid JSON ({exc})") from None
    return genotype_from_dict(data)


def canonical_genotype(genotype: Genotype) -> Genotype:
    """The canonical representative of a genotype's equivalence class.

    The two edges of a node are summed, so their order is meaningless: each node's pair is
    sorted by ``(input, op)``. Edges become ``(str, int)`` tuples in lists, concat fields sorted
    lists. Idempotent; two genotypes denote the same architecture iff their canonical forms are
    equal.

    Raises:
        ValueError: A field has the wrong shape, or a cell has an odd number of edges.
    """
    fields: dict[str, Any] = {}
    for cell in CELL_KINDS:
        edges = _edges(getattr(genotype, cell), cell)
        if len(edges) % 2:
            raise ValueError(f"{cell} cell has {len(edges)} edges; expected two per node")
        canon: list[tuple[str, int]] = []
        for k in range(0, len(edges), 2):
            canon.extend(sorted(edges[k : k + 2], key=lambda edge: (edge[1], edge[0])))
        fields[cell] = canon
        field = f"{cell}_concat"
        fields[field] = sorted(_concat(getattr(genotype, field), field))
    return Genotype(**fields)


def genotype_hash(genotype: Genotype) -> str:
    """A short identity of the architecture, stable across processes and Python versions.

    The first :data:`HASH_CHARS` hex characters of the sha256 of the canonical genotype's JSON
    (sorted keys, no spaces): never Python's salted ``hash()``. Genotypes that differ only by
    the order of the two edges of a node hash equal.

    Raises:
        ValueError: As :func:`canonical_genotype`.
    """
    data = genotype_to_dict(canonical_genotype(genotype))
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:HASH_CHARS]


def validate_genotype(genotype: Genotype, *, ops: Sequence[str] | None = None) -> None:
    """Check that a genotype describes a buildable pair of DARTS cells.

    Args:
        genotype: The genotype to check.
        ops: When given, the only ops an edge may keep (otherwise any of ``EDGE_OPS``).

    Raises:
        ValueError: With a one-line message naming the first problem found: a cell with an odd
            number of edges or fewer than 2; an unknown op, ``none`` kept on an edge, or an op
            outside ``ops``; an input index out of range (node ``i`` may read states
            ``0 .. i - 1``); a concat field empty, with a duplicate, or with an index that is
            not an intermediate node (``2 .. n + 1``); normal and reduce cells with different
            node counts.
    """
    if not isinstance(genotype, Genotype):
        raise ValueError(f"expected a Genotype, got {type(genotype).__name__}")
    allowed = None if ops is None else tuple(ops)
    nodes: dict[str, int] = {}
    for cell in CELL_KINDS:
        edges = _edges(getattr(genotype, cell), cell)
        if len(edges) < 2 or len(edges) % 2:
            raise ValueError(
                f"{cell} cell has {len(edges)} edges; expected an even number >= 2 (two per node)"
            )
        for k, (op, index) in enumerate(edges):
            node = 2 + k // 2
            where = f"{cell} node {node} edge {k % 2}"
            if op not in PRIMITIVES:
                raise ValueError(f"{where}: unknown op {op!r} (known: {', '.join(EDGE_OPS)})")
            if op == "none":
                raise ValueError(f"{where}: op 'none' cannot be kept on an edge of a genotype")
            if allowed is not None and op not in allowed:
                raise ValueError(f"{where}: op {op!r} is not allowed here ({', '.join(allowed)})")
            if not 0 <= index < node:
                raise ValueError(
                    f"{where}: input {index} out of range (node {node} reads states 0..{node - 1})"
                )
        n = len(edges) // 2
        field = f"{cell}_concat"
        concat = _concat(getattr(genotype, field), field)
        if not concat:
            raise ValueError(f"{field} is empty; the cell needs at least one output state")
        if len(set(concat)) != len(concat):
            raise ValueError(f"{field} {concat} has a duplicated state index")
        for index in concat:
            if not 2 <= index <= n + 1:
                raise ValueError(
                    f"{field}: state {index} out of range (intermediate nodes are 2..{n + 1})"
                )
        nodes[cell] = n
    if nodes["normal"] != nodes["reduce"]:
        raise ValueError(
            f"normal cell has {nodes['normal']} nodes but reduce cell has {nodes['reduce']}"
        )


def load_genotype(spec: str) -> Genotype:
    """Resolve a genotype given on a command line or in a config, and validate it.

    ``spec`` is tried, in order, as a preset name of :data:`PRESETS` (returned unchanged), a
    path to a JSON file in the :func:`genotype_to_json` format, and a JSON string in that format.

    Raises:
        ValueError: ``spec`` is none of these, the file or string is not a genotype, or the
            genotype fails :func:`validate_genotype`.
    """
    if spec in PRESETS:
        return PRESETS[spec]
    text = spec.strip()
    path = Path(text).expanduser()
    try:
        is_file = path.is_file()
    except OSError:  # e.g. a JSON string longer than the file-name limit
        is_file = False
    if is_file:
        try:
            genotype = genotype_from_json(path.read_text(encoding="utf-8"))
            validate_genotype(genotype)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None
        return genotype
    if text.startswith("{"):
        genotype = genotype_from_json(text)
        validate_genotype(genotype)
        return genotype
    if path.suffix == ".json" or "/" in text:
        raise ValueError(f"genotype file not found: {text}")
    raise ValueError(
        f"unknown genotype {spec!r}: not a preset ({', '.join(PRESETS)}), "
        "a JSON file, or a JSON string"
    )


def cell_text(genotype: Genotype, cell: str) -> str:
    """One cell on one line: ``op<-input`` pairs, nodes separated by ``|``."""
    edges = list(getattr(genotype, cell))
    nodes = [
        " ".join(f"{op}<-{int(index)}" for op, index in edges[k : k + 2])
        for k in range(0, len(edges), 2)
    ]
    return " | ".join(nodes)
