"""DARTS's CIFAR augmentation, batched: pad-crop, flip, cutout, normalisation, seeded."""

from __future__ import annotations

import torch

from cnas_hpc.data.transforms import CIFAR_MEAN, CIFAR_STD, Normalize, PadCropFlipCutout


def _images(n: int = 16) -> torch.Tensor:
    return torch.randint(
        0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )


def test_the_same_seed_gives_the_same_batch_and_another_seed_another() -> None:
    augment, images = PadCropFlipCutout(), _images()
    first = augment(images, torch.Generator().manual_seed(5))
    assert torch.equal(first, augment(images, torch.Generator().manual_seed(5)))
    assert not torch.equal(first, augment(images, torch.Generator().manual_seed(6)))
    assert first.shape == (16, 3, 32, 32) and first.dtype == torch.float32


def test_each_output_is_a_shifted_possibly_flipped_window_of_the_padded_image() -> None:
    images = _images(8)
    out = PadCropFlipCutout(cutout=0)(images, torch.Generator().manual_seed(1))
    std, mean = torch.tensor(CIFAR_STD).view(3, 1, 1), torch.tensor(CIFAR_MEAN).view(3, 1, 1)
    pixels = (out * std + mean) * 255  # undo the normalisation
    raw = torch.nn.functional.pad(images.float(), (4, 4, 4, 4))  # black (0) padding
    for i in range(8):
        windows = [
            window
            for dy in range(9)
            for dx in range(9)
            for window in (
                raw[i, :, dy : dy + 32, dx : dx + 32],
                raw[i, :, dy : dy + 32, dx : dx + 32].flip(2),
            )
        ]
        assert any(torch.allclose(pixels[i], window, atol=1e-3) for window in windows)


def test_normalisation_uses_the_cifar_statistics() -> None:
    white = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    out = Normalize(CIFAR_MEAN, CIFAR_STD)(white)
    expected = (1 - torch.tensor(CIFAR_MEAN)) / torch.tensor(CIFAR_STD)
    assert torch.allclose(out[0, :, 0, 0], expected)


def test_cutout_zeroes_one_square_per_image_after_normalisation() -> None:
    out = PadCropFlipCutout(padding=0, cutout=16)(_images(32), torch.Generator().manual_seed(2))
    zeros = (out == 0).all(dim=1).flatten(1).sum(1)  # all-channel zeros: the hole
    assert zeros.max() <= 16 * 16 and zeros.float().mean() > 64  # clipped at the borders
