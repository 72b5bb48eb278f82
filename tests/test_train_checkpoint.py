"""Trial checkpoints: atomic, safe to load, and a resumed run ends where an unbroken one does.

A resumed run trains under the step plan its checkpoint recorded (measuring again on a busy node
may pick another thread count or layout, which rounds differently), unless that plan cannot run
here: then it measures, and says why.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from cnas_hpc.data.datasets import load_images
from cnas_hpc.data.splits import SearchData, make_search_data
from cnas_hpc.search.trial import proxy_task
from cnas_hpc.space.genotype import DARTS_V2, PC_DARTS, genotype_to_json
from cnas_hpc.train import checkpoint as checkpoint_module
from cnas_hpc.train.checkpoint import (
    Checkpointing,
    SaveClock,
    TrainState,
    checkpoint_path,
    load_checkpoint,
    save_checkpoint,
)
from cnas_hpc.train.loop import build_candidate, train_candidate
from cnas_hpc.train.outcome import TrainingAbortedError
from cnas_hpc.train.plan import StepPlan, plan_from_record, plan_record
from tests.helpers import tiny_settings

GENOTYPE = genotype_to_json(DARTS_V2)
CPU = torch.device("cpu")


class CountingChooser:
    """Stands in for ``choose_plan``: counts the measurements and answers ``answer``."""

    def __init__(self, answer: StepPlan) -> None:
        self.answer, self.calls = answer, 0

    def __call__(self, *args: Any, **kwargs: Any) -> StepPlan:
        self.calls += 1
        return self.answer


def _other_plan(plan: StepPlan) -> StepPlan:
    """A plan a fresh measurement could pick instead of ``plan`` (other layout and threads)."""
    layout = "channels_last" if plan.layout == "nchw" else "nchw"
    return StepPlan(layout, threads=2 if plan.threads == 1 else 1)


@pytest.mark.parametrize("loss", ["ntxent", "membank_nce"])
def test_a_run_stopped_mid_epoch_and_resumed_matches_an_unbroken_run(
    tmp_path: Path, loss: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # train.perf=auto: the interrupted run measures its plan, the resumed one must keep it.
    overrides = ("train.epochs=3", "train.max_steps_per_epoch=3", f"train.loss={loss}")
    settings = tiny_settings(tmp_path, *overrides)
    assert settings.train.perf == "auto" and settings.train.num_threads is None
    data = make_search_data(load_images(settings.data), settings.data)

    path = checkpoint_path(tmp_path / "ckpt", "s", 0)
    saves: list[tuple[int, int]] = []

    def save(state: TrainState) -> None:
        saves.append((state.epoch, state.step_in_epoch))
        save_checkpoint(state, path)

    calls = {"n": 0}

    def stop_at_step_five() -> bool:  # "preempted" in epoch 1, after one of its steps
        calls["n"] += 1
        return calls["n"] == 5

    first = build_candidate(DARTS_V2, settings.model, settings.seed, CPU)
    with pytest.raises(TrainingAbortedError) as info:
        train_candidate(
            first,
            data,
            proxy_task(settings),
            CPU,
            should_stop=stop_at_step_five,
            checkpointing=Checkpointing(save, 1e9, None, 0, GENOTYPE),
        )
    assert info.value.reason == "stopped"
    assert saves == [(1, 0), (1, 1)]  # end of epoch 0, then the stop inside epoch 1

    state = load_checkpoint(path, genotype_json=GENOTYPE)
    assert state is not None and (state.epoch, state.step_in_epoch, state.step) == (1, 1, 4)
    plan, chosen_on = plan_from_record(state.plan)
    assert chosen_on == "cpu"
    # Were the resumed run to measure again, it would pick another plan (a busy node can).
    chooser = CountingChooser(_other_plan(plan))
    monkeypatch.setattr("cnas_hpc.train.loop.choose_plan", chooser)
    second = build_candidate(DARTS_V2, settings.model, settings.seed, CPU)
    resumed = train_candidate(
        second,
        data,
        proxy_task(settings),
        CPU,
        checkpointing=Checkpointing(None, 1e9, state, 0, GENOTYPE),
    )
    assert chooser.calls == 0 and resumed.plan == plan.name
    monkeypatch.undo()

    # The unbroken run the resumed one must match: the same plan, from start to end.
    threads = "null" if plan.threads is None else str(plan.threads)
    fixed = tiny_settings(
        tmp_path, *overrides, f"train.perf={plan.layout}", f"train.num_threads={threads}"
    )
    unbroken = build_candidate(DARTS_V2, settings.model, settings.seed, CPU)
    reference = train_candidate(unbroken, data, proxy_task(fixed), CPU)
    assert reference.plan == plan.name
    assert resumed.resumed_from_epoch == 1
    assert resumed.epochs_done == reference.epochs_done == 3
    assert resumed.steps == reference.steps
    assert resumed.train_loss == pytest.approx(reference.train_loss, rel=1e-5)
    assert resumed.val_loss == pytest.approx(reference.val_loss, rel=1e-5)
    for a, b in zip(unbroken.state_dict().values(), second.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def one_epoch_in(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SearchData, TrainState]:
    """Output folder, data and the checkpoint after epoch 0 of a 2-epoch, 1-step-each run."""
    tmp = tmp_path_factory.mktemp("resume")
    settings = tiny_settings(tmp, "train.epochs=2", "train.max_steps_per_epoch=1")
    data = make_search_data(load_images(settings.data), settings.data)
    saved: list[TrainState] = []
    model = build_candidate(DARTS_V2, settings.model, settings.seed, CPU)
    train_candidate(
        model,
        data,
        proxy_task(settings),
        CPU,
        checkpointing=Checkpointing(saved.append, 1e9, None, 0, GENOTYPE),
    )
    (state,) = saved
    return tmp, data, state


def _resume(
    one_epoch_in: tuple[Path, SearchData, TrainState],
    record: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    *overrides: str,
    max_threads: int | None = None,
) -> tuple[str, CountingChooser]:
    """Resume the fixture's checkpoint with ``record`` as its plan: (plan trained, chooser)."""
    tmp, data, state = one_epoch_in
    settings = tiny_settings(tmp, "train.epochs=2", "train.max_steps_per_epoch=1", *overrides)
    chooser = CountingChooser(StepPlan("nchw", threads=1))
    monkeypatch.setattr("cnas_hpc.train.loop.choose_plan", chooser)
    model = build_candidate(DARTS_V2, settings.model, settings.seed, CPU)
    resume = dataclasses.replace(state, plan=record)
    result = train_candidate(
        model,
        data,
        proxy_task(settings, max_threads),
        CPU,
        checkpointing=Checkpointing(None, 1e9, resume, 0, GENOTYPE),
    )
    assert result.resumed_from_epoch == 1
    return result.plan, chooser


