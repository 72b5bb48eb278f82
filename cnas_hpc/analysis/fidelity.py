"""Does the label-free score rank cells the way accuracy does? The statistics and the report.

Sign convention: every correlation is between "better by the score" and "better by accuracy"
(a minimised score is negated first), so a positive Kendall tau means the score ranks cells like
accuracy does, 0 means no better than chance, and a negative one means it ranks them backwards.

Reported: Kendall tau-b and Spearman rho with percentile-bootstrap confidence intervals (cells
resampled with replacement), the top-k overlap, the same tau for every objective the search can
use (the validation and the training contrastive loss come from the same runs) and for every
proxy epoch (how many epochs the score needs), the tau of the parameter count alone (a baseline
any score should beat), and the score's own noise: the spread of one cell's score across seeds
next to the spread of the scores across cells (a difference smaller than the noise means
nothing). Every ranking of the cells is also put side by side in one table with its cost per
cell (:class:`RankingRow`): the label-free scores, the zero-cost proxies, parameters and MACs,
and, in reference mode, the ground-truth file's own cheaper rankings (supervised settings with
their GPU time), so a user sees which ranking to buy for which budget.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tabulate import tabulate

from cnas_hpc.analysis.plots import new_figure, save_figure, write_html
from cnas_hpc.common.objectives import (
    ZERO_COST_OBJECTIVES,
    direction_of,
    is_zero_cost,
    ranked_by_mean_rank,
)
from cnas_hpc.fidelity.app import FidelityPlan
from cnas_hpc.fidelity.reference import Reference
from cnas_hpc.fidelity.store import COMPLETE, FAIL, Measurement
from cnas_hpc.study.pareto import average_ranks

# scipy is imported by the two functions that use it: every measurement worker imports this
# module (through the fidelity command) but never ranks, and scipy cost ~0.5 s of each start.

#: Objectives whose value every score measurement records.
SCORE_OBJECTIVES = ("val_contrastive_loss", "train_contrastive_loss", "knn_accuracy")


@dataclass(frozen=True)
class Interval:
    """A statistic and its bootstrap confidence interval."""

    value: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.value:+.3f} [{self.low:+.3f}, {self.high:+.3f}]"


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b (ties handled); NaN when undefined."""
    from scipy import stats

    return float(stats.kendalltau(x, y).statistic)


