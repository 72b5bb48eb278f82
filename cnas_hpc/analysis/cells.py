"""Pictures of DARTS cells, drawn with matplotlib alone (no graphviz binary).

A cell is drawn left to right: the two input states ``c_{k-2}`` (state 0) and ``c_{k-1}``
(state 1) on the left, the intermediate nodes ``0 .. n-1`` (states ``2 .. n+1`` of the
genotype) in columns by depth (a node sits one column right of its deepest input), and the
output ``c_{k}`` on the right. Every ``(op, input)`` edge is an arrow with the op's name written
on it, in the colour of the op's family; the states the output concatenates have a plain arrow
to ``c_{k}``. Nodes whose value never reaches the output (not concatenated, and read by no live
node) are drawn grey, with their incoming edges.

Readability is the point, so the layout is computed, not left to chance: each arrow gets the
smallest curvature that keeps it clear of the other nodes, and each label slides along its own
arrow to the place that overlaps no other label or node and as few other arrows as possible.

Figures are built with :class:`matplotlib.figure.Figure` and the Agg canvas, never pyplot:
nothing touches a display or pyplot's global figure registry, so drawing is safe on a login
node and inside a long-running worker.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from cnas_hpc.space.genotype import Genotype, validate_genotype
from cnas_hpc.space.primitives import CELL_KINDS

# matplotlib is imported by the functions that draw, not here: every search worker and command
# imports this module (through the W&B study view), and matplotlib cost ~0.4 s of each process
# start on the CI machine, where a cell is drawn by a few processes only.
if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

#: Colours of the op families (edge, label border and label text).
OP_COLOURS: dict[str, str] = {
    "sep_conv": "#1f5fa8",
    "dil_conv": "#23843a",
    "max_pool": "#c45a00",
    "avg_pool": "#8c5a2b",
    "skip_connect": "#6a3d9a",
}
_OTHER_COLOUR = "#333333"
_DEAD_COLOUR = "#b4b4b4"
_NODE_FILL = {"input": "#a8d5a2", "inner": "#a9cde8", "output": "#f3e3a3"}

# Geometry, in data units (1 unit = _INCH_PER_UNIT inches on both axes, so circles stay round
# and the arc3 curvature computed in display space equals the one computed here).
_INCH_PER_UNIT = 0.75
_DPI = 150
_COLUMN_GAP = 3.2
_FIRST_GAP = 4.2  # the inputs fan out to most nodes: their arrows need the room
_ROW_GAP = 1.7
_NODE_RADIUS = 0.36
_CLEARANCE = 0.22  # how far an arrow keeps from a node it does not touch
_LABEL_FONT = 8.5
_LABEL_PAD = 0.06  # around a label's box when testing overlaps
_RADS = (0.0, 0.12, -0.12, 0.22, -0.22, 0.32, -0.32, 0.45, -0.45, 0.6, -0.6)
_LABEL_TS = tuple(0.5 + sign * step / 40 for step in range(13) for sign in (1, -1))
_SAMPLES = 48

Point = tuple[float, float]
Box = tuple[float, float, float, float]  # x0, y0, x1, y1


def op_colour(op: str) -> str:
    """The colour of an op's family (``sep_conv_5x5`` -> the ``sep_conv`` colour)."""
    for family, colour in OP_COLOURS.items():
        if op.startswith(family):
            return colour
    return _OTHER_COLOUR


@dataclass
class _Edge:
    """One arrow: ``src -> dst`` (state indices; ``dst == -1`` is the output ``c_{k}``)."""

    src: int
    dst: int
    op: str | None
    live: bool
    rad: float = 0.0
    label_at: Point | None = None
    samples: list[Point] = field(default_factory=list)


@dataclass
class _Layout:
    """Where everything goes, in data units."""

    pos: dict[int, Point]
    live: set[int]
    edges: list[_Edge]
    n_nodes: int


def _check(genotype: Genotype, cell: str) -> None:
    if cell not in CELL_KINDS:
        raise ValueError(f"cell must be one of {', '.join(CELL_KINDS)}, got {cell!r}")
    validate_genotype(genotype)


def _node_name(state: int, n_nodes: int) -> str:
    """Text inside a node: mathtext for the cell states, the node number for the others."""
    if state == 0:
        return "$c_{k-2}$"
    if state == 1:
        return "$c_{k-1}$"
    if state == -1:
        return "$c_{k}$"
    return str(state - 2)


