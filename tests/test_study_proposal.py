"""``propose`` makes exactly the choices ``trial.suggest_*`` would, without writing parameters."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution

from cnas_hpc.study.proposal import propose

SPACE: dict[str, BaseDistribution] = {
    "normal/n2/inputs": CategoricalDistribution(["0,1", "0,2", "1,2"]),
    "normal/n2/op0": CategoricalDistribution(["sep_conv_3x3", "max_pool_3x3", "skip_connect"]),
    "reduce/n2/op0": CategoricalDistribution(["avg_pool_3x3"]),  # one choice: nothing sampled
    "lr": FloatDistribution(0.1, 0.1),  # a single value too
    "momentum": FloatDistribution(0.5, 0.99),
}


def _study(path: Path, name: str) -> optuna.Study:
    return optuna.create_study(
        storage=f"sqlite:///{path}", study_name=name, sampler=optuna.samplers.RandomSampler(seed=7)
    )


def _suggested(trial: optuna.Trial) -> dict[str, Any]:
    """The reference: Optuna's own suggest_* calls, one parameter after the other."""
    values: dict[str, Any] = {}
    for name, dist in SPACE.items():
        if isinstance(dist, CategoricalDistribution):
            values[name] = trial.suggest_categorical(name, list(dist.choices))
        else:
            assert isinstance(dist, FloatDistribution)
            values[name] = trial.suggest_float(name, dist.low, dist.high)
    return values


def test_the_same_values_as_suggest_and_nothing_written(tmp_path: Path) -> None:
    ours, reference = _study(tmp_path / "a.db", "a"), _study(tmp_path / "b.db", "b")
    for _ in range(3):
        trial = ours.ask()
        values = propose(ours, trial, SPACE)
        assert values == _suggested(reference.ask())
        assert values["reduce/n2/op0"] == "avg_pool_3x3" and values["lr"] == 0.1
        assert ours.trials[-1].params == {}  # the claim writes them, in one transaction


def test_an_enqueued_retry_keeps_its_fixed_parameters(tmp_path: Path) -> None:
    study = _study(tmp_path / "a.db", "a")
    fixed = {"normal/n2/inputs": "1,2", "normal/n2/op0": "skip_connect", "momentum": 0.9}
    study.enqueue_trial(fixed)
    values = propose(study, study.ask(), SPACE)
    assert {name: values[name] for name in fixed} == fixed
    assert set(values) == set(SPACE)
