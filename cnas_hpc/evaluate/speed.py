"""How the evaluation network runs on this device: memory format and AMP, chosen by measurement.

On one H200 the DARTS_V2 20x36 step (batch 96) took 81 ms in fp32 NCHW, 139 ms with bf16
autocast and 114 ms with channels_last: the "obvious" settings made it slower. So with
``protocol.amp=auto`` / ``protocol.memory_format=auto`` every candidate layout runs a few real
training steps on a throwaway copy of the network and the fastest wins
(:func:`cnas_hpc.train.autotune.choose_fastest`, cached per device, torch version and network
under ``<output_dir>/autotune``). A forced value is used as given. On the CPU only the memory
format is measured: autocast is a CUDA feature here.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import torch

from cnas_hpc.config.protocol import ProtocolConfig
from cnas_hpc.data.labeled import LabeledData
from cnas_hpc.train.autotune import choose_fastest
from cnas_hpc.train.supervised import EvalNetwork, SupervisedStep, SupervisedTask

_FORMATS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}
_AMP = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def _candidates(protocol: ProtocolConfig, device: torch.device) -> list[tuple[str, str]]:
    formats = list(_FORMATS) if protocol.memory_format == "auto" else [protocol.memory_format]
    if protocol.amp != "auto":
        amps = [protocol.amp]
    elif device.type == "cuda":
        amps = ["none", "bf16"] if torch.cuda.is_bf16_supported() else ["none", "fp16"]
    else:
        amps = ["none"]
    return [(f, a) for f in formats for a in amps]


def _one_step(
    model: EvalNetwork, task: SupervisedTask, data: LabeledData, device: torch.device
) -> Callable[[], None]:
    trial_model = copy.deepcopy(model).to(device).to(memory_format=task.memory_format)
    # Rank 0 alone times the options: a local step, no collective.
    stepper = SupervisedStep(trial_model, task, device, local=True)
    local = max(1, task.protocol.batch_size)
    index = torch.arange(min(local, len(data.train)), device=device)
    images = data.train.images[: len(index)].to(device)
    assert data.train.labels is not None
    labels = data.train.labels[: len(index)].to(device)
    counter = {"step": 0}

    def run() -> None:
        stepper(images, labels, index, counter["step"])
        counter["step"] += 1

    return run


def choose_layout(
    model: EvalNetwork,
    task: SupervisedTask,
    data: LabeledData,
    device: torch.device,
    *,
    cache_dir: Path | None,
    world_size: int = 1,
) -> SupervisedTask:
    """``task`` with the memory format and AMP dtype that run fastest here (see the module).

    Every rank must call it; rank 0 alone times rank-local steps and its choice is broadcast.
    ``model`` is not changed.
    """
    candidates = _candidates(task.protocol, device)
    options: dict[str, Callable[[], None]] = {}
    for memory_format, amp in candidates:
        variant = SupervisedTask(
            task.protocol, task.num_classes, task.seed, _FORMATS[memory_format], _AMP[amp]
        )
        name = f"{memory_format}/{amp}"
        if len(candidates) == 1:
            return variant
        options[name] = _one_step(model, variant, data, device)
    protocol = task.protocol
    workload = {
        "network": protocol.network,
        "cells": protocol.cells,
        "channels": protocol.channels,
        "batch_per_rank": protocol.batch_size // world_size,
        "image_size": protocol.image_size,
        "auxiliary": protocol.auxiliary_weight > 0,
    }
    repeat = 5 if device.type == "cuda" else 2
    chosen = choose_fastest(
        options, device, workload=workload, cache_dir=cache_dir, warmup=1, repeat=repeat
    )
    memory_format, amp = chosen.split("/")
    return SupervisedTask(
        task.protocol, task.num_classes, task.seed, _FORMATS[memory_format], _AMP[amp]
    )
