"""Where the time of one candidate's training step goes (CPU or CUDA), as markdown tables.

Builds the search's proxy for a fixed cell (DARTS_V2 by default) from the real configs, runs a
few real training steps (:class:`~cnas_hpc.train.step.ContrastiveStep`: augmentation, two
forwards, loss, backward, update) and prints:

1. the time per step, and per phase (each phase timed with a device sync around it);
2. the self time of the operators grouped by kind (depthwise / dilated / pointwise
   convolutions by kernel, BatchNorm, ReLU, pooling, elementwise, matmul, optimizer, ...),
   from ``torch.profiler`` with input shapes (device time on CUDA, CPU time on a CPU);
3. the profiler's own top-operator table.

    .venv/bin/python benchmarks/profile_step.py                              # default proxy
    .venv/bin/python benchmarks/profile_step.py experiment=csnas_paper train.batch_size=32
    .venv/bin/python benchmarks/profile_step.py --plan channels_last --threads 1 model=proxy_small

Everything after the options is a Hydra override of the search config. ``--plan`` is a plan
name (``nchw``, ``channels_last``, ``channels_last+bf16``, ``nchw+compile``); ``--threads``
sets torch's intra-op threads first.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from search_settings import compose_search_settings
from torch.profiler import ProfilerActivity, profile

from cnas_hpc.config import Settings
from cnas_hpc.data.datasets import load_images
from cnas_hpc.data.splits import make_search_data
from cnas_hpc.search.trial import proxy_task
from cnas_hpc.space.genotype import load_genotype
from cnas_hpc.train.autotune import device_name, synchronize
from cnas_hpc.train.loop import build_candidate
from cnas_hpc.train.plan import StepPlan
from cnas_hpc.train.step import ContrastiveStep

ROOT = Path(__file__).resolve().parents[1]

#: Position of ``dilation`` among the recorded inputs of the convolution ops that do the work.
_DILATION_AT = {
    "aten::convolution_backward": 6,
    "aten::mkldnn_convolution": 5,
    "aten::cudnn_convolution": 4,
    "aten::_conv_depthwise2d": 6,
    "aten::_slow_conv2d_forward": 5,
    "aten::thnn_conv2d": 5,
}


def load_settings(overrides: list[str]) -> Settings:
    """The search settings the overrides describe (the real configs, composed by Hydra)."""
    return compose_search_settings(overrides)


def parse_plan(name: str, threads: int | None) -> StepPlan:
    """A :class:`StepPlan` from its name (``channels_last+bf16+compile``)."""
    parts = name.split("+")
    precision = next((p for p in parts if p in ("bf16", "fp16")), "fp32")
    return StepPlan(parts[0], precision, "compile" in parts, threads)


def _conv_kind(name: str, shapes: list[Any], concrete: list[Any] | None) -> str:
    """``depthwise 5x5 dil2``, ``pointwise 1x1``, ``dense 3x3`` from a conv op's inputs."""
    weights = [s for s in shapes if isinstance(s, list) and len(s) == 4]
    if len(weights) < 2:
        return "conv (other)"
    weight = weights[-1] if name == "aten::convolution_backward" else weights[1]
    c_in = weights[-2][1] if name == "aten::convolution_backward" else weights[0][1]
    k = f"{weight[2]}x{weight[3]}"
    index = _DILATION_AT.get(name)
    dilation = concrete[index] if concrete and index is not None and index < len(concrete) else None
    dilated = isinstance(dilation, list) and bool(dilation) and dilation[0] > 1
    dil = f" dil{dilation[0]}" if dilated else ""  # type: ignore[index]
    if weight[1] == 1 and c_in > 1:
        return f"conv depthwise {k}{dil}"
    if weight[2] == weight[3] == 1:
        return "conv pointwise 1x1"
    return f"conv dense {k}"


def op_kind(name: str, shapes: list[Any], concrete: list[Any] | None) -> str:
    """The group an operator's self time is counted in."""
    low = name.lower()
    if "conv" in low:
        kind = _conv_kind(name, shapes, concrete)
        return kind + (" (backward)" if "backward" in low else " (forward)")
    rules: list[tuple[tuple[str, ...], str]] = [
        (("batch_norm",), "BatchNorm"),
        (("relu", "clamp_min", "threshold"), "ReLU"),
        (("max_pool",), "max pooling"),
        (("avg_pool",), "avg pooling"),
        (("grid_sampler", "affine_grid"), "augmentation (resample)"),
        (("_foreach", "sgd", "adam"), "optimizer"),
        (("mm", "addmm", "bmm", "linear", "einsum", "matmul"), "matmul"),
        (("nll_loss", "log_softmax", "cross_entropy", "softmax"), "loss"),
        (("copy_", "to_copy", "contiguous", "clone", "cat", "stack", "index"), "copies / gather"),
        (("add", "mul", "sub", "div", "fill", "zero", "where", "sum", "mean", "norm", "pow"),
         "elementwise / reductions"),
    ]  # fmt: skip
    for keys, kind in rules:
        if any(key in low for key in keys):
            return kind
    return "other"


