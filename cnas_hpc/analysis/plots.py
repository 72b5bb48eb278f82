"""Pictures of a study's progress (PNG) and the self-contained HTML page that shows them.

The optimization history and the parameter importances are Optuna's own matplotlib plots
(``optuna.visualization.matplotlib``), drawn through pyplot on the Agg backend and closed once
saved, so nothing stays in pyplot's registry of a long-lived process. Best-so-far against WALL
TIME has no Optuna plot (its history is by trial number; ``plot_timeline`` shows durations, not
values), so :func:`plot_best_vs_time` draws it on an Agg :class:`~matplotlib.figure.Figure`
itself. Nothing needs a display. Each plot function writes
one PNG (parent folders created, an existing file replaced) and returns its path; a study with
too little data still gets a figure that says so, so a report always has all its pictures.

Only COMPLETE trials with a finite value are plotted as results; FAIL trials are marked on the
history so a broken stretch of a search stays visible. A study with several objectives is
plotted by its primary objective (the first that is not a cost: the score); its front has its
own plots (:mod:`cnas_hpc.analysis.pareto`).
"""

from __future__ import annotations

import html
import logging
import math
import os
import re
import textwrap
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from cnas_hpc.common import attrs
from cnas_hpc.study.pareto import objectives_of, primary_of

# matplotlib is imported by the functions that draw, not here: every search worker and command
# imports this module (through the W&B study view), and matplotlib cost ~0.4 s of each process
# start on the CI machine, where a picture is drawn by a few processes only.
if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

_DPI = 120
#: At most this many parameters are shown in the importance chart (csnas has 40).
MAX_IMPORTANCES = 20
IMPORTANCE_PLACEHOLDER = "needs >= 2 complete trials with varying params"


def new_figure(width: float = 7.5, height: float = 4.2) -> tuple[Figure, Axes]:
    """A headless (Agg) figure with one axes; no pyplot state is touched."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=_DPI)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as a PNG at ``path`` (folders created); returns the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=_DPI, facecolor="white")
    return out


def mark_along_foot(ax: Axes, xs: Sequence[float], label: str, markersize: float) -> None:
    """Red ticks at the foot of ``ax`` (in axes height, so off any data scale) at ``xs``: the
    points that have no value to plot (failed trials, cells never trained), with ``label`` in
    the legend."""
    ax.plot(
        xs,
        [0.0] * len(xs),
        linestyle="none",
        marker="|",
        markersize=markersize,
        color="#c0392b",
        transform=ax.get_xaxis_transform(),
        clip_on=False,
        label=label,
    )


def _placeholder(ax: Axes, message: str) -> None:
    ax.set_axis_off()
    ax.text(
        0.5,
        0.5,
        message,
        ha="center",
        va="center",
        fontsize=12,
        color="#555555",
        transform=ax.transAxes,
    )


def primary_objective(study: optuna.Study) -> tuple[int, StudyDirection]:
    """Index (in ``trial.values``) and direction of the objective the progress plots show: the
    only one, or a multi-objective study's first objective that is not a cost."""
    objectives = objectives_of(study)
    index = objectives.index(primary_of(objectives))
    return index, study.directions[index]


def primary_value(trial: FrozenTrial, index: int) -> float | None:
    """The trial's value of objective ``index``, or None (no values, or a different count)."""
    values = trial.values
    if values is None or index >= len(values):
        return None
    return float(values[index])


def complete_trials(study: optuna.Study) -> list[FrozenTrial]:
    """COMPLETE trials with a finite (primary) objective value, by trial number."""
    index, _ = primary_objective(study)
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    finite = []
    for t in trials:
        value = primary_value(t, index)
        if value is not None and math.isfinite(value):
            finite.append(t)
    return sorted(finite, key=lambda t: t.number)


def _target(study: optuna.Study) -> Callable[[FrozenTrial], float] | None:
    """Optuna's ``target`` for a multi-objective study's primary objective (None: the only
    objective, Optuna's default)."""
    if len(study.directions) == 1:
        return None
    index, _ = primary_objective(study)
    return lambda t: float(t.values[index])


def best_so_far(values: Sequence[float], direction: StudyDirection) -> list[float]:
    """The running best of ``values`` (minimum or maximum after each one)."""
    pick = max if direction == StudyDirection.MAXIMIZE else min
    out: list[float] = []
    for value in values:
        out.append(value if not out else pick(out[-1], value))
    return out


