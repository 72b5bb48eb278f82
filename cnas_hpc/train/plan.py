"""How a training step runs on a device: memory layout, precision, compilation, CPU threads.

A :class:`StepPlan` changes how fast a step runs, not what it computes (up to floating-point
rounding; bf16 rounds more). Which plan is fastest depends on the device, the torch build and
the network: on one H200 the DARTS search proxy ran 1.4x faster in channels_last while the
evaluation network ran 1.4x slower; on a 2-core CPU channels_last and one intra-op thread per
worker win. So the plan is measured, not guessed (:mod:`cnas_hpc.train.plan_tuning`); this
module only says which plans are candidates for a config and device, and applies one.

Contract: a plan is applied to a whole candidate (model, views, validation) by
:func:`cnas_hpc.train.loop.train_candidate`; every rank of a worker runs the same plan (rank 0
measures, the choice is broadcast). A candidate keeps its plan across a resume: the plan is
saved in its checkpoint (:func:`plan_record`) and reused when it fits the device it resumes on
(:func:`why_unfit`), never with more CPU threads than the allocation gives.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from cnas_hpc.config.train import LAYOUTS, TrainConfig
from cnas_hpc.distributed.env import affinity_cpus

PRECISIONS = ("fp32", "bf16", "fp16")


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, not the machine's core count)."""
    return affinity_cpus()


@dataclass(frozen=True)
class StepPlan:
    """One way to run a training step (see the module docstring).

    Attributes:
        layout: ``nchw`` (contiguous) or ``channels_last`` (model weights and views).
        precision: ``fp32``, or CUDA autocast in ``bf16`` / ``fp16`` (fp16 with a grad scaler).
        compile: run the network through ``torch.compile``.
        threads: intra-op CPU threads while the candidate trains; ``None`` leaves torch's.
    """

    layout: str = "nchw"
    precision: str = "fp32"
    compile: bool = False
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")

    @property
    def name(self) -> str:
        """A short readable name, e.g. ``channels_last+bf16`` or ``nchw+threads=1``."""
        parts = [self.layout]
        if self.precision != "fp32":
            parts.append(self.precision)
        if self.compile:
            parts.append("compile")
        if self.threads is not None:
            parts.append(f"threads={self.threads}")
        return "+".join(parts)

    @property
    def memory_format(self) -> torch.memory_format:
        """The torch memory format of 4-D tensors under this plan."""
        return torch.channels_last if self.layout == "channels_last" else torch.contiguous_format

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager[Any]:
        """The autocast context of this plan (a no-op for fp32 and on the CPU)."""
        if self.precision == "fp32" or device.type != "cuda":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type="cuda", dtype=dtype)

    def images(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``[B, C, H, W]`` in this plan's memory layout (``x`` itself when it already is)."""
        return x.contiguous(memory_format=self.memory_format)

    def prepare(self, model: nn.Module) -> None:
        """Put ``model``'s parameters and buffers in this plan's layout, in place."""
        model.to(memory_format=self.memory_format)

    def forward_fn(self, module: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
        """What the step calls to run ``module``: the module itself or its compiled version."""
        if not self.compile:
            return module
        compiled: Callable[[torch.Tensor], torch.Tensor] = torch.compile(module)
        return compiled

    @contextlib.contextmanager
    def threads_applied(self) -> Iterator[None]:
        """Run the body with this plan's intra-op threads; torch's setting is restored after."""
        if self.threads is None:
            yield
            return
        before = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            yield
        finally:
            torch.set_num_threads(before)


def precisions_for(cfg: TrainConfig, device: torch.device) -> tuple[str, ...]:
    """Precisions worth measuring: ``train.amp`` when explicit, else fp32 (+ bf16 on CUDA).

    Autocast is CUDA-only here: on a CPU every plan is fp32, whatever ``train.amp`` says.
    """
    if device.type != "cuda":
        return ("fp32",)
    if cfg.amp != "auto":
        return ("fp32" if cfg.amp == "none" else cfg.amp,)
    if torch.cuda.is_bf16_supported():
        return ("fp32", "bf16")
    return ("fp32",)


def thread_counts_for(
    cfg: TrainConfig, device: torch.device, max_threads: int | None = None
) -> tuple[int, ...]:
    """Intra-op thread counts to choose from, per candidate: on a CPU under ``perf=auto`` with
    ``num_threads`` null, one thread or :func:`thread_cap` threads (a task's CPU allocation,
    see ``distributed.env.cpu_budget``: measurement chooses WITHIN the allocation, never above
    it); empty when there is nothing to choose.

    Unlike the layout, the best count depends on the node's load at the moment (on a shared
    2-core node two threads run 1.8x faster when it is idle and several times slower when
    another process holds a core), so it is measured anew for every candidate, not cached (a
    resumed candidate keeps its checkpoint's count, see :func:`why_unfit`).
    """
    if cfg.num_threads is not None or device.type != "cpu" or cfg.perf != "auto":
        return ()
    cores = thread_cap(max_threads)
    return () if cores == 1 else (1, cores)


def thread_cap(max_threads: int | None = None) -> int:
    """The most intra-op threads a plan may use here without an explicit ``train.num_threads``:
    the cores this process may run on, at most ``max_threads`` (the task's allocation), >= 1.

    ``None`` caps at the intra-op threads this process runs now (``torch.get_num_threads()``):
    every app applies its allocation there at start (``distributed.env.size_cpu_threads``), so
    a caller that forgets to pass the allocation still never measures above it.
    """
    allowed = torch.get_num_threads() if max_threads is None else max_threads
    return max(1, min(available_cores(), allowed))


def eager_plans(cfg: TrainConfig, device: torch.device) -> list[StepPlan]:
    """The plans without compilation that ``train.perf`` / ``amp`` allow (threads as set)."""
    if cfg.perf == "auto":
        layouts: tuple[str, ...] = LAYOUTS
    else:
        layouts = (cfg.perf.split("+")[0],)
    return [
        StepPlan(layout=layout, precision=precision, threads=cfg.num_threads)
        for layout in layouts
        for precision in precisions_for(cfg, device)
    ]


def compile_wanted(cfg: TrainConfig, device: torch.device) -> bool | None:
    """``True``/``False`` when ``train.perf`` fixes compilation, ``None`` when it is measured.

    Compilation is only measured on CUDA: on a CPU, compiling one candidate takes longer than
    training it (a new architecture is a new graph), and Inductor needs a C++ compiler.
    """
    if cfg.perf != "auto":
        return cfg.perf.endswith("+compile")
    return None if device.type == "cuda" else False


def plan_record(plan: StepPlan, device: torch.device) -> dict[str, str | bool | int | None]:
    """What a checkpoint stores of the plan a candidate trains under: its fields and the type of
    the device it was chosen on (``weights_only``-loadable; :func:`plan_from_record` reads it).
    """
    return {
        "device": device.type,
        "layout": plan.layout,
        "precision": plan.precision,
        "compile": plan.compile,
        "threads": plan.threads,
    }


def plan_from_record(record: Mapping[str, object]) -> tuple[StepPlan, str]:
    """The plan of a :func:`plan_record` and the device type it was chosen on.

    Raises:
        ValueError: ``record`` is not a plan record (a field missing, mistyped or unknown).
    """
    fields = ("device", "layout", "precision", "compile", "threads")
    missing = [name for name in fields if name not in record]
    if missing:
        raise ValueError(f"no {', '.join(missing)} in {dict(record)}")
    device, compiled, threads = record["device"], record["compile"], record["threads"]
    if not isinstance(device, str) or not isinstance(compiled, bool):
        raise ValueError(f"mistyped device or compile in {dict(record)}")
    # bool is an int: a stored True is no thread count.
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool)):
        raise ValueError(f"threads must be a whole number or None, got {threads!r}")
    count = threads if isinstance(threads, int) else None
    plan = StepPlan(str(record["layout"]), str(record["precision"]), compiled, count)
    return plan, device