def test_a_resumed_run_trains_under_its_checkpoint_s_plan_without_measuring(
    one_epoch_in: tuple[Path, SearchData, TrainState], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, _, state = one_epoch_in
    assert plan_from_record(state.plan)[1] == "cpu"  # every checkpoint says how it trained
    stored = StepPlan("channels_last", threads=1)
    trained, chooser = _resume(one_epoch_in, plan_record(stored, CPU), monkeypatch)
    assert trained == stored.name and chooser.calls == 0


@pytest.mark.parametrize(
    ("record", "max_threads", "why"),
    [
        ({}, None, "holds no step plan"),  # an old checkpoint
        ({"layout": "nchw"}, None, "unreadable"),
        (plan_record(StepPlan("nchw", "bf16"), torch.device("cuda")), None, "chosen on cuda"),
        ({**plan_record(StepPlan("nchw"), CPU), "precision": "bf16"}, None, "precision bf16"),
        ({**plan_record(StepPlan("nchw"), CPU), "compile": True}, None, "torch.compile on"),
        (plan_record(StepPlan("nchw", threads=2), CPU), 1, "exceed this allocation's 1"),
    ],
)
def test_a_plan_that_cannot_run_here_is_measured_again_and_the_log_says_why(
    one_epoch_in: tuple[Path, SearchData, TrainState],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    record: dict[str, Any],
    max_threads: int | None,
    why: str,
) -> None:
    with caplog.at_level(logging.INFO, logger="cnas_hpc.train.plan_tuning"):
        trained, chooser = _resume(one_epoch_in, record, monkeypatch, max_threads=max_threads)
    assert chooser.calls == 1 and trained == "nchw+threads=1"
    assert "measuring its step plan again" in caplog.text and why in caplog.text


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
    # A checkpoint written before step plans were saved still loads (its plan is measured).
    old_payload = state.to_payload()
    del old_payload["plan"]
    torch.save(old_payload, path)
    loaded = load_checkpoint(path, genotype_json=GENOTYPE)
    assert loaded is not None and loaded.plan == {} and loaded.step == 10
    # Another architecture's checkpoint, or a corrupt file, is ignored rather than loaded.
    assert load_checkpoint(path, genotype_json="{}") is None
    path.write_bytes(b"not a checkpoint")
    assert load_checkpoint(path, genotype_json=GENOTYPE) is None
    # A pickled object (not weights-only data) is refused.
    torch.save({"evil": object()}, path)
    assert load_checkpoint(path, genotype_json=GENOTYPE) is None


def _state(epoch: int, step_in_epoch: int, genotype: str = GENOTYPE) -> TrainState:
    return TrainState(
        trial=1, genotype_json=genotype, epoch=epoch, step_in_epoch=step_in_epoch,
        step=10 * epoch + step_in_epoch, loss_sum=0.0, model={"w": torch.full((2,), epoch)},
        optimizer={}, scaler={}, extra={}, history=[], wall_s=0.0,
    )  # fmt: skip


def test_a_checkpoint_is_never_replaced_by_an_older_one(tmp_path: Path) -> None:
    # A second worker that started the same cell from scratch must not throw away the
    # progress of the one that trains it.
    path = checkpoint_path(tmp_path, "ev", 1)
    assert save_checkpoint(_state(1, 0), path)
    assert not save_checkpoint(_state(0, 5), path)
    kept = load_checkpoint(path, genotype_json=GENOTYPE)
    assert kept is not None and (kept.epoch, kept.step_in_epoch) == (1, 0)
    # Further along, or another architecture's stale file: replaced.
    assert save_checkpoint(_state(1, 3), path)
    other = genotype_to_json(PC_DARTS)
    assert save_checkpoint(_state(0, 0, other), path)
    assert load_checkpoint(path, genotype_json=other) is not None


def test_the_save_clock_is_due_every_s_after_the_last_save_and_counts_from_its_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [100.0]
    monkeypatch.setattr(checkpoint_module.time, "perf_counter", lambda: now[0])
    clock = SaveClock(every_s=10.0)
    never = SaveClock()  # no checkpointing: never due by time
    now[0] = 109.5
    assert not clock.due()
    now[0] = 110.0
    assert clock.due() and not never.due()
    clock.saved()  # a save point restarts the wait, not the elapsed time
    now[0] = 115.0
    assert not clock.due()
    assert clock.elapsed_s() == 15.0 and never.elapsed_s() == 15.0
    now[0] = 120.0
    assert clock.due()
    assert never.every_s == math.inf
