"""TPE vs random, compact vs csnas: best-so-far curves with their spread, trials to a target.

Every run is a search study of the same budget on the same objective; a run's curve is the best
COMPLETE value after each trial (in trial-number order: the order the sampler proposed them).
Per method: the mean and standard deviation of the curves over seeds, the final best, and how
many trials each seed needed to reach the target (a run that never reached it counts as not
reached, and the median is over the seeds that did).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tabulate import tabulate

from cnas_hpc.analysis.plots import new_figure, save_figure, write_html


@dataclass(frozen=True)
class MethodSummary:
    """One method over its seeds."""

    method: str
    seeds: int
    final_best_mean: float
    final_best_std: float
    reached: int
    trials_to_target_median: float | None
    curve_mean: list[float]
    curve_std: list[float]


def best_so_far(values: Sequence[float], minimize: bool) -> list[float]:
    """The running best of ``values``."""
    out: list[float] = []
    for value in values:
        if not out:
            out.append(value)
        else:
            out.append(min(out[-1], value) if minimize else max(out[-1], value))
    return out


def trials_to_target(curve: Sequence[float], target: float, minimize: bool) -> int | None:
    """The 1-based trial at which ``curve`` first reaches ``target`` (None: never)."""
    for index, value in enumerate(curve, 1):
        if (value <= target) if minimize else (value >= target):
            return index
    return None


def summarise_methods(
    curves: Mapping[str, Sequence[Sequence[float]]], minimize: bool, target: float | None
) -> tuple[list[MethodSummary], float]:
    """Per-method summaries of runs' best-so-far curves; returns them and the target used."""
    finals = [curve[-1] for runs in curves.values() for curve in runs if curve]
    goal = target if target is not None else float(np.median(finals))
    summaries = []
    for method, runs in curves.items():
        usable = [list(c) for c in runs if c]
        if not usable:
            continue
        length = min(len(c) for c in usable)
        grid = np.array([c[:length] for c in usable])
        hits = [trials_to_target(c, goal, minimize) for c in usable]
        reached = [h for h in hits if h is not None]
        summaries.append(
            MethodSummary(
                method=method,
                seeds=len(usable),
                final_best_mean=float(np.mean([c[-1] for c in usable])),
                final_best_std=float(np.std([c[-1] for c in usable])),
                reached=len(reached),
                trials_to_target_median=float(np.median(reached)) if reached else None,
                curve_mean=grid.mean(axis=0).tolist(),
                curve_std=grid.std(axis=0).tolist(),
            )
        )
    return summaries, goal


def format_methods(summaries: Sequence[MethodSummary], target: float, objective: str) -> str:
    """A plain-text table of the methods."""
    rows = [
        [
            s.method,
            s.seeds,
            f"{s.final_best_mean:.4f} +- {s.final_best_std:.4f}",
            f"{s.reached}/{s.seeds}",
            "-" if s.trials_to_target_median is None else f"{s.trials_to_target_median:.1f}",
        ]
        for s in summaries
    ]
    headers = ["method", "seeds", f"final best {objective}", "reached target", "trials to target"]
    table = tabulate(rows, headers, tablefmt="simple", disable_numparse=True)
    return f"target {objective} = {target:.4f}\n{table}"


def _plot(summaries: Sequence[MethodSummary], path: Path, objective: str, target: float) -> Path:
    fig, ax = new_figure(7, 4.2)
    for s in summaries:
        x = np.arange(1, len(s.curve_mean) + 1)
        mean, std = np.array(s.curve_mean), np.array(s.curve_std)
        ax.plot(x, mean, label=f"{s.method} ({s.seeds} seeds)")
        ax.fill_between(x, mean - std, mean + std, alpha=0.2)
    ax.axhline(target, color="#888888", linestyle="--", linewidth=1, label="target")
    ax.set_xlabel("trials")
    ax.set_ylabel(f"best {objective} so far")
    ax.set_title("best-so-far, mean +- std over seeds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def write_comparison(
    summaries: Sequence[MethodSummary], target: float, objective: str, folder: Path
) -> list[Path]:
    """``comparison.txt``, ``comparison.json``, ``best_so_far.png`` and ``index.html``."""
    folder.mkdir(parents=True, exist_ok=True)
    text = format_methods(summaries, target, objective)
    (folder / "comparison.txt").write_text(text + "\n", encoding="utf-8")
    payload = {
        "objective": objective,
        "target": target,
        "methods": [
            {
                k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                for k, v in asdict(s).items()
            }
            for s in summaries
        ],
    }
    (folder / "comparison.json").write_text(json.dumps(payload, indent=2), encoding="utf-8")
    image = _plot(summaries, folder / "best_so_far.png", objective, target)
    page = write_html(folder, text, [image], title="cnas-hpc: samplers and encodings")
    return [folder / "comparison.txt", folder / "comparison.json", image, page]
