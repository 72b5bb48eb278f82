"""The zero-cost screen of a two-stage search: which proposals it refuses."""

from __future__ import annotations

import math

import optuna
import pytest

from cnas_hpc.common import attrs
from cnas_hpc.common.errors import ConfigError
from cnas_hpc.config.search import SearchConfig
from cnas_hpc.search.screening import earlier_values, screened_out


def test_the_screen_refuses_below_its_quantile_only_after_its_startup() -> None:
    earlier = [1.0, 2.0, 3.0, 4.0, 5.0]
    assert not screened_out(0.0, earlier[:3], keep=0.5, startup=4)  # too few seen yet
    assert screened_out(2.5, earlier, keep=0.5, startup=4)  # below the median 3.0
    assert not screened_out(3.5, earlier, keep=0.5, startup=4)
    assert not screened_out(1.5, earlier, keep=0.9, startup=4)  # above the 0.1 quantile 1.4
    assert not screened_out(-10.0, earlier, keep=1.0, startup=0)  # keep everything
    assert screened_out(-math.inf, earlier, keep=0.5, startup=4)  # a cell that tells nothing apart
    assert not screened_out(0.0, [-math.inf] * 5, keep=0.5, startup=4)  # nothing finite to judge


def test_earlier_values_are_the_other_trials_recorded_proxy() -> None:
    study = optuna.create_study(direction="minimize")
    for number, value in enumerate((3.0, 1.0, None)):
        trial = study.ask()
        if value is not None:
            trial.set_user_attr(attrs.NASWOT, value)
        study.tell(trial, float(number))
    assert sorted(earlier_values(study, "naswot", current=99)) == [1.0, 3.0]
    assert earlier_values(study, "naswot", current=0) == [1.0]
    assert earlier_values(study, "synflow", current=99) == []


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"screen_keep": 0.0}, "screen_keep"),
        ({"screen_keep": 1.5}, "screen_keep"),
        ({"screen_startup": -1}, "screen_startup"),
        ({"screen": "jacov"}, "search.screen must be one of"),
    ],
)
def test_bad_screen_settings_are_refused(overrides: dict[str, object], needle: str) -> None:
    values: dict[str, object] = {"screen": "naswot", **overrides}
    with pytest.raises(ConfigError, match=needle):
        SearchConfig(**values)  # type: ignore[arg-type]
