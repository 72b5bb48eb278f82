"""SimCLR-style augmentations applied to a whole batch at once, on the training device.

Per-sample randomness is drawn as tensors of shape ``[B]`` and applied with broadcasting: no
Python loop over samples, no round trip to the CPU, no worker processes. The images stay one
uint8 tensor on the device (4x smaller than float) and become float32 only here.

Pipeline of :class:`BatchAugment` (per sample, all samples in parallel):

1. random resized crop with horizontal flip folded into the same affine map, sampled with
   ``F.affine_grid`` + bilinear ``F.grid_sample`` straight to ``out_size``;
2. with probability ``jitter_p``: brightness, contrast, saturation, hue, in that fixed order
   (torchvision shuffles the order per call; a fixed order keeps the batch vectorised);
3. with probability ``grayscale_p``: grayscale (ITU-R 601 luma, replicated to 3 channels);
4. normalisation by ``mean`` / ``std``.

Randomness comes from an optional :class:`torch.Generator` that must live on the images' device
(``torch.Generator(device=images.device)``); the same seed on the same device gives identical
views, which is how every trial of a study is scored on the same validation views.

No host round trip per call: the few constant tensors (luma weights, colour matrices, mean and
std) are copied to a device once and kept (:class:`_Constants`), so a training step issues no
small host-to-device copies here and reads nothing back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cnas_hpc.config.augment import AugmentConfig

# ITU-R 601 luma weights (what torchvision's rgb_to_grayscale uses).
_LUMA = (0.299, 0.587, 0.114)
# RGB -> YIQ; a hue shift is a rotation of the (I, Q) chroma plane.
_RGB_TO_YIQ = (
    (0.299, 0.587, 0.114),
    (0.595716, -0.274453, -0.321263),
    (0.211456, -0.522591, 0.311135),
)
_YIQ_TO_RGB = tuple(
    tuple(row) for row in torch.linalg.inv(torch.tensor(_RGB_TO_YIQ, dtype=torch.float64)).tolist()
)


def _uniform(
    lo: float, hi: float, n: int, device: torch.device, generator: torch.Generator | None
) -> torch.Tensor:
    """``[n]`` float32 draws from ``U(lo, hi)``."""
    u = torch.rand(n, device=device, generator=generator)
    return lo + (hi - lo) * u


def _bernoulli(
    p: float, n: int, device: torch.device, generator: torch.Generator | None
) -> torch.Tensor:
    """``[n]`` booleans, each true with probability ``p`` (exact for p in {0, 1})."""
    return torch.rand(n, device=device, generator=generator) < p


@dataclass(frozen=True)
class _Constants:
    """The constant tensors of a pipeline, on one device (float32).

    Shapes: ``luma``, ``mean``, ``std`` ``[1, 3, 1, 1]``; ``to_yiq``, ``to_rgb`` ``[3, 3]``.
    """

    luma: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    to_yiq: torch.Tensor
    to_rgb: torch.Tensor

    @classmethod
    def on(cls, cfg: AugmentConfig, device: torch.device) -> _Constants:
        def tensor(values: object, shape: tuple[int, ...]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.float32).view(shape).to(device)

        return cls(
            luma=tensor(_LUMA, (1, 3, 1, 1)),
            mean=tensor(cfg.mean, (1, 3, 1, 1)),
            std=tensor(cfg.std, (1, 3, 1, 1)),
            to_yiq=tensor(_RGB_TO_YIQ, (3, 3)),
            to_rgb=tensor(_YIQ_TO_RGB, (3, 3)),
        )


def _gray(x: torch.Tensor, luma: torch.Tensor) -> torch.Tensor:
    """``[B, 1, H, W]`` luma of ``[B, 3, H, W]`` RGB, with ``luma`` ``[1, 3, 1, 1]`` weights."""
    return (x * luma).sum(dim=1, keepdim=True)


def _to_float_rgb(images: torch.Tensor) -> torch.Tensor:
    """Validate a uint8 ``[B, C, H, W]`` batch and return float32 RGB in ``[0, 1]``.

    Raises:
        ValueError: Not a 4-D uint8 tensor with 1 or 3 channels and at least one image.
    """
    if images.dim() != 4:
        raise ValueError(f"images must be [B, C, H, W], got shape {tuple(images.shape)}")
    if images.dtype != torch.uint8:
        raise ValueError(f"images must be uint8, got {images.dtype}")
    if images.shape[1] not in (1, 3):
        raise ValueError(f"images must have 1 or 3 channels, got {images.shape[1]}")
    if images.shape[0] < 1:
        raise ValueError("images is an empty batch")
    x = images.float().div_(255.0)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return x


class BatchAugment:
    """Batched random augmentations of uint8 images (see the module docstring).

    Stateless apart from its configuration: all randomness comes from the generator passed to
    each call, so one instance can serve training and validation views.

    Args:
        cfg: The augmentation parameters.
        out_size: Side of the square output images, ``>= 1``.

    Raises:
        ValueError: ``out_size < 1``.
    """

    def __init__(self, cfg: AugmentConfig, out_size: int) -> None:
        if out_size < 1:
            raise ValueError(f"out_size must be >= 1, got {out_size}")
        self.cfg = cfg
        self.out_size = int(out_size)
        self._constants: dict[torch.device, _Constants] = {}

    def _on(self, device: torch.device) -> _Constants:
        """The constant tensors on ``device``, copied there on first use only."""
        constants = self._constants.get(device)
        if constants is None:
            constants = self._constants[device] = _Constants.on(self.cfg, device)
        return constants

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        constants = self._on(x.device)
        return (x - constants.mean) / constants.std

    def _crop_flip(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Random resized crop + horizontal flip of every sample, resampled to ``out_size``.

        Crop sides follow torchvision's ``RandomResizedCrop`` parametrisation (area fraction
        ``U(scale)``, log-uniform aspect ratio); instead of its 10 rejection tries, a side that
        would exceed the image is clamped to the image, which keeps the batch vectorised. No
        antialiasing: a crop much larger than ``out_size`` aliases (irrelevant at 32 px).
        """
        cfg = self.cfg
        n, _, height, width = x.shape
        dev = x.device
        area = _uniform(cfg.crop_scale[0], cfg.crop_scale[1], n, dev, generator)
        log_lo, log_hi = math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1])
        ratio = torch.exp(_uniform(log_lo, log_hi, n, dev, generator))
        # Sides as fractions of the image's width / height: w*h = area * W*H, w/h = ratio.
        aspect = height / width
        w_frac = torch.sqrt(area * ratio * aspect).clamp(max=1.0)
        h_frac = torch.sqrt(area / ratio / aspect).clamp(max=1.0)
        # Crop centre, uniform over the positions that keep the crop inside the image.
        cx = (1.0 - w_frac) * (2.0 * torch.rand(n, device=dev, generator=generator) - 1.0)
        cy = (1.0 - h_frac) * (2.0 * torch.rand(n, device=dev, generator=generator) - 1.0)
        flip = _bernoulli(cfg.flip_p, n, dev, generator)
        sx = torch.where(flip, -w_frac, w_frac)
        zeros = torch.zeros_like(w_frac)
        # theta maps output coords in [-1, 1] to input coords: x_in = sx * x_out + cx.
        theta = torch.stack(
            [torch.stack([sx, zeros, cx], dim=1), torch.stack([zeros, h_frac, cy], dim=1)],
            dim=1,
        )
        grid = F.affine_grid(theta, [n, 3, self.out_size, self.out_size], align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    def _jitter(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Colour jitter with per-sample factors, applied to a ``jitter_p`` share of samples."""
        cfg = self.cfg
        n, dev = x.shape[0], x.device
        apply = _bernoulli(cfg.jitter_p, n, dev, generator)
        b = _uniform(max(0.0, 1 - cfg.brightness), 1 + cfg.brightness, n, dev, generator)
        c = _uniform(max(0.0, 1 - cfg.contrast), 1 + cfg.contrast, n, dev, generator)
        s = _uniform(max(0.0, 1 - cfg.saturation), 1 + cfg.saturation, n, dev, generator)
        h = _uniform(-cfg.hue, cfg.hue, n, dev, generator)
        if cfg.jitter_p == 0.0:
            return x  # the draws above still happen, so views do not depend on jitter_p == 0
        view = (n, 1, 1, 1)
        luma = self._on(dev).luma
        y = (x * b.view(view)).clamp(0.0, 1.0)
        mean = _gray(y, luma).mean(dim=(1, 2, 3), keepdim=True)
        y = ((y - mean) * c.view(view) + mean).clamp(0.0, 1.0)
        gray = _gray(y, luma)
        y = ((y - gray) * s.view(view) + gray).clamp(0.0, 1.0)
        y = self._hue(y, h).clamp(0.0, 1.0)
        return torch.where(apply.view(view), y, x)

    def _hue(self, x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        """Rotate the chroma of ``x`` [B, 3, H, W] by ``shift`` [B] turns in YIQ space."""
        constants = self._on(x.device)
        to_yiq, to_rgb = constants.to_yiq, constants.to_rgb
        angle = 2.0 * math.pi * shift
        cos, sin = torch.cos(angle), torch.sin(angle)
        one, zero = torch.ones_like(cos), torch.zeros_like(cos)
        rot = torch.stack(
            [
                torch.stack([one, zero, zero], dim=1),
                torch.stack([zero, cos, -sin], dim=1),
                torch.stack([zero, sin, cos], dim=1),
            ],
            dim=1,
        )  # [B, 3, 3]
        mat = to_rgb @ rot @ to_yiq  # [B, 3, 3], per-sample RGB -> RGB
        return torch.einsum("bij,bjhw->bihw", mat, x)

    def __call__(
        self, images: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """One random view of every image.

        Args:
            images: uint8 ``[B, C, H, W]``, ``C`` in ``{1, 3}``, on any device.
            generator: Source of randomness on ``images.device``; ``None`` uses torch's
                global generator of that device.

        Returns:
            float32 ``[B, 3, out_size, out_size]`` on ``images.device``, normalised.

        Raises:
            ValueError: Bad images (see :class:`BatchAugment`), or a generator on another
                device type.
        """
        x = _to_float_rgb(images)
        if generator is not None and generator.device.type != images.device.type:
            raise ValueError(
                f"generator lives on {generator.device} but images on {images.device}: "
                "create it with torch.Generator(device=images.device)"
            )
        x = self._crop_flip(x, generator)
        x = self._jitter(x, generator)
        gray = _bernoulli(self.cfg.grayscale_p, x.shape[0], x.device, generator)
        x = torch.where(gray.view(-1, 1, 1, 1), _gray(x, self._on(x.device).luma).expand_as(x), x)
        return self._normalise(x)

    def two_views(
        self, images: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Two independent views of every image (drawn one after the other from ``generator``).

        Returns:
            Two float32 ``[B, 3, out_size, out_size]`` tensors; row ``i`` of both is image ``i``.
        """
        return self(images, generator), self(images, generator)

    def plain(self, images: torch.Tensor) -> torch.Tensor:
        """The images resized to ``out_size`` (antialiased bilinear) and normalised; no randomness.

        Args:
            images: uint8 ``[B, C, H, W]``, ``C`` in ``{1, 3}``.

        Returns:
            float32 ``[B, 3, out_size, out_size]`` on ``images.device``.
        """
        x = _to_float_rgb(images)
        if x.shape[-2:] != (self.out_size, self.out_size):
            x = F.interpolate(
                x,
                size=(self.out_size, self.out_size),
                mode="bilinear",
                align_corners=False,
                antialias=True,
            ).clamp(0.0, 1.0)
        return self._normalise(x)
