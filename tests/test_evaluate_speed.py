"""The evaluation network's layout: measured for a fresh cell, kept from the checkpoint on resume.

A resumed cell that measured again could pick another memory format or AMP (another device
load, another cache folder) and would then not end with the accuracy of an unbroken run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest
import torch

from cnas_hpc.config.data import DataConfig
from cnas_hpc.config.protocol import ProtocolConfig
from cnas_hpc.data.labeled import LabeledData, load_labeled
from cnas_hpc.evaluate.speed import choose_layout
from cnas_hpc.space.genotype import DARTS_V2
from cnas_hpc.train.supervised import SupervisedTask, build_eval_network

TINY = ProtocolConfig(name="tiny", cells=3, channels=6, epochs=1, batch_size=16)
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digits() -> LabeledData:
    return load_labeled(DataConfig(source="digits", val_fraction=0.3))


class FakeFastest:
    """Stands in for ``choose_fastest``: counts the measurements and answers ``answer``."""

    def __init__(self, answer: str) -> None:
        self.answer, self.calls = answer, 0

    def __call__(self, options: dict[str, Callable[[], None]], *args: Any, **kw: Any) -> str:
        self.calls += 1
        assert self.answer in options
        return self.answer


def _choose(
    digits: LabeledData, monkeypatch: pytest.MonkeyPatch, stored: dict[str, Any] | None
) -> tuple[SupervisedTask, FakeFastest]:
    fastest = FakeFastest("contiguous/none")
    monkeypatch.setattr("cnas_hpc.evaluate.speed.choose_fastest", fastest)
    model = build_eval_network(DARTS_V2, TINY, digits.num_classes, seed=0)
    task = SupervisedTask(TINY, digits.num_classes, seed=0)
    chosen = choose_layout(model, task, digits, CPU, cache_dir=None, stored=stored)
    return chosen, fastest


def test_a_fresh_cell_measures_its_layout(
    digits: LabeledData, monkeypatch: pytest.MonkeyPatch
) -> None:
    chosen, fastest = _choose(digits, monkeypatch, None)
    assert fastest.calls == 1 and chosen.memory_format == torch.contiguous_format


def test_a_resumed_cell_keeps_its_checkpoint_s_layout_without_measuring(
    digits: LabeledData, monkeypatch: pytest.MonkeyPatch
) -> None:
    stored = {"device": "cpu", "memory_format": "channels_last", "amp": "none"}
    chosen, fastest = _choose(digits, monkeypatch, stored)
    assert fastest.calls == 0
    assert chosen.memory_format == torch.channels_last and chosen.amp_dtype is None
    assert chosen.layout_record(CPU) == stored  # what its next checkpoint records again


@pytest.mark.parametrize(
    ("stored", "why"),
    [
        ({}, "holds no layout"),  # a checkpoint written before layouts were saved
        ({"device": "cuda", "memory_format": "channels_last", "amp": "bf16"}, "chosen on cuda"),
        ({"device": "cpu", "memory_format": "channels_last", "amp": "bf16"}, "not a candidate"),
    ],
)
def test_a_layout_that_cannot_run_here_is_measured_again_and_the_log_says_why(
    digits: LabeledData,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    stored: dict[str, Any],
    why: str,
) -> None:
    with caplog.at_level(logging.INFO, logger="cnas_hpc.evaluate.speed"):
        chosen, fastest = _choose(digits, monkeypatch, stored)
    assert fastest.calls == 1 and chosen.memory_format == torch.contiguous_format
    assert "measuring its layout again" in caplog.text and why in caplog.text
