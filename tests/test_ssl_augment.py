"""Batched augmentations: contract (shapes, dtypes, range), determinism, each transform's
probability at 0 and 1, config validation, and that no op runs once per sample."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch.overrides import TorchFunctionMode

from cnas_hpc.config.augment import AugmentConfig
from cnas_hpc.ssl.augment import BatchAugment

#: Every random transform off: the pipeline is then exactly "to float, normalise".
IDENTITY: dict[str, Any] = {
    "crop_scale": (1.0, 1.0),
    "crop_ratio": (1.0, 1.0),
    "flip_p": 0.0,
    "jitter_p": 0.0,
    "grayscale_p": 0.0,
}


def images(n: int = 8, c: int = 3, size: int = 12, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, c, size, size), generator=gen, dtype=torch.uint8)


def normalised(x: torch.Tensor, cfg: AugmentConfig) -> torch.Tensor:
    """What the pipeline should output for ``x`` with every random transform off."""
    f = x.float() / 255
    if f.shape[1] == 1:
        f = f.expand(-1, 3, -1, -1)
    mean = torch.tensor(cfg.mean).view(1, 3, 1, 1)
    std = torch.tensor(cfg.std).view(1, 3, 1, 1)
    return (f - mean) / std


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("out_size", [8, 12, 20])
def test_output_contract(channels: int, out_size: int) -> None:
    cfg = AugmentConfig()
    augment = BatchAugment(cfg, out_size)
    x = images(c=channels)
    for out in (augment(x, gen(0)), *augment.two_views(x, gen(1)), augment.plain(x)):
        assert out.shape == (8, 3, out_size, out_size)
        assert out.dtype == torch.float32
        assert out.device == x.device
        assert torch.isfinite(out).all()
        # mean = std = 0.5 maps [0, 1] onto [-1, 1].
        assert out.min() >= -1.0 - 1e-5 and out.max() <= 1.0 + 1e-5


def test_same_seed_same_views_other_seed_other_views() -> None:
    augment = BatchAugment(AugmentConfig(), 10)
    x = images()
    a1, a2 = augment.two_views(x, gen(7))
    b1, b2 = augment.two_views(x, gen(7))
    c1, _ = augment.two_views(x, gen(8))
    assert torch.equal(a1, b1) and torch.equal(a2, b2)
    assert not torch.allclose(a1, c1)
    assert not torch.allclose(a1, a2)  # the two views are independent draws
    # Every sample gets its own randomness, not one draw shared by the batch.
    dup = x[:1].expand(6, -1, -1, -1).contiguous()
    out = augment(dup, gen(0))
    assert len({tuple(row.flatten().tolist()) for row in out}) == 6


def test_identity_settings_are_exact() -> None:
    cfg = AugmentConfig(**IDENTITY)
    augment = BatchAugment(cfg, 12)
    x = images(c=3)
    torch.testing.assert_close(augment(x, gen(0)), normalised(x, cfg), rtol=0, atol=1e-5)
    torch.testing.assert_close(augment.plain(x), normalised(x, cfg), rtol=0, atol=1e-5)
    gray = images(c=1)
    torch.testing.assert_close(augment(gray, gen(0)), normalised(gray, cfg), rtol=0, atol=1e-5)


def test_flip_probability_one_and_zero() -> None:
    cfg_on = AugmentConfig(**{**IDENTITY, "flip_p": 1.0})
    x = images()
    flipped = BatchAugment(cfg_on, 12)(x, gen(0))
    torch.testing.assert_close(flipped, normalised(x, cfg_on).flip(-1), rtol=0, atol=1e-5)
    cfg_off = AugmentConfig(**{**IDENTITY, "flip_p": 0.0})
    torch.testing.assert_close(
        BatchAugment(cfg_off, 12)(x, gen(0)), normalised(x, cfg_off), rtol=0, atol=1e-5
    )


def test_flip_probability_half_is_per_sample() -> None:
    cfg = AugmentConfig(**{**IDENTITY, "flip_p": 0.5})
    x = images(n=1, size=4).expand(2000, -1, -1, -1).contiguous()
    out = BatchAugment(cfg, 4)(x, gen(0))
    ref = normalised(x[:1], cfg)
    is_flipped = (out - ref.flip(-1)).abs().amax(dim=(1, 2, 3)) < 1e-5
    is_plain = (out - ref).abs().amax(dim=(1, 2, 3)) < 1e-5
    assert bool((is_flipped ^ is_plain).all())  # every sample is exactly one of the two
    assert 0.45 < is_flipped.float().mean().item() < 0.55


def test_grayscale_probability_one_and_zero() -> None:
    x = images()
    cfg_on = AugmentConfig(**{**IDENTITY, "grayscale_p": 1.0})
    out = BatchAugment(cfg_on, 12)(x, gen(0))
    torch.testing.assert_close(out[:, 0], out[:, 1])
    torch.testing.assert_close(out[:, 1], out[:, 2])
    luma = (x.float() / 255 * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1)
    torch.testing.assert_close(out[:, 0], (luma - 0.5) / 0.5, rtol=0, atol=1e-5)
    cfg_off = AugmentConfig(**{**IDENTITY, "grayscale_p": 0.0})
    out = BatchAugment(cfg_off, 12)(x, gen(0))
    assert (out[:, 0] - out[:, 1]).abs().max() > 0.1


def test_jitter_probability_zero_is_identity_and_one_changes_colours() -> None:
    strong: dict[str, Any] = {"brightness": 0.8, "contrast": 0.8, "saturation": 0.8, "hue": 0.4}
    x = images()
    off = AugmentConfig(**{**IDENTITY, **strong, "jitter_p": 0.0})
    torch.testing.assert_close(BatchAugment(off, 12)(x, gen(0)), normalised(x, off))
    on = AugmentConfig(**{**IDENTITY, **strong, "jitter_p": 1.0})
    out = BatchAugment(on, 12)(x, gen(0))
    changed = (out - normalised(x, on)).abs().amax(dim=(1, 2, 3)) > 0.05
    assert bool(changed.all())


def test_hue_and_saturation_leave_gray_images_gray() -> None:
    jitter: dict[str, Any] = {
        "jitter_p": 1.0,
        "brightness": 0.0,
        "contrast": 0.0,
        "saturation": 0.9,
        "hue": 0.5,
    }
    cfg = AugmentConfig(**{**IDENTITY, **jitter})
    gray = images(c=1)
    torch.testing.assert_close(
        BatchAugment(cfg, 12)(gray, gen(0)), normalised(gray, cfg), rtol=0, atol=1e-5
    )


def test_crop_scale_controls_the_field_of_view() -> None:
    # A horizontal ramp: an output row spans the crop's share of the image's width.
    ramp = torch.linspace(0, 255, 64).round().to(torch.uint8)
    x = ramp.view(1, 1, 1, 64).expand(200, 3, 64, 64).contiguous()
    cfg = AugmentConfig(**{**IDENTITY, "crop_scale": (0.25, 0.25)})
    out = BatchAugment(cfg, 64)(x, gen(0))
    span = (out[:, 0, 0, -1] - out[:, 0, 0, 0]) * 0.5  # back to [0, 1] units
    torch.testing.assert_close(span, torch.full_like(span, 0.5), rtol=0, atol=0.03)
    # The crop position varies between samples and stays inside the image.
    left = out[:, 0, 0, 0] * 0.5 + 0.5
    assert left.min() >= 0 and left.max() <= 0.5 + 0.03
    assert left.std() > 0.05


def test_plain_resizes_deterministically() -> None:
    augment = BatchAugment(AugmentConfig(), 16)
    x = images(size=8)
    a = augment.plain(x)
    assert a.shape == (8, 3, 16, 16)
    assert torch.equal(a, augment.plain(x))
    constant = torch.full((2, 3, 8, 8), 200, dtype=torch.uint8)
    torch.testing.assert_close(
        augment.plain(constant), torch.full((2, 3, 16, 16), (200 / 255 - 0.5) / 0.5)
    )


class _CountCalls(TorchFunctionMode):
    """Counts every torch function called from Python (a per-sample loop multiplies them)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[str] = Counter()

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        self.calls[getattr(func, "__name__", str(func))] += 1
        return func(*args, **(kwargs or {}))


