"""The Pareto front of a study: directions, feasibility, costs of single-objective studies."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState, create_trial

from cnas_hpc.common import attrs
from cnas_hpc.space.genotype import DARTS_V2, genotype_to_json
from cnas_hpc.study.pareto import (
    best_mean_rank,
    is_feasible,
    mean_ranks,
    non_dominated,
    objectives_of,
    pareto_view,
    primary_ranking,
    spread_along,
)
from tests.mo_studies import SCORE_PARAMS, Cell, make_study

optuna.logging.set_verbosity(optuna.logging.WARNING)
OBJ = ("val_contrastive_loss", "params")


def test_the_front_of_a_constrained_study_leaves_out_dominated_and_infeasible_cells() -> None:
    study = make_study(None, "s", OBJ, ("minimize", "minimize"), SCORE_PARAMS)
    view = pareto_view(study)
    assert view is not None and view.multi_objective
    assert view.objectives == OBJ and view.axes == OBJ and view.primary == OBJ[0]
    assert view.sort_by == "params" and view.costs == ("params", "macs")
    assert view.limits == {"params": 2.6e6}
    assert [p.number for p in view.front] == [0, 1, 3]  # cheapest first
    # Every trained trial and the untrained infeasible one are points; 6 and 7 are infeasible.
    assert [p.number for p in view.points] == list(range(8))
    assert [p.number for p in view.points if not p.feasible] == [6, 7]
    (untrained,) = [p for p in view.points if not p.trained]
    assert untrained.number == 7 and untrained.values == {"params": 3.5e6, "macs": 4.8e8}
    # Optuna agrees (its best_trials honour the constraints too).
    assert sorted(t.number for t in study.best_trials) == [0, 1, 3]


def test_directions_are_respected() -> None:
    # Maximising the score turns the front around: the highest score wins at each cost.
    study = make_study(None, "s", ("knn_accuracy", "params"), ("maximize", "minimize"),
                       SCORE_PARAMS)  # fmt: skip
    view = pareto_view(study)
    assert view is not None
    # Highest score 5.5 at 2.2 M, and 5.0 at 2.0 M is cheaper: both on the front, nothing else.
    assert [p.number for p in view.front] == [0, 5]
    assert view.maximize("knn_accuracy") and not view.maximize("params")


def test_a_single_objective_study_with_costs_has_a_front_of_score_against_every_cost() -> None:
    cells = [
        Cell((c.values[0],), params=c.params, macs=c.macs, constraints=c.constraints)
        for c in SCORE_PARAMS
        if c.values is not None
    ]
    study = make_study(None, "s", ("val_contrastive_loss",), ("minimize",), cells)
    view = pareto_view(study)
    assert view is not None and not view.multi_objective
    assert view.axes == ("val_contrastive_loss", "params", "macs")
    assert [p.number for p in view.front] == [0, 1, 3]  # MACs grow with params here
    # Without costs there is no front: the report stays as it was.
    plain = make_study(None, "p", ("val_contrastive_loss",), ("minimize",),
                       [Cell((1.0,)), Cell((2.0,))])  # fmt: skip
    assert pareto_view(plain) is None


def test_a_cost_recorded_on_some_trials_only_is_no_axis() -> None:
    cells = [Cell((2.0,), params=2_000_000, latency_ms=5.0), Cell((1.0,), params=3_000_000)]
    view = pareto_view(make_study(None, "s", ("val_contrastive_loss",), ("minimize",), cells))
    assert view is not None
    assert view.axes == ("val_contrastive_loss", "params")
    assert view.costs == ("params", "latency_ms")  # still plotted where recorded
    assert [p.number for p in view.front] == [0, 1]


def test_feasibility_comes_from_optunas_constraints_then_the_user_attribute() -> None:
    def trial(system: dict[str, object], user: dict[str, object]) -> optuna.trial.FrozenTrial:
        return create_trial(value=1.0, system_attrs=system, user_attrs=user)

    assert is_feasible(trial({"constraints": [0.0, -1.0]}, {}))
    assert not is_feasible(trial({"constraints": [-1.0, 0.5]}, {attrs.INFEASIBLE: False}))
    assert not is_feasible(trial({}, {attrs.INFEASIBLE: True}))
    assert is_feasible(trial({}, {}))


def test_a_genotype_shared_by_several_trials_is_on_the_front_once() -> None:
    cells = [
        Cell((1.0, 2e6), params=2_000_000, genotype=DARTS_V2),
        Cell((1.0, 2e6), params=2_000_000, genotype=DARTS_V2),
        Cell((0.5, 3e6), params=3_000_000),
    ]
    view = pareto_view(make_study(None, "s", OBJ, ("minimize", "minimize"), cells))
    assert view is not None
    assert [p.number for p in view.front] == [0, 2]
    assert view.front[0].genotype_json == genotype_to_json(DARTS_V2)


def test_no_feasible_trained_cell_means_an_empty_front() -> None:
    cells = [Cell(None, params=3_000_000, constraints=(0.4e6,))]
    view = pareto_view(make_study(None, "s", OBJ, ("minimize", "minimize"), cells))
    assert view is not None and view.front == [] and len(view.points) == 1
    # Running and failed trials are no points.
    study = make_study(None, "r", OBJ, ("minimize", "minimize"), [])
    study.ask()
    study.add_trial(create_trial(state=TrialState.FAIL))
    view = pareto_view(study)
    assert view is not None and view.points == [] and view.front == []


@pytest.mark.parametrize(
    ("k", "expected"),
    [(1, [8]), (2, [0, 8]), (3, [0, 4, 8]), (4, [0, 3, 5, 8]), (9, list(range(9))),
     (20, list(range(9)))],
)  # fmt: skip
def test_k_cells_spread_along_the_front_by_rank_with_both_ends(k: int, expected: list[int]) -> None:
    # A front of 9: params grows with the trial number, the score improves with it.
    cells = [Cell((10.0 - i, 2e6 + i * 1e5), params=int(2e6 + i * 1e5)) for i in range(9)]
    view = pareto_view(make_study(None, "s", OBJ, ("minimize", "minimize"), cells))
    assert view is not None and len(view.front) == 9
    assert [p.number for p in spread_along(view, k)] == expected
    with pytest.raises(ValueError, match="k must be >= 1"):
        spread_along(view, 0)


def test_objectives_and_the_primary_ranking_of_a_multi_objective_study() -> None:
    study = make_study(None, "s", OBJ, ("minimize", "minimize"), SCORE_PARAMS)
    assert objectives_of(study) == OBJ
    # Best score first, the infeasible trial 6 (best score of all) left out.
    assert [t.number for t in primary_ranking(study)] == [3, 4, 1, 2, 0, 5]
    unnamed = optuna.create_study(directions=["minimize", "maximize"])
    assert objectives_of(unnamed) == ("objective_0", "objective_1")
    assert non_dominated([], ("a",), {}) == []


def test_the_best_mean_rank_is_worked_out_by_hand_and_lies_on_the_front() -> None:
    # Score (min) and NASWOT (max) of four trained cells; ranks 1 = best:
    #   trial  score  naswot  rank score  rank naswot  mean
    #   0      5.0    800     1           4            2.5
    #   1      5.2    850     3           1            2.0   <- best mean
    #   2      5.1    820     2           3            2.5
    #   3      5.3    840     4           2            3.0   (dominated by 1)
    cells = [Cell((5.0, 800.0)), Cell((5.2, 850.0)), Cell((5.1, 820.0)), Cell((5.3, 840.0))]
    study = make_study(None, "s", ("val_contrastive_loss", "naswot"),
                       ("minimize", "maximize"), cells)  # fmt: skip
    view = pareto_view(study)
    assert view is not None
    assert mean_ranks(view) == {0: 2.5, 1: 2.0, 2: 2.5, 3: 3.0}
    pick = best_mean_rank(view)
    assert pick is not None and pick.number == 1
    assert pick.number in {p.number for p in view.front}
    assert 3 not in {p.number for p in view.front}


def test_tied_values_share_their_mean_rank_and_infeasible_cells_take_no_rank() -> None:
    study = make_study(None, "s", OBJ, ("minimize", "minimize"), SCORE_PARAMS)
    view = pareto_view(study)
    assert view is not None
    ranks = mean_ranks(view)
    # Only trained feasible cells are ranked (6 is infeasible, 7 never trained).
    assert sorted(ranks) == [0, 1, 2, 3, 4, 5]
    # Ranks of n cells on two objectives average to (n + 1) / 2 whatever the ties.
    assert sum(ranks.values()) / len(ranks) == pytest.approx(3.5)
    pick = best_mean_rank(view)
    assert pick is not None and pick.number in {p.number for p in view.front}
    tied = make_study(None, "t", OBJ, ("minimize", "minimize"),
                      [Cell((5.0, 2.0e6)), Cell((5.0, 2.0e6)), Cell((4.0, 3.0e6))])  # fmt: skip
    tied_view = pareto_view(tied)
    assert tied_view is not None
    # score ranks 2.5, 2.5, 1 and params ranks 1.5, 1.5, 3: every mean is 2.0; the tie goes to
    # the better score.
    assert mean_ranks(tied_view) == {0: 2.0, 1: 2.0, 2: 2.0}
    tied_pick = best_mean_rank(tied_view)
    assert tied_pick is not None and tied_pick.number == 2


def test_a_single_objective_study_has_no_mean_rank_pick() -> None:
    cells = [Cell((5.0,), params=2_000_000), Cell((4.0,), params=3_000_000)]
    study = make_study(None, "s", ("val_contrastive_loss",), ("minimize",), cells)
    view = pareto_view(study)
    assert view is not None and not view.multi_objective
    assert mean_ranks(view) == {} and best_mean_rank(view) is None
