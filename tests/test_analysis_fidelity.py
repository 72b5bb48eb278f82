"""The fidelity statistics: rank correlations with bootstrap intervals, top-k overlap, noise."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest

from cnas_hpc.analysis.fidelity import (
    bootstrap,
    kendall_tau,
    spearman_rho,
    summarise,
    top_k_overlap,
)
from cnas_hpc.fidelity.app import FidelityPlan
from cnas_hpc.fidelity.cells import FidelityCell
from cnas_hpc.fidelity.store import Measurement


def test_rank_correlations_and_their_intervals() -> None:
    x = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]
    assert kendall_tau(x, x) == pytest.approx(1.0)
    assert spearman_rho(x, x[::-1]) == pytest.approx(-1.0)
    perfect = bootstrap(x, [2 * v for v in x], kendall_tau, resamples=300, confidence=0.9)
    assert perfect.value == pytest.approx(1.0) and perfect.low == pytest.approx(1.0)
    noisy = bootstrap(x, [3, 1, 4, 1, 5, 9, 2, 6], kendall_tau, resamples=300, confidence=0.9)
    assert noisy.low < noisy.value < noisy.high


def test_a_ranking_of_one_repeated_value_is_nan_without_a_warning() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # SciPy's ConstantInputWarning would raise here
        assert math.isnan(spearman_rho([0.5, 0.5, 0.5], [1.0, 2.0, 3.0]))
        assert math.isnan(spearman_rho([1.0, 2.0, 3.0], [7.0, 7.0, 7.0]))
    assert spearman_rho([1.0, 2.0, 3.0], [1.0, 1.0, 2.0]) > 0  # ties alone are defined


def test_top_k_overlap_counts_shared_best_cells() -> None:
    assert top_k_overlap([4, 3, 2, 1], [0.9, 0.8, 0.1, 0.2], 2) == 1.0
    assert top_k_overlap([4, 3, 2, 1], [0.1, 0.2, 0.9, 0.8], 2) == 0.0


def _measurement(i: int, kind: str, value: float, seed: int = 0, **extra: float) -> Measurement:
    return Measurement(
        id=i, kind=kind, config_hash="c", genotype_hash=f"g{i // 10}", genotype="{}",
        seed=seed, state="COMPLETE", value=value, extra=dict(extra), params=1000 * (i // 10),
        macs=1, wall_s=1.0, fail_reason=None,
    )  # fmt: skip


def test_a_lower_loss_that_predicts_a_higher_accuracy_is_a_positive_tau() -> None:
    plan = FidelityPlan([FidelityCell(f"c{k}", "random", "{}", f"g{k}") for k in range(5)])
    for k in range(5):
        loss = 5.0 - k  # cell 4 has the lowest loss ...
        plan.accuracy[f"g{k}"] = _measurement(
            10 * k, "accuracy", 0.1 * k
        )  # ... and the best accuracy
        noisy = loss + 0.01
        plan.scores[f"g{k}"] = [
            _measurement(
                10 * k + 1, "score", loss, val_contrastive_loss=loss, train_contrastive_loss=-loss
            ),
            _measurement(10 * k + 2, "score", noisy, seed=1, val_contrastive_loss=noisy),
        ]
    summary = summarise(
        plan, "val_contrastive_loss", base_seed=0, top_k=2, resamples=200, confidence=0.9
    )
    assert summary.tau is not None and summary.tau.value == pytest.approx(1.0)
    assert summary.top_k_overlap == 1.0
    train = summary.by_objective["train_contrastive_loss"]
    assert train is not None and train.value == pytest.approx(-1.0)  # ranks them backwards
    assert summary.noise_std == pytest.approx(0.005)  # half the 0.01 seed-to-seed difference
    assert json.dumps(summary.by_epoch) == "[]"  # no per-epoch history in these measurements


def test_the_rank_mean_of_the_contrastive_loss_and_naswot_is_one_more_ranking() -> None:
    # Five cells, accuracy rises with k. The loss ranks them 0<1<2<3<4 except that it swaps the
    # best two; NASWOT swaps the worst two instead. Their rank means (1.5, 1.5, 3, 4.5, 4.5 for
    # k = 0..4) keep ties where each proxy erred, and no pair backwards: tau_b = 8 / sqrt(8 * 10).
    plan = FidelityPlan([FidelityCell(f"c{k}", "random", "{}", f"g{k}") for k in range(5)])
    losses = [5.0, 4.0, 3.0, 1.0, 2.0]  # lower is better: the loss ranks cell 3 above cell 4
    naswot = [11.0, 10.0, 12.0, 13.0, 14.0]  # higher is better: it ranks cell 0 above cell 1
    for k in range(5):
        plan.accuracy[f"g{k}"] = _measurement(10 * k, "accuracy", 0.1 * k)
        plan.scores[f"g{k}"] = [
            _measurement(10 * k + 1, "score", losses[k], val_contrastive_loss=losses[k])
        ]
        plan.zero_cost[f"g{k}"] = [
            _measurement(10 * k + 2, "zero_cost", naswot[k], naswot=naswot[k])
        ]
    summary = summarise(
        plan, "val_contrastive_loss", base_seed=0, top_k=2, resamples=200, confidence=0.9
    )
    rankings = {r.name: r for r in summary.rankings}
    for alone in ("val_contrastive_loss", "naswot"):
        tau = rankings[alone].tau
        assert tau is not None and tau.value == pytest.approx(0.8)  # one pair of ten backwards
    combined = rankings["val_contrastive_loss + naswot"]
    assert combined.kind == "rank mean" and not combined.labels
    assert combined.tau is not None and combined.tau.value == pytest.approx(8 / np.sqrt(80))
    assert combined.cost_s == pytest.approx(
        2.0
    )  # one score and one zero-cost measurement, 1 s each
    assert "train_contrastive_loss + naswot" not in rankings  # no train loss was measured
