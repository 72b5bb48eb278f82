"""Trial checkpoints: atomic, safe to load, and a resumed run ends where an unbroken one does."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cnas_hpc.data.datasets import load_images
from cnas_hpc.data.splits import make_search_data
from cnas_hpc.search.trial import proxy_task
from cnas_hpc.space.genotype import DARTS_V2, genotype_to_json
from cnas_hpc.train.checkpoint import (
    TrainState,
    checkpoint_path,
    load_checkpoint,
    save_checkpoint,
)
from cnas_hpc.train.loop import Checkpointing, build_candidate, train_candidate
from cnas_hpc.train.outcome import TrainingAbortedError
from tests.helpers import tiny_settings

GENOTYPE = genotype_to_json(DARTS_V2)


@pytest.mark.parametrize("loss", ["ntxent", "membank_nce"])
def test_a_run_stopped_mid_epoch_and_resumed_matches_an_unbroken_run(
    tmp_path: Path, loss: str
) -> None:
    # One fixed step plan: with train.perf=auto each run measures its own plan, and on a busy
    # node the two runs may pick different thread counts (float results then differ).
    settings = tiny_settings(
        tmp_path,
        "train.epochs=3",
        "train.max_steps_per_epoch=3",
        f"train.loss={loss}",
        "train.perf=nchw",
        "train.num_threads=1",
    )
    data = make_search_data(load_images(settings.data), settings.data)
    cpu = torch.device("cpu")

    unbroken = build_candidate(DARTS_V2, settings.model, settings.seed, cpu)
    reference = train_candidate(unbroken, data, proxy_task(settings), cpu)

    path = checkpoint_path(tmp_path / "ckpt", "s", 0)
    saves: list[tuple[int, int]] = []

    def save(state: TrainState) -> None:
        saves.append((state.epoch, state.step_in_epoch))
        save_checkpoint(state, path)

    calls = {"n": 0}

    def stop_at_step_five() -> bool:  # "preempted" in epoch 1, after one of its steps
        calls["n"] += 1
        return calls["n"] == 5

    first = build_candidate(DARTS_V2, settings.model, settings.seed, cpu)
    with pytest.raises(TrainingAbortedError) as info:
        train_candidate(
            first,
            data,
            proxy_task(settings),
            cpu,
            should_stop=stop_at_step_five,
            checkpointing=Checkpointing(save, 1e9, None, 0, GENOTYPE),
        )
    assert info.value.reason == "stopped"
    assert saves == [(1, 0), (1, 1)]  # end of epoch 0, then the stop inside epoch 1

    state = load_checkpoint(path, genotype_json=GENOTYPE)
    assert state is not None and (state.epoch, state.step_in_epoch, state.step) == (1, 1, 4)
    second = build_candidate(DARTS_V2, settings.model, settings.seed, cpu)
    resumed = train_candidate(
        second,
        data,
        proxy_task(settings),
        cpu,
        checkpointing=Checkpointing(None, 1e9, state, 0, GENOTYPE),
    )
    assert resumed.resumed_from_epoch == 1
    assert resumed.epochs_done == reference.epochs_done == 3
    assert resumed.steps == reference.steps
    assert resumed.train_loss == pytest.approx(reference.train_loss, rel=1e-5)
    assert resumed.val_loss == pytest.approx(reference.val_loss, rel=1e-5)
    for a, b in zip(unbroken.state_dict().values(), second.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_checkpoints_are_written_atomically_and_loaded_weights_only(tmp_path: Path) -> None:
    path = checkpoint_path(tmp_path, "my/study", 7)
    assert path.parent.name == "my_study" and path.name == "trial-7.pt"
    state = TrainState(
        trial=7,
        genotype_json=GENOTYPE,
        epoch=2,
        step_in_epoch=0,
        step=10,
        loss_sum=0.0,
        model={"w": torch.ones(2)},
        optimizer={"state": {}, "param_groups": []},
        scaler={},
        extra={},
        history=[{"epoch": 1, "train_loss": 1.0}],
        wall_s=3.0,
    )
    save_checkpoint(state, path)
    assert [p.name for p in path.parent.iterdir()] == ["trial-7.pt"]  # no temp file left
    loaded = load_checkpoint(path, genotype_json=GENOTYPE)
    assert (
        loaded is not None and loaded.epoch == 2 and torch.equal(loaded.model["w"], torch.ones(2))
    )
    # Another architecture's checkpoint, or a corrupt file, is ignored rather than loaded.
    assert load_checkpoint(path, genotype_json="{}") is None
    path.write_bytes(b"not a checkpoint")
    assert load_checkpoint(path, genotype_json=GENOTYPE) is None
    # A pickled object (not weights-only data) is refused.
    torch.save({"evil": object()}, path)
    assert load_checkpoint(path, genotype_json=GENOTYPE) is None
