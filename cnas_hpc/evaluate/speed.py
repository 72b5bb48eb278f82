"""How the evaluation network runs on this device: memory format and AMP, chosen by measurement.

On one H200 the DARTS_V2 20x36 step (batch 96) took 81 ms in fp32 NCHW, 139 ms with bf16
autocast and 114 ms with channels_last: the "obvious" settings made it slower. So with
``protocol.amp=auto`` / ``protocol.memory_format=auto`` every candidate layout runs a few real
training steps on a throwaway copy of the network and the fastest wins
(:func:`cnas_hpc.train.autotune.choose_fastest`, cached per device, torch version and network
under ``<output_dir>/autotune``). A forced value is used as given. On the CPU only the memory
format is measured: autocast is a CUDA feature here.

A resumed cell keeps the memory format and AMP its checkpoint recorded
(``SupervisedTask.layout_record``) instead of measuring again, when they are among this device's
candidates: another choice would round differently, and the resumed run would not end with the
accuracy of an unbroken one.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from cnas_hpc.config.protocol import ProtocolConfig
from cnas_hpc.data.labeled import LabeledData
from cnas_hpc.train.autotune import choose_fastest
from cnas_hpc.train.checkpoint import reuse_agreed
from cnas_hpc.train.supervised import (
    AMP_DTYPES,
    MEMORY_FORMATS,
    EvalNetwork,
    SupervisedStep,
    SupervisedTask,
)

log = logging.getLogger(__name__)


def _candidates(protocol: ProtocolConfig, device: torch.device) -> list[tuple[str, str]]:
    formats = list(MEMORY_FORMATS) if protocol.memory_format == "auto" else [protocol.memory_format]
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


def _stored_layout(
    record: Mapping[str, object], candidates: list[tuple[str, str]], device: torch.device
) -> tuple[str, str] | None:
    """The (memory format, AMP) a resumed cell's checkpoint recorded, when it is one of this
    device's ``candidates`` on every rank (agreed in one collective), else ``None`` (logged why).
    """
    chosen = (record.get("memory_format"), record.get("amp"))
    if not record:
        reason = "the checkpoint holds no layout (written before layouts were saved)"
    elif record.get("device") != device.type:
        reason = f"it was chosen on {record.get('device')}, this rank trains on {device.type}"
    elif chosen not in candidates:
        reason = f"{chosen[0]}/{chosen[1]} is not a candidate here"
    else:
        reason = None
    if not reuse_agreed(reason, device, log, "cell", "layout"):
        return None
    memory_format, amp = str(chosen[0]), str(chosen[1])
    log.info("resumed cell: training under its checkpoint's layout %s/%s", memory_format, amp)
    return memory_format, amp


def choose_layout(
    model: EvalNetwork,
    task: SupervisedTask,
    data: LabeledData,
    device: torch.device,
    *,
    cache_dir: Path | None,
    world_size: int = 1,
    stored: Mapping[str, object] | None = None,
) -> SupervisedTask:
    """``task`` with the memory format and AMP dtype that run fastest here (see the module).

    Every rank must call it, with the same ``stored``; rank 0 alone times rank-local steps and
    its choice is broadcast. ``model`` is not changed.

    Args:
        stored: a resumed cell's checkpoint record (``TrainState.plan``; None for a fresh
            start): its memory format and AMP are kept, unmeasured, when they are candidates
            on this device (chosen on the same device type, allowed by the protocol).
    """
    candidates = _candidates(task.protocol, device)
    kept = _stored_layout(stored, candidates, device) if stored is not None else None
    if kept is not None:
        candidates = [kept]
    options: dict[str, Callable[[], None]] = {}
    for memory_format, amp in candidates:
        variant = _with_layout(task, memory_format, amp)
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
    return _with_layout(task, memory_format, amp)


def _with_layout(task: SupervisedTask, memory_format: str, amp: str) -> SupervisedTask:
    """``task`` with the memory format and AMP named as in ``protocol`` and checkpoints."""
    return dataclasses.replace(
        task, memory_format=MEMORY_FORMATS[memory_format], amp_dtype=AMP_DTYPES[amp]
    )
