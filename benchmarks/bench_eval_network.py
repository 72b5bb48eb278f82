"""Images/s of the DARTS evaluation network's training step, every layout side by side.

One training step (augmentation, forward with the auxiliary head, cross entropy, backward,
gradient clip, SGD) of DARTS_V2 at 20 cells x 36 channels, batch 96 (the DARTS CIFAR protocol),
timed in turns in one run for each layout this device offers: fp32 NCHW, fp32 channels_last
and, on CUDA, bf16 autocast in both formats; then what the autotuner (``protocol.amp=auto``,
``protocol.memory_format=auto``) picks. Prints a table and writes JSON.

    python benchmarks/bench_eval_network.py                     # CPU (or the GPU if present)
    python benchmarks/bench_eval_network.py --cells 8 --channels 16 --batch 64   # smaller
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch

from cnas_hpc.config.protocol import ProtocolConfig
from cnas_hpc.data.datasets import ImageArrays
from cnas_hpc.data.labeled import LabeledData
from cnas_hpc.evaluate.speed import choose_layout
from cnas_hpc.space.genotype import DARTS_V2
from cnas_hpc.train.autotune import device_name, measure_in_turns
from cnas_hpc.train.supervised import SupervisedStep, SupervisedTask, build_eval_network


def _data(n: int) -> LabeledData:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (n,), generator=g)
    split = ImageArrays(images, labels, "random")
    return LabeledData(split, split, 10)


def _step_of(
    protocol: ProtocolConfig,
    data: LabeledData,
    device: torch.device,
    fmt: str,
    amp: torch.dtype | None,
) -> Callable[[], None]:
    """One training step in layout ``fmt`` / ``amp`` (a fresh network per layout)."""
    memory_format = torch.channels_last if fmt == "channels_last" else torch.contiguous_format
    task = SupervisedTask(protocol, 10, 0, memory_format, amp)
    net = build_eval_network(DARTS_V2, protocol, 10, seed=0).to(device)
    stepper = SupervisedStep(net.to(memory_format=memory_format), task, device)
    assert data.train.labels is not None
    images, labels = data.train.images.to(device), data.train.labels.to(device)
    index = torch.arange(len(images), device=device)
    counter = {"step": 0}

    def step() -> None:
        stepper(images, labels, index, counter["step"])
        counter["step"] += 1

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--cells", type=int, default=20)
    parser.add_argument("--channels", type=int, default=36)
    parser.add_argument("--batch", type=int, default=96)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", default="benchmarks/results/eval_network.json")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    protocol = ProtocolConfig(cells=args.cells, channels=args.channels, batch_size=args.batch)
    data = _data(args.batch)
    model = build_eval_network(DARTS_V2, protocol, 10, seed=0)
    layouts: list[tuple[str, torch.dtype | None]] = [("contiguous", None), ("channels_last", None)]
    if device.type == "cuda":
        layouts += [("contiguous", torch.bfloat16), ("channels_last", torch.bfloat16)]
    options = {
        f"{'bf16' if amp else 'fp32'} {fmt}": _step_of(protocol, data, device, fmt, amp)
        for fmt, amp in layouts
    }
    # In turns: a burst of load from another process hits every layout alike.
    seconds = measure_in_turns(options, device, warmup=2, repeat=args.repeat)
    rows = [
        {"layout": name, "ms_per_step": t * 1e3, "images_per_s": args.batch / t}
        for name, t in seconds.items()
    ]
    started = time.perf_counter()
    chosen = choose_layout(model, SupervisedTask(protocol, 10, 0), data, device, cache_dir=None)
    tune_s = time.perf_counter() - started
    pick = (
        f"{'bf16' if chosen.amp_dtype else 'fp32'} "
        f"{'channels_last' if chosen.memory_format == torch.channels_last else 'contiguous'}"
    )
    base = rows[0]["images_per_s"]
    print(f"DARTS_V2 {args.cells}x{args.channels}, batch {args.batch}, on {device_name(device)}")
    print(f"{'layout':<22}{'ms/step':>10}{'images/s':>11}{'vs fp32 NCHW':>14}")
    for row in rows:
        print(
            f"{row['layout']:<22}{row['ms_per_step']:>10.1f}{row['images_per_s']:>11.0f}"
            f"{row['images_per_s'] / base:>13.2f}x"
        )
    print(f"autotune picks: {pick} (measured in {tune_s:.1f} s, once per device; then cached)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "device": device_name(device),
                "torch": torch.__version__,
                "protocol": dataclasses.asdict(protocol),
                "rows": rows,
                "autotune_choice": pick,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
