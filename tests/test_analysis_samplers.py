"""Best-so-far curves, their spread over seeds, and trials to a target."""

from __future__ import annotations

import pytest

from cnas_hpc.analysis.samplers import best_so_far, summarise_methods, trials_to_target


def test_best_so_far_and_trials_to_target() -> None:
    assert best_so_far([3.0, 4.0, 2.0, 5.0], minimize=True) == [3.0, 3.0, 2.0, 2.0]
    assert best_so_far([3.0, 4.0, 2.0], minimize=False) == [3.0, 4.0, 4.0]
    assert trials_to_target([3.0, 3.0, 2.0], 2.5, minimize=True) == 3
    assert trials_to_target([3.0, 3.0], 2.5, minimize=True) is None


def test_methods_are_summarised_over_their_seeds() -> None:
    curves = {"fast": [[2.0, 1.0], [2.0, 1.2]], "slow": [[3.0, 2.9], [3.0, 2.0]]}
    summaries, target = summarise_methods(curves, minimize=True, target=1.5)
    fast, slow = summaries
    assert target == 1.5
    assert fast.final_best_mean == pytest.approx(1.1) and fast.reached == 2
    assert fast.trials_to_target_median == 2.0
    assert slow.reached == 0 and slow.trials_to_target_median is None
    assert fast.curve_mean == pytest.approx([2.0, 1.1])
    _, median_target = summarise_methods(curves, minimize=True, target=None)
    assert median_target == pytest.approx(1.6)  # the median of the final bests
