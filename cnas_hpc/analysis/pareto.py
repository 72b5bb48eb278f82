"""The Pareto front where users look: a plot per cost, a table, the cells, ``pareto.json``.

For a cost-aware study (several objectives, or costs recorded on its trials: see
:mod:`cnas_hpc.study.pareto`) the report adds, from :func:`cnas_hpc.study.pareto.pareto_view`:

* ``pareto_<cost>.png`` per cost (score against cost): feasible trials as dots, trained
  infeasible ones as grey crosses, cells that broke a limit before training (PRUNED, no score)
  as red ticks on the bottom edge at their cost, the study's front as numbered orange rings,
  and the front of that plane alone as a dashed staircase. A study with several objectives and
  no cost gets one plot per other objective instead.
* the front as a table (plain text: it goes into ``status.txt`` and ``index.html``);
* the drawings of the front's cells (``front_<trial>_normal.png`` / ``_reduce.png``; at most
  :data:`MAX_DRAWN`, spread along the front by :func:`~cnas_hpc.study.pareto.spread_along`);
* ``pareto.json``: every front cell's trial, objective values, costs and genotype, cheapest
  first; ``eval.genotypes=[.../pareto.json]`` evaluates them.

Figures are Agg figures (no pyplot, no display), as everywhere in :mod:`cnas_hpc.analysis`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from optuna.study import StudyDirection
from tabulate import tabulate

from cnas_hpc.analysis.cells import draw_genotype
from cnas_hpc.analysis.plots import mark_along_foot, new_figure, save_figure
from cnas_hpc.space.genotype import genotype_from_json, genotype_to_dict
from cnas_hpc.study.pareto import (
    COST_ATTRS,
    ParetoView,
    Point,
    best_mean_rank,
    mean_ranks,
    non_dominated,
    spread_along,
)

#: At most this many front cells are drawn (two pictures each).
MAX_DRAWN: Final = 6

#: How a value of each cost is shown: its scale and unit.
_SCALE: Final[dict[str, tuple[float, str]]] = {
    "params": (1e6, "M params"),
    "macs": (1e6, "M MACs"),
    "latency_ms": (1.0, "ms"),
}


def x_axes(view: ParetoView) -> tuple[str, ...]:
    """What the plots put on their x axes: every cost, else every objective but the primary."""
    return view.costs or tuple(a for a in view.axes if a != view.primary)


def _label(view: ParetoView, name: str) -> str:
    better = "higher is better" if view.maximize(name) else "lower is better"
    if name in _SCALE:
        unit = _SCALE[name][1]
        where = ""
        if name == "latency_ms":
            devices = sorted({p.device for p in view.points if p.device})
            where = f" on {', '.join(devices)}" if devices else ""
        return f"{name} ({unit}{where}; {better})"
    return f"{name} ({better})"


def _scaled(name: str, value: float) -> float:
    return value / _SCALE.get(name, (1.0, ""))[0]


def _network(view: ParetoView) -> str | None:
    networks = sorted({p.network for p in view.points if p.network})
    return ", ".join(networks) if networks else None


def plot_front(view: ParetoView, cost: str, path: str | Path) -> Path:
    """Score (the view's primary objective) against ``cost``; writes one PNG.

    Args:
        view: The study's view.
        cost: A name of :func:`x_axes`.
        path: The PNG to write.

    Returns:
        The path written.
    """
    y_name = view.primary
    fig, ax = new_figure(7.5, 4.8)
    network = _network(view) if cost in COST_ATTRS else None
    title = f"{view.study_name}: {y_name} against {cost}"
    ax.set_title(title + (f"\n(costs of the {network} network)" if network else ""), fontsize=10)
    has = [p for p in view.points if cost in p.values]
    trained = [p for p in has if p.trained and y_name in p.values]
    groups = (
        ([p for p in trained if p.feasible], "o", "#1f5fa8", 20, "feasible"),
        ([p for p in trained if not p.feasible], "x", "#888888", 28, "infeasible (trained)"),
    )
    for group, marker, colour, size, label in groups:
        if group:
            ax.scatter(
                [_scaled(cost, p.values[cost]) for p in group],
                [p.values[y_name] for p in group],
                marker=marker,
                s=size,
                color=colour,
                alpha=0.7,
                label=f"{label} ({len(group)})",
                zorder=3,
            )
    untrained = [p for p in has if not p.trained]
    if untrained:
        mark_along_foot(
            ax,
            [_scaled(cost, p.values[cost]) for p in untrained],
            f"broke a limit, never trained ({len(untrained)})",
            markersize=14,
        )
    _draw_fronts(ax, view, cost, trained)
    if cost in view.limits:
        ax.axvline(_scaled(cost, view.limits[cost]), color="#c0392b", linestyle=":",
                   linewidth=1.2, label=f"limit {cost} <= {view.limits[cost]:g}")  # fmt: skip
    if not has:
        ax.text(0.5, 0.5, f"no trial records {cost}", ha="center", va="center",
                transform=ax.transAxes, color="#555555")  # fmt: skip
    ax.set_xlabel(_label(view, cost))
    ax.set_ylabel(_label(view, y_name))
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def _draw_fronts(ax: Any, view: ParetoView, cost: str, trained: Sequence[Point]) -> None:
    """The study's front (numbered rings) and the front of this plane (a dashed staircase)."""
    y_name = view.primary
    front = [p for p in view.front if cost in p.values and y_name in p.values]
    if front:
        xs = [_scaled(cost, p.values[cost]) for p in front]
        ys = [p.values[y_name] for p in front]
        ax.scatter(xs, ys, s=90, facecolors="none", edgecolors="#c45a00", linewidths=2,
                   label=f"Pareto front ({len(view.front)})", zorder=4)  # fmt: skip
        for p, x, y in zip(front, xs, ys, strict=True):
            ax.annotate(f"#{p.number}", (x, y), xytext=(5, 4), textcoords="offset points",
                        fontsize=7, color="#c45a00")  # fmt: skip
    plane = non_dominated(trained, (y_name, cost), view.directions)
    if len(plane) > 1:
        plane.sort(key=lambda p: p.values[cost])
        ax.step(
            [_scaled(cost, p.values[cost]) for p in plane],
            [p.values[y_name] for p in plane],
            where="post",
            linestyle="--",
            linewidth=1,
            color="#c45a00",
            alpha=0.6,
            label=f"front of {y_name} vs {cost} alone",
            zorder=2,
        )


def _value(name: str, value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    if name == "params":
        return f"{value / 1e6:.3f}"
    if name == "macs":
        return f"{value / 1e6:.1f}"
    if name == "latency_ms":
        return f"{value:.2f}"
    return f"{value:.5g}"


def _columns(view: ParetoView) -> list[str]:
    names = [o for o in view.objectives if o not in COST_ATTRS]
    return names + list(view.costs)


def _header(view: ParetoView, name: str) -> str:
    arrow = "max" if view.maximize(name) else "min"
    unit = {"params": " M", "macs": " M"}.get(name, "")
    return f"{name}{unit} ({arrow})"


def format_front(view: ParetoView) -> str:
    """The front as plain text: a summary line and a table, cheapest first."""
    trained = [p for p in view.points if p.trained]
    infeasible = [p for p in view.points if not p.feasible]
    untrained = [p for p in infeasible if not p.trained]
    axes = ", ".join(f"{a} ({'max' if view.maximize(a) else 'min'})" for a in view.axes)
    lines = [
        f"Pareto front: {len(view.front)} cell(s) of {sum(p.feasible for p in trained)} "
        f"feasible trained trial(s); {len(infeasible)} infeasible "
        f"({len(untrained)} never trained)",
        f"  front over {axes}",
        f"  sorted by {view.sort_by} (cheapest first); cells and values in pareto.json",
    ]
    network = _network(view)
    if network:
        lines.append(f"  costs are of the {network} network (evaluation size)")
    if view.limits:
        limits = ", ".join(f"{name} <= {bound:g}" for name, bound in view.limits.items())
        lines.append(f"  limits (search.constraints): {limits}")
    if not view.front:
        lines.append("  (no feasible COMPLETE trial yet)")
        return "\n".join(lines)
    columns = _columns(view)
    rows = [
        [i + 1, p.number, *(_value(c, p.values.get(c)) for c in columns)]
        for i, p in enumerate(view.front)
    ]
    headers = ["#", "trial", *(_header(view, c) for c in columns)]
    lines.append(
        tabulate(rows, headers, tablefmt="simple", disable_numparse=True, stralign="right")
    )
    ranks = mean_ranks(view)
    pick = best_mean_rank(view, ranks)
    if pick is not None:
        lines.append(
            f"  best mean rank over the objectives: trial {pick.number} "
            f"(mean rank {ranks[pick.number]:.1f} of {len(ranks)} trained cells)"
        )
    return "\n".join(lines)


def front_entries(view: ParetoView) -> list[dict[str, Any]]:
    """One JSON-able entry per front cell: trial, objective values, costs, genotype."""
    out = []
    for p in view.front:
        out.append(
            {
                "trial": p.number,
                "values": {o: p.values[o] for o in view.objectives if o in p.values},
                "costs": {c: p.values[c] for c in view.costs if c in p.values},
                "cost_device": p.device,
                "cost_network": p.network,
                "genotype": genotype_to_dict(genotype_from_json(str(p.genotype_json))),
            }
        )
    return out


def _best_mean_rank_entry(view: ParetoView) -> dict[str, Any] | None:
    ranks = mean_ranks(view)
    pick = best_mean_rank(view, ranks)
    if pick is None:
        return None
    return {"trial": pick.number, "mean_rank": ranks[pick.number], "cells": len(ranks)}


def write_pareto_json(view: ParetoView, path: str | Path) -> Path:
    """Write ``pareto.json`` (atomically) and return its path.

    Format: ``{"study", "objectives", "directions": {name: "minimize"|"maximize"}, "axes",
    "sort_by", "front": [{"trial", "values", "costs", "cost_device", "cost_network",
    "genotype"}, ...], "best_mean_rank": {"trial", "mean_rank", "cells"} | null}``, the front
    cheapest first; ``genotype`` loads with :func:`cnas_hpc.space.genotype.genotype_from_dict`;
    ``best_mean_rank`` is :func:`cnas_hpc.study.pareto.best_mean_rank` (null for one objective).
    """
    payload = {
        "study": view.study_name,
        "objectives": list(view.objectives),
        "directions": {
            name: "maximize" if d == StudyDirection.MAXIMIZE else "minimize"
            for name, d in view.directions.items()
        },
        "axes": list(view.axes),
        "sort_by": view.sort_by,
        "front": front_entries(view),
        "best_mean_rank": _best_mean_rank_entry(view),
    }
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    tmp.replace(out)
    return out


def draw_front(view: ParetoView, out_dir: str | Path) -> list[Path]:
    """Draw the cells of up to :data:`MAX_DRAWN` front points (spread along the front)."""
    if not view.front:
        return []
    paths: list[Path] = []
    for p in spread_along(view, MAX_DRAWN):
        paths += draw_genotype(
            genotype_from_json(str(p.genotype_json)),
            out_dir,
            f"front_{p.number:04d}",
            title=f"front: trial {p.number}",
        )
    return paths


def write_front_report(
    view: ParetoView, out_dir: str | Path, *, pictures: bool, json_file: bool
) -> tuple[str, list[Path]]:
    """Everything the report adds for a cost-aware study.

    Returns:
        The text (for ``status.txt`` / ``index.html``) and the pictures written (plots, then
        the front's cells); ``pareto.json`` too with ``json_file`` (not listed).
    """
    folder = Path(out_dir)
    images: list[Path] = []
    if pictures:
        images += [plot_front(view, x, folder / f"pareto_{x}.png") for x in x_axes(view)]
        images += draw_front(view, folder)
    if json_file:
        write_pareto_json(view, folder / "pareto.json")
    return format_front(view), images