def _objective_label(study: optuna.Study) -> str:
    index, direction = primary_objective(study)
    name = (
        study.user_attrs.get(attrs.STUDY_OBJECTIVE)
        if len(study.directions) == 1
        else objectives_of(study)[index]
    )
    arrow = "higher is better" if direction == StudyDirection.MAXIMIZE else "lower is better"
    return f"{name} ({arrow})" if name else f"objective ({arrow})"


def plot_history(study: optuna.Study, path: str | Path) -> Path:
    """Objective of every COMPLETE trial and the best so far, against the trial number.

    Drawn by Optuna (``optuna.visualization.matplotlib.plot_optimization_history``); FAIL
    trials are added as red ticks along the bottom edge, so a broken stretch stays visible.

    Args:
        study: Any Optuna study (single objective).
        path: The PNG to write.

    Returns:
        The path written.
    """
    if not complete_trials(study):
        fig, ax = new_figure()
        ax.set_title(f"{study.study_name}: objective per trial")
        _placeholder(ax, "no complete trial yet")
        return save_figure(fig, path)
    import optuna.visualization.matplotlib as optuna_plots
    from matplotlib.ticker import MaxNLocator

    ax = optuna_plots.plot_optimization_history(
        study, target=_target(study), target_name=_objective_label(study)
    )
    failed = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))]
    if failed:
        mark_along_foot(ax, failed, f"failed ({len(failed)})", markersize=12)
        ax.legend(loc="best", fontsize=9)
    _retitle(ax, f"{study.study_name}: objective per trial")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return _save_optuna(ax, path)


def _save_optuna(ax: Axes, path: str | Path) -> Path:
    """Save a figure Optuna drew (through pyplot) and drop it from pyplot's registry."""
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    fig = ax.get_figure()
    assert isinstance(fig, Figure)
    fig.set_size_inches(7.5, 4.2)
    fig.tight_layout()
    try:
        return save_figure(fig, path)
    finally:
        plt.close(fig)


def _hours_since(start: datetime, moment: datetime) -> float:
    return (moment - start).total_seconds() / 3600.0


def plot_best_vs_time(study: optuna.Study, path: str | Path) -> Path:
    """Best objective so far against wall time (hours) since the first trial started.

    Args:
        study: Any Optuna study (single objective).
        path: The PNG to write.

    Returns:
        The path written.
    """
    fig, ax = new_figure()
    ax.set_title(f"{study.study_name}: best objective over wall time")
    starts = [t.datetime_start for t in study.get_trials(deepcopy=False) if t.datetime_start]
    trials = [t for t in complete_trials(study) if t.datetime_complete is not None]
    if not trials or not starts:
        _placeholder(ax, "no complete trial yet")
        return save_figure(fig, path)
    first = min(starts)
    trials.sort(key=lambda t: (t.datetime_complete or first, t.number))
    hours = [_hours_since(first, t.datetime_complete or first) for t in trials]
    index, direction = primary_objective(study)
    values = [float(t.values[index]) for t in trials]
    ax.scatter(hours, values, s=18, color="#1f5fa8", alpha=0.5, label="trial finished", zorder=3)
    ax.step(
        hours,
        best_so_far(values, direction),
        where="post",
        color="#c45a00",
        linewidth=2,
        label="best so far",
        zorder=4,
    )
    ax.set_xlabel("hours since the first trial started")
    ax.set_ylabel(_objective_label(study))
    ax.set_xlim(left=0.0)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def param_importances(study: optuna.Study) -> dict[str, float] | None:
    """fANOVA importances (seeded) of the parameters that matter, or None when meaningless.

    Parameters with importance 0 (never varied) are left out. None when fewer than two
    COMPLETE trials with a finite value exist, when no parameter varies across them, or when
    Optuna cannot compute them.
    """
    trials = complete_trials(study)
    if len(trials) < 2:
        return None
    try:
        importances = optuna.importance.get_param_importances(
            study,
            evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0),
            target=_target(study),
        )
    except (ValueError, RuntimeError, ZeroDivisionError) as exc:
        log.info("parameter importances unavailable: %s", exc)
        return None
    # Zero means a parameter that never varied (e.g. node 2's only input pair): not worth a bar.
    cleaned = {name: float(v) for name, v in importances.items() if math.isfinite(float(v))}
    varying = {name: v for name, v in cleaned.items() if v > 0}
    return varying or None


