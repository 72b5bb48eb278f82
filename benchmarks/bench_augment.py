"""Batched on-device augmentation vs the usual per-sample torchvision pipeline, side by side.

Both produce two SimCLR views (random resized crop, flip, colour jitter, grayscale, normalise)
of the same uint8 images; the ratio is what the batched design buys per training step.

    .venv/bin/python benchmarks/bench_augment.py [--images 512] [--repeats 5]
"""

from __future__ import annotations

import argparse
import time

import torch
from torchvision.transforms import v2

from cnas_hpc.config.augment import AugmentConfig
from cnas_hpc.config.data import DataConfig
from cnas_hpc.data.datasets import load_images
from cnas_hpc.ssl.augment import BatchAugment


def per_sample_pipeline(cfg: AugmentConfig, size: int) -> v2.Compose:
    """torchvision's per-image equivalent of :class:`BatchAugment`."""
    return v2.Compose(
        [
            v2.RandomResizedCrop(size, scale=cfg.crop_scale, ratio=cfg.crop_ratio, antialias=True),
            v2.RandomHorizontalFlip(cfg.flip_p),
            v2.RandomApply(
                [v2.ColorJitter(cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue)],
                p=cfg.jitter_p,
            ),
            v2.RandomGrayscale(cfg.grayscale_p),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(cfg.mean, cfg.std),
        ]
    )


def best_of(repeats: int, fn: object) -> float:
    """Fastest wall time of ``repeats`` calls (seconds)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    """Time both pipelines on real images and print the ratio."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    images = load_images(DataConfig(source="digits", image_size=32)).images[: args.images]
    cfg = AugmentConfig()
    batched = BatchAugment(cfg, 32)
    generator = torch.Generator().manual_seed(0)
    pipeline = per_sample_pipeline(cfg, 32)

    t_batched = best_of(args.repeats, lambda: batched.two_views(images, generator))
    t_loop = best_of(args.repeats, lambda: [(pipeline(img), pipeline(img)) for img in images])
    print(f"{len(images)} images x 2 views, CPU, {torch.get_num_threads()} threads")
    print(f"batched (BatchAugment): {t_batched * 1e3:8.1f} ms")
    print(f"per-sample torchvision: {t_loop * 1e3:8.1f} ms")
    print(f"speed-up: {t_loop / t_batched:.1f}x")


if __name__ == "__main__":
    main()
