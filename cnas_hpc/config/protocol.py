"""The ``protocol`` config group: how the evaluation phase trains a cell from scratch, with labels.

Options (``cnas_hpc/configs/protocol/``): ``darts_cifar`` (the default: DARTS's CIFAR-10
protocol, 20 cells x 36 channels, 600 epochs), ``imagenet_mobile`` (DARTS's mobile ImageNet
setting, 14 x 48) and ``debug`` (minutes on a CPU). Every value can be overridden on the
command line.
"""

from __future__ import annotations

import typing
from typing import Annotated, Final, Literal

from pydantic import Field

from cnas_hpc.common.errors import ConfigError
from cnas_hpc.config.build import Count, section

#: The evaluation networks: DARTS's CIFAR network (32x32) and its ImageNet (mobile) network.
Network = Literal["cifar", "imagenet"]
NETWORKS: Final[tuple[str, ...]] = typing.get_args(Network)

#: ``auto``: chosen per device by measurement; ``none`` / ``bf16`` / ``fp16``: forced.
Amp = Literal["auto", "none", "bf16", "fp16"]
AMP_CHOICES: Final[tuple[str, ...]] = typing.get_args(Amp)

#: ``auto``: chosen per device by measurement; ``channels_last`` / ``contiguous``: forced.
MemoryFormat = Literal["auto", "channels_last", "contiguous"]
MEMORY_FORMATS: Final[tuple[str, ...]] = typing.get_args(MemoryFormat)

_Below1 = Annotated[float, Field(ge=0, lt=1)]
_NonNegative = Annotated[float, Field(ge=0)]


@section("protocol")
class ProtocolConfig:
    """The ``protocol`` group: how a cell is trained from scratch with labels.

    ``batch_size`` is the GLOBAL batch over all ranks of a task (as in the search). The learning
    rate follows ``lr_schedule`` per epoch: ``cosine`` from ``lr`` to ``min_lr`` (DARTS CIFAR), or
    ``step``: ``lr * lr_gamma ** epoch`` (DARTS ImageNet: 0.97). Drop-path ramps linearly from 0
    to ``drop_path`` over the epochs, as DARTS does.
    """

    name: str = "darts_cifar"
    network: Network = "cifar"
    cells: Count = 20
    channels: Count = 36
    epochs: Count = 600
    batch_size: Count = 96
    lr: float = 0.025
    lr_schedule: Literal["cosine", "step"] = "cosine"
    lr_gamma: float = 0.97
    min_lr: float = 0.0
    momentum: float = 0.9
    weight_decay: float = 3e-4
    cutout: Annotated[int, Field(ge=0)] = 16
    auxiliary_weight: _NonNegative = 0.4
    drop_path: _Below1 = 0.2
    grad_clip: float | None = 5.0
    label_smoothing: _Below1 = 0.0
    image_size: Count = 32
    max_macs: int | None = None
    max_steps_per_epoch: Count | None = None
    eval_batch_size: Count = 512
    test_every_epochs: Count = 1
    amp: Amp = "auto"
    memory_format: MemoryFormat = "auto"
    log_every_steps: Count = 50

    def __post_init__(self) -> None:
        if self.lr <= 0 or not 0.0 <= self.min_lr <= self.lr:
            raise ConfigError(f"protocol.lr must be > 0 and min_lr in [0, lr], got {self.lr}")
        if self.network == "cifar" and self.auxiliary_weight > 0 and self.image_size != 32:
            raise ConfigError(
                "protocol.auxiliary_weight > 0 needs protocol.image_size=32 on the CIFAR network "
                "(the auxiliary head reads 8x8 maps): set protocol.auxiliary_weight=0"
            )
