"""The ``search`` section: the study's budget and objective, shared by every worker."""

from __future__ import annotations

import math
import re
import typing
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import Field

from cnas_hpc.common.errors import ConfigError
from cnas_hpc.common.objectives import (
    COST_OBJECTIVES,
    OBJECTIVES,
    SEARCH_OBJECTIVES,
    is_cost,
    is_trained,
    is_zero_cost,
)
from cnas_hpc.config.build import Count, Natural, section

#: ``none``, or the zero-cost proxy that screens proposals before contrastive training.
Screen = Literal["none", "naswot", "synflow"]
SCREENS: tuple[str, ...] = typing.get_args(Screen)

#: ``none``, or an Optuna pruner asked after every epoch (multi-fidelity search).
Pruner = Literal["none", "median", "successive_halving", "hyperband"]
PRUNERS: tuple[str, ...] = typing.get_args(Pruner)


#: ``search.objectives`` alias of ``search.objective`` (resolved when the section is built).
SCORE_ALIAS = "score"

_CONSTRAINT = re.compile(r"^\s*([a-z_]+)\s*(<=|>=)\s*([-+0-9.eE_]+)\s*$")


@dataclass(frozen=True)
class Constraint:
    """One ``search.constraints`` limit, e.g. ``params<=2.6e6``.

    Its Optuna constraint value (feasible iff <= 0) is ``value - bound`` for ``<=`` and
    ``bound - value`` for ``>=``.
    """

    name: str
    op: str
    bound: float

    def __str__(self) -> str:
        return f"{self.name}{self.op}{self.bound:g}"

    def violation(self, value: float) -> float:
        """Optuna's constraint value of a cell whose cost is ``value`` (> 0: infeasible)."""
        return value - self.bound if self.op == "<=" else self.bound - value


def parse_constraint(text: str) -> Constraint:
    """``"params<=2.6e6"`` -> :class:`Constraint`.

    Raises:
        ConfigError: one line saying what a constraint looks like.
    """
    match = _CONSTRAINT.match(str(text))
    if match is None:
        raise ConfigError(
            f"search.constraints: cannot read {text!r}: write <cost><=<number> or "
            f"<cost>>=<number>, cost one of {', '.join(COST_OBJECTIVES)} (e.g. params<=2.6e6)"
        )
    name, op, number = match.groups()
    if not is_cost(name):
        raise ConfigError(
            f"search.constraints: {text!r}: {name!r} is no cost; constrain one of "
            f"{', '.join(COST_OBJECTIVES)}"
        )
    try:
        bound = float(number)
    except ValueError:
        bound = math.nan
    if not math.isfinite(bound):
        raise ConfigError(f"search.constraints: {text!r}: {number!r} is not a finite number")
    return Constraint(name, op, bound)