def _live_states(edges: Sequence[tuple[str, int]], concat: Sequence[int]) -> set[int]:
    """States whose value reaches the output: the concatenated ones and their ancestors."""
    inputs: dict[int, list[int]] = {}
    for k, (_, src) in enumerate(edges):
        inputs.setdefault(2 + k // 2, []).append(src)
    live: set[int] = set()
    stack = list(concat)
    while stack:
        state = stack.pop()
        if state in live:
            continue
        live.add(state)
        stack.extend(inputs.get(state, []))
    return live


def _column_x(column: int) -> float:
    return 0.0 if column == 0 else _FIRST_GAP + (column - 1) * _COLUMN_GAP


def _positions(edges: Sequence[tuple[str, int]], n_nodes: int) -> dict[int, Point]:
    """Columns by depth, rows ordered by the mean height of each node's inputs."""
    depth = {0: 0, 1: 0}
    sources: dict[int, list[int]] = {}
    for k, (_, src) in enumerate(edges):
        sources.setdefault(2 + k // 2, []).append(src)
    for state in range(2, n_nodes + 2):
        depth[state] = 1 + max(depth[s] for s in sources[state])
    columns: dict[int, list[int]] = {}
    for state in range(2, n_nodes + 2):
        columns.setdefault(depth[state], []).append(state)
    tallest = max(len(states) for states in columns.values())
    # The inputs span at least two rows, so a one-node column still sits between them.
    half_inputs = max(1.0, 0.5 * min(tallest, 3)) * _ROW_GAP * 0.7
    pos: dict[int, Point] = {0: (0.0, half_inputs), 1: (0.0, -half_inputs)}
    for column in sorted(columns):
        states = columns[column]

        def barycentre(state: int) -> tuple[float, int]:
            ys = [pos[s][1] for s in sources[state]]
            # Higher first (rows are filled top down); ties keep node order.
            return (-sum(ys) / len(ys), state)

        states.sort(key=barycentre)
        top = 0.5 * (len(states) - 1) * _ROW_GAP
        for row, state in enumerate(states):
            pos[state] = (_column_x(column), top - row * _ROW_GAP)
    last = max(columns)
    pos[-1] = (_column_x(last + 1), 0.0)
    return pos


def _control(a: Point, b: Point, rad: float) -> Point:
    """Control point of matplotlib's ``arc3`` connection (a quadratic Bezier)."""
    mx, my = (a[0] + b[0]) / 2, (a[1] + b[1]) / 2
    dx, dy = b[0] - a[0], b[1] - a[1]
    return (mx + rad * dy, my - rad * dx)


def _bezier(a: Point, c: Point, b: Point, t: float) -> Point:
    u = 1 - t
    return (
        u * u * a[0] + 2 * u * t * c[0] + t * t * b[0],
        u * u * a[1] + 2 * u * t * c[1] + t * t * b[1],
    )


def _curve(a: Point, b: Point, rad: float, n: int = _SAMPLES) -> list[Point]:
    c = _control(a, b, rad)
    return [_bezier(a, c, b, i / n) for i in range(n + 1)]


def _clear_of_nodes(points: Sequence[Point], pos: dict[int, Point], ends: set[int]) -> bool:
    limit = _NODE_RADIUS + _CLEARANCE
    for state, (x, y) in pos.items():
        if state in ends:
            continue
        if any(math.hypot(px - x, py - y) < limit for px, py in points):
            return False
    return True


def _choose_curvatures(edges: list[_Edge], pos: dict[int, Point]) -> None:
    """Give each arrow the flattest curvature that clears every node it does not touch.

    Two arrows between the same pair of states (a node reading one input twice) get curvatures
    at least 0.2 apart, so both stay visible.
    """
    taken: dict[tuple[int, int], list[float]] = {}
    for edge in edges:
        a, b = pos[edge.src], pos[edge.dst]
        used = taken.setdefault((edge.src, edge.dst), [])
        choice: float | None = None
        for rad in _RADS:
            if any(abs(rad - other) < 0.2 for other in used):
                continue
            if _clear_of_nodes(_curve(a, b, rad), pos, {edge.src, edge.dst}):
                choice = rad
                break
        if choice is None:
            # Nothing clears every node (very deep cells): take the first free curvature.
            choice = next(r for r in _RADS if all(abs(r - o) >= 0.2 for o in used))
            log.debug("arrow %d->%d crosses a node at every curvature", edge.src, edge.dst)
        edge.rad = choice
        used.append(choice)
        edge.samples = _curve(a, b, choice)


def _overlap(p: Box, q: Box) -> float:
    w = min(p[2], q[2]) - max(p[0], q[0])
    h = min(p[3], q[3]) - max(p[1], q[1])
    return w * h if w > 0 and h > 0 else 0.0


def _box_at(centre: Point, size: tuple[float, float]) -> Box:
    w, h = size[0] / 2 + _LABEL_PAD, size[1] / 2 + _LABEL_PAD
    return (centre[0] - w, centre[1] - h, centre[0] + w, centre[1] + h)


def _place_labels(
    edges: list[_Edge], pos: dict[int, Point], sizes: dict[str, tuple[float, float]]
) -> None:
    """Slide each label along its arrow to the least crowded spot (greedy, shortest first).

    Cost of a spot: area shared with labels already placed and with nodes (heavy), points of
    other arrows under the label (light: the label's white box hides them), distance from the
    arrow's middle (tiny, to prefer the natural place).
    """
    node_boxes = [
        (x - _NODE_RADIUS, y - _NODE_RADIUS, x + _NODE_RADIUS, y + _NODE_RADIUS)
        for x, y in pos.values()
    ]
    labelled = [e for e in edges if e.op is not None]
    labelled.sort(key=lambda e: math.dist(pos[e.src], pos[e.dst]))
    placed: list[Box] = []
    for edge in labelled:
        assert edge.op is not None
        a, b = pos[edge.src], pos[edge.dst]
        c = _control(a, b, edge.rad)
        others = [p for other in edges if other is not edge for p in other.samples]
        best: tuple[float, Point, Box] | None = None
        for t in _LABEL_TS:
            centre = _bezier(a, c, b, t)
            box = _box_at(centre, sizes[edge.op])
            cost = 50.0 * sum(_overlap(box, q) for q in placed)
            cost += 50.0 * sum(_overlap(box, q) for q in node_boxes)
            cost += 0.25 * sum(box[0] < x < box[2] and box[1] < y < box[3] for x, y in others)
            cost += 0.01 * abs(t - 0.5)
            if best is None or cost < best[0]:
                best = (cost, centre, box)
        assert best is not None
        edge.label_at = best[1]
        placed.append(best[2])


def _layout(genotype: Genotype, cell: str) -> _Layout:
    edges: list[tuple[str, int]] = [(op, int(src)) for op, src in getattr(genotype, cell)]
    concat = [int(s) for s in getattr(genotype, f"{cell}_concat")]
    n_nodes = len(edges) // 2
    live = _live_states(edges, concat) | {-1}
    pos = _positions(edges, n_nodes)
    arrows = [
        _Edge(src, 2 + k // 2, op, live=2 + k // 2 in live) for k, (op, src) in enumerate(edges)
    ]
    arrows += [_Edge(state, -1, None, live=True) for state in sorted(concat)]
    _choose_curvatures(arrows, pos)
    return _Layout(pos=pos, live=live, edges=arrows, n_nodes=n_nodes)


def _label_sizes(ops: set[str]) -> dict[str, tuple[float, float]]:
    """Width and height of each op's label in data units, measured with the Agg renderer."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    scratch = Figure(dpi=_DPI)
    canvas = FigureCanvasAgg(scratch)
    renderer = canvas.get_renderer()
    sizes: dict[str, tuple[float, float]] = {}
    for op in ops:
        text = scratch.text(0, 0, op, fontsize=_LABEL_FONT, family="DejaVu Sans Mono")
        extent = text.get_window_extent(renderer)
        scale = _DPI * _INCH_PER_UNIT
        # + the label's own bbox padding (pad=0.2 of the font size, on each side).
        pad = 2 * 0.25 * _LABEL_FONT / 72 / _INCH_PER_UNIT
        sizes[op] = (extent.width / scale + pad, extent.height / scale + pad)
    return sizes


def cell_figure(genotype: Genotype, cell: str, title: str | None = None) -> Figure:
    """Draw one cell of ``genotype`` on a new (pyplot-free) figure and return it.

    Args:
        genotype: A valid genotype (any number of nodes; ops from ``PRIMITIVES``).
        cell: ``"normal"`` or ``"reduce"``.
        title: Shown above the cell, followed by the cell kind; default: the cell kind alone.

    Returns:
        A :class:`~matplotlib.figure.Figure` with an Agg canvas; the caller owns it. Its text
        artists hold every op name of the cell (one label per edge) and every node's name.

    Raises:
        ValueError: ``cell`` is not a cell kind, or the genotype fails ``validate_genotype``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Circle, FancyArrowPatch

    _check(genotype, cell)
    layout = _layout(genotype, cell)
    ops = {edge.op for edge in layout.edges if edge.op is not None}
    sizes = _label_sizes(ops)
    _place_labels(layout.edges, layout.pos, sizes)

    xs = [p[0] for e in layout.edges for p in e.samples]
    ys = [p[1] for e in layout.edges for p in e.samples]
    for edge in layout.edges:
        if edge.op is not None and edge.label_at is not None:
            w, h = sizes[edge.op]
            xs += [edge.label_at[0] - w / 2, edge.label_at[0] + w / 2]
            ys += [edge.label_at[1] - h / 2, edge.label_at[1] + h / 2]
    margin = _NODE_RADIUS + 0.25
    x0, x1 = min(xs) - margin, max(xs) + margin
    y0, y1 = min(ys) - margin, max(ys) + margin
    title_in = 0.45
    width_in = (x1 - x0) * _INCH_PER_UNIT
    height_in = (y1 - y0) * _INCH_PER_UNIT
    fig = Figure(figsize=(width_in, height_in + title_in), dpi=_DPI)
    FigureCanvasAgg(fig)
    # Axes fill the figure below the title exactly: one data unit is the same length on
    # both axes, which the curvature and label maths rely on.
    ax = fig.add_axes((0.0, 0.0, 1.0, height_in / (height_in + title_in)))
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_axis_off()
    heading = f"{title} — {cell} cell" if title else f"{cell} cell"
    fig.text(
        0.5,
        1 - 0.5 * title_in / (height_in + title_in),
        heading,
        ha="center",
        va="center",
        fontsize=11,
        fontweight="bold",
    )

    circles: dict[int, Circle] = {}
    for state, (x, y) in layout.pos.items():
        kind = "input" if state in (0, 1) else "output" if state == -1 else "inner"
        live = state in layout.live or state in (0, 1)
        circle = Circle(
            (x, y),
            _NODE_RADIUS,
            facecolor=_NODE_FILL[kind] if live else "#eeeeee",
            edgecolor="#222222" if live else _DEAD_COLOUR,
            linewidth=1.2,
            linestyle="-" if live else "--",
            zorder=3,
        )
        ax.add_patch(circle)
        circles[state] = circle
        ax.text(
            x,
            y,
            _node_name(state, layout.n_nodes),
            ha="center",
            va="center",
            fontsize=10 if state >= 2 else 9.5,
            color="#111111" if live else "#999999",
            zorder=4,
        )

    for edge in layout.edges:
        colour = op_colour(edge.op) if edge.op is not None else "#555555"
        if not edge.live:
            colour = _DEAD_COLOUR
        arrow = FancyArrowPatch(
            layout.pos[edge.src],
            layout.pos[edge.dst],
            connectionstyle=f"arc3,rad={edge.rad}",
            arrowstyle="-|>",
            mutation_scale=11,
            linewidth=1.3 if edge.op is not None else 1.0,
            color=colour,
            patchA=circles[edge.src],
            patchB=circles[edge.dst],
            shrinkA=1.0,
            shrinkB=1.0,
            zorder=2,
        )
        ax.add_patch(arrow)
        if edge.op is not None and edge.label_at is not None:
            ax.text(
                edge.label_at[0],
                edge.label_at[1],
                edge.op,
                ha="center",
                va="center",
                fontsize=_LABEL_FONT,
                family="DejaVu Sans Mono",
                color=colour,
                zorder=5,
                bbox={
                    "boxstyle": "round,pad=0.25",
                    "facecolor": "white",
                    "edgecolor": colour,
                    "linewidth": 0.8,
                    "alpha": 0.95,
                },
            )
    return fig


def draw_cell(genotype: Genotype, cell: str, path: str | Path, title: str | None = None) -> Path:
    """Draw one cell of ``genotype`` to an image file (format from the suffix, PNG if none).

    Args:
        genotype: A valid genotype.
        cell: ``"normal"`` or ``"reduce"``.
        path: Where to write; parent folders are created. Overwritten if it exists.
        title: Shown above the cell (e.g. ``"trial 17"``).

    Returns:
        The path written.

    Raises:
        ValueError: As :func:`cell_figure`.
    """
    fig = cell_figure(genotype, cell, title)
    out = Path(path)
    if not out.suffix:
        out = out.with_suffix(".png")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=_DPI, facecolor="white")
    return out


def draw_genotype(
    genotype: Genotype, out_dir: str | Path, prefix: str, title: str | None = None
) -> list[Path]:
    """Draw both cells of ``genotype`` as ``<out_dir>/<prefix>_normal.png`` and ``_reduce.png``.

    Args:
        genotype: A valid genotype.
        out_dir: Folder to write into (created if missing).
        prefix: File-name prefix, e.g. ``"best"`` or ``"trial_0017"``.
        title: Shown above each cell; default ``prefix``.

    Returns:
        The two paths, normal cell first.

    Raises:
        ValueError: The genotype fails ``validate_genotype``, or ``prefix`` is empty or holds a
            path separator.
    """
    if not prefix or "/" in prefix or "\\" in prefix:
        raise ValueError(f"prefix must be a plain non-empty file-name prefix, got {prefix!r}")
    validate_genotype(genotype)
    folder = Path(out_dir)
    return [
        draw_cell(genotype, cell, folder / f"{prefix}_{cell}.png", title or prefix)
        for cell in CELL_KINDS
    ]