def test_work_is_batched_not_a_python_loop_over_samples() -> None:
    augment = BatchAugment(AugmentConfig(), 8)
    augment.two_views(images(n=2), gen(0))  # the constants are copied to the device once
    counts = []
    for n in (2, 64):
        with _CountCalls() as mode:
            augment.two_views(images(n=n), gen(0))
            augment.plain(images(n=n))
        counts.append(mode.calls)
    assert sum(counts[0].values()) > 20  # the mode really saw the pipeline
    assert counts[0] == counts[1]
    # No tensor is built from host values per call (no small host-to-device copies).
    assert counts[1]["tensor"] == counts[1]["new_tensor"] == counts[1]["to"] == 0


def test_config_accepts_lists_and_stores_tuples() -> None:
    cfg = AugmentConfig(
        crop_scale=[0.3, 0.9],  # type: ignore[arg-type]
        crop_ratio=[0.5, 2],  # type: ignore[arg-type]
        mean=[0.4, 0.5, 0.6],  # type: ignore[arg-type]
        std=[0.2, 0.3, 0.4],  # type: ignore[arg-type]
    )
    assert cfg.crop_scale == (0.3, 0.9)
    assert cfg.crop_ratio == (0.5, 2.0)
    assert cfg.mean == (0.4, 0.5, 0.6)
    assert cfg.std == (0.2, 0.3, 0.4)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"flip_p": 1.5}, "flip_p"),
        ({"jitter_p": -0.1}, "jitter_p"),
        ({"grayscale_p": 2}, "grayscale_p"),
        ({"crop_scale": (0.0, 1.0)}, "crop_scale"),
        ({"crop_scale": (0.8, 0.5)}, "crop_scale"),
        ({"crop_scale": (0.5, 1.2)}, "crop_scale"),
        ({"crop_scale": (0.5,)}, "crop_scale"),
        ({"crop_ratio": (1.5, 1.0)}, "crop_ratio"),
        ({"crop_ratio": (0.0, 1.0)}, "crop_ratio"),
        ({"brightness": -0.1}, "brightness"),
        ({"saturation": -1}, "saturation"),
        ({"hue": 0.6}, "hue"),
        ({"hue": -0.1}, "hue"),
        ({"std": (0.5, 0.0, 0.5)}, "std"),
        ({"mean": (0.5, 0.5)}, "mean"),
    ],
)
def test_config_rejects_bad_values(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        AugmentConfig(**kwargs)


def test_bad_images_are_rejected() -> None:
    augment = BatchAugment(AugmentConfig(), 8)
    with pytest.raises(ValueError, match="uint8"):
        augment(torch.rand(2, 3, 8, 8))
    with pytest.raises(ValueError, match="1 or 3 channels"):
        augment(torch.zeros(2, 2, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        augment.plain(torch.zeros(3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="empty"):
        augment(torch.zeros(0, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="out_size"):
        BatchAugment(AugmentConfig(), 0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_generator_on_device_and_mismatch_rejected() -> None:
    augment = BatchAugment(AugmentConfig(), 8)
    x = images().cuda()
    g1 = torch.Generator(device=x.device).manual_seed(3)
    g2 = torch.Generator(device=x.device).manual_seed(3)
    a, b = augment(x, g1), augment(x, g2)
    assert a.is_cuda and torch.equal(a, b)
    with pytest.raises(ValueError, match="generator lives on"):
        augment(x, gen(0))
