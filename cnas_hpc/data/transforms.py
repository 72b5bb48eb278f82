"""Supervised augmentation of whole batches on the training device (the evaluation phase).

:class:`PadCropFlipCutout` is DARTS's CIFAR training transform, batched: 4-pixel zero padding,
a random crop back to the image size, a horizontal flip with probability 1/2, normalisation,
then cutout (a square of side ``cutout`` zeroed AFTER normalisation, as DARTS's ``Cutout`` runs
after ``Normalize``). Per-sample randomness is drawn as ``[B]`` tensors from a
:class:`torch.Generator` on the images' device: the same seed gives the same batch, which is
what makes a resumed run end exactly where an unbroken one would.

Shapes: ``images`` ``[B, 3, S, S]`` uint8 on the device; the output ``[B, 3, S, S]`` float32.
"""

from __future__ import annotations

from typing import Final

import torch

#: DARTS's CIFAR-10 channel statistics (``quark0/darts/cnn/utils.py``).
CIFAR_MEAN: Final[tuple[float, float, float]] = (0.49139968, 0.48215827, 0.44653124)
CIFAR_STD: Final[tuple[float, float, float]] = (0.24703233, 0.24348505, 0.26158768)
#: ImageNet's channel statistics (torchvision's).
IMAGENET_MEAN: Final[tuple[float, float, float]] = (0.485, 0.456, 0.406)
IMAGENET_STD: Final[tuple[float, float, float]] = (0.229, 0.224, 0.225)


class Normalize:
    """uint8 ``[B, 3, S, S]`` -> float32 normalised by per-channel ``mean`` / ``std``."""

    def __init__(self, mean: tuple[float, float, float], std: tuple[float, float, float]) -> None:
        self.mean = mean
        self.std = std
        # Built once per device: no host-to-device copy per batch.
        self._stats: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float().div_(255.0)
        if x.device not in self._stats:
            self._stats[x.device] = (
                torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1),
                torch.tensor(self.std, device=x.device).view(1, 3, 1, 1),
            )
        mean, std = self._stats[x.device]
        return x.sub_(mean).div_(std)


class PadCropFlipCutout:
    """DARTS's CIFAR training augmentation for a whole batch (see the module docstring).

    Args:
        padding: zero padding on each side before the random crop (DARTS: 4).
        cutout: side of the zeroed square (DARTS: 16); 0 turns cutout off.
        mean, std: normalisation statistics.
    """

    def __init__(
        self,
        *,
        padding: int = 4,
        cutout: int = 16,
        mean: tuple[float, float, float] = CIFAR_MEAN,
        std: tuple[float, float, float] = CIFAR_STD,
    ) -> None:
        if padding < 0 or cutout < 0:
            raise ValueError(f"padding and cutout must be >= 0, got {padding}, {cutout}")
        self.padding = padding
        self.cutout = cutout
        self.normalize = Normalize(mean, std)

    def _crop_flip(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        b, c, h, w = images.shape
        p, device = self.padding, images.device
        padded = torch.nn.functional.pad(images, (p, p, p, p))
        dy = torch.randint(0, 2 * p + 1, (b,), device=device, generator=generator)
        dx = torch.randint(0, 2 * p + 1, (b,), device=device, generator=generator)
        flip = torch.rand(b, device=device, generator=generator) < 0.5
        rows = dy[:, None] + torch.arange(h, device=device)
        cols = dx[:, None] + torch.arange(w, device=device)
        # A flipped crop reads its columns right to left.
        cols = torch.where(flip[:, None], cols.flip(1), cols)
        picked = padded.gather(2, rows[:, None, :, None].expand(b, c, h, w + 2 * p))
        return picked.gather(3, cols[:, None, None, :].expand(b, c, h, w))

    def _cutout(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        b, _, h, w = x.shape
        device, half = x.device, self.cutout // 2
        cy = torch.randint(0, h, (b,), device=device, generator=generator)
        cx = torch.randint(0, w, (b,), device=device, generator=generator)
        ys = torch.arange(h, device=device)
        xs = torch.arange(w, device=device)
        in_y = (ys[None, :] >= cy[:, None] - half) & (ys[None, :] < cy[:, None] + half)
        in_x = (xs[None, :] >= cx[:, None] - half) & (xs[None, :] < cx[:, None] + half)
        hole = in_y[:, :, None] & in_x[:, None, :]
        return x.masked_fill(hole[:, None], 0.0)

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Augment ``images`` (uint8 ``[B, 3, S, S]``) with randomness from ``generator``."""
        x = self.normalize(self._crop_flip(images, generator))
        return self._cutout(x, generator) if self.cutout > 0 else x
