"""The fidelity statistics: rank correlations with bootstrap intervals, top-k overlap, noise."""

from __future__ import annotations

import json

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
