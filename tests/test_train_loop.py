"""The training loop reads nothing back from the device inside a step, except where it logs.

A host sync (``loss.item()``, ``.tolist()`` of a flag, ``float(tensor)``, ``if tensor:``) makes
the host wait for every queued kernel: on a GPU the next step cannot be queued meanwhile. These
tests count the Python-level read-backs per training step of a real candidate on the CPU, and
check that a non-finite loss is still caught (at the next log point) without them.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from cnas_hpc.data.datasets import load_images
from cnas_hpc.data.splits import make_search_data
from cnas_hpc.search.trial import proxy_task
from cnas_hpc.space.genotype import DARTS_V2
from cnas_hpc.train.loop import build_candidate, train_candidate
from cnas_hpc.train.outcome import TrainingAbortedError
from tests.helpers import tiny_settings

#: Tensor methods that read a value back to the host (each one is a device sync on a GPU).
READ_BACKS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__")


@pytest.fixture
def read_backs(monkeypatch: pytest.MonkeyPatch) -> Iterator[Counter[str]]:
    """Counts calls of :data:`READ_BACKS` on any tensor while the test runs."""
    counts: Counter[str] = Counter()

    def counting(name: str, original: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            counts[name] += 1
            return original(self, *args, **kwargs)

        return wrapper

    for name in READ_BACKS:
        monkeypatch.setattr(torch.Tensor, name, counting(name, getattr(torch.Tensor, name)))
    yield counts


@pytest.mark.parametrize("loss", ["ntxent", "membank_nce"])
def test_no_read_back_inside_a_step_that_logs_nothing(
    tmp_path: Path, read_backs: Counter[str], loss: str
) -> None:
    settings = tiny_settings(
        tmp_path,
        "train.epochs=2",
        "train.max_steps_per_epoch=6",
        "train.log_every_steps=4",
        f"train.loss={loss}",
    )
    data = make_search_data(load_images(settings.data), settings.data)
    cpu = torch.device("cpu")
    model = build_candidate(DARTS_V2, settings.model, settings.seed, cpu)
    # The loop polls should_stop once before every step: consecutive polls in one epoch
    # bracket exactly one step.
    polls: list[tuple[int, int]] = []  # (epoch, read-backs so far)
    epoch = {"now": 0}

    def should_stop() -> bool:
        polls.append((epoch["now"], sum(read_backs.values())))
        return False

    def on_epoch(_: object) -> bool:
        epoch["now"] += 1
        return False

    logged: list[int] = []
    result = train_candidate(
        model,
        data,
        proxy_task(settings),
        cpu,
        should_stop=should_stop,
        on_epoch=on_epoch,
        on_step=lambda step, metrics: logged.append(step),
    )
    assert result.steps == 12 and logged == [4, 8, 12]
    per_step = {}
    for step, ((e0, before), (e1, after)) in enumerate(itertools.pairwise(polls)):
        if e0 == e1:  # not across an epoch end (scoring reads its results back)
            per_step[step] = after - before
    assert len(per_step) == 10
    # Global steps 3 and 7 are followed by a log point (steps counted from 1 there: 4, 8).
    quiet = {step: n for step, n in per_step.items() if (step + 1) % 4}
    assert quiet and all(n == 0 for n in quiet.values()), per_step
    # The counter does see read-backs: a log point reads the non-finite flag and the loss.
    assert per_step[3] >= 2 and per_step[7] >= 2, per_step


def test_a_diverging_candidate_is_stopped_at_the_next_log_point(tmp_path: Path) -> None:
    settings = tiny_settings(
        tmp_path,
        "train.epochs=1",
        "train.max_steps_per_epoch=6",
        "train.log_every_steps=4",
        "train.lr=1e30",  # the weights blow up after the first step
        "train.grad_clip=null",
    )
    data = make_search_data(load_images(settings.data), settings.data)
    cpu = torch.device("cpu")
    model = build_candidate(DARTS_V2, settings.model, settings.seed, cpu)
    with pytest.raises(TrainingAbortedError) as info:
        train_candidate(model, data, proxy_task(settings), cpu)
    assert info.value.reason == "non_finite_loss"
    # Caught where the flag is read (step 4), not where the loss first went bad.
    assert "step 4" in str(info.value)
