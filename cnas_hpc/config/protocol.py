"""The ``protocol`` config group: how the evaluation phase trains a cell from scratch, with labels.

Options (``cnas_hpc/configs/protocol/``): ``darts_cifar`` (the default: DARTS's CIFAR-10
protocol, 20 cells x 36 channels, 600 epochs), ``imagenet_mobile`` (DARTS's mobile ImageNet
setting, 14 x 48) and ``debug`` (minutes on a CPU). Every value can be overridden on the
command line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from cnas_hpc.common.errors import ConfigError
from cnas_hpc.config.checks import check_choice, check_positive_int_attrs

#: The evaluation networks: DARTS's CIFAR network (32x32) and its ImageNet (mobile) network.
NETWORKS: Final[tuple[str, ...]] = ("cifar", "imagenet")


LR_SCHEDULES: Final[tuple[str, ...]] = ("cosine", "step")


#: ``auto``: chosen per device by measurement; ``none`` / ``bf16`` / ``fp16``: forced.
AMP_CHOICES: Final[tuple[str, ...]] = ("auto", "none", "bf16", "fp16")


#: ``auto``: chosen per device by measurement; ``channels_last`` / ``contiguous``: forced.
MEMORY_FORMATS: Final[tuple[str, ...]] = ("auto", "channels_last", "contiguous")


@dataclass(frozen=True)
class ProtocolConfig:
    """The ``protocol`` group: how a cell is trained from scratch with labels.

    ``batch_size`` is the GLOBAL batch over all ranks of a task (as in the search). The learning
    rate follows ``lr_schedule`` per epoch: ``cosine`` from ``lr`` to ``min_lr`` (DARTS CIFAR), or
    ``step``: ``lr * lr_gamma ** epoch`` (DARTS ImageNet: 0.97). Drop-path ramps linearly from 0
    to ``drop_path`` over the epochs, as DARTS does.
    """

    name: str = "darts_cifar"
    network: str = "cifar"
    cells: int = 20
    channels: int = 36
    epochs: int = 600
    batch_size: int = 96
    lr: float = 0.025
    lr_schedule: str = "cosine"
    lr_gamma: float = 0.97
    min_lr: float = 0.0
    momentum: float = 0.9
    weight_decay: float = 3e-4
    cutout: int = 16
    auxiliary_weight: float = 0.4
    drop_path: float = 0.2
    grad_clip: float | None = 5.0
    label_smoothing: float = 0.0
    image_size: int = 32
    max_macs: int | None = None
    max_steps_per_epoch: int | None = None
    eval_batch_size: int = 512
    test_every_epochs: int = 1
    amp: str = "auto"
    memory_format: str = "auto"
    log_every_steps: int = 50

    def __post_init__(self) -> None:
        integers = ("cells", "channels", "epochs", "batch_size", "image_size", "eval_batch_size")
        check_positive_int_attrs(
            "protocol", self, (*integers, "test_every_epochs", "log_every_steps")
        )
        check_choice("protocol.network", self.network, NETWORKS)
        check_choice("protocol.lr_schedule", self.lr_schedule, LR_SCHEDULES)
        if self.lr <= 0 or not 0.0 <= self.min_lr <= self.lr:
            raise ConfigError(f"protocol.lr must be > 0 and min_lr in [0, lr], got {self.lr}")
        if not 0.0 <= self.drop_path < 1.0:
            raise ConfigError(f"protocol.drop_path must be in [0, 1), got {self.drop_path}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(
                f"protocol.label_smoothing must be in [0, 1), got {self.label_smoothing}"
            )
        if self.cutout < 0 or self.auxiliary_weight < 0:
            raise ConfigError("protocol.cutout and protocol.auxiliary_weight must be >= 0")
        check_choice("protocol.amp", self.amp, AMP_CHOICES)
        check_choice("protocol.memory_format", self.memory_format, MEMORY_FORMATS)
        if self.network == "cifar" and self.auxiliary_weight > 0 and self.image_size != 32:
            raise ConfigError(
                "protocol.auxiliary_weight > 0 needs protocol.image_size=32 on the CIFAR network "
                "(the auxiliary head reads 8x8 maps): set protocol.auxiliary_weight=0"
            )
        if self.max_steps_per_epoch is not None and self.max_steps_per_epoch < 1:
            raise ConfigError("protocol.max_steps_per_epoch must be null or >= 1")
