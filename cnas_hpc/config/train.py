"""The ``train`` config group: contrastive training of one candidate (the proxy task)."""

from __future__ import annotations

import typing
from typing import Annotated, Literal

from pydantic import Field

from cnas_hpc.common.errors import ConfigError
from cnas_hpc.config.build import Count, section

#: ``train.loss`` values: the names of ``cnas_hpc.ssl.registry`` (this floor cannot import it;
#: ``tests/test_ssl_loss_contract.py`` keeps the two equal).
Loss = Literal["ntxent", "membank_nce"]
LOSSES: tuple[str, ...] = typing.get_args(Loss)

#: ``auto``: fp32, or bf16 autocast where it measures faster (CUDA only; see ``train.perf``).
Amp = Literal["auto", "none", "bf16", "fp16"]
AMP_MODES: tuple[str, ...] = typing.get_args(Amp)

#: Memory layouts of a training step (``nchw`` is PyTorch's default, contiguous).
LAYOUTS = ("nchw", "channels_last")

#: ``train.perf`` values: ``auto`` measures the step variants on the device and keeps the fastest
#: (cached per device, torch version and model shape); the others fix the layout, optionally
#: with ``torch.compile`` (``+compile``).
Perf = Literal["auto", "nchw", "channels_last", "nchw+compile", "channels_last+compile"]
PERF_MODES: tuple[str, ...] = typing.get_args(Perf)

_Positive = Annotated[int, Field(gt=0)]


@section("train")
class TrainConfig:
    """Contrastive training of one candidate (the proxy task).

    ``batch_size`` is the GLOBAL batch over all ranks of a worker; each rank gets
    ``batch_size // world_size`` images per step.

    How a step runs is chosen per device by measurement (``perf=auto``, see
    :mod:`cnas_hpc.train.plan`): the memory layout, bf16 autocast (``amp=auto``, CUDA), whether
    ``torch.compile`` pays for itself (CUDA), and the intra-op threads on a CPU when
    ``num_threads`` is null. Explicit values of ``perf``, ``amp`` and ``num_threads`` are kept
    as given.
    """

    epochs: _Positive = 2
    batch_size: _Positive = 128
    max_steps_per_epoch: Count | None = None
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: Annotated[float, Field(gt=0)] = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: float = 0.0
    loss: Loss = "ntxent"
    temperature: Annotated[float, Field(gt=0)] = 0.5
    membank_negatives: _Positive = 510
    membank_momentum: Annotated[float, Field(ge=0, lt=1)] = 0.5
    amp: Amp = "auto"
    grad_clip: float | None = 5.0
    knn_k: _Positive = 20
    log_every_steps: _Positive = 10
    #: torch intra-op threads per rank, kept as given; None sizes them from the allocation
    #: (``SLURM_CPUS_PER_TASK``, the CPU affinity: see ``distributed.env.cpu_budget``), and then
    #: on a CPU under ``perf=auto`` each candidate measures one thread against the allocation's.
    num_threads: Count | None = None
    perf: Perf = "auto"

    def __post_init__(self) -> None:
        if self.warmup_epochs < 0 or self.warmup_epochs > self.epochs:
            raise ConfigError(
                f"train.warmup_epochs must be in [0, epochs], got {self.warmup_epochs}"
            )


def check_global_batch(
    batch_size: int, world_size: int, n_images: int | None = None, *, hint: str = ""
) -> None:
    """The one rule of the global batch: the world size divides it, and one batch fits the data.

    ``train.batch_size`` is the GLOBAL batch over all ranks of a worker; every rank trains on
    ``batch_size // world_size`` images per step, and an epoch has ``n_images // batch_size``
    steps (the last partial batch is dropped).

    Args:
        batch_size: ``train.batch_size``.
        world_size: Ranks that train together (``tasks_per_node x nodes``).
        n_images: Training images of the split, when known.
        hint: Appended to the divisibility message (e.g. where the world size comes from).

    Raises:
        ConfigError: one line naming ``train.batch_size``.
    """
    if batch_size % world_size:
        raise ConfigError(
            f"train.batch_size={batch_size} is not divisible by the world size {world_size}{hint}"
        )
    if n_images is not None and n_images < batch_size:
        raise ConfigError(
            f"the search split has {n_images} images, fewer than one batch "
            f"(train.batch_size={batch_size}): raise data.fraction or lower the batch size"
        )