@section("search")
class SearchConfig:
    """The study's budget and objective, shared by every worker.

    ``enqueue`` lists known cells (preset names such as ``DARTS_V2``, or genotype JSON files)
    that the study evaluates first: warm-starting TPE with good cells, or re-scoring them under
    a new proxy. They are enqueued once per study (a rerun does not add them again) and count
    toward ``n_trials``.

    Multi-fidelity pruning (opt-in): with ``pruner`` set, rank 0 reports the objective after
    every epoch and asks the pruner whether to stop the candidate; a pruned candidate is told
    PRUNED (its last epoch's value is what TPE learns from) and does not count toward
    ``n_trials``.

    Attributes:
        enqueue: known cells evaluated first (see above).
        pruner: ``none`` | ``median`` (stop a trial worse than the median of earlier trials at
            the same epoch) | ``successive_halving`` (keep the best ``1/reduction_factor`` at
            each rung) | ``hyperband`` (several successive-halving brackets).
        pruner_startup_trials: median: trials that finish before any is pruned.
        pruner_warmup_epochs: median: epochs a trial trains before it may be pruned.
        pruner_min_epochs: successive_halving / hyperband: epochs of the first rung.
        pruner_reduction_factor: successive_halving / hyperband: 1 in this many trials is
            promoted to the next rung.
        screen: Two-stage search (opt-in): ``naswot`` | ``synflow`` scores every proposal's
            untrained cell first (seconds); one below the ``1 - screen_keep`` quantile of the
            study's earlier proposals is told PRUNED without contrastive training
            (``cnas:screened``; like a pruned trial it does not count toward ``n_trials`` and
            TPE learns to avoid it). ``none``: every proposal is trained. Moot for a zero-cost
            objective (nothing is trained). ``configs/search.yaml`` turns it on (``naswot``):
            README "Does the proxy work?" says why. Kept with several objectives and with
            constraints: it runs after the constraint check, on feasible proposals only.
        screen_keep: Share of proposals the screen lets through, in ``(0, 1]``.
        screen_startup: Proposals scored before the screen refuses any.
        objectives: Cost-aware search (opt-in; README "Searching under a budget"): the study's
            objectives, in the order of ``trial.values``: ``score`` (``search.objective``), the
            other objectives of :data:`~cnas_hpc.common.objectives.OBJECTIVES`, and the costs
            ``params``, ``macs``, ``latency_ms`` of the evaluation-size network (``cost``
            section; all minimised). ``score`` is resolved when the section is built; an empty
            list, or ``[score]``, is the single-objective search (normalised to ``()``).
            Several objectives make a multi-objective study (Optuna ``directions``, TPE's
            Pareto ranking); ``pruner`` must then be ``none``.
        constraints: Limits on costs, e.g. ``params<=2.6e6``, ``latency_ms<=8``: a cell that
            breaks one is told PRUNED untrained with Optuna's constraint values (TPE learns to
            avoid it) and does not count toward ``n_trials``.
    """

    n_trials: Annotated[int, Field(gt=0)] = 8
    objective: str = "val_contrastive_loss"
    max_consecutive_failures: Count = 3
    poll_seconds: float = 5.0
    enqueue: tuple[str, ...] = ()
    pruner: Pruner = "none"
    pruner_startup_trials: Natural = 5
    pruner_warmup_epochs: Natural = 1
    pruner_min_epochs: Count = 1
    pruner_reduction_factor: Annotated[int, Field(ge=2)] = 3
    screen: Screen = "none"
    screen_keep: Annotated[float, Field(gt=0, le=1)] = 0.5
    screen_startup: Natural = 8
    objectives: tuple[str, ...] = ()
    constraints: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ConfigError(
                f"search.objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}"
            )
        if len(self.enqueue) > self.n_trials:
            raise ConfigError(
                f"search.enqueue lists {len(self.enqueue)} cells, more than search.n_trials="
                f"{self.n_trials}: the budget would be overshot"
            )
        self._resolve_objectives()
        for text in self.constraints:
            parse_constraint(text)
        # As written, blanks dropped: what `cnas:constraints` and the scoring setup record.
        object.__setattr__(
            self, "constraints", tuple("".join(str(t).split()) for t in self.constraints)
        )
        if self.multi_objective and self.pruner != "none":
            raise ConfigError(
                f"search.pruner={self.pruner} needs one objective (Optuna's pruners compare one "
                f"value), got search.objectives={list(self.objectives)}: set search.objectives=[] "
                "(the score alone) or search.pruner=none"
            )

    def _resolve_objectives(self) -> None:
        """``score`` -> ``objective``; ``[score]`` -> ``()``; unknown or repeated names refused.

        ``score`` naming an objective the list also names counts once (``search.objective=naswot``
        with the default ``[score, naswot]`` is the one objective ``naswot``).
        """
        resolved = []
        aliased = self.objective if SCORE_ALIAS in self.objectives else None
        for raw in self.objectives:
            name = self.objective if raw == SCORE_ALIAS else str(raw)
            if name not in SEARCH_OBJECTIVES:
                raise ConfigError(
                    f"search.objectives: unknown {name!r} (known: {SCORE_ALIAS}, "
                    f"{', '.join(SEARCH_OBJECTIVES)})"
                )
            if name in resolved and name == aliased:
                continue
            if name in resolved:
                raise ConfigError(f"search.objectives lists {name!r} twice")
            resolved.append(name)
        single = resolved == [self.objective]
        object.__setattr__(self, "objectives", () if single else tuple(resolved))

    @property
    def multi_objective(self) -> bool:
        """Whether the study's values are ``objectives`` (not the one ``objective``)."""
        return bool(self.objectives)

    @property
    def values(self) -> tuple[str, ...]:
        """The objective names in the order of the study's values."""
        return self.objectives or (self.objective,)

    @property
    def limits(self) -> tuple[Constraint, ...]:
        """``constraints`` parsed."""
        return tuple(parse_constraint(text) for text in self.constraints)

    @property
    def costs(self) -> tuple[str, ...]:
        """The costs a trial measures (objectives and constrained ones), in a fixed order."""
        used = set(self.values) | {c.name for c in self.limits}
        return tuple(name for name in COST_OBJECTIVES if name in used)

    @property
    def trains(self) -> bool:
        """Whether a trial trains its cell (some value needs the contrastive proxy)."""
        return any(is_trained(name) for name in self.values)

    @property
    def zero_cost_values(self) -> tuple[str, ...]:
        """The zero-cost proxies among the values."""
        return tuple(name for name in self.values if is_zero_cost(name))
