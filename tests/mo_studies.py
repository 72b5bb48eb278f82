"""Cost-aware studies built directly with Optuna, as a multi-objective search leaves them.

The attributes are the ones pinned for issue #21 (``cnas_hpc.common.attrs``): ``cnas:objectives``
on the study; on every trial its costs at evaluation size, Optuna's own constraint values
(system attribute ``constraints``, feasible iff all <= 0) and ``cnas:infeasible``. A cell that
broke a limit before training is PRUNED, without values.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import optuna
from optuna.trial import TrialState, create_trial

from cnas_hpc.common import attrs
from cnas_hpc.space.encoding import make_encoding
from cnas_hpc.space.genotype import Genotype, genotype_to_json

Direction = Literal["minimize", "maximize"]


def random_cells(count: int, seed: int) -> list[Genotype]:
    """``count`` distinct random cells of the compact space."""
    space = make_encoding("compact", n_nodes=4)
    rng = random.Random(seed)
    cells: dict[str, Genotype] = {}
    while len(cells) < count:
        genotype = space.from_params(
            {k: rng.choice(d.choices) for k, d in space.distributions().items()}
        )
        cells.setdefault(genotype_to_json(genotype), genotype)
    return list(cells.values())


@dataclass(frozen=True)
class Cell:
    """One trial to add: its values (None: PRUNED before training), costs and feasibility."""

    values: tuple[float, ...] | None
    params: int | None = None
    macs: int | None = None
    latency_ms: float | None = None
    constraints: tuple[float, ...] | None = None  # Optuna's values; None: not recorded
    genotype: Genotype | None = None
    extra: dict[str, object] = field(default_factory=dict)


def add_cells(study: optuna.Study, cells: Sequence[Cell], *, seed: int = 0) -> None:
    """Add ``cells`` as finished trials (genotypes drawn at random where a cell has none)."""
    drawn = iter(random_cells(len(cells), seed))
    for cell in cells:
        genotype = cell.genotype or next(drawn)
        user: dict[str, object] = {attrs.GENOTYPE: genotype_to_json(genotype), **cell.extra}
        costs = {
            attrs.COST_PARAMS: cell.params,
            attrs.COST_MACS: cell.macs,
            attrs.COST_LATENCY_MS: cell.latency_ms,
        }
        user.update({k: v for k, v in costs.items() if v is not None})
        if any(v is not None for v in costs.values()):
            user[attrs.COST_DEVICE] = "cpu"
            user[attrs.COST_NETWORK] = "darts_cifar 20x36"
        system: dict[str, object] = {}
        if cell.constraints is not None:
            system["constraints"] = list(cell.constraints)
            user[attrs.INFEASIBLE] = any(c > 0 for c in cell.constraints)
            user[attrs.CONSTRAINTS] = ["params<=2.6e6"]
        if cell.values is None:
            trial = create_trial(state=TrialState.PRUNED, user_attrs=user, system_attrs=system)
        else:
            trial = create_trial(values=list(cell.values), user_attrs=user, system_attrs=system)
        study.add_trial(trial)


def make_study(
    storage: str | optuna.storages.BaseStorage | None,
    name: str,
    objectives: Sequence[str],
    directions: Sequence[Direction],
    cells: Sequence[Cell],
    *,
    seed: int = 0,
) -> optuna.Study:
    """A study with ``objectives`` (recorded as ``cnas:objectives`` when there are several)."""
    study = optuna.create_study(storage=storage, study_name=name, directions=list(directions))
    if len(objectives) > 1:
        study.set_user_attr(attrs.STUDY_OBJECTIVES, list(objectives))
    else:
        study.set_user_attr(attrs.STUDY_OBJECTIVE, objectives[0])
    add_cells(study, cells, seed=seed)
    return study


#: A constrained score-vs-params study (limit 2.6 M; score minimised): 6 trained feasible cells,
#: 1 trained infeasible (the best score of all), 1 untrained infeasible (PRUNED). The front over
#: (score, params) is trials 0, 1, 3: 5 is beaten by 0, 2 by 1, 4 by 3.
SCORE_PARAMS: tuple[Cell, ...] = (
    Cell((5.0, 2.0e6), params=2_000_000, macs=300_000_000, constraints=(-0.6e6,)),
    Cell((4.0, 2.3e6), params=2_300_000, macs=340_000_000, constraints=(-0.3e6,)),
    Cell((4.5, 2.4e6), params=2_400_000, macs=350_000_000, constraints=(-0.2e6,)),
    Cell((3.0, 2.5e6), params=2_500_000, macs=360_000_000, constraints=(-0.1e6,)),
    Cell((3.5, 2.55e6), params=2_550_000, macs=370_000_000, constraints=(-0.05e6,)),
    Cell((5.5, 2.2e6), params=2_200_000, macs=320_000_000, constraints=(-0.4e6,)),
    Cell((1.0, 3.0e6), params=3_000_000, macs=420_000_000, constraints=(0.4e6,)),
    Cell(None, params=3_500_000, macs=480_000_000, constraints=(0.9e6,)),
)
