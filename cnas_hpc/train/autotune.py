"""Choose the fastest way to run a step on THIS device by measuring it, once, and remember it.

Which settings make a step fast depends on the device, the torch build and the network: on one
H200 the DARTS evaluation network ran slower with bf16 autocast (139 ms) or channels_last (114 ms)
than in plain fp32 NCHW (81 ms), while the search proxy ran faster with channels_last. So no
setting is hard-wired and none is left for the user to guess: :func:`choose_fastest` times each
candidate a few times and keeps the fastest. The choice is cached as JSON under a folder every
worker sees (``<output_dir>/autotune``), keyed by what decides it (device name, torch version,
the caller's description of the workload), so a fleet of workers measures once.

Timing is robust to a busy machine: the options are timed in turns (one call of each, round
after round), so a burst of load from another process hits every option alike, and the median
of each option's calls is kept. An option whose warm-up call took over :data:`DROP_FACTOR` times
the fastest warm-up is not timed further (it cannot win, and on a busy CPU such a step may take
many seconds). An option that raises (``torch.compile`` without a working compiler, an
out-of-memory error) costs infinity: it is logged and never chosen; when every option fails the
first one is returned, uncached, and the real step reports the error. An option whose first
call does one-off work (``torch.compile``) can be charged for it: with ``amortize_over=N`` its
cost is the median plus the first call's excess over the median divided by N (the steps it
will be reused for).

Contract: every rank of a process group must call :func:`choose_fastest` with the same options;
rank 0 alone measures (the options must not use collectives) and its choice is broadcast, so all
ranks run the same way. Timing runs real steps (they change the model's weights: callers time a
throwaway copy or re-initialise afterwards). Choices are also remembered in the process, so a
worker without a cache folder measures once per workload (and per cache folder).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import platform
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from cnas_hpc.distributed.collectives import broadcast_object, get_rank
from cnas_hpc.distributed.env import affinity_cpus

log = logging.getLogger(__name__)


#: Options whose warm-up call is this many times slower than the fastest warm-up are dropped
#: (not when first calls are amortised: there a slow first call is expected, e.g. compiling).
DROP_FACTOR = 3.0

#: Choices made in this process: (cache folder, cache key) -> option name.
_REMEMBERED: dict[tuple[str, str], str] = {}


def device_name(device: torch.device) -> str:
    """A stable name of the device's hardware (``"NVIDIA H200"``, ``"cpu-x86_64-16"``).

    For a CPU: the architecture and the cores this process may use (not torch's thread count,
    which a tuned option may change).
    """
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu-{platform.machine()}-{affinity_cpus()}"


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


def measure_in_turns(
    options: Mapping[str, Callable[[], object]],
    device: torch.device,
    *,
    warmup: int = 2,
    repeat: int = 5,
    amortize_over: int | None = None,
) -> dict[str, float]:
    """Seconds per call of each option, timed in turns (see the module docstring).

    Args:
        options: name -> a callable that runs one step the named way.
        device: where the steps run (synchronised around each timed call).
        warmup: untimed calls per option first (the first one is timed for ``amortize_over``).
        repeat: timed rounds; each round calls every option once.
        amortize_over: charge each option ``(first call - median) / amortize_over`` more.

    Returns:
        name -> median seconds per call (plus the amortised first-call excess); options
        dropped after their warm-up (see :data:`DROP_FACTOR`) get their warm-up time.
    """
    first: dict[str, float] = {}
    failed: set[str] = set()
    for name, run in options.items():
        for i in range(max(warmup, 1)):
            started = time.perf_counter()
            if not _ran(name, run, device):
                failed.add(name)
                break
            if i == 0:
                first[name] = time.perf_counter() - started
    if len(failed) == len(options):
        return {name: math.inf for name in options}
    fastest = min(first.values())
    timed = {
        name: run
        for name, run in options.items()
        if name not in failed and (amortize_over or first[name] <= DROP_FACTOR * fastest)
    }
    samples: dict[str, list[float]] = {name: [] for name in timed}
    for _ in range(repeat):
        for name, run in timed.items():
            started = time.perf_counter()
            run()
            synchronize(device)
            samples[name].append(time.perf_counter() - started)
    costs = {name: first.get(name, math.inf) for name in options if name not in timed}
    for name, times in samples.items():
        median = sorted(times)[len(times) // 2]
        extra = max(0.0, first[name] - median) / amortize_over if amortize_over else 0.0
        costs[name] = median + extra
    return costs


def _ran(name: str, run: Callable[[], object], device: torch.device) -> bool:
    """Call ``run`` once and wait for the device; False (logged) when it raised."""
    try:
        run()
        synchronize(device)
    except Exception as exc:  # an unusable option is skipped, not fatal
        log.warning("autotune: option %s failed and is skipped: %s", name, exc)
        return False
    return True


def choose_fastest(
    options: Mapping[str, Callable[[], object]],
    device: torch.device,
    *,
    workload: Mapping[str, object],
    cache_dir: Path | None,
    warmup: int = 2,
    repeat: int = 5,
    amortize_over: int | None = None,
) -> str:
    """The name of the fastest option (one call of each ``options[name]`` is one step).

    Args:
        options: name -> a callable that runs one step the named way. A single option is
            returned without timing.
        device: where the steps run.
        workload: what else decides the choice (network, batch, image size, ...).
        cache_dir: folder of the cached choices (None: remembered in this process only).
        warmup, repeat: timing calls per option (see :func:`measure_in_turns`).
        amortize_over: steps a one-off first-call cost is spread over (see the module
            docstring); part of the cache key.

    Returns:
        The chosen name, identical on every rank.
    """
    names = list(options)
    if len(names) == 1:
        return names[0]
    key = _cache_key(device, {**workload, "amortize_over": amortize_over}, names)
    path = cache_dir / f"{key}.json" if cache_dir is not None else None
    choice: str | None = None
    if get_rank() == 0:
        remembered = (str(cache_dir), key)
        choice = _REMEMBERED.get(remembered) or _read_cached(path, names)
        if choice is None:
            timings = measure_in_turns(
                options, device, warmup=warmup, repeat=repeat, amortize_over=amortize_over
            )
            choice = min(timings, key=lambda name: timings[name])
            log.info(
                "autotune on %s: %s -> %s",
                device_name(device),
                ", ".join(f"{n} {t * 1e3:.1f} ms" for n, t in timings.items()),
                choice,
            )
            if not math.isinf(timings[choice]):  # every option failed: nothing to remember
                _write_cached(path, choice, timings, device, workload)
                _REMEMBERED[remembered] = choice
        else:
            _REMEMBERED[remembered] = choice
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
