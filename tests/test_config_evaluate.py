"""The evaluate config composes with every protocol, and bad values are refused in one line."""

from __future__ import annotations

from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from cnas_hpc.common.errors import ConfigError
from cnas_hpc.config.evaluate import EvalSettings, eval_settings_from_config
from tests.helpers import CONFIGS


def compose_evaluate(overrides: list[str]) -> dict[str, Any]:
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(config_name="evaluate", overrides=overrides)
    container = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(container, dict)
    container.pop("hydra", None)
    return container  # type: ignore[return-value]


def settings(*overrides: str) -> EvalSettings:
    return eval_settings_from_config(compose_evaluate(["eval.presets=[DARTS_V2]", *overrides]))


def test_the_default_protocol_is_darts_cifar() -> None:
    p = settings("data.root=/data").protocol
    assert (p.cells, p.channels, p.epochs, p.batch_size) == (20, 36, 600, 96)
    assert (p.lr, p.lr_schedule, p.min_lr, p.momentum, p.weight_decay) == (
        0.025, "cosine", 0.0, 0.9, 3e-4,
    )  # fmt: skip
    assert (p.cutout, p.auxiliary_weight, p.drop_path, p.grad_clip) == (16, 0.4, 0.2, 5.0)


def test_the_imagenet_mobile_protocol() -> None:
    p = settings("protocol=imagenet_mobile", "data=folder", "data.root=/imagenet").protocol
    assert (p.network, p.cells, p.channels, p.image_size) == ("imagenet", 14, 48, 224)
    assert (p.label_smoothing, p.lr_schedule, p.lr_gamma, p.max_macs) == (0.1, "step", 0.97, 6e8)


def test_every_value_is_overridable_and_named_by_default() -> None:
    s = settings("protocol=debug", "data=digits", "protocol.epochs=7", "eval.method=both")
    assert s.protocol.epochs == 7 and s.eval.method == "both"
    assert s.name == "cells-debug-both"
    assert (
        settings("data.root=x", "eval.from_study=my study").name
        == "my_study-darts_cifar-supervised"
    )
    front = settings("data.root=x", "eval.from_study=mo", "eval.from_front=3")
    assert front.eval.from_front == 3 and front.name == "mo-front3-darts_cifar-supervised"


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("eval.top_k=0", "eval.top_k must be an integer > 0"),
        ("eval.method=guess", "eval.method must be one of"),
        ("protocol.epochs=0", "protocol.epochs must be an integer >= 1"),
        ("protocol.network=vit", "protocol.network must be one of"),
        ("protocol.amp=fp8", "protocol.amp must be one of"),
        ("protocol.image_size=64", "auxiliary_weight > 0 needs protocol.image_size=32"),
        ("eval.name=a/b", "eval.name may hold"),
        ("eval.from_front=0", "eval.from_front must be an integer > 0"),
        ("eval.from_front=true", "eval.from_front must be an integer"),
        ("eval.from_front=2", "eval.from_front needs the study whose front"),
        ("+eval.colour=red", "unknown key eval.colour"),
    ],
)
def test_bad_values_are_refused_with_one_line(override: str, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        settings("data.root=x", override)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_nothing_to_evaluate_is_refused() -> None:
    with pytest.raises(ConfigError, match="nothing to evaluate"):
        eval_settings_from_config(compose_evaluate(["data.root=x"]))


def test_the_fingerprint_follows_what_decides_a_result() -> None:
    base = settings("protocol=debug", "data=digits")
    _, same = settings("protocol=debug", "data=digits", "eval.name=other").protocol_fingerprint()
    _, more_epochs = settings(
        "protocol=debug", "data=digits", "protocol.epochs=9"
    ).protocol_fingerprint()
    assert base.protocol_fingerprint()[1] == same != more_epochs
