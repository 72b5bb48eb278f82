"""The ``augment`` config group: parameters of the batched SimCLR augmentation."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from cnas_hpc.common.errors import ConfigError
from cnas_hpc.config.build import Share, section

_Strength = Annotated[float, Field(ge=0)]


@section("augment")
class AugmentConfig:
    """Parameters of :class:`BatchAugment` (the ``augment`` config group).

    Attributes:
        crop_scale: Range of the crop's area as a fraction of the image's, ``0 < lo <= hi <= 1``.
        crop_ratio: Range of the crop's aspect ratio (width / height), ``0 < lo <= hi``;
            sampled log-uniformly like torchvision.
        flip_p: Probability of a horizontal flip.
        jitter_p: Probability that a sample gets colour jitter.
        brightness: Brightness factor drawn from ``[max(0, 1 - b), 1 + b]``.
        contrast: Contrast factor drawn from ``[max(0, 1 - c), 1 + c]``.
        saturation: Saturation factor drawn from ``[max(0, 1 - s), 1 + s]``.
        hue: Hue shift drawn from ``[-hue, hue]`` (fraction of a turn), ``hue <= 0.5``.
        grayscale_p: Probability of converting a sample to grayscale.
        mean: Per-channel mean subtracted after augmentation (images scaled to ``[0, 1]``).
        std: Per-channel divisor after subtracting ``mean``, ``> 0``.

    Raises:
        ConfigError: On construction, with the first invalid field.
    """

    crop_scale: tuple[float, float] = (0.2, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: Share = 0.5
    jitter_p: Share = 0.8
    brightness: _Strength = 0.4
    contrast: _Strength = 0.4
    saturation: _Strength = 0.4
    hue: Annotated[float, Field(ge=0, le=0.5)] = 0.1
    grayscale_p: Share = 0.2
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    def __post_init__(self) -> None:
        lo, hi = self.crop_scale
        if not 0.0 < lo <= hi <= 1.0:
            raise ConfigError(
                f"augment.crop_scale must satisfy 0 < lo <= hi <= 1, got {self.crop_scale}"
            )
        lo, hi = self.crop_ratio
        if not 0.0 < lo <= hi:
            raise ConfigError(
                f"augment.crop_ratio must satisfy 0 < lo <= hi, got {self.crop_ratio}"
            )
        if min(self.std) <= 0:
            raise ConfigError(f"augment.std must be > 0 for every channel, got {self.std}")
