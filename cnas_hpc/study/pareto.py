"""The Pareto front of a study: its cells that no other feasible cell beats on every axis.

A study is cost-aware when it has several objectives (``cnas:objectives``, in the order of
``trial.values``) or when its trials record the cost of their cell at evaluation size
(``cnas:cost_params``, ``cnas:cost_macs``, ``cnas:cost_latency_ms``). Its front is read here,
on the study's floor, because two apps above need the same answer: the report draws it
(:mod:`cnas_hpc.analysis.pareto`) and the evaluation trains cells spread along it
(:mod:`cnas_hpc.evaluate.cells`).

Contract:
    * The AXES of the front: a multi-objective study's objectives, with the study's directions;
      a single-objective study's objective plus every cost recorded on all of its trained
      feasible trials (costs are minimised). A single-objective study that records no cost has
      no front (:func:`pareto_view` returns None).
    * Feasibility: Optuna's constraint values (``system_attrs["constraints"]``, feasible iff
      all <= 0) decide; without them the user attribute ``cnas:infeasible``; without either, a
      trial is feasible. An infeasible trial is NEVER on the front.
    * Points: COMPLETE trials with finite values (trained), and PRUNED trials marked infeasible
      (cells that broke a hard limit before training: costs, no values). Other trials are
      ignored. Only trained feasible trials with a genotype and every axis value are
      candidates; a genotype that several trials share counts once (its lowest trial number).
    * The front is sorted by :attr:`ParetoView.sort_by` (the first cost among the axes, else
      the second axis), ties by the primary objective (better first), then the trial number.
    * One pick of a multi-objective study's front (:func:`best_mean_rank`): the candidate whose
      ranks among all candidates, averaged over the objectives, are best. It is always on the
      front (a cell that beats it on every objective has better ranks on every objective).
    * Read-only: nothing here writes to the study.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from cnas_hpc.common import attrs
from cnas_hpc.common.objectives import ranked_by_mean_rank
from cnas_hpc.study.optuna_internals import constraint_values_of

#: The costs a trial can record, in display order, and the user attribute holding each.
COST_ATTRS: Final[dict[str, str]] = {
    "params": attrs.COST_PARAMS,
    "macs": attrs.COST_MACS,
    "latency_ms": attrs.COST_LATENCY_MS,
}
COSTS: Final[tuple[str, ...]] = tuple(COST_ATTRS)


@dataclass(frozen=True)
class Point:
    """One trial as the front sees it.

    Attributes:
        number: The trial number.
        trained: True for a COMPLETE trial (values known); False for a PRUNED infeasible one.
        feasible: Whether it satisfies the study's constraints.
        values: Its objective values by objective name (empty when untrained) and its recorded
            costs by cost name (an objective that is a cost takes the objective's value).
        genotype_json: ``cnas:genotype``, or None.
        device: ``cnas:cost_device`` (where latency was measured), or None.
        network: ``cnas:cost_network`` (the network the costs are of), or None.
    """

    number: int
    trained: bool
    feasible: bool
    values: dict[str, float]
    genotype_json: str | None = None
    device: str | None = None
    network: str | None = None


@dataclass(frozen=True)
class ParetoView:
    """A study's points and its front.

    Attributes:
        study_name: The study.
        objectives: Names of ``trial.values``, in order.
        axes: The names the front is computed over (see the module contract).
        directions: Direction of every axis, by name.
        primary: The score the plots put on the y axis: the first objective that is not a cost
            (the first objective if every one is a cost).
        costs: Every cost that is an objective or recorded on some point, in :data:`COSTS`
            order (the plots' x axes).
        sort_by: The axis the front is sorted by (and :func:`spread_along` spreads along).
        points: Every point, by trial number.
        front: The non-dominated feasible points, sorted (see the module contract).
        limits: Upper limits of the costs, from the constraints the trials were judged by
            (``cnas:constraints`` entries ``<cost><=<number>``), by cost name.
    """

    study_name: str
    objectives: tuple[str, ...]
    axes: tuple[str, ...]
    directions: dict[str, StudyDirection]
    primary: str
    costs: tuple[str, ...]
    sort_by: str
    points: list[Point]
    front: list[Point]
    limits: dict[str, float] = field(default_factory=dict)

    def maximize(self, name: str) -> bool:
        """Whether ``name`` is maximised (costs and unknown names are minimised)."""
        return self.directions.get(name) == StudyDirection.MAXIMIZE

    @property
    def multi_objective(self) -> bool:
        """Whether the study optimises several objectives."""
        return len(self.objectives) > 1


def objectives_of(study: optuna.Study) -> tuple[str, ...]:
    """The study's objective names in the order of ``trial.values``.

    ``cnas:objectives`` when recorded; else the single ``cnas:objective`` (``"objective"``
    when unnamed; ``objective_<i>`` for unnamed extra objectives).
    """
    recorded = study.user_attrs.get(attrs.STUDY_OBJECTIVES)
    n = len(study.directions)
    if isinstance(recorded, list | tuple) and len(recorded) == n:
        return tuple(str(name) for name in recorded)
    if n == 1:
        return (str(study.user_attrs.get(attrs.STUDY_OBJECTIVE, "objective")),)
    return tuple(f"objective_{i}" for i in range(n))


def primary_of(objectives: Sequence[str]) -> str:
    """The primary objective: the first that is not a cost (the first if all are costs)."""
    return next((o for o in objectives if o not in COST_ATTRS), objectives[0])


def is_feasible(trial: FrozenTrial) -> bool:
    """Whether ``trial`` satisfies its study's constraints (see the module contract)."""
    values = constraint_values_of(trial)
    if values is not None:
        return all(value <= 0.0 for value in values)
    return not bool(trial.user_attrs.get(attrs.INFEASIBLE, False))


def recorded_costs(trial: FrozenTrial) -> dict[str, float]:
    """The costs ``trial`` recorded (user attributes), by cost name; finite values only."""
    out = {}
    for name, key in COST_ATTRS.items():
        value = trial.user_attrs.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if math.isfinite(float(value)):
            out[name] = float(value)
    return out


def trial_costs(study: optuna.Study) -> dict[tuple[str, int], dict[str, object]]:
    """The costs the study's trials recorded, by ``(study name, trial number)``.

    Each entry holds the recorded costs by name (``params``, ``macs``, ``latency_ms``) and,
    when recorded, ``device`` and ``network``; trials without a cost are left out.
    """
    out: dict[tuple[str, int], dict[str, object]] = {}
    for trial in study.get_trials(deepcopy=False):
        costs: dict[str, object] = dict(recorded_costs(trial))
        if not costs:
            continue
        for key, attr in (("device", attrs.COST_DEVICE), ("network", attrs.COST_NETWORK)):
            if attr in trial.user_attrs:
                costs[key] = str(trial.user_attrs[attr])
        out[(study.study_name, trial.number)] = costs
    return out


def _point(trial: FrozenTrial, objectives: Sequence[str]) -> Point | None:
    feasible = is_feasible(trial)
    values = recorded_costs(trial)
    if trial.state == TrialState.COMPLETE:
        raw = trial.values or []
        if len(raw) != len(objectives) or not all(math.isfinite(float(v)) for v in raw):
            return None
        values.update({name: float(v) for name, v in zip(objectives, raw, strict=True)})
        trained = True
    elif trial.state == TrialState.PRUNED and not feasible:
        trained = False
    else:
        return None
    ua = trial.user_attrs
    genotype = ua.get(attrs.GENOTYPE)
    return Point(
        number=trial.number,
        trained=trained,
        feasible=feasible,
        values=values,
        genotype_json=str(genotype) if genotype is not None else None,
        device=str(ua[attrs.COST_DEVICE]) if attrs.COST_DEVICE in ua else None,
        network=str(ua[attrs.COST_NETWORK]) if attrs.COST_NETWORK in ua else None,
    )


def cost_limits(trials: Sequence[FrozenTrial]) -> dict[str, float]:
    """``<cost><=<number>`` entries of the trials' ``cnas:constraints``, by cost (the tightest
    when they differ); other constraint forms are left out."""
    limits: dict[str, float] = {}
    for trial in trials:
        recorded = trial.user_attrs.get(attrs.CONSTRAINTS)
        for text in recorded if isinstance(recorded, list | tuple) else ():
            name, sep, bound = str(text).replace(" ", "").partition("<=")
            if not sep or name not in COST_ATTRS:
                continue
            try:
                value = float(bound)
            except ValueError:
                continue
            limits[name] = min(value, limits.get(name, math.inf))
    return limits


def _dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """``a`` no worse than ``b`` everywhere and better somewhere (both minimised)."""
    return all(x <= y for x, y in zip(a, b, strict=True)) and any(
        x < y for x, y in zip(a, b, strict=True)
    )


def _candidates(points: Sequence[Point], axes: Sequence[str]) -> list[Point]:
    """Trained feasible points with a genotype and every axis value; a genotype shared by
    several counts once (its lowest trial number)."""
    unique: dict[str, Point] = {}
    for p in sorted(points, key=lambda p: p.number):
        if p.trained and p.feasible and p.genotype_json and all(a in p.values for a in axes):
            unique.setdefault(p.genotype_json, p)
    return list(unique.values())


def non_dominated(
    points: Sequence[Point], axes: Sequence[str], directions: dict[str, StudyDirection]
) -> list[Point]:
    """The points of ``points`` that no other one dominates on ``axes`` (by number).

    Only trained feasible points with a genotype and a value on every axis take part; a
    genotype shared by several of them counts once (its lowest trial number).
    """
    signs = [-1.0 if directions.get(a) == StudyDirection.MAXIMIZE else 1.0 for a in axes]
    candidates = _candidates(points, axes)
    keyed = [(p, [s * p.values[a] for s, a in zip(signs, axes, strict=True)]) for p in candidates]
    return [p for p, key in keyed if not any(_dominates(other, key) for _, other in keyed)]


def pareto_view(study: optuna.Study) -> ParetoView | None:
    """The study's points and front; None for a single-objective study that records no cost."""
    objectives = objectives_of(study)
    directions = dict(zip(objectives, study.directions, strict=True))
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    points = [p for p in (_point(t, objectives) for t in trials) if p is not None]
    recorded = {name for p in points for name in p.values if name in COST_ATTRS}
    costs = tuple(c for c in COSTS if c in recorded or c in objectives)
    if len(objectives) == 1:
        if not costs:
            return None
        trained = [p for p in points if p.trained and p.feasible]
        # A cost recorded on only some trials (latency measured late, say) would drop the
        # others from the front: the axes are the costs every trained feasible trial has.
        shared = [c for c in costs if trained and all(c in p.values for p in trained)]
        axes = (objectives[0], *shared)
    else:
        axes = objectives
    for cost in costs:
        directions.setdefault(cost, StudyDirection.MINIMIZE)
    primary = primary_of(objectives)
    axis_costs = [a for a in axes if a in COST_ATTRS]
    others = [a for a in axes if a != primary]
    sort_by = axis_costs[0] if axis_costs else (others[0] if others else primary)
    front = non_dominated(points, axes, directions)
    sign = -1.0 if directions[primary] == StudyDirection.MAXIMIZE else 1.0
    front.sort(key=lambda p: (p.values[sort_by], sign * p.values[primary], p.number))
    return ParetoView(
        study_name=study.study_name,
        objectives=objectives,
        axes=axes,
        directions=directions,
        primary=primary,
        costs=costs,
        sort_by=sort_by,
        points=points,
        front=front,
        limits=cost_limits(trials),
    )


def spread_along(view: ParetoView, k: int) -> list[Point]:
    """``k`` front points spread along the front: the rule of ``eval.from_front=K``.

    The front is sorted by :attr:`ParetoView.sort_by` (cheapest first); with ``k >= 2`` the
    points at ranks ``round(i * (n - 1) / (k - 1))``, ``i = 0 .. k-1`` (round half up) are
    taken: both ends always, evenly spaced by rank between them. ``k = 1`` takes the point with
    the best primary objective. ``k >= n`` takes the whole front.

    Raises:
        ValueError: ``k < 1``.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    front = view.front
    n = len(front)
    if k >= n:
        return list(front)
    if k == 1:
        sign = -1.0 if view.maximize(view.primary) else 1.0
        return [min(front, key=lambda p: (sign * p.values[view.primary], p.number))]
    ranks = [math.floor(i * (n - 1) / (k - 1) + 0.5) for i in range(k)]
    return [front[r] for r in ranks]


def tied_ranks(keys: Sequence[float]) -> list[float]:
    """1-based ranks of ``keys`` (lower is better); equal keys share their mean rank."""
    order = sorted(range(len(keys)), key=lambda i: keys[i])
    ranks = [0.0] * len(keys)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and keys[order[end + 1]] == keys[order[start]]:
            end += 1
        for i in order[start : end + 1]:
            ranks[i] = (start + end) / 2.0 + 1.0
        start = end + 1
    return ranks


def average_ranks(columns: Sequence[Sequence[float]]) -> list[float]:
    """Per item: its :func:`tied_ranks` in each column (lower is better), averaged."""
    ranks = [tied_ranks(column) for column in columns]
    return [sum(r[i] for r in ranks) / len(ranks) for i in range(len(columns[0]))]


def mean_ranks(view: ParetoView) -> dict[int, float]:
    """Per candidate (trial number): its rank on each objective among all candidates (1 = best;
    ties share their mean rank), averaged over the objectives. Empty for one objective.

    A statistic of the SET of trained cells, not of one trial: a new trial can change every
    value. Why it is offered: two label-free signals that disagree on size, the contrastive
    loss and NASWOT, ranked 600-epoch accuracies best by this mean (README "Does the proxy
    work?"); the default search (``search.objectives=[score, naswot]``) ranks its cells by it.
    """
    if not view.multi_objective:
        return {}
    candidates = _candidates(view.points, view.objectives)
    if not candidates:
        return {}
    signs = {name: -1.0 if view.maximize(name) else 1.0 for name in view.objectives}
    columns = [[signs[n] * p.values[n] for p in candidates] for n in view.objectives]
    return {p.number: r for p, r in zip(candidates, average_ranks(columns), strict=True)}


def best_mean_rank(view: ParetoView, ranks: dict[int, float] | None = None) -> Point | None:
    """The front point with the best (lowest) :func:`mean_ranks` value (``ranks``, when the
    caller already computed them); ties by the primary objective (better first), then the trial
    number. None for one objective or no front."""
    ranks = mean_ranks(view) if ranks is None else ranks
    on_front = [p for p in view.front if p.number in ranks]
    if not on_front:
        return None
    sign = -1.0 if view.maximize(view.primary) else 1.0
    return min(on_front, key=lambda p: (ranks[p.number], sign * p.values[view.primary], p.number))


def ranks_by_mean(study: optuna.Study) -> bool:
    """Whether the study's "best trials" are ranked by their mean rank over the objectives
    (:func:`cnas_hpc.common.objectives.ranked_by_mean_rank`: several label-free objectives,
    none a cost). A cost-aware study ranks by its primary objective."""
    return ranked_by_mean_rank(objectives_of(study))


def primary_ranking(study: optuna.Study) -> list[FrozenTrial]:
    """COMPLETE feasible trials with a genotype, best first (ties: primary objective, number).

    The ranking every "best trials" reader uses (search summary, ``best_genotype.json``,
    ``eval.top_k``, the report): a single-objective study by its objective; a study of several
    label-free objectives (:func:`ranks_by_mean`, the default ``[score, naswot]``) by the mean
    of each trial's ranks over the objectives among these trials (README "Does the proxy
    work?": the loss and NASWOT disagree on size, their rank mean ranks 600-epoch accuracy
    best); a cost-aware study by its primary objective. Infeasible trials are left out.
    """
    objectives = objectives_of(study)
    index = objectives.index(primary_of(objectives))
    sign = -1.0 if study.directions[index] == StudyDirection.MAXIMIZE else 1.0
    done = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.values is not None
        and len(t.values) == len(objectives)
        and all(math.isfinite(float(v)) for v in t.values)
        and attrs.GENOTYPE in t.user_attrs
        and is_feasible(t)
    ]
    ranks: dict[int, float] = {}
    if ranks_by_mean(study) and done:
        signs = [-1.0 if d == StudyDirection.MAXIMIZE else 1.0 for d in study.directions]
        columns = [[sign * float(t.values[i]) for t in done] for i, sign in enumerate(signs)]
        ranks = {t.number: r for t, r in zip(done, average_ranks(columns), strict=True)}
    done.sort(key=lambda t: (ranks.get(t.number, 0.0), sign * float(t.values[index]), t.number))
    return done