def why_unfit(
    plan: StepPlan,
    chosen_on: str,
    cfg: TrainConfig,
    device: torch.device,
    max_threads: int | None = None,
) -> str | None:
    """Why ``plan``, chosen on a ``chosen_on`` device, may not train a candidate of ``cfg`` on
    ``device``; ``None`` when it may.

    A plan fits when a measurement here could have chosen it: the same device type, a layout
    ``train.perf`` allows, a precision this device runs under ``train.amp``
    (:func:`precisions_for`: no autocast on a CPU, no bf16 on a GPU without it), compilation as
    ``train.perf`` fixes it (:func:`compile_wanted`), and threads as ``train.num_threads`` fixes
    them or else at most :func:`thread_cap` (``max_threads``: the worker's allocation). A thread
    count measured within a larger allocation than this one's therefore does not fit.
    """
    if chosen_on != device.type:
        return f"it was chosen on {chosen_on}, this rank trains on {device.type}"
    layouts = {p.layout for p in eager_plans(cfg, device)}
    if plan.layout not in layouts:
        return f"layout {plan.layout} is not one train.perf={cfg.perf} allows"
    precisions = precisions_for(cfg, device)
    if plan.precision not in precisions:
        return (
            f"precision {plan.precision} does not run here (train.amp={cfg.amp} on "
            f"{device.type}: {', '.join(precisions)})"
        )
    wanted = compile_wanted(cfg, device)
    if wanted is not None and plan.compile != wanted:
        state = "on" if plan.compile else "off"
        return f"torch.compile {state} against train.perf={cfg.perf} on {device.type}"
    if cfg.num_threads is not None:
        if plan.threads != cfg.num_threads:
            return f"threads={plan.threads} against train.num_threads={cfg.num_threads}"
    elif plan.threads is not None and plan.threads > (cap := thread_cap(max_threads)):
        return f"threads={plan.threads} exceed this allocation's {cap}"
    return None
