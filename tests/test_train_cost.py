"""A cell's cost at evaluation size: DARTS's counts, and a timed latency."""

from __future__ import annotations

import pytest

from cnas_hpc.config.cost import CostConfig
from cnas_hpc.space.genotype import DARTS_V2
from cnas_hpc.train.cost import CellCost, device_label, measure_cost


def test_darts_v2_costs_what_darts_reports_at_20_x_36() -> None:
    cost = measure_cost(DARTS_V2, CostConfig(), latency=False)
    assert cost.params == 3_349_342  # "3.3 M" in the DARTS paper, auxiliary head excluded
    assert cost.macs == pytest.approx(528e6, rel=0.01)
    assert cost.latency_ms is None
    with pytest.raises(ValueError, match="not measured"):
        cost.value("latency_ms")


def test_latency_is_the_median_of_timed_passes_on_the_named_device() -> None:
    cfg = CostConfig(cells=5, channels=8, warmup=1, repeats=3)
    cost = measure_cost(DARTS_V2, cfg, latency=True)
    assert cost.latency_ms is not None and cost.latency_ms > 0
    assert cost.value("params") == cost.params < 3_349_342
    assert device_label(cfg) == "cpu"
    assert CellCost(1, 2, 3.0).value("latency_ms") == 3.0
