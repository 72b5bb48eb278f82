"""A cell runner resumes a cell under the layout its checkpoint recorded, not a new measurement."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from cnas_hpc.common.observers import ObserverGroup
from cnas_hpc.config.data import DataConfig
from cnas_hpc.data.labeled import load_labeled
from cnas_hpc.distributed.env import DistEnv
from cnas_hpc.distributed.preemption import Preemption
from cnas_hpc.evaluate import store
from cnas_hpc.evaluate.runner import CellRunner
from cnas_hpc.space.genotype import DARTS_V2, genotype_to_json
from cnas_hpc.train.checkpoint import TrainState, save_checkpoint
from cnas_hpc.train.supervised import SupervisedResult, SupervisedTask
from tests.test_config_evaluate import settings as eval_settings  # the composed real config

GENOTYPE = genotype_to_json(DARTS_V2)


def _row() -> store.Row:
    fields: dict[str, Any] = dict.fromkeys(store.Row.__dataclass_fields__)
    fields.update(
        name="cells", cell_index=0, cell_key="preset:DARTS_V2", source="preset",
        genotype=GENOTYPE, genotype_hash="h", method="supervised", protocol_name="debug",
        protocol_hash="p", protocol="{}", seed=0, state=store.RUNNING,
    )  # fmt: skip
    return store.Row(**fields)


def test_a_resumed_cell_trains_under_its_checkpoint_s_layout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = eval_settings("protocol=debug", "protocol.cells=3", f"output_dir={tmp_path}")
    assert (settings.protocol.memory_format, settings.protocol.amp) == ("auto", "auto")
    runner = CellRunner(
        _row(), settings, DistEnv(), torch.device("cpu"),
        load_labeled(DataConfig(source="digits", val_fraction=0.3)),
        engine=None, observers=ObserverGroup(), preemption=Preemption(),
    )  # fmt: skip
    stored = {"device": "cpu", "memory_format": "channels_last", "amp": "none"}
    state = TrainState(
        trial=0, genotype_json=GENOTYPE, epoch=1, step_in_epoch=0, step=5, loss_sum=0.0,
        model={}, optimizer={}, scaler={}, extra={}, history=[], wall_s=1.0, plan=stored,
    )  # fmt: skip
    save_checkpoint(state, runner.supervised_path)
    measured: list[object] = []
    trained: list[tuple[SupervisedTask, TrainState | None]] = []

    def fake_train(model: Any, data: Any, task: SupervisedTask, *a: Any, **kw: Any) -> Any:
        trained.append((task, kw["checkpointing"].resume))
        return SupervisedResult(0.5, 1.0, 0.5, 3, 15, 1.0, 1.0)

    measure = "cnas_hpc.evaluate.speed.choose_fastest"
    monkeypatch.setattr(measure, lambda *a, **_: measured.append(a))
    monkeypatch.setattr("cnas_hpc.evaluate.runner.train_supervised", fake_train)
    assert runner.run() is None
    ((task, resume),) = trained
    assert not measured and resume is not None and resume.step == 5
    assert task.memory_format == torch.channels_last
    assert runner.results["memory_format"] == "channels_last"
