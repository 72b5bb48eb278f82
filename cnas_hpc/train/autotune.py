"""Choose the fastest way to run a step on THIS device by measuring it, once, and remember it.

Which settings make a step fast depends on the device, the torch build and the network: on one
H200 the DARTS evaluation network ran slower with bf16 autocast (139 ms) or channels_last (114 ms)
than in plain fp32 NCHW (81 ms), while the search proxy ran faster with channels_last. So no
setting is hard-wired and none is left for the user to guess: :func:`choose_fastest` times each
candidate a few times and keeps the fastest. The choice is cached as JSON under a folder every
worker sees (``<output_dir>/autotune``), keyed by what decides it (device name, torch version,
the caller's description of the workload), so a fleet of workers measures once.

Contract: every rank of a process group must call :func:`choose_fastest` with the same options.
Rank 0 reads the cache and tells the others; when nothing is cached, EVERY rank runs every
option in the same order (so an option may be a real DDP step with its collectives) and rank 0's
choice is broadcast: all ranks then run the same way. Timing runs real steps (they change the
model's weights: callers time a throwaway copy or re-initialise afterwards).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from cnas_hpc.distributed.collectives import broadcast_object, get_rank

log = logging.getLogger(__name__)


def device_name(device: torch.device) -> str:
    """A stable name of the device's hardware (``"NVIDIA H200"``, ``"cpu-16"``)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu-{torch.get_num_threads()}"


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (timing only; never inside a training step)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cache_key(device: torch.device, workload: Mapping[str, object], options: list[str]) -> str:
    text = json.dumps(
        {
            "device": device_name(device),
            "torch": torch.__version__,
            "workload": workload,
            "options": sorted(options),
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def time_option(
    run: Callable[[], object], device: torch.device, *, warmup: int = 2, repeat: int = 5
) -> float:
    """Median seconds of one call of ``run`` after ``warmup`` calls, synchronised per call."""
    for _ in range(warmup):
        run()
    synchronize(device)
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        synchronize(device)
        times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2]


def choose_fastest(
    options: Mapping[str, Callable[[], object]],
    device: torch.device,
    *,
    workload: Mapping[str, object],
    cache_dir: Path | None,
    warmup: int = 2,
    repeat: int = 5,
) -> str:
    """The name of the fastest option (one call of each ``options[name]`` is one step).

    Args:
        options: name -> a callable that runs one step the named way. A single option is
            returned without timing.
        device: where the steps run.
        workload: what else decides the choice (network, batch, image size, ...).
        cache_dir: folder of the cached choices (None: measure every time).
        warmup, repeat: timing calls per option.

    Returns:
        The chosen name, identical on every rank.
    """
    names = list(options)
    if len(names) == 1:
        return names[0]
    key = _cache_key(device, workload, names)
    path = cache_dir / f"{key}.json" if cache_dir is not None else None
    cached = broadcast_object(_read_cached(path, names) if get_rank() == 0 else None)
    if cached is not None:
        return cached
    timings = {name: time_option(options[name], device, warmup=warmup, repeat=repeat)
               for name in names}  # fmt: skip
    choice: str | None = None
    if get_rank() == 0:
        choice = min(timings, key=lambda name: timings[name])
        log.info(
            "autotune on %s: %s -> %s",
            device_name(device),
            ", ".join(f"{n} {t * 1e3:.1f} ms" for n, t in timings.items()),
            choice,
        )
        _write_cached(path, choice, timings, device, workload)
    chosen = broadcast_object(choice)
    assert chosen is not None
    return chosen


def _read_cached(path: Path | None, names: list[str]) -> str | None:
    if path is None or not path.exists():
        return None
    try:
        choice = json.loads(path.read_text())["choice"]
    except (OSError, ValueError, KeyError):
        return None
    return choice if choice in names else None


def _write_cached(
    path: Path | None,
    choice: str,
    timings: Mapping[str, float],
    device: torch.device,
    workload: Mapping[str, object],
) -> None:
    if path is None:
        return
    payload = {
        "choice": choice,
        "seconds": dict(timings),
        "device": device_name(device),
        "torch": torch.__version__,
        "workload": dict(workload),
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(payload, indent=2, default=str))
        tmp.replace(path)
    except OSError as exc:  # a read-only cache folder costs a re-measurement, nothing else
        log.warning("cannot cache the autotune choice in %s: %s", path, exc)