def plot_importances(study: optuna.Study, path: str | Path) -> Path:
    """Parameter importances as a horizontal bar chart (most important on top).

    Drawn by Optuna (``optuna.visualization.matplotlib.plot_param_importances``, seeded
    fANOVA) over at most :data:`MAX_IMPORTANCES` parameters: those that matter most, never one
    that did not vary (a csnas study has 40 parameters, many constant at first). When
    importances cannot be computed (see :func:`param_importances`) the figure says
    :data:`IMPORTANCE_PLACEHOLDER` instead.

    Args:
        study: Any Optuna study (single objective).
        path: The PNG to write.

    Returns:
        The path written.
    """
    importances = param_importances(study)
    if importances is None:
        fig, ax = new_figure(7.5, 3.0)
        ax.set_title(f"{study.study_name}: parameter importances")
        _placeholder(ax, IMPORTANCE_PLACEHOLDER)
        return save_figure(fig, path)
    shown = [name for name, _ in sorted(importances.items(), key=lambda kv: -kv[1])]
    shown = shown[:MAX_IMPORTANCES]
    import optuna.visualization.matplotlib as optuna_plots

    ax = optuna_plots.plot_param_importances(
        study,
        evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0),
        params=shown,
        target=_target(study),
    )
    extra = f" (top {len(shown)} of {len(importances)})" if len(importances) > len(shown) else ""
    _retitle(ax, f"{study.study_name}: parameter importances (fANOVA){extra}")
    ax.set_yticks(ax.get_yticks(), [node_label(t.get_text()) for t in ax.get_yticklabels()])
    ax.tick_params(axis="y", labelsize=8)
    return _save_optuna(ax, path)


def node_label(param: str) -> str:
    """A parameter name in the cell drawings' numbering of the nodes.

    Parameters name a node by its genotype state (``normal/n3/op0``: states 0 and 1 are the
    cell's inputs); the drawings (:mod:`cnas_hpc.analysis.cells`) number the intermediate
    nodes ``0 .. n-1``. Plots use the drawings' numbers: ``normal/n3/op0`` ->
    ``normal/node 1/op0``. Other names are returned unchanged.
    """
    return re.sub(r"/n(\d+)/", lambda m: f"/node {int(m.group(1)) - 2}/", param)


def _retitle(ax: Axes, text: str) -> None:
    """Replace the title Optuna drew (the history's in the centre, the importances' on the
    left) with ours, as the figure's title on its left edge, wrapped to the figure's width: not
    printed over Optuna's, and not cut off when long tick labels push the axes right."""
    for loc in ("left", "center", "right"):
        ax.set_title("", loc=loc)
    from matplotlib.figure import Figure

    fig = ax.get_figure()
    assert isinstance(fig, Figure)
    fig.suptitle(textwrap.fill(text, 80), x=0.01, ha="left", fontsize=11)


def write_html(
    report_dir: str | Path,
    status_text: str,
    images: Sequence[str | Path],
    *,
    title: str = "cnas-hpc study report",
) -> Path:
    """Write ``<report_dir>/index.html``: the status text in ``<pre>`` and the pictures.

    The page needs nothing but the PNGs next to it (no script, no stylesheet, no network).
    Images are referenced relative to ``report_dir`` when they lie under it, so the folder can
    be copied off the cluster as a whole. All text is HTML-escaped.

    Args:
        report_dir: Folder of the page (created if missing).
        status_text: Plain text shown verbatim (e.g. what ``report.format_status`` returns).
        images: PNG paths, shown in this order, each captioned by its file name.
        title: The page's title and heading.

    Returns:
        The path of ``index.html``.
    """
    folder = Path(report_dir)
    folder.mkdir(parents=True, exist_ok=True)
    figures = []
    for image in images:
        path = Path(image)
        source = Path(os.path.relpath(path.resolve(), folder.resolve())).as_posix()
        if source.startswith("../"):
            source = path.resolve().as_uri()
        caption = html.escape(path.stem.replace("_", " "))
        figures.append(
            f'<figure><img src="{html.escape(source, quote=True)}" alt="{caption}">'
            f"<figcaption>{caption}</figcaption></figure>"
        )
    page = "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{html.escape(title)}</title>",
            "<style>body{font-family:sans-serif;margin:2em;max-width:80em}"
            "pre{background:#f6f6f6;padding:1em;overflow-x:auto}"
            "figure{display:inline-block;margin:1em;vertical-align:top}"
            "img{max-width:100%;border:1px solid #ddd}</style>",
            "</head><body>",
            f"<h1>{html.escape(title)}</h1>",
            f"<pre>{html.escape(status_text)}</pre>",
            *figures,
            "</body></html>",
            "",
        ]
    )
    out = folder / "index.html"
    tmp = out.with_suffix(".html.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out)
    return out