def spearman_rho(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rho; NaN when undefined.

    An input of one repeated value has no ranking to correlate (a toy study, a bootstrap draw of
    one pair): NaN without SciPy's ``ConstantInputWarning``, which the report already shows as nan.
    """
    from scipy import stats

    if len(set(x)) < 2 or len(set(y)) < 2:
        return math.nan
    return float(stats.spearmanr(x, y).statistic)


def bootstrap(
    x: Sequence[float],
    y: Sequence[float],
    statistic: Callable[[Sequence[float], Sequence[float]], float],
    *,
    resamples: int,
    confidence: float,
    seed: int = 0,
) -> Interval:
    """``statistic(x, y)`` and its percentile-bootstrap interval over resampled pairs."""
    xs, ys = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    value = statistic(xs.tolist(), ys.tolist())
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(resamples):
        index = rng.integers(0, len(xs), len(xs))
        drawn = statistic(xs[index].tolist(), ys[index].tolist())
        if math.isfinite(drawn):
            draws.append(drawn)
    if not draws:
        return Interval(value, math.nan, math.nan)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(draws, [tail, 1.0 - tail])
    return Interval(value, float(low), float(high))


def top_k_overlap(better_score: Sequence[float], accuracy: Sequence[float], k: int) -> float:
    """Share of the k best cells by accuracy that are also among the k best by the score."""
    k = min(k, len(accuracy))
    by_score = set(np.argsort(-np.asarray(better_score))[:k].tolist())
    by_accuracy = set(np.argsort(-np.asarray(accuracy))[:k].tolist())
    return len(by_score & by_accuracy) / max(k, 1)


@dataclass
class CellRow:
    """One cell's measurements."""

    key: str
    source: str
    accuracy: float | None
    score: float | None
    score_seeds: list[float]
    params: int | None
    objectives: dict[str, float | None] = field(default_factory=dict)
    epochs: dict[str, list[float | None]] = field(default_factory=dict)
    macs: int | None = None
    seeds: dict[str, list[float]] = field(default_factory=dict)
    rankings: dict[str, float] = field(default_factory=dict)


@dataclass
class RankingRow:
    """One way of ranking the cells, its agreement with accuracy and its cost per cell.

    ``cost_s`` is seconds per cell on ``device`` (the measured mean wall time of this study's
    measurements, or the ground-truth file's GPU-hours x 3600); 0 for a count.
    """

    name: str
    kind: str
    labels: bool
    cost_s: float | None
    device: str
    tau: Interval | None
    rho: Interval | None
    top_k_overlap: float | None
    noise_share: float | None = None
    note: str = ""


@dataclass
class FidelitySummary:
    """Everything the report says (also written as JSON)."""

    objective: str
    n_cells: int
    n_measured: int
    tau: Interval | None
    rho: Interval | None
    top_k: int
    top_k_overlap: float | None
    params_tau: Interval | None
    by_objective: dict[str, Interval | None]
    by_epoch: list[float]
    noise_std: float | None
    score_spread: float | None
    failures: list[str]
    rows: list[CellRow]
    rankings: list[RankingRow] = field(default_factory=list)
    #: The ranking the search picks by when it has several label-free objectives (the default
    #: ``search.objectives=[score, naswot]``: the mean of each cell's ranks), else None.
    search_ranking: RankingRow | None = None


def _sign(objective: str) -> float:
    return 1.0 if direction_of(objective) == "maximize" else -1.0


def collect_rows(
    plan: FidelityPlan, objective: str, base_seed: int
) -> tuple[list[CellRow], list[str]]:
    """One row per cell from the plan's measurements, and the failures."""
    rows, failures = [], []
    for cell in plan.cells:
        accuracy = plan.accuracy[cell.genotype_hash]
        scores = plan.scores.get(cell.genotype_hash, [])
        zero_cost = plan.zero_cost.get(cell.genotype_hash, [])
        for m in [accuracy, *zero_cost, *scores]:
            if m.state == FAIL:
                failures.append(f"{cell.key} {m.kind} seed {m.seed}: {m.fail_reason}")
        done = [m for m in scores if m.state == COMPLETE]
        main = next((m for m in done if m.seed == base_seed), None)
        zc_done = [m for m in zero_cost if m.state == COMPLETE]
        zc_main = next((m for m in zc_done if m.seed == base_seed), None)
        history = main.extra.get("history", []) if main is not None else []
        objectives = {o: main.extra.get(o) for o in SCORE_OBJECTIVES} if main else {}
        objectives |= {z: zc_main.extra.get(z) for z in ZERO_COST_OBJECTIVES} if zc_main else {}
        seeds_of = _seed_values(zc_done if is_zero_cost(objective) else done, objective)
        rows.append(
            CellRow(
                key=cell.key,
                source=cell.source,
                accuracy=accuracy.value if accuracy.state == COMPLETE else None,
                score=objectives.get(objective),
                score_seeds=seeds_of,
                params=accuracy.params,
                objectives=objectives,
                epochs={
                    "val_contrastive_loss": [h.get("val_loss") for h in history],
                    "train_contrastive_loss": [h.get("train_loss") for h in history],
                },
                macs=accuracy.macs,
                seeds={o: _seed_values(done, o) for o in SCORE_OBJECTIVES}
                | {z: _seed_values(zc_done, z) for z in ZERO_COST_OBJECTIVES},
                rankings=dict(accuracy.extra.get("rankings", {})),
            )
        )
    return rows, failures


def _seed_values(done: Sequence[Measurement], name: str) -> list[float]:
    return [float(m.extra[name]) for m in done if m.extra.get(name) is not None]


def _tau_of(
    rows: Sequence[CellRow],
    get: Callable[[CellRow], float | None],
    sign: float,
    resamples: int,
    confidence: float,
) -> Interval | None:
    pairs = [
        (sign * v, r.accuracy) for r in rows if (v := get(r)) is not None and r.accuracy is not None
    ]
    if len(pairs) < 3:
        return None
    x, y = zip(*pairs, strict=True)
    return bootstrap(x, y, kendall_tau, resamples=resamples, confidence=confidence)


def _objective(name: str) -> Callable[[CellRow], float | None]:
    def value(row: CellRow) -> float | None:
        return row.objectives.get(name)

    return value


def _at_epoch(objective: str, epoch: int) -> Callable[[CellRow], float | None]:
    def value(row: CellRow) -> float | None:
        series = row.epochs.get(objective, [])
        return series[epoch] if len(series) > epoch else None

    return value


def _mean_wall(groups: dict[str, list[Measurement]]) -> float | None:
    walls = [m.wall_s for ms in groups.values() for m in ms if m.state == COMPLETE and m.wall_s]
    return float(np.mean(walls)) if walls else None


def _noise_share(rows: Sequence[CellRow], name: str, sign: float) -> float | None:
    """Mean std of one cell's values across seeds over the std of the values across cells."""
    noisy = [float(np.std(r.seeds[name])) for r in rows if len(r.seeds.get(name, [])) > 1]
    values = [sign * v for r in rows if (v := r.objectives.get(name)) is not None]
    spread = float(np.std(values)) if len(values) > 1 else 0.0
    return float(np.mean(noisy)) / spread if noisy and spread > 0 else None


@dataclass(frozen=True)
class _Stats:
    resamples: int
    confidence: float
    top_k: int


def _ranking(
    rows: Sequence[CellRow],
    get: Callable[[CellRow], float | None],
    stats_of: _Stats,
    **fields: Any,
) -> RankingRow | None:
    pairs = [(v, r.accuracy) for r in rows if (v := get(r)) is not None and r.accuracy is not None]
    if len(pairs) < 3:
        return None
    x, y = (list(t) for t in zip(*pairs, strict=True))
    n, level = stats_of.resamples, stats_of.confidence
    return RankingRow(
        tau=bootstrap(x, y, kendall_tau, resamples=n, confidence=level),
        rho=bootstrap(x, y, spearman_rho, resamples=n, confidence=level),
        top_k_overlap=top_k_overlap(x, y, stats_of.top_k),
        **fields,
    )


def _better(name: str) -> Callable[[CellRow], float | None]:
    sign = _sign(name)

    def value(row: CellRow) -> float | None:
        v = row.objectives.get(name)
        return None if v is None else sign * v

    return value


def _size(attribute: str) -> Callable[[CellRow], float | None]:
    def value(row: CellRow) -> float | None:
        v = getattr(row, attribute)
        return float(v) if v else None

    return value


def _file_ranking(name: str) -> Callable[[CellRow], float | None]:
    def value(row: CellRow) -> float | None:
        return row.rankings.get(name)

    return value


#: Label-free pairs whose per-cell rank mean is reported as one more ranking: two signals that
#: barely correlate (a trained contrastive loss and a statistic of the untrained network) add up.
COMBINED = (("val_contrastive_loss", "naswot"), ("train_contrastive_loss", "naswot"))


def _rank_mean(rows: Sequence[CellRow], names: Sequence[str]) -> Callable[[CellRow], float | None]:
    """Per cell: the mean over ``names`` of its rank among the cells measured on all of them
    (each objective made "higher is better" first). A statistic of the SET of cells, not of one
    cell: adding a cell can change the others' values (what a report ranks, not what a trial tells).
    """
    both = [r for r in rows if all(r.objectives.get(n) is not None for n in names)]
    # average_ranks ranks ascending (rank 1 = the lowest), so after _sign the best gets the
    # highest mean rank, as the value of a "higher is better" ranking should.
    columns = [[_sign(n) * float(r.objectives[n]) for r in both] for n in names]  # type: ignore[arg-type]
    mean = average_ranks(columns) if both else []
    by_key = {r.key: mean[i] for i, r in enumerate(both)}

    def value(row: CellRow) -> float | None:
        return by_key.get(row.key)

    return value


def ranking_rows(
    plan: FidelityPlan,
    rows: Sequence[CellRow],
    stats_of: _Stats,
    *,
    device: str,
    reference: Reference | None = None,
    combined: Sequence[tuple[str, ...]] = COMBINED,
) -> list[RankingRow]:
    """Every ranking of the cells side by side (see :class:`RankingRow`), cheapest first;
    ``combined``: the label-free sets whose per-cell rank mean is one more ranking."""
    costs = {"score": _mean_wall(plan.scores), "zero_cost": _mean_wall(plan.zero_cost)}
    out: list[RankingRow | None] = []
    for name in (*SCORE_OBJECTIVES, *ZERO_COST_OBJECTIVES):
        sign = _sign(name)
        out.append(
            _ranking(
                rows,
                _better(name),
                stats_of,
                name=name,
                kind="zero-cost" if is_zero_cost(name) else "label-free score",
                labels=name == "knn_accuracy",
                cost_s=costs["zero_cost" if is_zero_cost(name) else "score"],
                device=device,
                noise_share=_noise_share(rows, name, sign),
            )
        )
    for names in combined:
        cost = [costs["zero_cost" if is_zero_cost(n) else "score"] for n in names]
        out.append(
            _ranking(
                rows,
                _rank_mean(rows, names),
                stats_of,
                name=" + ".join(names),
                kind="rank mean",
                labels=False,
                cost_s=None if None in cost else sum(c for c in cost if c is not None),
                device=device,
                note=f"mean of the {len(names)} ranks among these cells",
            )
        )
    for name, attribute in (("params", "params"), ("MACs", "macs")):
        out.append(
            _ranking(
                rows,
                _size(attribute),
                stats_of,
                name=name,
                kind="size",
                labels=False,
                cost_s=0.0,
                device="-",
            )
        )
    for name in reference.ranking_names() if reference is not None else []:
        setting = reference.settings.get(name) if reference is not None else None
        hours = setting.gpu_hours if setting is not None else None
        out.append(
            _ranking(
                rows,
                _file_ranking(name),
                stats_of,
                name=name,
                kind="supervised (file)",
                labels=True,
                cost_s=None if hours is None else 3600.0 * hours,
                device="GPU",
                note=setting.description if setting is not None else "",
            )
        )
    found = [r for r in out if r is not None]
    return sorted(found, key=lambda r: (r.cost_s is None, r.cost_s or 0.0, r.name))


def summarise(
    plan: FidelityPlan,
    objective: str,
    *,
    base_seed: int,
    top_k: int,
    resamples: int,
    confidence: float,
    reference: Reference | None = None,
    device: str = "CPU",
    search_objectives: Sequence[str] = (),
) -> FidelitySummary:
    """The statistics of a fidelity study (see the module docstring).

    ``search_objectives``: the search's objectives (``search.values``); several label-free
    ones are ranked by their per-cell rank mean, reported as :attr:`FidelitySummary.search_ranking`.
    """
    rows, failures = collect_rows(plan, objective, base_seed)
    sign = _sign(objective)
    measured = [r for r in rows if r.score is not None and r.accuracy is not None]
    better = [sign * float(r.score or 0.0) for r in measured]
    accuracy = [float(r.accuracy or 0.0) for r in measured]
    enough = len(measured) >= 3
    by_objective = {
        name: _tau_of(rows, _objective(name), _sign(name), resamples, confidence)
        for name in (*SCORE_OBJECTIVES, *ZERO_COST_OBJECTIVES)
    }
    epochs = max((len(r.epochs.get(objective, [])) for r in rows), default=0)
    by_epoch = []
    for e in range(epochs):
        interval = _tau_of(rows, _at_epoch(objective, e), sign, 1, confidence)
        by_epoch.append(interval.value if interval is not None else math.nan)
    noisy = [np.std(r.score_seeds) for r in rows if len(r.score_seeds) > 1]
    search = tuple(search_objectives) if ranked_by_mean_rank(search_objectives) else ()
    combined = COMBINED if not search or search in COMBINED else (*COMBINED, search)
    rankings = ranking_rows(
        plan,
        rows,
        _Stats(resamples, confidence, top_k),
        device=device,
        reference=reference,
        combined=combined,
    )
    return FidelitySummary(
        objective=objective,
        n_cells=len(rows),
        n_measured=len(measured),
        tau=bootstrap(better, accuracy, kendall_tau, resamples=resamples, confidence=confidence)
        if enough
        else None,
        rho=bootstrap(better, accuracy, spearman_rho, resamples=resamples, confidence=confidence)
        if enough
        else None,
        top_k=top_k,
        top_k_overlap=top_k_overlap(better, accuracy, top_k) if enough else None,
        params_tau=_tau_of(
            rows, lambda r: float(r.params) if r.params else None, 1.0, resamples, confidence
        ),
        by_objective=by_objective,
        by_epoch=by_epoch,
        noise_std=float(np.mean(noisy)) if noisy else None,
        score_spread=float(np.std(better)) if measured else None,
        failures=failures,
        rows=rows,
        rankings=rankings,
        search_ranking=next((r for r in rankings if r.name == " + ".join(search)), None)
        if search
        else None,
    )


def _cost_text(row: RankingRow) -> str:
    if row.cost_s is None:
        return "?"
    if row.cost_s == 0:
        return "0"
    if row.cost_s >= 3600:
        return f"{row.cost_s / 3600:.2f} {row.device}-h"
    return f"{row.cost_s:.1f} {row.device}-s"


def format_rankings(summary: FidelitySummary, confidence: float) -> str:
    """Every ranking side by side: tau and rho with their intervals, top-k, noise, cost."""
    pct = f"{100 * confidence:.0f}%"
    table = tabulate(
        [
            [
                r.name,
                r.kind + (" (labels)" if r.labels else ""),
                _cost_text(r),
                str(r.tau) if r.tau else "-",
                str(r.rho) if r.rho else "-",
                "-" if r.top_k_overlap is None else f"{r.top_k_overlap:.2f}",
                "-" if r.noise_share is None else f"{r.noise_share:.2f}",
                r.note,
            ]
            for r in summary.rankings
        ],
        [
            "ranking",
            "kind",
            "cost per cell",
            f"Kendall tau [{pct}]",
            f"Spearman rho [{pct}]",
            f"top-{summary.top_k}",
            "noise share",
            "setting",
        ],
        tablefmt="simple",
        disable_numparse=True,
    )
    return "every ranking of these cells vs accuracy, cheapest first:\n" + table


def format_setup(setup: dict[str, Any]) -> str:
    """The settings a study was measured with, one per line (empty without settings)."""
    lines = [f"  {k}: {v}" for k, v in setup.items() if v is not None]
    return "settings:\n" + "\n".join(lines) + "\n" if lines else ""


def format_summary(summary: FidelitySummary, confidence: float) -> str:
    """The summary as plain text."""
    pct = f"{100 * confidence:.0f}%"
    lines = [
        f"cells: {summary.n_cells} ({summary.n_measured} with a score and an accuracy)",
        f"score: {summary.objective} (correlations are 'better by the score' vs accuracy)",
        f"Kendall tau   {summary.tau}  ({pct} bootstrap interval)"
        if summary.tau
        else "Kendall tau   -",
        f"Spearman rho  {summary.rho}" if summary.rho else "Spearman rho  -",
        f"top-{summary.top_k} overlap {summary.top_k_overlap:.2f}"
        if summary.top_k_overlap is not None
        else "top-k overlap -",
        f"parameter count alone: tau {summary.params_tau}" if summary.params_tau else "",
    ]
    search = summary.search_ranking
    if search is not None and search.tau is not None:
        lines.insert(
            1,
            f"the search's ranking: {search.name} (mean of the cells' ranks, "
            f"search.objectives): Kendall tau {search.tau}, Spearman rho {search.rho}",
        )
    if summary.noise_std is not None and summary.score_spread:
        share = summary.noise_std / summary.score_spread
        lines.append(
            f"score noise: std {summary.noise_std:.4f} across seeds of one cell vs "
            f"{summary.score_spread:.4f} across cells ({share:.2f} of the spread)"
        )
    lines.append(
        "by objective: "
        + ", ".join(
            f"{name} {interval}"
            for name, interval in summary.by_objective.items()
            if interval is not None
        )
    )
    if summary.by_epoch:
        lines.append("tau by proxy epoch: " + " ".join(f"{t:+.3f}" for t in summary.by_epoch))
    table = tabulate(
        [
            [
                r.key,
                r.source,
                "-" if r.score is None else f"{r.score:.4f}",
                "-" if len(r.score_seeds) < 2 else f"{np.std(r.score_seeds):.4f}",
                "-" if r.accuracy is None else f"{100 * r.accuracy:.2f}",
                "-" if r.params is None else f"{r.params / 1e6:.3f}",
            ]
            for r in summary.rows
        ],
        ["cell", "source", summary.objective, "std over seeds", "accuracy %", "params M"],
        tablefmt="simple",
        disable_numparse=True,
    )
    if summary.failures:
        lines.append("failures: " + "; ".join(summary.failures))
    head = "\n".join(line for line in lines if line)
    if summary.rankings:
        head += "\n\n" + format_rankings(summary, confidence)
    return head + "\n\n" + table


def _scatter(summary: FidelitySummary, path: Path) -> Path:
    fig, ax = new_figure(7, 5)
    for source, colour in (("random", "#1f5fa8"), ("preset", "#c45a00"), ("file", "#2a9d3a")):
        points = [
            (r.key, r.score, 100 * r.accuracy)
            for r in summary.rows
            if r.source == source and r.score is not None and r.accuracy is not None
        ]
        ax.scatter([p[1] for p in points], [p[2] for p in points], s=28, color=colour, label=source)
        if source != "random":
            for key, x, y in points:
                ax.annotate(key, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    tau = f"Kendall tau {summary.tau}" if summary.tau else ""
    ax.set_title(f"label-free score vs accuracy ({summary.n_measured} cells)\n{tau}", fontsize=10)
    ax.set_xlabel(
        f"{summary.objective} ({'higher' if _sign(summary.objective) > 0 else 'lower'} is better)"
    )
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def _by_epoch(summary: FidelitySummary, path: Path) -> Path:
    fig, ax = new_figure(6, 3.5)
    ax.plot(range(1, len(summary.by_epoch) + 1), summary.by_epoch, marker="o")
    ax.axhline(0.0, color="#888888", linewidth=1)
    ax.set_xlabel("proxy epochs")
    ax.set_ylabel("Kendall tau")
    ax.set_title(f"{summary.objective}: ranking quality by proxy epoch", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


def _tau_vs_cost(summary: FidelitySummary, path: Path) -> Path:
    fig, ax = new_figure(8, 5)
    colours = {
        "label-free score": "#1f5fa8",
        "zero-cost": "#2a9d3a",
        "size": "#777777",
        "supervised (file)": "#c45a00",
    }
    floor = min((r.cost_s for r in summary.rankings if r.cost_s), default=1.0) / 3
    for kind, colour in colours.items():
        points = [r for r in summary.rankings if r.kind == kind and r.tau and r.cost_s is not None]
        if not points:
            continue
        xs = [max(r.cost_s or 0.0, floor) for r in points]
        taus = [r.tau.value for r in points if r.tau]
        low = [r.tau.value - r.tau.low for r in points if r.tau]
        high = [r.tau.high - r.tau.value for r in points if r.tau]
        ax.errorbar(xs, taus, yerr=[low, high], fmt="o", color=colour, label=kind, capsize=2)
        for r, x, t in zip(points, xs, taus, strict=True):
            ax.annotate(r.name, (x, t), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.axhline(0.0, color="#888888", linewidth=1)
    ax.set_xlabel("cost per cell (seconds on its device; counts drawn at the left edge)")
    ax.set_ylabel("Kendall tau vs accuracy")
    ax.set_title(f"ranking quality against cost ({summary.n_cells} cells)", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def write_report(
    summary: FidelitySummary,
    folder: Path,
    confidence: float,
    title: str,
    setup: dict[str, Any] | None = None,
) -> list[Path]:
    """Write ``summary.txt``, ``fidelity.json``, ``scatter.png``, ``tau_vs_cost.png``,
    ``tau_by_epoch.png`` and ``index.html`` into ``folder``; returns the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    text = format_setup(setup or {}) + format_summary(summary, confidence)
    (folder / "summary.txt").write_text(text + "\n", encoding="utf-8")
    payload = {"setup": setup or {}, **asdict(summary)}
    (folder / "fidelity.json").write_text(
        json.dumps(_jsonable(payload), indent=2), encoding="utf-8"
    )
    images = [_scatter(summary, folder / "scatter.png")]
    if summary.rankings:
        images.append(_tau_vs_cost(summary, folder / "tau_vs_cost.png"))
    if summary.by_epoch:
        images.append(_by_epoch(summary, folder / "tau_by_epoch.png"))
    page = write_html(folder, text, images, title=title)
    return [folder / "summary.txt", folder / "fidelity.json", *images, page]
