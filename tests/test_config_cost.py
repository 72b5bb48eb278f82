"""Cost-aware search settings: search.objectives, search.constraints, the cost section."""

from __future__ import annotations

from pathlib import Path

import pytest

from cnas_hpc.cli.overrides import quote_constraints
from cnas_hpc.common.errors import ConfigError
from cnas_hpc.config.cost import CostConfig
from cnas_hpc.config.scoring import scoring_setup, setup_differences
from cnas_hpc.config.search import SearchConfig, parse_constraint
from tests.helpers import tiny_settings


def test_constraints_parse_into_optuna_values_and_bad_ones_get_one_line() -> None:
    limit = parse_constraint(" params <= 2.6e6 ")
    assert (limit.name, limit.op, limit.bound) == ("params", "<=", 2.6e6)
    assert limit.violation(2.0e6) < 0 < limit.violation(3.0e6)  # Optuna: feasible iff <= 0
    assert parse_constraint("latency_ms>=1").violation(0.5) == pytest.approx(0.5)
    for bad, says in (
        ("params<2e6", "cannot read"),
        ("params==2e6", "cannot read"),
        ("val_contrastive_loss<=3", "is no cost"),
        ("params<=lots", "cannot read"),
        ("params<=1e999", "not a finite number"),
    ):
        with pytest.raises(ConfigError, match=says) as caught:
            parse_constraint(bad)
        assert "\n" not in str(caught.value)
    # As written (blanks dropped): what cnas:constraints records.
    assert SearchConfig(constraints=(" params <= 2.6e6",)).constraints == ("params<=2.6e6",)


def test_objectives_resolve_score_and_the_default_stays_single_objective() -> None:
    assert SearchConfig().objectives == () and not SearchConfig().multi_objective
    assert SearchConfig(objectives=("score",)).objectives == ()  # [score] is today's search
    search = SearchConfig(objectives=("score", "params"), constraints=("latency_ms<=8",))
    assert search.objectives == ("val_contrastive_loss", "params") and search.multi_objective
    assert search.costs == ("params", "latency_ms") and search.trains
    untrained = SearchConfig(objective="naswot", objectives=("score", "macs"))
    assert not untrained.trains and untrained.zero_cost_values == ("naswot",)
    for objectives, says in (
        (("score", "flops"), "unknown 'flops'"),
        (("params", "params"), "twice"),
    ):
        with pytest.raises(ConfigError, match=says):
            SearchConfig(objectives=objectives)
    with pytest.raises(ConfigError, match=r"search\.pruner=median needs one objective"):
        SearchConfig(objectives=("score", "params"), pruner="median")


def test_the_cost_section_names_a_protocol_network() -> None:
    assert CostConfig().network_label == "darts_cifar 20x36" and CostConfig().classes == 10
    mobile = CostConfig(protocol="imagenet_mobile")
    assert mobile.network.image_size == 224 and mobile.classes == 1000
    assert CostConfig(cells=5, channels=8).network_label == "darts_cifar 5x8"
    for bad, says in (
        ({"protocol": "darts"}, "cost.protocol must be one of"),
        ({"device": "tpu"}, "cost.device must be one of cpu, cuda"),
        ({"repeats": 0}, "cost.repeats must be an integer >= 1"),
    ):
        with pytest.raises(ConfigError, match=says):
            CostConfig(**bad)


def test_the_scoring_setup_refuses_other_objectives_constraints_or_cost_settings(
    tmp_path: Path,
) -> None:
    plain = scoring_setup(tiny_settings(tmp_path))
    # Cost settings of a search that uses no cost change nothing.
    assert scoring_setup(tiny_settings(tmp_path, "cost.repeats=9")) == plain
    costed = tiny_settings(tmp_path, "search.objectives=[score,latency_ms]")
    recorded = scoring_setup(costed)
    assert setup_differences(plain, costed) == [
        'search.objectives [] -> ["val_contrastive_loss", "latency_ms"]'
    ]
    other = tiny_settings(
        tmp_path,
        "search.objectives=[score,latency_ms]",
        "cost.device=cuda",
        'search.constraints=["params<=2e6"]',
    )
    assert setup_differences(recorded, other) == [
        'search.constraints [] -> ["params<=2e6"]',
        "cost.device cpu -> cuda",
    ]


def test_a_multi_objective_search_refuses_settings_that_rank_one_value(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"study\.sampler\.max_history"):
        tiny_settings(tmp_path, "search.objectives=[score,params]", "study.sampler.max_history=50")


def test_the_command_line_constraints_are_quoted_for_hydra() -> None:
    assert quote_constraints(["search.constraints=[params<=2.6e6, 'macs<=3e8']", "x=1"]) == [
        "search.constraints=[\"params<=2.6e6\", 'macs<=3e8']",
        "x=1",
    ]
