"""Step plans: which ones a config allows, the measured choice, and what a plan changes.

A plan must change how fast a step runs, never what it computes beyond rounding; the choice is
measured on the device (not a flag to guess), cached, and recorded in the result.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from cnas_hpc.config.train import TrainConfig
from cnas_hpc.data.datasets import load_images
from cnas_hpc.data.splits import make_search_data
from cnas_hpc.search.trial import proxy_task
from cnas_hpc.space.genotype import DARTS_V2
from cnas_hpc.train.loop import build_candidate, train_candidate
from cnas_hpc.train.plan import (
    StepPlan,
    available_cores,
    compile_wanted,
    eager_plans,
    plan_from_record,
    plan_record,
    thread_counts_for,
    why_unfit,
)
from cnas_hpc.train.plan_tuning import choose_plan
from tests.helpers import tiny_settings

CPU = torch.device("cpu")


def test_measured_threads_stay_within_the_allocation(monkeypatch: pytest.MonkeyPatch) -> None:
    # The worker's allocation (cpu_budget) is the upper bound: measurement chooses within it.
    monkeypatch.setattr("cnas_hpc.train.plan.available_cores", lambda: 8)
    assert thread_counts_for(TrainConfig(), CPU, max_threads=8) == (1, 8)
    assert thread_counts_for(TrainConfig(), CPU, max_threads=3) == (1, 3)
    assert thread_counts_for(TrainConfig(), CPU, max_threads=16) == (1, 8)  # affinity caps too
    assert thread_counts_for(TrainConfig(), CPU, max_threads=1) == ()  # nothing to choose
    assert thread_counts_for(TrainConfig(num_threads=4), CPU, max_threads=2) == ()  # override


@pytest.mark.parametrize(("applied", "counts"), [(3, (1, 3)), (1, ()), (16, (1, 8))])
def test_without_an_allocation_the_threads_the_process_runs_cap_the_measurement(
    monkeypatch: pytest.MonkeyPatch, applied: int, counts: tuple[int, ...]
) -> None:
    # A caller that passes no allocation (max_threads=None) measures within what the app
    # applied at start (size_cpu_threads sets torch's pool), not the node's every core.
    monkeypatch.setattr("cnas_hpc.train.plan.available_cores", lambda: 8)
    before = torch.get_num_threads()
    torch.set_num_threads(applied)
    try:
        assert thread_counts_for(TrainConfig(), CPU) == counts
        over = StepPlan("nchw", threads=4)
        assert (why_unfit(over, "cpu", TrainConfig(), CPU) is None) == (applied >= 4)
    finally:
        torch.set_num_threads(before)


def test_a_stored_plan_fits_only_where_measurement_could_have_chosen_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("cnas_hpc.train.plan.available_cores", lambda: 4)
    plan = StepPlan("channels_last", threads=4)
    assert plan_from_record(plan_record(plan, CPU)) == (plan, "cpu")  # what a checkpoint holds
    auto = TrainConfig()
    assert why_unfit(plan, "cpu", auto, CPU, max_threads=4) is None
    assert why_unfit(StepPlan("nchw"), "cpu", auto, CPU) is None  # the allocation's threads
    # Never more threads than the allocation gives: a plan measured on a bigger one is re-measured.
    assert "exceed this allocation's 2" in str(why_unfit(plan, "cpu", auto, CPU, max_threads=2))
    # An explicit setting wins over what the checkpoint says.
    assert "train.num_threads=1" in str(why_unfit(plan, "cpu", TrainConfig(num_threads=1), CPU))
    assert "train.perf=nchw" in str(why_unfit(plan, "cpu", TrainConfig(perf="nchw"), CPU))
    assert "chosen on cuda" in str(why_unfit(StepPlan(), "cuda", auto, CPU))
    with pytest.raises(ValueError, match="threads"):
        plan_from_record({**plan_record(plan, CPU), "threads": True})
    with pytest.raises(ValueError, match="layout must be one of"):
        plan_from_record({**plan_record(plan, CPU), "layout": "nhwc"})


def test_auto_measures_layouts_and_cpu_threads_explicit_values_are_kept() -> None:
    assert {p.name for p in eager_plans(TrainConfig(), CPU)} == {"nchw", "channels_last"}
    cap = min(available_cores(), torch.get_num_threads())
    assert thread_counts_for(TrainConfig(), CPU) == (() if cap == 1 else (1, cap))
    # bf16 autocast is a CUDA option; on a CPU every plan is fp32 whatever train.amp says.
    assert all(p.precision == "fp32" for p in eager_plans(TrainConfig(amp="bf16"), CPU))
    fixed = TrainConfig(perf="channels_last", num_threads=1)
    assert [p.name for p in eager_plans(fixed, CPU)] == ["channels_last+threads=1"]
    assert thread_counts_for(fixed, CPU) == ()
    assert compile_wanted(TrainConfig(), CPU) is False  # a CPU never measures compilation
    assert compile_wanted(TrainConfig(perf="nchw+compile"), CPU) is True
    with pytest.raises(ValueError, match=r"train\.perf must be one of"):
        TrainConfig(perf="fast")  # type: ignore[arg-type]


def test_the_measured_plan_is_cached_and_applied(tmp_path: Path) -> None:
    settings = tiny_settings(tmp_path, "train.epochs=1", "train.max_steps_per_epoch=2")
    task = proxy_task(settings)
    data = make_search_data(load_images(settings.data), settings.data)
    model = build_candidate(DARTS_V2, settings.model, settings.seed, CPU)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plan = choose_plan(model, data.train.images, task, CPU, total_steps=2)
    assert replace(plan, threads=None).name in {p.name for p in eager_plans(settings.train, CPU)}
    # The thread count is measured per candidate (the node's load changes), not cached.
    assert plan.threads in (*thread_counts_for(settings.train, CPU), None)
    # The candidate itself was not trained by the measurement (a copy was).
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    (cached,) = (tmp_path / "autotune").glob("*.json")
    payload = json.loads(cached.read_text())
    assert payload["choice"] == replace(plan, threads=None).name and len(payload["seconds"]) == 2
    result = train_candidate(model, data, task, CPU)
    # Training reuses the cached layout but measures its threads again (1 and 2 threads can
    # swap places between two measurements on a busy 2-core node), so compare the layout.
    layout, _, threads = result.plan.partition("+threads=")
    assert layout == replace(plan, threads=None).name
    assert (int(threads) if threads else None) in (*thread_counts_for(settings.train, CPU), None)
    conv = model.body.stem[0]
    assert isinstance(conv, torch.nn.Conv2d)
    assert conv.weight.is_contiguous(memory_format=plan.memory_format)


@pytest.mark.parametrize("perf", ["nchw", "channels_last"])
def test_an_explicit_layout_is_used_without_measuring(tmp_path: Path, perf: str) -> None:
    settings = tiny_settings(
        tmp_path,
        "train.epochs=1",
        "train.max_steps_per_epoch=2",
        f"train.perf={perf}",
        "train.num_threads=1",
    )
    data = make_search_data(load_images(settings.data), settings.data)
    model = build_candidate(DARTS_V2, settings.model, settings.seed, CPU)
    result = train_candidate(model, data, proxy_task(settings), CPU)
    assert result.plan == f"{perf}+threads=1"
    assert not (tmp_path / "autotune").exists()  # nothing to choose: nothing measured
    assert torch.get_num_threads() >= 1  # threads restored after the candidate


def test_layouts_compute_the_same_step(tmp_path: Path) -> None:
    torch.manual_seed(0)
    views = torch.randn(8, 3, 16, 16)
    settings_model = tiny_settings(tmp_path).model
    outputs = []
    for plan in (StepPlan("nchw"), StepPlan("channels_last")):
        model = build_candidate(DARTS_V2, settings_model, 0, CPU)
        plan.prepare(model)
        z = model(plan.images(views))
        z.square().sum().backward()
        stem = model.body.stem[0]
        assert isinstance(stem, torch.nn.Conv2d) and stem.weight.grad is not None
        grad = stem.weight.grad
        outputs.append((z.detach(), grad.contiguous()))
    torch.testing.assert_close(outputs[0][0], outputs[1][0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(outputs[0][1], outputs[1][1], rtol=1e-3, atol=1e-4)
