"""The ``augment`` config group: parameters of the batched SimCLR augmentation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


def _pair(value: object, name: str) -> tuple[float, float]:
    """A 2-sequence of numbers as a float tuple (Hydra hands lists)."""
    if isinstance(value, str) or not isinstance(value, Sequence) or len(value) != 2:
        raise ValueError(f"{name} must be a pair [lo, hi], got {value!r}")
    lo, hi = (float(v) for v in value)
    return lo, hi


def _triple(value: object, name: str) -> tuple[float, float, float]:
    """A 3-sequence of numbers (one per RGB channel) as a float tuple."""
    if isinstance(value, str) or not isinstance(value, Sequence) or len(value) != 3:
        raise ValueError(f"{name} must have 3 values (R, G, B), got {value!r}")
    r, g, b = (float(v) for v in value)
    return r, g, b


@dataclass
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

    Sequences may be given as lists (Hydra) and are stored as tuples.

    Raises:
        ValueError: On construction, with the first invalid field.
    """

    crop_scale: tuple[float, float] = (0.2, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    grayscale_p: float = 0.2
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    def __post_init__(self) -> None:
        self.crop_scale = _pair(self.crop_scale, "crop_scale")
        self.crop_ratio = _pair(self.crop_ratio, "crop_ratio")
        self.mean = _triple(self.mean, "mean")
        self.std = _triple(self.std, "std")
        for name in ("flip_p", "jitter_p", "grayscale_p"):
            p = float(getattr(self, name))
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {p}")
        lo, hi = self.crop_scale
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"crop_scale must satisfy 0 < lo <= hi <= 1, got {self.crop_scale}")
        lo, hi = self.crop_ratio
        if not 0.0 < lo <= hi:
            raise ValueError(f"crop_ratio must satisfy 0 < lo <= hi, got {self.crop_ratio}")
        for name in ("brightness", "contrast", "saturation"):
            if float(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.hue <= 0.5:
            raise ValueError(f"hue must be in [0, 0.5], got {self.hue}")
        if min(self.std) <= 0:
            raise ValueError(f"std must be > 0 for every channel, got {self.std}")
