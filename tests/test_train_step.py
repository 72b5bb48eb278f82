"""One contrastive step on a real proxy network: it learns, it resumes exactly, it stops on NaN."""

from __future__ import annotations

import copy

import pytest
import torch

from cnas_hpc.config.augment import AugmentConfig
from cnas_hpc.config.model import ProxyConfig
from cnas_hpc.config.train import TrainConfig
from cnas_hpc.models.networks import ProxyNetwork
from cnas_hpc.space.genotype import DARTS_V2
from cnas_hpc.train.loop import build_candidate
from cnas_hpc.train.outcome import TrainingAbortedError
from cnas_hpc.train.step import ContrastiveStep, ProxyTask, step_seed

CPU = torch.device("cpu")
N = 16


def _images() -> torch.Tensor:
    generator = torch.Generator().manual_seed(3)
    return torch.randint(0, 256, (N, 3, 16, 16), dtype=torch.uint8, generator=generator)


def _stepper(loss: str, model: ProxyNetwork | None = None) -> ContrastiveStep:
    cfg = TrainConfig(batch_size=8, lr=0.05, loss=loss, membank_negatives=8, grad_clip=5.0)  # type: ignore[arg-type]
    task = ProxyTask(cfg, AugmentConfig(), image_size=16, seed=0)
    net = model or build_candidate(DARTS_V2, ProxyConfig(cells=3, channels=4), 0, CPU)
    return ContrastiveStep(net, task, CPU, n_train=N, total_steps=40, warmup_steps=0)


@pytest.mark.parametrize("loss", ["ntxent", "membank_nce"])
def test_steps_on_one_batch_lower_its_loss(loss: str) -> None:
    stepper, images, index = _stepper(loss), _images(), torch.arange(8)
    # The same views every time (same step seed): the loss of one batch must go down.
    losses = [float(stepper(images, index, step=0)) for _ in range(6)]
    assert losses[-1] < losses[0], losses
    stepper.check_finite("the end")  # nothing flagged


@pytest.mark.parametrize("loss", ["ntxent", "membank_nce"])
def test_a_restored_step_state_continues_exactly_like_the_unbroken_run(loss: str) -> None:
    images = _images()
    unbroken = _stepper(loss)
    for step in range(3):
        unbroken(images, torch.arange(8) + step % 2 * 8, step)
    # A checkpoint: the model's weights and the stepper's state (optimizer, scheduler, bank).
    saved_model = copy.deepcopy(unbroken.model.state_dict())
    saved_state = copy.deepcopy(unbroken.state_dict())
    model = build_candidate(DARTS_V2, ProxyConfig(cells=3, channels=4), 0, CPU)
    model.load_state_dict(saved_model)
    resumed = _stepper(loss, model)
    resumed.load_state_dict(saved_state, steps_done=3)
    assert resumed.lr == unbroken.lr
    index = torch.arange(8)
    assert torch.equal(resumed(images, index, 3), unbroken(images, index, 3))


def test_a_non_finite_loss_is_flagged_then_stops_the_candidate() -> None:
    stepper = _stepper("ntxent")
    stepper.flag_non_finite(torch.tensor(1.0))
    stepper.check_finite("step 1")  # finite: nothing happens
    stepper.flag_non_finite(torch.tensor(float("nan")))
    stepper.flag_non_finite(torch.tensor(2.0))  # a later finite loss does not clear the flag
    with pytest.raises(TrainingAbortedError) as stopped:
        stepper.check_finite("step 3")
    assert stopped.value.reason == "non_finite_loss"


def test_step_seeds_differ_per_rank_and_step_and_are_stable() -> None:
    seeds = {step_seed(0, rank, step) for rank in range(4) for step in range(100)}
    assert len(seeds) == 400
    assert step_seed(5, 1, 7) == step_seed(5, 1, 7)
