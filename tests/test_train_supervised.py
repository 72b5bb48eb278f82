"""Supervised training from scratch: it learns, it resumes exactly, it stops cleanly."""

from __future__ import annotations

import dataclasses
import socket
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp

from cnas_hpc.config.data import DataConfig
from cnas_hpc.config.protocol import ProtocolConfig
from cnas_hpc.data.labeled import LabeledData, load_labeled
from cnas_hpc.distributed.env import DistEnv, distributed_session
from cnas_hpc.space.genotype import DARTS_V2, genotype_to_json
from cnas_hpc.train.checkpoint import Checkpointing, TrainState
from cnas_hpc.train.outcome import TrainingAbortedError
from cnas_hpc.train.supervised import (
    SupervisedResult,
    SupervisedTask,
    build_eval_network,
    train_supervised,
)

#: The test split is scored at the end only (epoch 3, and the last): scoring it after every epoch
#: was a third of each run's time and proves nothing the final score does not. Six steps an epoch:
#: a resume inside an epoch is as exact with 6 as with 12 (half the CPU).
TINY = ProtocolConfig(
    name="tiny", cells=3, channels=6, epochs=3, batch_size=64, lr=0.05, cutout=8,
    auxiliary_weight=0.4, drop_path=0.1, max_steps_per_epoch=6, log_every_steps=5,
    test_every_epochs=3,
)  # fmt: skip
CPU = torch.device("cpu")
GENOTYPE = genotype_to_json(DARTS_V2)


@pytest.fixture(scope="module")
def digits() -> LabeledData:
    return load_labeled(DataConfig(source="digits", val_fraction=0.3))


def _train(data: LabeledData, protocol: ProtocolConfig = TINY, **kwargs: Any) -> SupervisedResult:
    torch.set_num_threads(1)
    model = build_eval_network(DARTS_V2, protocol, data.num_classes, seed=0)
    task = SupervisedTask(protocol, data.num_classes, seed=0)
    return train_supervised(model, data, task, CPU, **kwargs)


@pytest.mark.cost(25)
def test_it_learns_the_task(digits: LabeledData) -> None:
    # Two full epochs in batches of 32 (78 steps): ~40 % test accuracy here, in half the CPU of
    # four epochs in batches of 64 (~33 %).
    longer = dataclasses.replace(TINY, epochs=2, batch_size=32, cutout=0, max_steps_per_epoch=None)
    result = _train(digits, longer)
    assert result.epochs_done == 2 and result.steps == 2 * (len(digits.train) // 32)
    assert result.test_accuracy > 0.25  # 10 classes: chance is 0.1
    assert result.history[-1].train_loss < result.history[0].train_loss


@pytest.mark.cost(45)
def test_a_stopped_run_resumes_to_exactly_the_unbroken_result(digits: LabeledData) -> None:
    unbroken = _train(digits)
    saved: list[TrainState] = []
    polls = {"n": 0}

    def stop() -> bool:
        polls["n"] += 1
        return polls["n"] == 10  # inside the second epoch (one poll per step, 6 steps an epoch)

    with pytest.raises(TrainingAbortedError) as info:
        _train(
            digits,
            should_stop=stop,
            checkpointing=Checkpointing(saved.append, 1e9, None, 0, GENOTYPE),
        )
    assert info.value.reason == "stopped"
    state = saved[-1]
    assert (state.epoch, state.step_in_epoch) == (1, 3)
    # It says how its steps ran, so a resumed cell keeps that layout (evaluate.speed).
    assert state.plan == {"device": "cpu", "memory_format": "contiguous", "amp": "none"}
    resumed = _train(digits, checkpointing=Checkpointing(None, 1e9, state, 0, GENOTYPE))
    assert resumed.resumed_from_epoch == 1
    assert resumed.test_accuracy == unbroken.test_accuracy
    assert resumed.test_loss == unbroken.test_loss
    assert [h.train_loss for h in resumed.history] == [h.train_loss for h in unbroken.history]


def test_a_diverging_network_stops_with_a_reason(digits: LabeledData) -> None:
    exploding = dataclasses.replace(TINY, lr=1e12, grad_clip=None)
    with pytest.raises(TrainingAbortedError) as info:
        _train(digits, exploding)
    assert info.value.reason == "non_finite_loss"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _rank(rank: int, port: int, data: LabeledData, results: Any) -> None:
    env = DistEnv(global_rank=rank, local_rank=rank, world_size=2, master_port=port)
    with distributed_session(env, CPU):
        result = _train(data, dataclasses.replace(TINY, epochs=1))
        results[rank] = (result.test_accuracy, result.steps)


def test_two_ranks_train_one_global_batch_and_agree(digits: LabeledData) -> None:
    results = mp.Manager().dict()
    mp.spawn(_rank, args=(_free_port(), digits, results), nprocs=2, join=True)
    assert results[0] == results[1]  # reduced metrics: the same on every rank
    assert results[0][1] == 6  # one global batch per step, split over the ranks