def build(settings: Settings, device: torch.device, plan: StepPlan, genotype: str) -> Any:
    """The candidate, its step and its data, on ``device`` under ``plan``."""
    data = make_search_data(load_images(settings.data), settings.data)
    images = data.train.images.to(device)
    model = build_candidate(load_genotype(genotype), settings.model, settings.seed, device)
    plan.prepare(model)
    task = proxy_task(settings)
    stepper = ContrastiveStep(
        model, task, device, n_train=len(images), total_steps=1000, warmup_steps=0, plan=plan
    )
    index = torch.arange(settings.train.batch_size, device=device) % len(images)
    return stepper, images, index


def phases(stepper: ContrastiveStep, images: torch.Tensor, index: torch.Tensor, step: int,
           sync: Callable[[], None]) -> dict[str, float]:  # fmt: skip
    """One step, phase by phase, each timed between device syncs (seconds)."""
    times: dict[str, float] = {}
    started = time.perf_counter()

    def mark(name: str) -> None:
        nonlocal started
        sync()
        now = time.perf_counter()
        times[name] = now - started
        started = now

    view1, view2 = stepper.views(images, index, step)
    mark("views (augmentation)")
    z1, z2 = stepper.forward(view1, view2)
    mark("forward (2 views)")
    loss = stepper.loss(z1, z2, index)
    stepper.flag_non_finite(loss)
    mark("loss")
    stepper.backward(loss, z1, z2)
    mark("backward")
    stepper.update()
    mark("update (optimizer)")
    return times


def profile_tables(stepper: ContrastiveStep, images: torch.Tensor, index: torch.Tensor,
                   device: torch.device, steps: int) -> tuple[dict[str, float], str]:  # fmt: skip
    """Self time per operator kind (ms per step) and the profiler's top-operator table."""
    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities, record_shapes=True) as prof:
        for i in range(steps):
            stepper(images, index, 100 + i)
        synchronize(device)
    kinds: dict[str, float] = defaultdict(float)
    for event in prof.events():
        if not event.name.startswith("aten::"):
            continue
        us = event.self_device_time_total if device.type == "cuda" else event.self_cpu_time_total
        concrete = getattr(event, "concrete_inputs", None)
        kinds[op_kind(event.name, event.input_shapes or [], concrete)] += us / 1e3 / steps
    sort_by = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=sort_by, row_limit=20, max_name_column_width=40)
    return dict(kinds), table


def main() -> None:
    """Profile and print the markdown report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--plan", default="nchw")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--genotype", default="DARTS_V2")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args, overrides = parser.parse_known_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    settings = load_settings(["wandb=disabled", *overrides])
    plan = parse_plan(args.plan, args.threads)
    stepper, images, index = build(settings, device, plan, args.genotype)

    def sync() -> None:
        synchronize(device)

    for i in range(2):  # warm-up (allocator, cuDNN autotuning, compilation)
        stepper(images, index, i)
    sync()
    step_times = []
    for i in range(args.steps):
        started = time.perf_counter()
        stepper(images, index, 10 + i)
        sync()
        step_times.append(time.perf_counter() - started)
    per_phase: dict[str, list[float]] = defaultdict(list)
    for i in range(args.steps):
        for name, seconds in phases(stepper, images, index, 20 + i, sync).items():
            per_phase[name].append(seconds)
    kinds, table = profile_tables(stepper, images, index, device, args.steps)
    step_ms = sorted(step_times)[len(step_times) // 2] * 1e3
    m = settings.model
    print(f"### {m.cells} cells x {m.channels} channels, batch {settings.train.batch_size}, "
          f"{args.genotype}, loss {settings.train.loss}, plan {plan.name}")  # fmt: skip
    print(f"\n{device_name(device)} ({platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores), torch {torch.__version__}, "
          f"{torch.get_num_threads()} intra-op threads; `{' '.join(sys.argv[1:])}`")  # fmt: skip
    print(f"\nStep (median of {args.steps}): **{step_ms:.1f} ms**, "
          f"{settings.train.batch_size / step_ms * 1e3:.0f} images/s\n")  # fmt: skip
    print("| phase | ms | share |\n|---|---:|---:|")
    medians = {k: sorted(v)[len(v) // 2] * 1e3 for k, v in per_phase.items()}
    for name, ms in medians.items():
        print(f"| {name} | {ms:.1f} | {ms / sum(medians.values()):.0%} |")
    total = sum(kinds.values())
    print(f"\n| operator kind ({'device' if device.type == 'cuda' else 'CPU'} self time) "
          "| ms/step | share |\n|---|---:|---:|")  # fmt: skip
    for kind, ms in sorted(kinds.items(), key=lambda kv: -kv[1]):
        if ms / total >= 0.005:
            print(f"| {kind} | {ms:.1f} | {ms / total:.0%} |")
    print(f"\n<details><summary>profiler table</summary>\n\n```\n{table}\n```\n</details>\n")


if __name__ == "__main__":
    main()
